"""The reliability suite reports figures (kills survived, records checked, inputs
fuzzed); they are printed at the end of the test session and quoted in the README.

A test records one with ``figures["inputs fuzzed: spec loader"] = n`` (the
``figures`` fixture); values for the same key are added up."""
import pytest

FIGURES: dict[str, int] = {}


class _Figures:
    def __setitem__(self, key: str, value: int) -> None:
        FIGURES[key] = FIGURES.get(key, 0) + value

    def __getitem__(self, key: str) -> int:
        return FIGURES.get(key, 0)


@pytest.fixture(scope="session")
def figures() -> _Figures:
    return _Figures()


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for key, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{key}: {value:,}")
