"""The same protocol on a real local Ray: actors, object refs, killed children."""
import threading
import urllib.request
import time

import pytest
import ray

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.pipeline import run_on_ray
from etl_actors.spec import PipelineSpec, RuntimeOptions
from plugins import DirSink, ListSource

pytestmark = pytest.mark.ray

ROWS = tuple({"id": i, "v": f"r{i}"} for i in range(40))


def make_spec(name, out, batch_size=2, max_in_flight=2):
    return PipelineSpec(name=name, source=ListSource(parts=(("a", ROWS),), batch_size=batch_size),
                        transformations=(), destination=DirSink(path=str(out)),
                        runtime=RuntimeOptions(parallelism=1, max_in_flight=max_in_flight), digest="d")


def test_runs_on_ray_and_loads_every_row(ray_local, tmp_path, uniq):
    spec = make_spec(f"ray-{uniq}", tmp_path / "out")
    result = run_on_ray(spec, f"sqlite:///{tmp_path}/events.db")
    assert result["status"] == "success"
    assert sorted(r["id"] for r in spec.destination.rows()) == list(range(40))
    assert result["watermark"] == {"a": {"rows": 40, "done": True}}


def test_the_supervisors_log_in_the_ray_session_says_how_the_run_went(ray_local, tmp_path, uniq):
    """What the dashboard's Logs view shows for the supervisor actor: its start and end."""
    from pathlib import Path

    name = f"logs-{uniq}"
    result = run_on_ray(make_spec(name, tmp_path / "out"), f"sqlite:///{tmp_path}/events.db")
    lines = []
    deadline = time.time() + 10   # worker output reaches its file asynchronously
    while time.time() < deadline and not any("run succeeded" in line for line in lines):
        logs = Path(ray_local.address_info["session_dir"]) / "logs"
        lines = [line for f in logs.glob("worker-*.err") for line in f.read_text(errors="replace").splitlines()
                 if f"pipeline='{name}'" in line]
        time.sleep(0.2)
    assert any("event='run started'" in line and f"run_id='{result['runId']}'" in line for line in lines), lines
    assert any("event='run succeeded'" in line and "recordsLoaded=40" in line for line in lines), lines


def test_killed_loader_is_recreated_and_the_run_completes(ray_local, tmp_path, uniq):
    name = f"kill-{uniq}"
    spec = make_spec(name, tmp_path / "out", batch_size=1, max_in_flight=1)
    log_url = f"sqlite:///{tmp_path}/events.db"

    def kill_loader_once_running():
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if any(isinstance(r.event, ev.BatchLoaded) for r in EventLog(log_url).read(spec.stream)):
                    ray.kill(ray.get_actor(f"etl:{name}:loader", namespace="etl_actors"))
                    return
            except ValueError:
                pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_loader_once_running)
    killer.start()
    result = run_on_ray(spec, log_url)
    killer.join()
    assert result["status"] == "success"
    assert sorted(r["id"] for r in spec.destination.rows()) == list(range(40))
    restarted = [r.event for r in EventLog(log_url).read(spec.stream) if isinstance(r.event, ev.ChildRestarted)]
    assert [e.child for e in restarted] == ["loader#0"]


def test_records_and_in_flight_batches_are_exported_to_prometheus_per_pipeline(ray_local, tmp_path, uniq):
    name = f"metrics-{uniq}"
    result = run_on_ray(make_spec(name, tmp_path / "out"), f"sqlite:///{tmp_path}/events.db")
    wanted = {("ray_etl_records_total", "loaded"): 40.0, ("ray_etl_records_total", "extracted"): 40.0,
              ("ray_etl_bytes_extracted_total", None): float(result["bytesProcessed"]),
              ("ray_etl_batches_in_flight", None): 0.0}
    deadline, found = time.time() + 30, {}
    while time.time() < deadline and found != wanted:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ray_local.metrics_port}/metrics").read().decode()
        found = {key: value for key, value in metric_values(text, name).items() if key in wanted}
        time.sleep(0.5)
    assert found == wanted and result["bytesProcessed"] > 0


def metric_values(text: str, pipeline: str) -> dict:
    """``{(metric, stage or None): value}`` of one pipeline's lines in a Prometheus text page."""
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or f'pipeline="{pipeline}"' not in line:
            continue
        head, _, value = line.rpartition(" ")
        metric = head.split("{", 1)[0]
        stage = head.split('stage="', 1)[1].split('"', 1)[0] if 'stage="' in head else None
        values[(metric, stage)] = float(value)
    return values


def test_a_second_supervisor_of_a_running_pipeline_is_refused_naming_the_run(ray_local, tmp_path, uniq):
    from etl_actors.errors import LeaseHeld
    from etl_actors.transforms.function import FunctionStep

    spec = make_spec(f"twice-{uniq}", tmp_path / "out")
    spec = PipelineSpec(name=spec.name, source=spec.source, destination=spec.destination, runtime=spec.runtime,
                        transformations=(FunctionStep(id="slow", handler="plugins:slow_identity"),), digest="d")
    log = f"sqlite:///{tmp_path}/events.db"
    outcome = {}
    first = threading.Thread(target=lambda: outcome.update(run_on_ray(spec, log)))
    first.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any(isinstance(r.event, ev.BatchLoaded) for r in EventLog(log).read(spec.stream)):
        time.sleep(0.1)
    with pytest.raises(LeaseHeld) as refused:
        run_on_ray(spec, log)
    first.join(timeout=120)
    assert f"is already running on this Ray cluster: run {outcome['runId']} on " in str(refused.value)
    assert outcome["status"] == "success" and sorted(r["id"] for r in spec.destination.rows()) == list(range(40))
