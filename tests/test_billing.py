"""Billing from the event log: requests charged once to the cent by the seed's pricing,
stream services per clock hour, invoices per customer and month rounded line by line,
`etl-actors bill`, and a projection resumed from its snapshot billing what a full
replay bills. Logs are real SQLite event logs built from the real events."""
import json
import threading
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest
from hypothesis import given, settings, strategies as st

from etl_actors import cli
from etl_actors import events as ev
from etl_actors.billing import Billing, project, settle
from etl_actors.usage import UsageMeter, split_hours
from etl_actors.eventlog import EventLog
from etl_actors.errors import UsageError
from etl_actors.pricing import GB, cents, quote
from etl_actors.projections import snapshots

MB = 1024 ** 2
INF = float("inf")
# The seed's pricing shapes (JS Infinity read as a float).
CUSTOMER_SYNC = {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1, "additionalCosts": {"enrichment": 0.5}}
STREAM = {"model": "per-hour", "rate": 2.0, "includes": 1000000, "overage": 0.001}
VALIDATOR = {"model": "per-record", "rate": 0.001, "minimumCharge": 0.1}
TIERED_GB = {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1, "tiers": [
    {"min": 0, "max": 10, "rate": 1.0}, {"min": 10, "max": 100, "rate": 0.75},
    {"min": 100, "max": 1000, "rate": 0.5}, {"min": 1000, "max": INF, "rate": 0.25}]}
TENTH_OF_A_CENT = {"model": "per-record", "rate": 0.001}


def at(text: str) -> float:
    """Epoch seconds of a UTC time written ``2026-12-02 10:00:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


T = at("2026-12-02 10:00:00")


class Shop:
    """An event log with services, requests and runs, appended as the service and
    the supervisors append them."""

    def __init__(self, tmp_path):
        self.url = f"sqlite:///{tmp_path}/events.db"
        self.log = EventLog(self.url)

    def append(self, stream: str, *events: ev.Event) -> None:
        self.log.append(stream, list(events), expected_version=self.log.version(stream))

    def service(self, service_id: str, pricing: dict | None, kind: str = "pipeline", customer: str = "") -> None:
        spec = {"name": f"pipe-{service_id}", kind: {}}
        if pricing is not None:
            spec["pricing"] = pricing
        self.append(f"service:{service_id}", ev.ServiceCreated(service_id=service_id, title=service_id.title(),
                                                               spec=spec, kind=kind, customer_id=customer, at=T))

    def request(self, request_id: str, service_id: str, customer: str = "", trigger: str = "api",
                started: float = T) -> None:
        self.append(f"request:{request_id}",
                    ev.ServiceRequested(request_id=request_id, service_id=service_id, customer_id=customer,
                                        trigger=trigger, at=started),
                    ev.RequestStarted(request_id=request_id, run_id=f"run-{request_id}",
                                      pipeline=f"pipe-{service_id}", at=started))

    def usage(self, request_id: str, service_id: str, final: bool = True, when: float = T, **used) -> None:
        self.append(f"pipeline:pipe-{service_id}", ev.UsageRecorded(
            pipeline=f"pipe-{service_id}", run_id=f"run-{request_id}", final=final, at=when, **used))

    def finish(self, request_id: str, status: str = "success", when: float = T + 60) -> None:
        self.append(f"request:{request_id}", ev.RequestFinished(request_id=request_id, run_id=f"run-{request_id}",
                                                                status=status, at=when))

    def batch(self, request_id: str, service_id: str, customer: str, finished: float = T + 60,
              status: str = "success", **used) -> None:
        """A whole batch request: requested, started, its run's usage, finished."""
        self.request(request_id, service_id, customer, started=finished - 60)
        self.usage(request_id, service_id, when=finished - 1, **used)
        self.finish(request_id, status, finished)

    def charge_streams(self) -> list[str]:
        return self.log.streams("charge:")


@pytest.fixture
def shop(tmp_path):
    return Shop(tmp_path)


# --- clock hours ------------------------------------------------------------------------

def test_split_hours_cuts_a_span_at_each_utc_clock_hour():
    checkpoints = [(at("2026-12-02 10:59:59"), 5), (at("2026-12-02 11:00:00"), 7), (at("2026-12-02 12:00:01"), 1)]
    hours = split_hours(at("2026-12-02 10:20:00"), at("2026-12-02 12:00:30.25"), checkpoints)
    assert hours == [{"start": int(at("2026-12-02 10:00:00")), "seconds": 2400.0, "events": 5},
                     {"start": int(at("2026-12-02 11:00:00")), "seconds": 3600.0, "events": 7},
                     {"start": int(at("2026-12-02 12:00:00")), "seconds": 30.25, "events": 1}]


def test_a_span_ending_on_the_hour_does_not_touch_the_next():
    assert split_hours(T - 90, T) == [{"start": int(T) - 3600, "seconds": 90.0, "events": 0}]
    assert split_hours(T, T) == []


@settings(max_examples=300, deadline=None)
@given(start=st.floats(0, 4e9), length=st.floats(0, 5 * 86400),
       events=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 10**6)), max_size=20))
def test_split_hours_adds_up(start, length, events):
    end = start + length
    events_at = [(start + f * length, n) for f, n in events]
    hours = split_hours(start, end, events_at)
    assert abs(sum(h["seconds"] for h in hours) - (round(end, 3) - round(start, 3))) < 1e-6 * (1 + len(hours))
    assert sum(h["events"] for h in hours) == sum(n for _, n in events)
    assert all(isinstance(h["start"], int) and h["start"] % 3600 == 0 for h in hours)
    assert all(0 <= h["seconds"] <= 3600 for h in hours)
    assert [h["start"] for h in hours] == sorted({h["start"] for h in hours})
    assert quote(STREAM, {"hours": hours}) >= 0          # every entry is one pricing accepts


def test_a_meter_records_the_usage_since_the_last_record_then_starts_over():
    meter = UsageMeter("clicks", "r1", since=T - 600)
    meter = meter.add(T - 300, events=40, bytes=4000, records=4).add(T + 5, events=2, bytes=200, records=1)
    assert not meter.hour_passed(T - 1) and meter.hour_passed(T + 5)
    usage = meter.recorded(T + 5)
    assert (usage.bytes, usage.records, usage.final, usage.at) == (4200, 5, False, T + 5)
    assert usage.hours == [{"start": int(T) - 3600, "seconds": 600.0, "events": 40},
                           {"start": int(T), "seconds": 5.0, "events": 2}]
    again = meter.restarted(T + 5)
    assert (again.since, again.bytes, again.events) == (T + 5, 0, ())
    assert not again.hour_passed(T + 3599)


# --- batch requests -------------------------------------------------------------------

def test_a_request_is_charged_what_quote_says_to_the_cent(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.service("validator", VALIDATOR)
    shop.service("tiered", TIERED_GB)
    shop.batch("r1", "sync", "acme", bytes=5 * GB, records=1000, enriched=3000)    # 5.0 + 1.5
    shop.batch("r2", "validator", "acme", records=12_345, finished=T + 120)       # 12.345
    shop.batch("r3", "tiered", "acme", bytes=150 * GB, finished=T + 180)          # 10 + 67.5 + 25
    shop.batch("r4", "sync", "acme", bytes=50 * MB, finished=T + 240)             # the minimum charge

    recorded = settle(shop.log, now=T + 3600)

    assert [(c.charge_id, D(c.amount)) for c in recorded] == [
        ("r1", D("6.5")), ("r2", D("12.345")), ("r3", D("102.5")), ("r4", D("0.1"))]
    assert recorded[0].usage == {"bytes": 5 * GB, "records": 1000, "enrichedRecords": 3000}
    assert D(recorded[0].amount) == quote(CUSTOMER_SYNC, recorded[0].usage)
    charges = project(shop.log).charges("acme")
    assert [(c["requestId"], c["amount"], c["currency"]) for c in charges] == [
        ("r1", "6.50", "USD"), ("r2", "12.35", "USD"), ("r3", "102.50", "USD"), ("r4", "0.10", "USD")]
    assert [c["description"] for c in charges] == [
        "ETL Pipeline - 5.00 GB processed + 3,000 records enriched", "ETL Pipeline - 12,345 records",
        "ETL Pipeline - 150.00 GB processed", "ETL Pipeline - 0.05 GB processed"]
    assert charges[0]["createdAt"] == "2026-12-02T10:01:00Z"
    assert project(shop.log).charge_of("r2") == {"amount": "12.35", "currency": "USD"}
    assert project(shop.log).charge_of("nope") is None


def test_a_failed_request_is_not_charged_and_not_kept(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.batch("r1", "sync", "acme", status="failed", bytes=5 * GB)
    assert settle(shop.log, now=T + 3600) == []
    assert shop.charge_streams() == []
    assert project(shop.log).to_state()["requests"] == {}


def test_a_request_is_charged_only_once_it_succeeded_and_its_usage_is_in(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.request("r1", "sync", "acme")
    assert settle(shop.log, now=T + 3600) == []                 # running
    shop.usage("r1", "sync", bytes=2 * GB)
    assert settle(shop.log, now=T + 3600) == []                 # ran, not delivered yet
    shop.finish("r1")
    assert [D(c.amount) for c in settle(shop.log, now=T + 3600)] == [D(2)]


def test_unpriced_services_and_requests_without_customer_are_never_charged(shop):
    shop.service("free", None)
    shop.service("sync", CUSTOMER_SYNC, customer="owner")
    shop.batch("r1", "free", "acme", bytes=GB)
    shop.batch("r2", "sync", "", bytes=GB)                     # an admin's request for nobody
    assert settle(shop.log, now=T + 3600) == []


def test_a_scheduled_request_is_charged_to_the_services_customer(shop):
    shop.service("sync", CUSTOMER_SYNC, customer="owner")
    shop.append("request:r1", ev.ServiceRequested(request_id="r1", service_id="sync", trigger="schedule", at=T),
                ev.RequestStarted(request_id="r1", run_id="run-r1", pipeline="pipe-sync", at=T))
    shop.usage("r1", "sync", bytes=GB)
    shop.finish("r1")
    assert [(c.customer_id, D(c.amount)) for c in settle(shop.log, now=T + 3600)] == [("owner", D(1))]


def test_usage_recorded_before_the_request_named_its_run_is_still_billed(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.usage("r1", "sync", bytes=3 * GB)
    shop.request("r1", "sync", "acme")
    shop.finish("r1")
    assert [D(c.amount) for c in settle(shop.log, now=T + 3600)] == [D(3)]


# --- recorded once ------------------------------------------------------------------

def test_each_charge_is_recorded_once_however_often_and_wherever_settled(shop):
    shop.service("sync", CUSTOMER_SYNC)
    for i in range(6):
        shop.batch(f"r{i}", "sync", "acme", bytes=GB, finished=T + 60 * (i + 1))

    first = settle(shop.log, now=T + 3600)
    again = settle(shop.log, now=T + 3600)
    elsewhere = settle(EventLog(shop.url), now=T + 7200)
    replayed = Billing()
    replayed.catch_up(shop.log)

    assert len(first) == 6 and again == [] and elsewhere == []
    assert replayed.due(T + 7200) == []
    assert len(shop.charge_streams()) == 6


def test_two_processes_settling_at_once_record_each_charge_once(shop):
    shop.service("sync", CUSTOMER_SYNC)
    for i in range(20):
        shop.batch(f"r{i}", "sync", "acme", bytes=GB, finished=T + i)
    barrier, results = threading.Barrier(2), []

    def settler():
        log = EventLog(shop.url)
        barrier.wait()
        results.append(settle(log, now=T + 3600))

    threads = [threading.Thread(target=settler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(c.charge_id for batch in results for c in batch) == sorted(f"r{i}" for i in range(20))
    assert len(shop.charge_streams()) == 20


# --- stream requests ----------------------------------------------------------------

def stream_run(shop):
    """A stream request from 10:20 to 11:30: usage recorded with the first checkpoint
    after 11:00 (10:20 to 11:00:05) and at the end (to 11:30)."""
    shop.service("events", STREAM, kind="stream")
    shop.request("s1", "events", "acme", started=at("2026-12-02 10:20:00"))
    shop.usage("s1", "events", final=False, when=at("2026-12-02 11:00:05"), bytes=10, records=5, hours=[
        {"start": int(T), "seconds": 2400.0, "events": 1_200_000},
        {"start": int(T) + 3600, "seconds": 5.0, "events": 0}])


def test_a_stream_is_charged_per_clock_hour_once_the_hour_is_over(shop):
    stream_run(shop)
    assert settle(shop.log, now=at("2026-12-02 10:59:59")) == []      # hour 10 still running

    first = settle(shop.log, now=at("2026-12-02 11:10:00"))

    assert [(c.charge_id, c.amount, c.period) for c in first] == [
        ("s1@2026-12-02T10:00Z", f"{quote(STREAM, first[0].usage):f}", "2026-12")]
    assert cents(D(first[0].amount)) == D("201.33")       # 2400 s at 2.0 an hour + 200,000 events over
    assert first[0].description == "ETL Pipeline - stream hour 2026-12-02 10:00 UTC"
    assert settle(shop.log, now=at("2026-12-02 11:20:00")) == []        # hour 11 not over

    shop.usage("s1", "events", when=at("2026-12-02 11:30:00"), hours=[
        {"start": int(T) + 3600, "seconds": 1795.0, "events": 1000}])
    shop.finish("s1", "failed", at("2026-12-02 11:30:00"))
    last = settle(shop.log, now=at("2026-12-02 11:30:01"))

    assert [(c.charge_id, D(c.amount)) for c in last] == [("s1@2026-12-02T11:00Z", D(1))]   # half an hour
    assert last[0].usage["hours"] == [{"start": int(T) + 3600, "seconds": 1800.0, "events": 1000}]
    assert project(shop.log).charge_of("s1") == {"amount": "202.33", "currency": "USD"}
    assert project(shop.log).to_state()["requests"] == {}          # finished and fully charged: forgotten


def test_an_hour_over_but_not_yet_covered_by_usage_waits(shop):
    shop.service("events", STREAM, kind="stream")
    shop.request("s1", "events", "acme", started=T)
    shop.usage("s1", "events", final=False, when=T + 1800, hours=[{"start": int(T), "seconds": 1800.0, "events": 9}])
    assert settle(shop.log, now=T + 3700) == []          # the usage after 10:30 is not recorded yet
    shop.usage("s1", "events", final=False, when=T + 3602, hours=[
        {"start": int(T), "seconds": 1800.0, "events": 1}, {"start": int(T) + 3600, "seconds": 2.0, "events": 0}])
    assert [c.usage["hours"][0]["events"] for c in settle(shop.log, now=T + 3700)] == [10]


# --- invoices -----------------------------------------------------------------------

def test_invoices_group_charges_per_customer_and_utc_month(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.batch("jan", "sync", "acme", finished=at("2026-01-31 23:59:59"), bytes=2 * GB)
    shop.batch("feb", "sync", "acme", finished=at("2026-02-01 00:00:00"), bytes=3 * GB)
    shop.batch("other", "sync", "globex", finished=at("2026-01-15 12:00:00"), bytes=7 * GB)
    settle(shop.log, now=at("2026-03-01 00:00:00"))
    bill = project(shop.log)

    january = bill.invoice("acme", "2026-01")

    assert january == {"customerId": "acme", "period": "2026-01", "currency": "USD", "total": "2.00", "lines": [
        {"chargeId": "jan", "requestId": "jan", "serviceId": "sync",
         "description": "ETL Pipeline - 2.00 GB processed", "amount": "2.00"}]}
    assert bill.invoice("acme", "2026-02")["total"] == "3.00"
    assert bill.invoice("globex", "2026-01")["total"] == "7.00"
    assert bill.invoice("globex", "2026-02") == {"customerId": "globex", "period": "2026-02", "currency": "USD",
                                                 "lines": [], "total": "0.00"}
    assert [c["chargeId"] for c in bill.charges(period="2026-01")] == ["other", "jan"]
    assert bill.charges("acme", "2026-01")[0]["createdAt"] == "2026-01-31T23:59:59Z"


def test_invoice_lines_round_half_up_and_the_total_adds_the_rounded_lines(shop):
    shop.service("tiny", TENTH_OF_A_CENT)
    shop.batch("a", "tiny", "acme", records=125)        # 0.125
    shop.batch("b", "tiny", "acme", records=125, finished=T + 61)
    shop.batch("c", "tiny", "acme", records=124, finished=T + 62)      # 0.124
    settle(shop.log, now=T + 3600)

    invoice = project(shop.log).invoice("acme", "2026-12")

    assert [line["amount"] for line in invoice["lines"]] == ["0.13", "0.13", "0.12"]
    assert invoice["total"] == "0.38"                   # not 0.37, the rounded sum of 0.374


def test_a_period_that_is_not_a_month_is_refused(shop):
    with pytest.raises(UsageError, match="YYYY-MM"):
        project(shop.log).invoice("acme", "2026-13")


# --- the command --------------------------------------------------------------------

def test_bill_prints_charges_and_invoices_as_json(shop, capsys):
    shop.service("sync", CUSTOMER_SYNC)
    shop.batch("r1", "sync", "acme", bytes=GB)
    shop.batch("r2", "sync", "globex", bytes=2 * GB)
    settle(shop.log, now=T + 3600)

    assert cli.main(["bill", "--customer", "acme", "--period", "2026-12", "--log", shop.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)

    assert [(c["requestId"], c["customerId"], c["amount"]) for c in out["charges"]] == [("r1", "acme", "1.00")]
    assert out["invoices"] == [{"customerId": "acme", "period": "2026-12", "currency": "USD", "total": "1.00",
                                "lines": [{"chargeId": "r1", "requestId": "r1", "serviceId": "sync",
                                           "description": "ETL Pipeline - 1.00 GB processed", "amount": "1.00"}]}]

    assert cli.main(["bill", "--log", shop.url]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("2026-12-02T10:01:00Z  acme")
    assert text[0].endswith("1.00 USD  ETL Pipeline - 1.00 GB processed")
    assert text[2:] == ["invoice acme 2026-12: 1 charge(s), total 1.00 USD",
                        "invoice globex 2026-12: 1 charge(s), total 2.00 USD"]


def test_bill_reads_only(shop, capsys):
    shop.service("sync", CUSTOMER_SYNC)
    shop.batch("r1", "sync", "acme", bytes=GB)
    assert cli.main(["bill", "--log", shop.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"charges": [], "invoices": []}
    assert shop.charge_streams() == []


def test_bill_refuses_a_period_that_is_not_a_month(shop, capsys):
    assert cli.main(["bill", "--period", "2026-13", "--log", shop.url]) == 2
    assert "YYYY-MM" in capsys.readouterr().err


# --- snapshots ----------------------------------------------------------------------

def test_a_projection_resumed_from_its_snapshot_bills_what_a_full_replay_bills(shop, monkeypatch):
    shop.service("sync", CUSTOMER_SYNC)
    stream_run(shop)
    for i in range(4):
        shop.batch(f"r{i}", "sync", "acme", bytes=(i + 1) * GB, finished=T + i)
    shop.request("open", "sync", "acme")                                  # still running at the snapshot
    settle(shop.log, now=at("2026-12-02 11:10:00"))
    monkeypatch.setattr(snapshots, "EVERY", 5)
    project(shop.log)                                                    # folded more than EVERY: saves one
    saved = snapshots.latest(shop.log, "billing")
    assert saved is not None and saved.position == shop.log.last_position() - 1     # all but itself
    assert set(saved.state["requests"]) == {"s1", "open"}               # the charged ones are not in it
    monkeypatch.setattr(snapshots, "EVERY", 10_000)                      # from now on, readers resume from it

    shop.usage("open", "sync", bytes=GB)
    shop.finish("open", when=T + 600)
    shop.usage("s1", "events", when=at("2026-12-02 11:30:00"), hours=[
        {"start": int(T) + 3600, "seconds": 1795.0, "events": 0}])
    shop.finish("s1", "success", at("2026-12-02 11:30:00"))
    settle(shop.log, now=at("2026-12-02 12:00:00"))

    resumed, replayed = project(shop.log), Billing()
    replayed.catch_up(shop.log)
    assert resumed.charges() == replayed.charges() and len(replayed.charges()) == 7
    assert resumed.invoice("acme", "2026-12") == replayed.invoice("acme", "2026-12")
    assert resumed.to_state() == replayed.to_state()
    assert replayed.to_state()["requests"] == {} and replayed.to_state()["runs"] == {}


def test_the_state_round_trips_through_a_snapshot_event(shop):
    stream_run(shop)
    state = project(shop.log).to_state()
    kind, schema, data = ev.encode(ev.ProjectionSnapshot(name="billing", position=1, state=state))
    restored = Billing.from_state(ev.decode(kind, schema, data).state)
    assert restored.to_state() == state
    assert [c.charge_id for c in restored.due(at("2026-12-02 11:10:00"))] == ["s1@2026-12-02T10:00Z"]


def test_a_snapshot_this_version_cannot_read_is_replayed_over(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.batch("r1", "sync", "acme", bytes=GB)
    snapshots.save(shop.log, "billing", shop.log.last_position(), {"format": 99, "owed": []})
    assert [c.charge_id for c in project(shop.log).due(T + 3600)] == ["r1"]


def test_a_request_run_again_is_charged_for_the_run_that_delivered_it(shop):
    shop.service("sync", CUSTOMER_SYNC)
    shop.service("events", STREAM, kind="stream")
    shop.request("r1", "sync", "acme")
    shop.usage("r1", "sync", bytes=5 * GB)                                 # interrupted, not delivered
    shop.append("request:r1", ev.RequestStarted(request_id="r1", run_id="again", pipeline="pipe-sync", at=T))
    shop.append("pipeline:pipe-sync", ev.UsageRecorded(pipeline="pipe-sync", run_id="again", bytes=2 * GB, at=T))
    shop.finish("r1")
    shop.request("s1", "events", "acme")
    shop.usage("s1", "events", final=True, when=T + 600, hours=[{"start": int(T), "seconds": 600.0, "events": 3}])
    shop.append("request:s1", ev.RequestStarted(request_id="s1", run_id="again", pipeline="pipe-events", at=T))
    shop.append("pipeline:pipe-events", ev.UsageRecorded(pipeline="pipe-events", run_id="again", at=T + 1800,
                                                         hours=[{"start": int(T), "seconds": 1200.0, "events": 4}]))
    shop.finish("s1", when=T + 1800)

    charges = {c.charge_id: c for c in settle(shop.log, now=T + 3600)}

    assert D(charges["r1"].amount) == D(2)
    assert charges["s1@2026-12-02T10:00Z"].usage["hours"] == [{"start": int(T), "seconds": 1800.0, "events": 7}]
    assert project(shop.log).to_state()["runs"] == {}
