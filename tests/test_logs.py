"""The supervisor's log lines: what a person reading a worker's log sees of a run."""
import json

from etl_actors import events as ev
from etl_actors.logs import RunLogger

RUN = [ev.RunStarted(pipeline="orders", run_id="r1", epoch=1, watermark={}, partitions=["a", "b"]),
       ev.RecordsRejected(run_id="r1", batch_id="a#0", stage="extract", count=2, reason="amount: not an int"),
       ev.ChildRestarted(run_id="r1", child="loader#0", reason="RayActorError", attempt=1),
       ev.RunFailed(run_id="r1", error="step 'paid' failed: no column x",
                    metrics={"recordsExtracted": 10, "recordsLoaded": 4, "durationMs": 12.5})]


def logged(capsys, monkeypatch, level: str | None, fmt: str | None) -> list[str]:
    """The stderr lines of a RunLogger fed ``RUN`` under these settings."""
    for name, value in (("ETL_ACTORS_LOG_LEVEL", level), ("ETL_ACTORS_LOG_FORMAT", fmt)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    logger = RunLogger("orders")
    for event in RUN:
        logger(event)
    return capsys.readouterr().err.splitlines()


def test_info_lines_tell_the_run_from_start_to_end(capsys, monkeypatch):
    lines = [json.loads(line) for line in logged(capsys, monkeypatch, None, "json")]
    assert [(l["level"], l["event"]) for l in lines] == [
        ("info", "run started"), ("info", "records rejected"), ("warning", "child restarted"), ("error", "run failed")]
    assert all(l["pipeline"] == "orders" and l["run_id"] == "r1" for l in lines)
    assert lines[0]["partitions"] == 2 and lines[1]["count"] == 2 and lines[2]["child"] == "loader#0"
    assert lines[3]["error"] == "step 'paid' failed: no column x" and lines[3]["recordsLoaded"] == 4


def test_the_level_hides_what_is_below_it(capsys, monkeypatch):
    lines = logged(capsys, monkeypatch, "warning", None)
    assert len(lines) == 2
    assert "level='warning' event='child restarted'" in lines[0] and "level='error' event='run failed'" in lines[1]
