"""``etl-actors run`` and ``status`` on a stream spec, as users and their scripts meet
them: exit codes, the summary, SIGTERM, the stream's position, spec errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.eventlog import EventLog

from .kit import T0, Reference, Topic, Windowing, database, event, stream_spec, wait_for, windows_in

WINDOWING = Windowing("tumbling", size_ms=60_000, out_of_order_ms=5_000)


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture
def clicks(kafka, uniq):
    """A two-partition topic with seven events in it."""
    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    topic.send(0, [event(10, "a", 1), event(50, "b", 2), event(70, "a", 3), event(130, "a", 4)])
    topic.send(1, [event(20, "b", 5), event(95, "b", 6), event(125, "c", 7)])
    return topic


def write_spec(tmp_path, spec: dict):
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_run_until_idle_exits_0_with_the_summary(clicks, tmp_path, uniq):
    name, log, db = f"cli-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    path = write_spec(tmp_path, stream_spec(name, clicks, [WINDOWING.processor()], [database(db)]))

    out = cli("run", path, "--until-idle", "2", "--json", "--local", "--log", log)

    assert out.returncode == 0, out.stderr[-2000:]
    summary = summary_of(out.stdout)
    rows = Reference(WINDOWING).read(clicks.sent).flush().rows()
    assert (summary["status"], summary["recordsExtracted"], summary["recordsLoaded"]) == ("success", 7, len(rows))
    assert summary["watermark"] == clicks.ends()
    assert summary["durationMs"] < 2_000                        # the final idle wait is not work
    assert windows_in(db) == rows


@pytest.mark.parametrize("runtime", ["local", "ray"])
def test_sigterm_stops_after_a_last_checkpoint_and_a_rerun_reads_nothing_twice(request, clicks, tmp_path, uniq,
                                                                                runtime):
    name, log, db = f"term-{runtime}-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    path = write_spec(tmp_path, stream_spec(name, clicks, [WINDOWING.processor()], [database(db)]))
    env, where = dict(os.environ), ["--local"] if runtime == "local" else []
    if runtime == "ray":
        env["RAY_ADDRESS"] = request.getfixturevalue("ray_local").address_info["address"]
    driver = subprocess.Popen([sys.executable, "-m", "etl_actors", "run", path, "--json", "--log", log, *where],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def positions() -> dict | None:
        marks = [r.event.positions for r in EventLog(log).read(f"pipeline:{name}")
                 if isinstance(r.event, ev.CheckpointCommitted)]
        return marks[-1] if marks else None

    try:
        wait_for(lambda: positions() == clicks.ends(), 60, "a checkpoint at the end of the topic")
    finally:
        driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=60)

    assert driver.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    summary = summary_of(stdout)
    assert (summary["status"], summary["recordsExtracted"], summary["watermark"]) == ("success", 7, clicks.ends())
    passed = min(130, 125) - 5                                   # seconds: the watermark at the stop
    assert windows_in(db) == [r for r in Reference(WINDOWING).read(clicks.sent).rows()
                              if r["windowEnd"] <= T0 + passed * 1000]
    more = clicks.send(0, [event(200, "a", 8)]) + clicks.send(1, [event(140, "b", 9)])

    rerun = cli("run", path, "--until-idle", "1", "--json", "--log", log, *where, env=env)

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    again = summary_of(rerun.stdout)
    assert (again["recordsExtracted"], again["watermark"]) == (len(more), clicks.ends())
    assert windows_in(db) == Reference(WINDOWING).read(clicks.sent).flush().rows()   # each event counted once


def test_status_shows_the_streams_watermark_positions_and_lag(clicks, tmp_path, uniq):
    name, log, db = f"status-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    path = write_spec(tmp_path, stream_spec(name, clicks, [WINDOWING.processor()], [database(db)]))
    assert cli("run", path, "--until-idle", "1", "--local", "--log", log).returncode == 0

    out = cli("status", name, "--log", log, "--json")

    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    stream = status["stream"]
    latest = [max(v["timestamp"] for p, _, v in clicks.sent if p == partition) for partition in range(2)]
    assert stream["watermark"] == min(latest) - WINDOWING.out_of_order_ms
    assert stream["emittedUpTo"] == Reference(WINDOWING).read(clicks.sent).flush().floor
    assert stream["positions"] == status["watermark"] == clicks.ends()
    assert stream["lag"] == {p: 0 for p in clicks.ends()}
    assert stream["openWindows"] == 0
    text = cli("status", name, "--log", log).stdout
    assert f"partition {clicks.name}:1: at 3, lag 0" in text and f"stream watermark {min(latest) - 5_000}" in text


def test_status_in_python_of_a_stream_started_locally_reads_the_log_it_runs_on(clicks, tmp_path, uniq, monkeypatch):
    monkeypatch.chdir(tmp_path)                                 # where a default log would go
    name, log, db = f"py-status-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    pipeline = Pipeline.from_dict(stream_spec(name, clicks, [WINDOWING.processor()], [database(db)]))
    pipeline.start(log=log, runtime="local")
    try:
        wait_for(lambda: (pipeline.status(log).get("stream") or {}).get("positions") == clicks.ends(), 30,
                 "a checkpoint at the end of the topic")
        status = pipeline.status()
    finally:
        pipeline.stop()

    assert status["stream"]["positions"] == status["watermark"] == clicks.ends()
    assert status["runs"] == 1


@pytest.mark.parametrize("change, path", [
    (lambda w: w["window"].update(size=-5), "stream.processors[0].window.size"),
    (lambda w: w.update(type="windoe"), "stream.processors[0].type"),
    (lambda w: w["window"].update(type="sliding", slide=120_000), "stream.processors[0].window.slide"),
    (lambda w: w.update(maxOutOfOrderness="soon"), "stream.processors[0].maxOutOfOrderness"),
], ids=["negative size", "unknown processor type", "slide over size", "unreadable duration"])
def test_a_stream_spec_error_exits_2_with_its_path_and_no_traceback(tmp_path, uniq, change, path):
    window = WINDOWING.processor()
    change(window)
    spec = {"name": f"bad-{uniq}", "stream": {
        "source": {"type": "kafka", "topic": "t", "consumerGroup": "g", "bootstrapServers": "127.0.0.1:9"},
        "processors": [window], "sinks": [database(tmp_path / "out.db")]}}

    out = cli("run", write_spec(tmp_path, spec), "--until-idle", "1", "--local",
              "--log", f"sqlite:///{tmp_path}/events.db")

    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"invalid spec: {path}:" in out.stderr
    assert not (tmp_path / "out.db").exists()


def test_until_idle_on_a_batch_spec_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders.csv").write_text("id,amount\n1,10\n")
    spec = {"name": "batch-orders", "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "in"), "format": "csv"},
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "orders"}}}

    out = cli("run", write_spec(tmp_path, spec), "--until-idle", "2", "--local",
              "--log", f"sqlite:///{tmp_path}/events.db")

    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--until-idle is for stream specs" in out.stderr
    assert not (tmp_path / "wh.db").exists()
