"""Failure alerts: what counts, when an alert is raised and resolved, replay, delivery
to a real webhook, and the listing users read."""
import pickle
import socket
import uuid
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from hypothesis import given, settings, strategies as st

from etl_actors import alerts
from etl_actors import events as ev
from etl_actors.errors import SpecError
from etl_actors.eventlog import EventLog
from etl_actors.spec import Section

P = "orders"


def rejected(n: int, at: float) -> ev.RecordsRejected:
    return ev.RecordsRejected("r1", f"b{at}", "load", n, "bad row", at=at)


def fold(state, options, *events):
    for event in events:
        state = alerts.evolve(state, event, options)
    return state


def step(state, options, now, *events, pipeline=P):
    """Fold ``events``, then fold and return what ``decide`` says at ``now``."""
    state = fold(state, options, *events)
    decision = alerts.decide(state, pipeline, now, options)
    if decision is not None:
        state = alerts.evolve(state, decision, options)
    return state, decision


# --- what counts ------------------------------------------------------------------

def test_failures_counted_per_event_type():
    checkpoint = ev.CheckpointCommitted("r1", 3, {"t:0": 10}, rejected=4, late=2, loaded=50)
    assert alerts.failures(rejected(7, 1.0)) == 7
    assert alerts.failures(ev.PartitionFailed("r1", "a.csv", "not CSV")) == 1
    assert alerts.failures(ev.RunFailed("r1", "sink gone")) == 1
    assert alerts.failures(checkpoint) == 6
    assert alerts.failures(ev.RecordedEvent(1, "pipeline:orders", 1, checkpoint, 0.0)) == 6
    # failed loads are counted by their RecordsRejected, not again by BatchLoaded
    assert alerts.failures(ev.BatchLoaded("r1", "b1", "p", 10, rows=5, failed=5)) == 0
    assert alerts.failures(ev.BatchExtracted("r1", "b1", "p", 10, 100, rejected=3)) == 0
    assert alerts.failures(ev.RunSucceeded("r1", {})) == 0


# --- raise and resolve ----------------------------------------------------------------

def test_raised_once_per_episode_past_the_threshold():
    options = alerts.AlertOptions(threshold=100)
    state, decision = step(alerts.AlertState(), options, 20.0, rejected(60, 10.0), rejected(40, 20.0))
    assert decision is None                                  # 100 is not more than 100
    state, decision = step(state, options, 30.0, ev.RunFailed("r1", "boom", at=30.0))
    assert isinstance(decision, ev.AlertRaised)
    assert (decision.alert_id, decision.count, decision.severity) == ("orders#1", 101, "high")
    assert decision.message == "Pipeline orders has 101 failures in the last hour (threshold 100)"
    state, decision = step(state, options, 40.0, rejected(500, 40.0))
    assert decision is None and state.open.alert_id == "orders#1" and state.raised == 1


def test_resolved_when_the_window_slides_past_and_a_second_episode_gets_a_new_id():
    #   t:       0    10         59   61         65
    #   fails:   2    2                          4
    #   window 60 s, threshold 3:
    #            .    RAISE(4)   -    RESOLVE(2) RAISE #2 (6: t=10 is still inside [5, 65])
    options = alerts.AlertOptions(threshold=3, window_s=60)
    state, decision = step(alerts.AlertState(), options, 0.0, rejected(2, 0.0))
    assert decision is None
    state, decision = step(state, options, 10.0, rejected(2, 10.0))
    assert decision.alert_id == "orders#1" and decision.count == 4
    assert "in the last minute (threshold 3)" in decision.message
    state, decision = step(state, options, 59.0)
    assert decision is None
    state, decision = step(state, options, 61.0)
    assert isinstance(decision, ev.AlertResolved)
    assert (decision.alert_id, decision.count) == ("orders#1", 2) and state.open is None
    state, decision = step(state, options, 65.0, rejected(4, 65.0))
    assert isinstance(decision, ev.AlertRaised) and decision.alert_id == "orders#2" and decision.count == 6


def test_open_alert_stays_open_at_exactly_the_threshold():
    options = alerts.AlertOptions(threshold=3, window_s=60)
    state, raised = step(alerts.AlertState(), options, 5.0, rejected(1, 0.0), rejected(3, 5.0))
    assert raised.count == 4
    assert alerts.decide(state, P, 60.5, options) is None        # 3 left: not below 3
    assert alerts.decide(state, P, 65.5, options).count == 0


def test_threshold_zero_raises_on_any_failure_and_resolves_when_none_is_left():
    options = alerts.AlertOptions(threshold=0, window_s=10)
    state, raised = step(alerts.AlertState(), options, 1.0, ev.PartitionFailed("r1", "a.csv", "bad", at=1.0))
    assert raised.alert_id == "orders#1" and raised.count == 1
    assert alerts.decide(state, P, 11.0, options) is None
    assert isinstance(alerts.decide(state, P, 11.5, options), ev.AlertResolved)


def test_window_keeps_only_recent_failures_even_out_of_order():
    options = alerts.AlertOptions(threshold=1000, window_s=60)
    state = fold(alerts.AlertState(), options, *(rejected(1, float(t)) for t in range(5000)))
    assert len(state.recent) == 61 and state.count(4999.0, 60) == 61
    state = fold(state, options, rejected(5, 4990.5), rejected(7, 4900.0))   # stamped late; the second is too old
    assert state.count(4999.0, 60) == 66 and state.count(5050.0, 60) == 15


def test_state_after_restart_is_the_state_folded_live(tmp_path):
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    stream, options = ev.pipeline_stream(P), alerts.AlertOptions(threshold=5, window_s=100)
    live, version = alerts.AlertState(), 0
    timeline = [rejected(3, 0.0), ev.RunFailed("r1", "x", at=5.0), rejected(4, 10.0),
                ev.CheckpointCommitted("r2", 1, {}, rejected=2, at=150.0), rejected(9, 200.0)]
    for event in timeline:
        version = log.append(stream, [event], version)
        live, decision = step(live, options, event.at, event)
        if decision is not None:
            version = log.append(stream, [decision], version)
    decided = [e.event for e in log.read(stream) if isinstance(e.event, (ev.AlertRaised, ev.AlertResolved))]
    assert [(type(e).__name__, e.alert_id) for e in decided] == [
        ("AlertRaised", "orders#1"), ("AlertResolved", "orders#1"), ("AlertRaised", "orders#2")]

    replayed = alerts.project(EventLog(f"sqlite:///{tmp_path}/events.db").read(stream), P, options)
    assert replayed == live
    assert replayed.open.alert_id == "orders#2" and replayed.count(200.0, 100) == 11
    assert alerts.decide(replayed, P, 301.0, options).alert_id == "orders#2"     # resolves the same alert


@settings(max_examples=150, deadline=None)
@given(threshold=st.integers(0, 8), window=st.integers(5, 40),
       steps=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 5)), max_size=60))
def test_alerts_follow_the_decision_rule_on_any_timeline(threshold, window, steps):
    options = alerts.AlertOptions(threshold=threshold, window_s=window)
    state, log, seen, now, is_open = alerts.AlertState(), [], [], 0, False
    for dt, n in steps:
        now += dt
        events = [rejected(n, now)] if n else []
        seen += [(now, n)] if n else []
        log += events
        state, decision = step(state, options, now, *events)
        count = sum(k for at, k in seen if now - window <= at <= now)
        expected_open = count > threshold or (is_open and count >= max(threshold, 1))
        assert (state.open is not None) == expected_open
        if decision is not None:
            assert decision.count == count
            assert isinstance(decision, ev.AlertRaised) != is_open      # raised only when closed, resolved only when open
            log.append(decision)
        is_open = expected_open
    decisions = [e for e in log if isinstance(e, (ev.AlertRaised, ev.AlertResolved))]
    for i, decision in enumerate(decisions):                          # raised #1, resolved #1, raised #2, ...
        assert isinstance(decision, ev.AlertRaised) == (i % 2 == 0)
        assert decision.alert_id == f"{P}#{i // 2 + 1}"
    assert alerts.project(log, P, options) == state


# --- delivery ----------------------------------------------------------------------------

@asynccontextmanager
async def webhook_server(*statuses, echo_url: bool = False):
    """A POST receiver on 127.0.0.1 answering ``statuses`` in turn (then 200); yields
    its URL and the requests it received."""
    received, answers = [], list(statuses)

    async def hook(request):
        received.append({"json": await request.json(), "key": request.headers.get("Idempotency-Key")})
        status = answers.pop(0) if answers else 200
        text = f"refused {request.url}" if echo_url else "ok"
        return web.Response(status=status, text=text, headers={"Retry-After": "0"} if status >= 500 else {})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RAISED = ev.AlertRaised(pipeline=P, alert_id="orders#3", count=120, threshold=100, window_s=3600.0,
                        message="Pipeline orders has 120 failures in the last hour (threshold 100)", at=1_700_000_000.0)


@pytest.mark.asyncio
async def test_webhook_receives_the_alert_json_and_idempotency_key():
    async with webhook_server() as (url, received):
        delivered = await alerts.deliver(url, RAISED)
        resolved = ev.AlertResolved(pipeline=P, alert_id="orders#3", count=40, at=1_700_003_000.0)
        delivered_resolved = await alerts.deliver(url, resolved, raised=RAISED)
    assert (delivered.status, delivered.attempts, delivered.error, delivered.kind) == (200, 1, "", "raised")
    assert received[0]["key"] == "orders#3:raised" and received[1]["key"] == "orders#3:resolved"
    assert received[0]["json"] == {
        "alertId": "orders#3", "pipeline": P, "kind": "raised", "severity": "high", "count": 120,
        "threshold": 100, "windowSeconds": 3600.0, "message": RAISED.message, "at": "2023-11-14T22:13:20+00:00"}
    assert received[1]["json"]["kind"] == "resolved" and received[1]["json"]["count"] == 40
    assert received[1]["json"]["threshold"] == 100
    assert delivered_resolved.status == 200 and delivered_resolved.kind == "resolved"


@pytest.mark.asyncio
async def test_webhook_500_then_200_is_retried_with_the_same_key():
    async with webhook_server(500) as (url, received):
        delivered = await alerts.deliver(url, RAISED, max_retries=2)
    assert delivered.status == 200 and delivered.error == ""
    assert [r["key"] for r in received] == ["orders#3:raised", "orders#3:raised"]


@pytest.mark.asyncio
async def test_dead_webhook_gives_an_error_and_no_exception():
    delivered = await alerts.deliver(f"http://127.0.0.1:{closed_port()}/hook", RAISED, max_retries=1, timeout=2)
    assert delivered.status is None and delivered.attempts == 2
    assert "connection failed" in delivered.error


@pytest.mark.asyncio
async def test_webhook_secret_never_shows_in_what_deliver_returns():
    secret = f"tok-{uuid.uuid4().hex}"
    async with webhook_server(401, echo_url=True) as (url, received):
        refused = await alerts.deliver(f"{url}?token={secret}", RAISED)
    dead = await alerts.deliver(f"http://alerts:{secret}@127.0.0.1:{closed_port()}/hook?token={secret}", RAISED,
                                max_retries=0)
    assert len(received) == 1 and refused.status == 401 and "401" in refused.error
    assert "token=***" in refused.webhook and "alerts:***@" in dead.webhook and dead.error
    for delivered in (refused, dead):
        assert secret not in repr(delivered)
        assert secret not in repr(ev.redacted(delivered))


# --- the listing ----------------------------------------------------------------------------

def test_listing_and_table_of_two_pipelines(tmp_path):
    log = EventLog(f"sqlite:///{tmp_path}/events.db")
    options = alerts.AlertOptions(threshold=2, window_s=60)
    orders = [rejected(3, 100.0),
              ev.AlertRaised(P, "orders#1", 3, 2, 60.0, "Pipeline orders has 3 failures", at=100.0),
              ev.AlertDelivered("orders#1", "raised", "http://hook/x", 200, 1, at=101.0),
              ev.AlertResolved(P, "orders#1", 0, at=170.0),
              ev.AlertDelivered("orders#1", "resolved", "http://hook/x", None, 6, "connection failed", at=171.0)]
    billing = [ev.RunFailed("r9", "x", at=190.0), rejected(4, 200.0),
               ev.AlertRaised("billing", "billing#1", 5, 2, 60.0, "Pipeline billing has 5 failures", at=200.0)]
    log.append(ev.pipeline_stream(P), orders, 0)
    log.append(ev.pipeline_stream("billing"), billing, 0)
    log.append(ev.pipeline_stream("quiet"), [ev.RunSucceeded("r3", {}, at=50.0)], 0)

    rows = alerts.listing(log, now=220.0, options_of=lambda name: options)
    assert [(r["alertId"], r["state"], r["failuresInWindow"]) for r in rows] == [
        ("billing#1", "open", 5), ("orders#1", "resolved", 0)]
    assert rows[0]["delivered"] is None and rows[0]["resolvedAt"] is None
    assert rows[1]["delivered"] == {"status": None, "attempts": 6, "error": "connection failed"}
    assert rows[1]["raisedAt"] == "1970-01-01T00:01:40+00:00" and rows[1]["resolvedAt"] == "1970-01-01T00:02:50+00:00"
    assert [r["alertId"] for r in alerts.listing(log, "orders", now=220.0)] == ["orders#1"]
    assert alerts.listing(log, "quiet") == []

    lines = alerts.format_table(rows).splitlines()
    assert len(lines) == 3 and lines[0].startswith("ALERT")
    assert lines[1].startswith("billing#1") and "open" in lines[1] and "Pipeline billing has 5 failures" in lines[1]
    assert "resolved" in lines[2] and "failed (no answer, 6 attempts)" in lines[2]
    assert alerts.format_table([]) == "no alerts"


# --- the spec ---------------------------------------------------------------------------------

def test_options_from_spec_with_defaults_and_a_secret_webhook(monkeypatch):
    secret = f"hook-{uuid.uuid4().hex}"
    monkeypatch.setenv("ALERT_HOOK", f"https://hooks.example.com/etl?token={secret}")
    options = alerts.AlertOptions.from_spec(Section({"threshold": 10, "webhook": "${ALERT_HOOK}",
                                                     "window": "30m"}, "alerts"))
    assert (options.threshold, options.window_s) == (10, 1800.0)
    assert options.webhook.endswith(secret)                   # the real URL, to send to
    assert secret not in repr(options) and secret not in str(options.describe())
    assert pickle.loads(pickle.dumps(options)) == options       # it travels to the supervisor actor
    assert alerts.AlertOptions.from_spec(Section({}, "alerts")) == alerts.AlertOptions(100, None, 3600.0)


@pytest.mark.parametrize("spec, path, words", [
    ({"threshold": "many"}, "alerts.threshold", "expected an integer"),
    ({"threshold": -1}, "alerts.threshold", "expected 0 or more"),
    ({"window": "soon"}, "alerts.window", "expected a duration"),
    ({"window": 0}, "alerts.window", "more than 0 seconds"),
    ({"webhook": "ftp://x/y"}, "alerts.webhook", "http:// or https://"),
    ({"webhook": "${NO_SUCH_ALERT_HOOK}"}, "alerts.webhook", "NO_SUCH_ALERT_HOOK is not set"),
    ({"treshold": 5}, "alerts.treshold", "did you mean 'threshold'"),
])
def test_options_from_spec_errors_name_their_path(spec, path, words):
    with pytest.raises(SpecError) as caught:
        alerts.AlertOptions.from_spec(Section(spec, "alerts"))
    assert caught.value.path == path and words in str(caught.value)
