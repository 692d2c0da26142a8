"""The server's store resumes from its snapshot: a server started on a log answers as
one that folded the whole log (request views, charges, keys, services, alerts, the
chart), including for requests the snapshot left out, which are read from the log."""
import time

import pytest

from etl_actors.eventlog import EventLog
from etl_actors.projections import snapshots
from etl_actors.service import store as store_module
from etl_actors.service.keys import revoke_key
from etl_actors.service.store import Store

from .conftest import PER_RECORD, create, finished, orders_service, request, serving

pytestmark = [pytest.mark.asyncio]


async def run_requests(log_url, keys, tmp_path, n: int, service_id: str | None = None) -> str:
    async with serving(log_url, runtime="local") as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        service_id = service_id or await create(admin, orders_service(tmp_path, rows=200, pricing=PER_RECORD))
        for _ in range(n):
            await finished(acme, await request(acme, service_id))
    return service_id


def full_fold(log_url) -> Store:
    store = Store(log_url)
    store.sync()          # no resume: every event from the start
    return store


def answers(store: Store, keys: dict, request_ids: list[str], now: float) -> dict:
    return {"views": [store.view(r) for r in request_ids],
            "charges": store.charges("acme"), "invoice": store.invoice("acme", store.charges("acme")[0]["createdAt"][:7]),
            "principals": {name: store.principal(key) for name, key in keys.items()},
            "services": store.service_list(), "alerts": store.alerts(),
            "chart": store.records_per_minute(now=now)}


async def test_a_store_resumed_from_its_snapshot_answers_as_a_full_fold(tmp_path, log_url, keys, monkeypatch):
    service_id = await run_requests(log_url, keys, tmp_path, 3)
    revoke_key(EventLog(log_url), keys["globex"].split("_")[1])

    monkeypatch.setattr(snapshots, "EVERY", 10)
    monkeypatch.setattr(store_module, "KEEP_FINISHED", 2)          # the oldest request is left out
    saver = Store(log_url)
    saver.start()
    saver.stop()
    snapshot = snapshots.latest(EventLog(log_url), store_module.SNAPSHOT)
    assert snapshot is not None and len(snapshot.state["requests"]) == 2
    monkeypatch.setattr(snapshots, "EVERY", 10_000)

    await run_requests(log_url, keys, tmp_path, 1, service_id)     # events after the snapshot
    full = full_fold(log_url)
    request_ids = list(full._order)
    assert len(request_ids) == 4

    resumed = Store(log_url)
    resumed.start()
    resumed.stop()
    assert resumed._resumed_from == snapshot.position and len(resumed.requests) == 3
    now = time.time()
    assert answers(resumed, keys, request_ids, now) == answers(full, keys, request_ids, now)
    assert resumed.principal(keys["globex"]) is None and resumed.view(request_ids[0])["status"] == "success"
    assert resumed.view("req_0000000000000000") is None
