"""A live run is never taken over: second runs are refused in one line, a run whose
process died is taken over at once, an expired one after its timeout, a live one
only with --force (and then it ends failed, saying so). Through the CLI, locally."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.leases import Leases, Owner

ROWS = 3000


@pytest.fixture
def slow(tmp_path):
    """A pipeline of 3000 rows in batches that take 0.3 s each (about 4 s a run)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("id,v\n" + "".join(f"{i},x{i}\n" for i in range(ROWS)))
    spec = {"name": "slowp",
            "pipeline": {"source": {"type": "file", "path": "in", "format": "csv", "batchSize": 200},
                         "transformations": [{"id": "slow", "type": "function", "handler": "plugins:slow_identity"}],
                         "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/out.db",
                                         "table": "t"},
                         "parallelism": 1, "extractors": 1, "leaseTimeout": "5s"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def cli(tmp_path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "etl_actors", "run", str(tmp_path / "spec.yaml"), "--local", "--json",
            "--log", f"sqlite:///{tmp_path}/events.db", *extra]


def start(tmp_path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(cli(tmp_path, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(tmp_path, event_type: type, count: int = 1, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = [r for r in EventLog(f"sqlite:///{tmp_path}/events.db").read("pipeline:slowp")
                     if isinstance(r.event, event_type)]
            if len(found) >= count:
                return
        except Exception:  # noqa: BLE001 - the log may not exist yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"no {event_type.__name__} within {timeout} s")


def loaded(tmp_path) -> tuple[int, int]:
    with sqlite3.connect(tmp_path / "out.db") as conn:
        return conn.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchone()


def summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_second_run_while_one_is_live_is_refused_in_one_line(slow):
    first = start(slow)
    wait_for(slow, ev.BatchLoaded)
    second = subprocess.run(cli(slow), capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and second.stdout == ""
    line, = second.stderr.strip().splitlines()
    running = summary(first.communicate(timeout=60)[0])
    assert f"is already running: run {running['runId']} on " in line and " since 20" in line
    assert running["status"] == "success" and loaded(slow) == (ROWS, ROWS)


def test_of_two_runs_started_at_the_same_moment_exactly_one_runs(slow):
    runs = [start(slow), start(slow)]
    outcomes = [(run.wait(timeout=90), run.communicate()) for run in runs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 1]
    refused = next(err for code, (_, err) in outcomes if code == 1)
    assert refused.count("\n") == 1 and "is already running" in refused and "Traceback" not in refused
    assert loaded(slow) == (ROWS, ROWS)


def test_a_run_killed_with_sigkill_is_taken_over_at_once_by_the_rerun(slow):
    first = start(slow)
    wait_for(slow, ev.WatermarkCommitted)
    first.send_signal(signal.SIGKILL)
    first.wait()
    began = time.time()
    rerun = subprocess.run(cli(slow), capture_output=True, text=True, timeout=90)
    assert rerun.returncode == 0, rerun.stderr
    assert time.time() - began < 30          # not after the 5 s lease timeout's worth of waiting: at once
    failed = [r.event for r in EventLog(f"sqlite:///{slow}/events.db").read("pipeline:slowp")
              if isinstance(r.event, ev.RunFailed)]
    assert len(failed) == 1 and failed[0].error.startswith("interrupted: its supervisor (run ")
    assert loaded(slow) == (ROWS, ROWS)


def test_force_takes_over_a_live_run_which_then_ends_failed_saying_so(slow):
    first = start(slow)
    wait_for(slow, ev.BatchLoaded, 2)
    forced = subprocess.run(cli(slow, "--force"), capture_output=True, text=True, timeout=90)
    out, err = first.communicate(timeout=60)
    assert forced.returncode == 0 and summary(forced.stdout)["status"] == "success"
    assert first.returncode == 1 and "Traceback" not in err
    taken = summary(out)
    assert taken["status"] == "failed" and taken["error"].startswith("interrupted: taken over with --force")
    assert loaded(slow) == (ROWS, ROWS)


def test_a_lease_held_elsewhere_is_waited_for_then_taken_when_its_heartbeat_expires(slow):
    log = EventLog(f"sqlite:///{slow}/events.db")
    Leases(log).acquire("slowp", Owner("r-far", "another-host.example", 4242), timeout=2)
    refused = subprocess.run(cli(slow), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "run r-far on another-host.example:4242" in refused.stderr
    time.sleep(2)
    rerun = subprocess.run(cli(slow), capture_output=True, text=True, timeout=90)
    assert rerun.returncode == 0, rerun.stderr
    acquired = [r.event for r in log.read("pipeline:slowp") if isinstance(r.event, ev.LeaseAcquired)]
    assert acquired[-1].reason.startswith("its lease expired") and "another-host.example" in acquired[-1].previous


def test_an_in_memory_log_is_refused_for_run(slow):
    for url in ("sqlite://", "sqlite:///:memory:"):
        run = subprocess.run([*cli(slow)[:-1], url], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "keep no history" in run.stderr and run.stderr.count("\n") == 1


def test_a_read_only_log_is_one_line_not_a_traceback(slow):
    subprocess.run(cli(slow), capture_output=True, timeout=90, check=True)
    read_only = f"sqlite:///file:{slow}/events.db?mode=ro&uri=true"
    run = subprocess.run([*cli(slow)[:-1], read_only, "--reset"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "cannot be written" in run.stderr and run.stderr.count("\n") == 1


def test_a_run_on_ray_is_refused_before_ray_starts_while_a_local_run_holds_the_lease(slow, ray_local):
    first = start(slow)
    wait_for(slow, ev.BatchLoaded)
    began = time.time()
    on_ray = subprocess.run([c for c in cli(slow) if c != "--local"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]})
    assert on_ray.returncode == 1 and "is already running: run " in on_ray.stderr and time.time() - began < 4
    assert "Traceback" not in on_ray.stderr and on_ray.stderr.count("\n") == 1
    assert summary(first.communicate(timeout=60)[0])["status"] == "success"
