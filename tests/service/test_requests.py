"""Requests run on Ray: delivered as the seed delivers them, charged by the seed's
pricing rules to the cent, followed live, seen by their customer only, and served the
same by a server restarted on the log."""
import json
from datetime import datetime, timezone

import pytest

from etl_actors.pricing import cents, quote

from .conftest import PER_GB, PER_RECORD, create, finished, orders_service, request, rows_in, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.ray]


def charge_for(pricing: dict, outputs: dict) -> str:
    usage = {"bytes": outputs["bytesProcessed"], "records": outputs["recordsProcessed"]}
    return str(cents(quote(pricing, usage)))


async def test_a_request_runs_is_delivered_and_charged_to_its_customer_only(tmp_path, log_url, keys, ray_local):
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    async with serving(log_url) as api:
        admin, acme, globex = api.as_(keys["admin"]), api.as_(keys["acme"]), api.as_(keys["globex"])
        service_id = await create(admin, orders_service(tmp_path, rows=2000, pricing=PER_GB))
        request_id = await request(acme, service_id)
        view = await finished(acme, request_id)

        assert (view["status"], view["customerId"], view["serviceId"], view["trigger"], view["error"]) == \
            ("success", "acme", service_id, "api", None)
        outputs = view["outputs"]
        assert outputs["success"] is True and outputs["recordsProcessed"] == rows_in(tmp_path) == 2000
        assert outputs["bytesProcessed"] > 0 and outputs["duration"] >= 0
        assert [s["phase"] for s in outputs["steps"]] == ["extract", "transform", "load"]
        assert outputs["steps"][2] == {"phase": "load", "success": True, "loaded": 2000, "errors": 0}
        assert view["progress"]["percent"] == 100.0 and view["progress"]["records"] == 2000
        assert view["charge"] == {"amount": charge_for(PER_GB, outputs), "currency": "USD"}
        assert view["charge"]["amount"] == "0.10"          # a few KB: the seed's minimum charge applies

        async with acme.get("/customers/acme/charges") as response:
            charges = (await response.json())["charges"]
        assert [(c["requestId"], c["serviceId"], c["amount"]) for c in charges] == [(request_id, service_id, "0.10")]
        async with acme.get("/customers/acme/invoice", params={"period": month}) as response:
            invoice = await response.json()
        assert (invoice["customerId"], invoice["period"], invoice["total"]) == ("acme", month, "0.10")
        assert [line["requestId"] for line in invoice["lines"]] == [request_id]

        async with globex.get(f"/requests/{request_id}") as response:
            assert response.status == 404
            missing = await response.json()
        async with globex.get("/requests/req_0000000000000000") as response:
            assert response.status == 404 and await response.json() == missing
        async with globex.get("/customers/globex/charges") as response:
            assert (await response.json())["charges"] == []
        for path in ("/customers/acme/charges", f"/customers/acme/invoice?period={month}"):
            async with globex.get(path) as response:
                assert response.status == 404, path
        async with globex.get("/requests") as response:
            assert (await response.json())["requests"] == []
        async with acme.get("/requests", params={"status": "success"}) as response:
            assert [r["requestId"] for r in (await response.json())["requests"]] == [request_id]
        async with admin.get(f"/services/{service_id}") as response:
            pipeline = (await response.json())["pipeline"]
        async with admin.get(f"/pipelines/{pipeline}/runs") as response:
            runs = (await response.json())["runs"]
        async with acme.get(f"/pipelines/{pipeline}/runs") as response:
            assert [r["runId"] for r in (await response.json())["runs"]] == [runs[0]["runId"]]
        async with globex.get(f"/pipelines/{pipeline}/runs") as response:
            assert response.status == 404
        assert [(r["status"], r["recordsLoaded"], r["trigger"]) for r in runs] == [("success", 2000, "api")]


async def test_a_per_record_price_is_charged_per_record_with_the_customer_named_by_an_admin(
        tmp_path, log_url, keys, ray_local):
    async with serving(log_url) as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        service_id = await create(admin, orders_service(tmp_path, rows=1500, pricing=PER_RECORD))
        async with acme.post(f"/services/{service_id}/requests", json={"customerId": "globex"}) as response:
            assert response.status == 403
        request_id = await request(admin, service_id, {"customerId": "acme"})
        view = await finished(admin, request_id)
        assert view["outputs"]["recordsProcessed"] == rows_in(tmp_path) == 1500
        assert view["charge"]["amount"] == charge_for(PER_RECORD, view["outputs"]) == "1.50"
        async with acme.get(f"/requests/{request_id}") as response:
            assert (await response.json())["charge"] == {"amount": "1.50", "currency": "USD"}


async def test_the_event_stream_follows_progress_to_the_final_view(tmp_path, log_url, keys, ray_local):
    async with serving(log_url) as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        body = orders_service(tmp_path, rows=5000, pricing=PER_RECORD, batch_size=200)
        body["pipeline"]["transformations"] = [   # 25 batches of 0.2 s each: progress seen moving
            {"id": "pause", "type": "function", "handler": "service.slow_steps:pause"}]
        service_id = await create(admin, body)
        request_id = await request(acme, service_id)
        views = []
        async with acme.get(f"/requests/{request_id}/events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                if line.startswith(b"data: "):
                    views.append(json.loads(line[len(b"data: "):]))
        async with acme.get(f"/requests/{request_id}") as response:
            final = await response.json()
    assert views[-1] == final and final["status"] == "success" and final["charge"]["amount"] == "5.00"
    assert all(v["status"] in ("queued", "running") for v in views[:-1])
    records = [v["progress"]["records"] for v in views]
    assert records == sorted(records) and records[-1] == 5000
    assert len({r for r in records}) >= 3, records     # seen moving, not just before and after
    assert views == [v for i, v in enumerate(views) if i == 0 or v != views[i - 1]]


async def test_a_restarted_server_serves_the_same_requests_and_charges(tmp_path, log_url, keys, ray_local):
    async with serving(log_url) as api:
        admin = api.as_(keys["admin"])
        service_id = await create(admin, orders_service(tmp_path, rows=1000, pricing=PER_RECORD))
        request_id = await request(admin, service_id, {"customerId": "acme"})
        before = await finished(admin, request_id)
        async with admin.get("/customers/acme/charges") as response:
            charges = await response.json()
    async with serving(log_url) as api:
        admin = api.as_(keys["admin"])
        async with admin.get(f"/requests/{request_id}") as response:
            assert await response.json() == before
        async with admin.get("/customers/acme/charges") as response:
            assert await response.json() == charges
        async with admin.get(f"/services/{service_id}") as response:
            assert response.status == 200
        async with admin.post(f"/requests/{request_id}/stop") as response:
            assert response.status == 409          # a batch request: nothing runs until stopped
    assert before["charge"]["amount"] == "1.00"

