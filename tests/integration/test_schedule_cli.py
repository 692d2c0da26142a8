"""``etl-actors schedule`` on a real Ray: the detached scheduler actor lands in the
session's cluster, outlives the command, fires a real run (told a minute has passed,
instead of waiting for it) and is disarmed by ``--stop``."""
import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest
import ray
import yaml

from etl_actors.eventlog import EventLog
from etl_actors.scheduler import schedule_stream, scheduler_name

pytestmark = [pytest.mark.ray]
ROWS = 500


def schedule(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl_actors", "schedule", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def armed(ray_local, tmp_path, uniq):
    """A CSV -> SQLite spec firing every minute, its log, and the CLI's environment;
    the scheduler actor is killed afterwards."""
    (tmp_path / "in").mkdir()
    lines = [f"{i},{i * 10}" for i in range(1, ROWS + 1)]
    (tmp_path / "in" / "orders.csv").write_text("order_id,amount\n" + "\n".join(lines) + "\n")
    name = f"sched-{uniq}"
    spec = tmp_path / "orders.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name,
        "pipeline": {"source": {"type": "file", "path": "in", "format": "csv"},
                     "destination": {"type": "database", "connection": "sqlite:///wh.db", "table": "orders",
                                     "mode": "upsert", "keyFields": ["order_id"]}},
        "schedule": {"type": "cron", "expression": "* * * * *", "timezone": "UTC"}}))
    log = f"sqlite:///{tmp_path}/events.db"
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}
    yield name, spec, log, env
    try:
        ray.kill(ray.get_actor(scheduler_name(log), namespace="etl_actors"), no_restart=True)
    except ValueError:
        pass


def wait_for_runs(log: str, pipeline: str, run_ids: set, timeout: float = 90) -> dict:
    """The end event (RunSucceeded / RunFailed) of each run, once all ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = {r.event.run_id: r.type for r in EventLog(log).read(f"pipeline:{pipeline}")
                if r.type in ("RunSucceeded", "RunFailed")}
        if run_ids <= set(ends):
            return ends
        time.sleep(0.2)
    raise AssertionError(f"runs {run_ids} did not end within {timeout} s")


def test_schedule_arms_a_detached_actor_that_fires_a_real_run_until_stopped(armed, tmp_path):
    name, spec, log, env = armed
    out = schedule(env, str(spec), "--log", log)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"{name}: '\* \* \* \* \*' UTC, next \d{{4}}-\d\d-\d\dT\d\d:\d\d:00Z\n", out.stdout)

    listing = schedule(env, "--list", "--log", log, "--json")     # the command ended; the actor did not
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert (row["pipeline"], row["spec"], row["expression"]) == (name, str(spec), "* * * * *")
    assert row["nextFire"] > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    table = schedule(env, "--list")
    assert re.search(rf"^{name} +\* \* \* \* \* +UTC +latest +\d{{4}}-", table.stdout, re.M), table.stdout

    scheduler = ray.get_actor(scheduler_name(log), namespace="etl_actors")
    events = ray.get(scheduler.tick.remote(time.time() + 60), timeout=60)
    # a real minute may have passed since arming and fired a run first: then this one is skipped
    assert [e.type for e in events] == ["ScheduleFired"] or "a run is in progress" in events[0].reason
    fired = [r.event for r in EventLog(log).read(schedule_stream(name)) if r.type == "ScheduleFired"]
    ends = wait_for_runs(log, name, {e.run_id for e in fired})
    assert set(ends.values()) == {"RunSucceeded"}
    started = [r.event for r in EventLog(log).read(f"pipeline:{name}") if r.type == "RunStarted"]
    assert {(e.run_id, e.trigger) for e in started} == {(e.run_id, "schedule") for e in fired}
    with sqlite3.connect(tmp_path / "wh.db") as db:
        assert db.execute("SELECT count(*), sum(amount) FROM orders").fetchone() == (ROWS, 10 * ROWS * (ROWS + 1) // 2)

    ray.kill(scheduler, no_restart=False)                          # Ray restarts it; it recovers from the log
    [row] = json.loads(schedule(env, "--list", "--log", log, "--json").stdout)
    last = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fired[-1].fire_time))
    assert (row["pipeline"], row["lastFired"], row["running"]) == (name, last, None)

    stop = schedule(env, "--stop", name, "--log", log)
    assert stop.returncode == 0 and stop.stdout == f"{name}: disarmed\n", stop.stderr
    assert json.loads(schedule(env, "--list", "--log", log, "--json").stdout) == []
    assert ray.get(scheduler.tick.remote(time.time() + 600), timeout=60) == []   # nothing fires any more
    again = schedule(env, "--stop", name, "--log", log)
    assert again.returncode == 1 and f"no schedule is armed for pipeline {name!r}" in again.stderr
