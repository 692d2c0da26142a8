"""Kill the loader, the extractor or the whole driver mid-run, rerun, and compare the
destination with the source: none missing, none twice, watermarks never backwards."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import yaml

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.eventlog import EventLog

from . import crm

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROWS = 6000


def committed_cursors(log_url: str, stream: str) -> list:
    return [r.event.position for r in EventLog(log_url).read(stream)
            if isinstance(r.event, ev.WatermarkCommitted)]


def kill_when_running(actor_name: str, after_commits: int, log_url: str, stream: str) -> threading.Thread:
    def killer():
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if len(committed_cursors(log_url, stream)) >= after_commits:
                    ray.kill(ray.get_actor(actor_name, namespace="etl_actors"))
                    return
            except ValueError:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("child", ["loader", "extractor:0"])
@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_a_killed_child_is_replaced_and_the_destination_equals_the_source(ray_local, tmp_path, uniq, child, mode):
    src, dst, log = (f"sqlite:///{tmp_path}/{n}.db" for n in ("crm", "wh", "events"))
    crm.create(src, ROWS)
    name = f"kill-{uniq}"
    pipeline = Pipeline.from_dict(crm.spec(name, src, dst, mode=mode, batch_size=200, maxInFlight=2))
    killer = kill_when_running(f"etl:{name}:{child}", 3, log, f"pipeline:{name}")
    result = pipeline.run(log=log)
    killer.join()
    assert result["status"] == "success"
    assert crm.dest_rows(dst) == crm.source_rows(src)       # none missing, none twice
    restarted = [r.event.child for r in EventLog(log).read(f"pipeline:{name}")
                 if isinstance(r.event, ev.ChildRestarted)]
    assert restarted == [child.replace(":", "#") if ":" in child else "loader#0"]
    cursors = committed_cursors(log, f"pipeline:{name}")
    assert cursors == sorted(cursors, key=lambda p: p["cursor"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_killed_or_interrupted_driver_then_a_rerun_loses_nothing_and_doubles_nothing(ray_local, tmp_path, uniq, sig):
    src, dst, log = (f"sqlite:///{tmp_path}/{n}.db" for n in ("crm", "wh", "events"))
    crm.create(src, ROWS)
    name = f"sig{int(sig)}-{uniq}"
    spec_path = tmp_path / "spec.yaml"
    batch_size = 100 if sig == signal.SIGKILL else 20   # Ctrl-C must land before the run ends
    spec_path.write_text(yaml.safe_dump(crm.spec(name, src, dst, mode="insert", batch_size=batch_size, maxInFlight=2)))
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}
    cli = [sys.executable, "-m", "etl_actors", "run", str(spec_path), "--log", log, "--json"]
    driver = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while len(committed_cursors(log, f"pipeline:{name}")) < 5 and time.time() < deadline:
        time.sleep(0.05)
    driver.send_signal(sig)
    stdout, stderr = driver.communicate(timeout=90)
    if sig == signal.SIGINT:   # Ctrl-C: stops after the batches in flight, says so, exit 130
        assert driver.returncode == 130 and b"Traceback" not in stderr, stderr.decode()[-2000:]
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert summary["status"] == "failed" and summary["error"].startswith("interrupted (Ctrl-C)")
        assert 0 < summary["recordsLoaded"] < ROWS
    partial = len(crm.dest_rows(dst))
    assert 0 < partial < ROWS
    rerun = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert crm.dest_rows(dst) == crm.source_rows(src)
    failed = [r.event.error for r in EventLog(log).read(f"pipeline:{name}") if isinstance(r.event, ev.RunFailed)]
    assert len(failed) == 1 and failed[0].startswith("interrupted")     # by the rerun, or by Ctrl-C
    cursors = committed_cursors(log, f"pipeline:{name}")       # across both runs
    assert cursors == sorted(cursors, key=lambda p: p["cursor"])


def test_a_killed_supervisor_is_restarted_and_resumes_from_the_log(ray_local, tmp_path, uniq):
    src, dst, log = (f"sqlite:///{tmp_path}/{n}.db" for n in ("crm", "wh", "events"))
    crm.create(src, ROWS)
    name = f"sup-{uniq}"
    pipeline = Pipeline.from_dict(crm.spec(name, src, dst, mode="insert", batch_size=200, maxInFlight=2))
    stream = f"pipeline:{name}"

    def kill_supervisor():
        deadline = time.time() + 60
        while len(committed_cursors(log, stream)) < 3 and time.time() < deadline:
            time.sleep(0.02)
        ray.kill(ray.get_actor(f"etl:{name}", namespace="etl_actors"), no_restart=False)

    killer = threading.Thread(target=kill_supervisor, daemon=True)
    killer.start()
    result = pipeline.run(log=log)
    killer.join()
    assert result["status"] == "success" and 0 < result["recordsExtracted"] < ROWS
    assert crm.dest_rows(dst) == crm.source_rows(src)
    runs = [r.event for r in EventLog(log).read(stream) if isinstance(r.event, (ev.RunFailed, ev.RunSucceeded))]
    assert [type(e).__name__ for e in runs] == ["RunFailed", "RunSucceeded"]
    cursors = committed_cursors(log, stream)
    assert cursors == sorted(cursors, key=lambda p: p["cursor"])


def test_chaos_random_children_killed_at_random_moments_lose_and_double_nothing(ray_local, tmp_path, uniq):
    import random

    rng = random.Random(20261125)
    src, dst, log = (f"sqlite:///{tmp_path}/{n}.db" for n in ("crm", "wh", "events"))
    crm.create(src, ROWS)
    name = f"chaos-{uniq}"
    stream = f"pipeline:{name}"
    pipeline = Pipeline.from_dict(crm.spec(name, src, dst, mode="insert", batch_size=50, maxInFlight=3,
                                           parallelism=2))
    victims = ["loader", "extractor:0", "transformer:0", "transformer:1"]
    kills = []

    def chaos():
        deadline = time.time() + 60
        while len(kills) < 4 and time.time() < deadline:
            time.sleep(rng.uniform(0.05, 0.4))
            if not committed_cursors(log, stream):
                continue
            victim = rng.choice(victims)
            try:
                ray.kill(ray.get_actor(f"etl:{name}:{victim}", namespace="etl_actors"))
                kills.append(victim)
            except ValueError:
                pass

    killer = threading.Thread(target=chaos, daemon=True)
    killer.start()
    with pipeline:
        result = pipeline.run(log=log)
    killer.join()
    assert result["status"] == "success", result.get("error")
    assert crm.dest_rows(dst) == crm.source_rows(src)
    restarted = [r.event.child for r in EventLog(log).read(stream) if isinstance(r.event, ev.ChildRestarted)]
    assert restarted, f"no kill landed during the run (kills: {kills})"
    cursors = committed_cursors(log, stream)
    assert cursors == sorted(cursors, key=lambda p: p["cursor"])
