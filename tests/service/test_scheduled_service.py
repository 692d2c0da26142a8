"""A service created over HTTP with a ``schedule`` is fired by the scheduler actor (on
the session's Ray, told a minute has passed instead of waiting for it): its request has
trigger ``schedule``, runs on Ray, is charged to the service's ``customerId`` by the
seed's pricing, and another customer sees none of it."""
import time

import pytest
import ray

from etl_actors import pricing
from etl_actors.eventlog import EventLog
from etl_actors.scheduler_actor import ensure_scheduler

from .conftest import PER_RECORD, create, finished, orders_service, rows_in, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.ray]


async def get(http, path: str, status: int = 200) -> dict:
    async with http.get(path) as response:
        assert response.status == status, (path, await response.text())
        return await response.json()


async def test_a_service_with_a_schedule_runs_on_schedule_and_is_charged_to_its_customer(
        tmp_path, log_url, keys, ray_local):
    body = {**orders_service(tmp_path, rows=1200, pricing=PER_RECORD, title="Nightly orders"),
            "schedule": {"type": "cron", "expression": "* * * * *", "timezone": "UTC"}, "customerId": "acme"}
    actor = None
    async with serving(log_url) as api:
        admin, acme, globex = api.as_(keys["admin"]), api.as_(keys["acme"]), api.as_(keys["globex"])
        service_id = await create(admin, body)
        pipeline = (await get(admin, f"/services/{service_id}"))["pipeline"]
        try:
            actor = ensure_scheduler(log_url)
            for _ in range(100):   # the actor arms new services as it follows the log (about every second)
                if any(row["pipeline"] == pipeline for row in ray.get(actor.list.remote(), timeout=30)):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the service's schedule was never armed")
            fired = [e for e in ray.get(actor.tick.remote(time.time() + 61), timeout=60)
                     if e.type == "ScheduleFired" and e.pipeline == pipeline]
            assert ray.get(actor.disarm.remote(pipeline), timeout=30)
            assert len(fired) == 1 and fired[0].request_id
            request_id = fired[0].request_id
            view = await finished(acme, request_id, timeout=120)   # run by the actor, on Ray
        finally:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        assert (view["status"], view["trigger"], view["customerId"]) == ("success", "schedule", "acme")
        assert view["outputs"]["recordsProcessed"] == rows_in(tmp_path) == 1200
        expected = pricing.cents(pricing.quote(PER_RECORD, {"records": 1200}))
        assert view["charge"]["amount"] == f"{expected:.2f}" == "1.20"
        charges = (await get(acme, "/customers/acme/charges"))["charges"]
        assert [(c["requestId"], c["amount"]) for c in charges] == [(request_id, "1.20")]
        await get(globex, f"/requests/{request_id}", 404)
        assert (await get(globex, "/customers/globex/charges"))["charges"] == []

    fired_events = [r.event for r in EventLog(log_url).read(f"schedule:{pipeline}") if r.type == "ScheduleFired"]
    assert [e.request_id for e in fired_events] == [request_id]
