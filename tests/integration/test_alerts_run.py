"""Failures past the spec's alerts.threshold raise one alert per episode, posted to the
webhook (a real aiohttp server) with the alert id as idempotency key; `etl-actors alerts`
lists it."""
import json
import subprocess
import sys

from apiserver import ApiServer

from etl_actors import Pipeline
from etl_actors.eventlog import EventLog
from etl_actors.events import AlertDelivered, AlertRaised, pipeline_stream


def _spec(tmp_path, name, webhook, threshold):
    return {"name": name, "alerts": {"threshold": threshold, "webhook": webhook},
            "pipeline": {
                "source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 50,
                           "columns": {"signup": "string"}},
                "transformations": [{"id": "normalize", "type": "map", "keep": True,
                                     "mappings": {"signup": {"source": "signup", "converter": "date"}}}],
                "destination": {"type": "file", "path": str(tmp_path / "out"), "format": "parquet"}}}


def test_rejections_past_the_threshold_raise_one_alert_posted_to_the_webhook(tmp_path, uniq):
    lines = ["order_id,signup"] + [f"{i},{'never' if i % 4 == 0 else '2024-03-01'}" for i in range(1, 401)]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    name, log = f"alerts-{uniq}", f"sqlite:///{tmp_path}/events.db"
    with ApiServer() as server:
        webhook = f"{server.url}/receive/alerts?token=s3cr3t-{uniq}"
        result = Pipeline.from_dict(_spec(tmp_path, name, webhook, 30)).run(log=log, runtime="local")
        assert (result["status"], result["recordsRejected"]) == ("success", 100)
        received = [r for r in server.received if r.path == "/receive/alerts"]
    assert len(received) == 1, received                 # once per episode, not once per batch past it
    body, headers = received[0].records[0], received[0].headers
    assert (body["alertId"], body["kind"], body["pipeline"], body["threshold"]) == (f"{name}#1", "raised", name, 30)
    assert body["count"] > 30
    assert headers["Idempotency-Key"] == f"{name}#1:raised"
    events = [r.event for r in EventLog(log).read(pipeline_stream(name))]
    raised = [e for e in events if isinstance(e, AlertRaised)]
    delivered = [e for e in events if isinstance(e, AlertDelivered)]
    assert len(raised) == 1 and [d.status for d in delivered] == [200]
    assert f"s3cr3t-{uniq}" not in json.dumps([d.webhook for d in delivered])

    out = subprocess.run([sys.executable, "-m", "etl_actors", "alerts", name, "--log", log, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["alertId"], r["state"]) for r in rows] == [(f"{name}#1", "open")]
    assert f"s3cr3t-{uniq}" not in out.stdout


def test_failures_under_the_threshold_raise_nothing(tmp_path, uniq):
    lines = ["order_id,signup"] + [f"{i},{'never' if i % 40 == 0 else '2024-03-01'}" for i in range(1, 401)]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    name, log = f"alerts-{uniq}", f"sqlite:///{tmp_path}/events.db"
    with ApiServer() as server:
        result = Pipeline.from_dict(_spec(tmp_path, name, f"{server.url}/receive/alerts", 100)).run(
            log=log, runtime="local")
        assert result["recordsRejected"] == 10 and server.received == []
