"""What a fresh ``pip install etl-actors`` (no dev extra) must bring: every third-party
module that the package and ``make demo`` import is a declared core dependency, not
something that happened to be installed by the dev extra or another package."""
import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _top_level_imports(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _core_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0].lower().replace("_", "-")
            for dep in project["dependencies"]}


def test_every_module_the_package_and_the_demo_import_is_a_core_dependency():
    demo = [ROOT / "examples" / name for name in ("demo.py", "make_data.py", "crm_api.py")]
    files = [*(ROOT / "etl_actors").rglob("*.py"), *demo]
    local = {"etl_actors", *(path.stem for path in demo)}      # the demo's own modules, beside it
    third_party = {name for name in _top_level_imports(files)
                   if name not in sys.stdlib_module_names and name not in local}
    providers = importlib.metadata.packages_distributions()
    missing = {name: providers.get(name) for name in third_party
               if not {d.lower().replace("_", "-") for d in providers.get(name, [name])} & _core_distributions()}
    assert not missing, f"imported but not in [project].dependencies: {missing}"
