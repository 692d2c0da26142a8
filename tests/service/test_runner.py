"""The runner on Ray: a service's requests run one at a time in arrival order however
many arrive at once, and a server started on a log with unfinished requests finishes
them, honestly recorded."""
import asyncio

import pytest

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.pipeline import Pipeline
from etl_actors.service import runner
from etl_actors.service.model import request_stream

from .conftest import PER_RECORD, create, finished, orders_service, rows_in, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.ray]


async def test_twenty_requests_at_once_are_accepted_and_run_one_at_a_time_in_order(
        tmp_path, log_url, keys, ray_local):
    async with serving(log_url) as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        service_id = await create(admin, orders_service(tmp_path, rows=100, pricing=PER_RECORD))

        async def post() -> tuple[int, dict]:
            async with acme.post(f"/services/{service_id}/requests", json={}) as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(post() for _ in range(20)))
        assert [status for status, _ in answers] == [202] * 20
        request_ids = [body["requestId"] for _, body in answers]
        views = [await finished(acme, r, timeout=120) for r in request_ids]
        pipeline = (await (await admin.get(f"/services/{service_id}")).json())["pipeline"]
    assert {(v["status"], v["charge"]["amount"]) for v in views} == {("success", "0.10")}   # the minimum
    assert sum(v["outputs"]["recordsProcessed"] for v in views) == rows_in(tmp_path) == 100   # once, in all

    log = EventLog(log_url)
    ends = [r.event for r in log.read(ev.pipeline_stream(pipeline))
            if isinstance(r.event, (ev.RunStarted, ev.RunSucceeded, ev.RunFailed))]
    assert [type(e).__name__ for e in ends] == ["RunStarted", "RunSucceeded"] * 20      # never overlapping
    started = [e.run_id for e in ends if isinstance(e, ev.RunStarted)]
    accepted = sorted(request_ids, key=lambda r: log.read(request_stream(r))[0].position)
    run_of = {r: runner.load_request(log, r).run_id for r in request_ids}
    assert started == [run_of[r] for r in accepted]                                     # in arrival order
    first = next(v for v in views if v["requestId"] == accepted[0])
    assert first["outputs"]["recordsProcessed"] == 100       # the first run read the file; the others resumed after it


async def test_a_server_started_on_unfinished_requests_finishes_them_without_running_twice(
        tmp_path, log_url, keys, ray_local):
    log = EventLog(log_url)
    service_id = runner.create_service(log, orders_service(tmp_path, rows=300, pricing=PER_RECORD), "acme")
    service = runner.load_service(log, service_id)
    accepted = runner.create_request(log, service_id)                  # the server died on accepting it
    claimed = runner.create_request(log, service_id)                   # ... after claiming it, before its run
    log.append(request_stream(claimed), [ev.RequestStarted(claimed, "lostrun00001", service.pipeline)], 1)
    succeeded = runner.create_request(log, service_id)                 # ... after its run, before the result
    log.append(request_stream(succeeded), [ev.RequestStarted(succeeded, "donerun00001", service.pipeline)], 1)
    with Pipeline(runner.build_spec(service, {})) as pipeline:
        assert pipeline.run(log_url, trigger="api", run_id="donerun00001")["status"] == "success"

    async with serving(log_url) as api:
        admin = api.as_(keys["admin"])
        views = {r: await finished(admin, r) for r in (accepted, claimed, succeeded)}
    assert {(v["status"], v["customerId"]) for v in views.values()} == {("success", "acme")}
    assert views[succeeded]["outputs"]["recordsProcessed"] == 300           # its run's result, recorded
    assert views[succeeded]["charge"]["amount"] == "0.30"
    for late in (accepted, claimed):                                        # new runs from the watermark
        assert (views[late]["outputs"]["recordsProcessed"], views[late]["charge"]["amount"]) == (0, "0.10")

    runs = [r.event.run_id for r in log.read(ev.pipeline_stream(service.pipeline)) if r.type == "RunStarted"]
    assert runs[0] == "donerun00001" and len(runs) == 3
    claims = [r.event.run_id for r in log.read(request_stream(claimed)) if r.type == "RequestStarted"]
    assert claims[0] == "lostrun00001" and claims[1] in runs            # the lost run, then the one that ran
    assert [r.type for r in log.read(request_stream(succeeded))] == \
        ["ServiceRequested", "RequestStarted", "RequestFinished"]


async def test_a_request_its_maker_never_started_is_run_by_the_server(tmp_path, log_url, keys, monkeypatch):
    from etl_actors.service import app as app_module

    monkeypatch.setattr(app_module, "ORPHAN_AFTER_S", 0.5)
    monkeypatch.setattr(app_module, "ORPHAN_CHECK_S", 0.2)
    async with serving(log_url, runtime="local") as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        service_id = await create(admin, orders_service(tmp_path, rows=300, pricing=PER_RECORD))
        # recorded by another process (a scheduler) that died before running it
        request_id = runner.create_request(EventLog(log_url), service_id, "acme", trigger="schedule")
        view = await finished(acme, request_id, timeout=60)
    assert (view["status"], view["trigger"], view["outputs"]["recordsProcessed"]) == ("success", "schedule", 300)
    assert view["charge"]["amount"] == "0.30" and rows_in(tmp_path) == 300
    started = [r for r in EventLog(log_url).read(request_stream(request_id)) if r.type == "RequestStarted"]
    assert len(started) == 1
