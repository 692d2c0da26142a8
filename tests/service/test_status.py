"""What the status page polls, the dead letters and the runs, each scoped to the caller;
and a stream service, whose request runs until stopped and is charged per hour."""
import asyncio

import pytest

from .conftest import create, finished, request, rows_in, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.ray]

PER_HOUR = {"model": "per-hour", "rate": 2.0, "includes": 1000000, "overage": 0.001, "minimumCharge": 0.5}


def orders_with_bad_rows(tmp_path) -> dict:
    """5,000 orders of which two cannot be read (an int column holding 'lots', a short
    row): dead letters of stage extract."""
    lines = ["order_id,amount"] + [f"{i},{i * 10}" for i in range(1, 5001)]
    lines[4000], lines[4500] = "4000,lots", "4500"
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    return {"name": "Orders with bad rows", "type": "Automation", "subtype": "data-pipeline",
            "connections": {"warehouse": f"sqlite:///{tmp_path}/warehouse.db"},
            "pipeline": {"source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 1000},
                         "destination": {"type": "database", "connection": "warehouse", "table": "orders",
                                         "mode": "upsert", "keyFields": ["order_id"]}},
            "pricing": {"model": "per-record", "rate": 0.001}}


async def get(http, path: str, status: int = 200) -> dict:
    async with http.get(path) as response:
        assert response.status == status, (path, await response.text())
        return await response.json()


async def test_status_and_dead_letters_show_each_caller_its_own(tmp_path, log_url, keys, ray_local):
    async with serving(log_url) as api:
        admin, acme, globex = api.as_(keys["admin"]), api.as_(keys["acme"]), api.as_(keys["globex"])
        service_id = await create(admin, orders_with_bad_rows(tmp_path))
        pipeline = (await get(admin, f"/services/{service_id}"))["pipeline"]
        request_id = await request(acme, service_id)
        view = await finished(acme, request_id)
        assert view["outputs"]["recordsProcessed"] == rows_in(tmp_path) == 4998

        mine = await get(acme, "/status")
        assert [r["requestId"] for r in mine["requests"]] == [request_id] and mine["requests"][0] == view
        assert [s["id"] for s in mine["services"]] == [service_id]
        assert mine["deadLetters"] == {pipeline: 2}
        assert [(c["requestId"], c["amount"]) for c in mine["charges"]] == [(request_id, "5.00")]
        assert len(mine["recordsPerMinute"]) == 30
        assert sum(m["records"] for m in mine["recordsPerMinute"]) == 4998
        assert mine["alerts"] == []                          # 2 failures: below the default threshold

        theirs = await get(globex, "/status")
        assert (theirs["requests"], theirs["deadLetters"], theirs["charges"]) == ([], {}, [])
        assert sum(m["records"] for m in theirs["recordsPerMinute"]) == 0
        assert (await get(admin, "/status"))["deadLetters"] == {pipeline: 2}

        letters = (await get(acme, f"/pipelines/{pipeline}/dlq"))["deadLetters"]
        assert [(d["stage"], d["runId"]) for d in letters] == [("extract", letters[0]["runId"])] * 2
        assert "lots" in " ".join(d["reason"] for d in letters) and "schema" not in letters[0]
        assert (await get(admin, f"/pipelines/{pipeline}/dlq"))["deadLetters"] == letters
        await get(globex, f"/pipelines/{pipeline}/dlq", 404)
        assert (await get(admin, "/alerts"))["alerts"] == []


async def test_a_stream_request_runs_until_stopped_and_is_charged_per_hour(tmp_path, log_url, keys, ray_local,
                                                                          kafka, uniq):
    topic = kafka.create_topic(f"clicks-{uniq}", 1)
    kafka.produce(topic, [{"userId": f"u{i % 3}", "value": i, "timestamp": 1_700_000_000_000 + i} for i in range(50)])
    body = {"name": "Click stream", "type": "Automation", "subtype": "stream-pipeline",
            "stream": {"source": {"type": "kafka", "topic": topic, "consumerGroup": f"g-{uniq}",
                                  "bootstrapServers": kafka.bootstrap, "startFrom": "earliest"},
                       "processors": [{"id": "positive", "type": "filter", "condition": "value >= 0"}],
                       "sinks": [{"type": "database", "connection": f"sqlite:///{tmp_path}/clicks.db",
                                  "table": "clicks"}]},
            "runtime": {"checkpointInterval": "200ms"}, "pricing": PER_HOUR}
    async with serving(log_url) as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        service_id = await create(admin, body)
        assert (await get(admin, f"/services/{service_id}"))["kind"] == "stream"
        request_id = await request(acme, service_id)
        for _ in range(300):
            view = await get(acme, f"/requests/{request_id}")
            if view["status"] == "running" and view["progress"]["records"] == 50:
                break
            await asyncio.sleep(0.1)
        assert (view["status"], view["progress"]["phase"], view["progress"]["records"]) == ("running", "stream", 50)
        async with api.as_(keys["globex"]).post(f"/requests/{request_id}/stop") as response:
            assert response.status == 404
        async with acme.post(f"/requests/{request_id}/stop") as response:
            assert response.status == 202, await response.text()
        view = await finished(acme, request_id)
        charges = (await get(acme, "/customers/acme/charges"))["charges"]
    assert view["status"] == "success" and view["outputs"]["recordsProcessed"] == 50
    hours = [c for c in charges if c["requestId"] == request_id]
    assert hours and all(c["amount"] == "0.50" and "@" in c["chargeId"] for c in hours)   # the hour's minimum
    assert view["charge"]["amount"] == f"{0.5 * len(hours):.2f}"


async def test_an_alert_raised_by_a_service_run_is_shown_to_its_customer_only(tmp_path, log_url, keys):
    body = {**orders_with_bad_rows(tmp_path), "alerts": {"threshold": 1}}
    async with serving(log_url, runtime="local") as api:
        admin, acme, globex = api.as_(keys["admin"]), api.as_(keys["acme"]), api.as_(keys["globex"])
        service_id = await create(admin, body)
        pipeline = (await get(admin, f"/services/{service_id}"))["pipeline"]
        await finished(acme, await request(acme, service_id))
        for _ in range(50):   # the store follows the log every 0.2 s
            alerts = (await get(admin, "/alerts"))["alerts"]
            if alerts:
                break
            await asyncio.sleep(0.1)
        assert [(a["pipeline"], a["state"], a["count"], a["threshold"]) for a in alerts] == [(pipeline, "open", 2, 1)]
        assert (await get(acme, "/alerts"))["alerts"] == alerts
        assert (await get(acme, "/status"))["alerts"] == alerts
        assert (await get(globex, "/alerts"))["alerts"] == []
