"""Every run records what it used as `UsageRecorded` in its pipeline's stream, the figures
its summary reports: a batch run once with its end (a failed run too), a stream at the
first checkpoint of each UTC clock hour and at its end. Billing charges a request what
its run recorded."""
import sqlite3
import time
from decimal import Decimal as D

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.billing import project, settle
from etl_actors.eventlog import EventLog
from etl_actors.pricing import quote
from etl_actors.runtime.stream import StreamRun

from streams.kit import Topic, Windowing, database, event, stream_spec

PER_GB = {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1}
PER_HOUR = {"model": "per-hour", "rate": 2.0, "includes": 10, "overage": 0.01}


def csv_spec(tmp_path, name: str) -> dict:
    lines = ["id,name"] + [f"{i},n{i}" for i in range(250)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    return {"name": name, "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "in.csv"), "batchSize": 100},
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/out.db", "table": "t"}}}


def recorded(log: str, name: str) -> list[ev.RecordedEvent]:
    return EventLog(log).read(ev.pipeline_stream(name))


def usage_of(events: list[ev.RecordedEvent], run_id: str) -> list[ev.RecordedEvent]:
    return [r for r in events if isinstance(r.event, ev.UsageRecorded) and r.event.run_id == run_id]


def request(log: str, service: str, request_id: str, pipeline: str, run_id: str, pricing: dict, kind: str,
            customer: str = "acme") -> None:
    """A service and a request for one run of it, as the service API appends them."""
    store = EventLog(log)
    store.append(f"service:{service}", [ev.ServiceCreated(service_id=service, title=service, kind=kind,
                                                          spec={"name": pipeline, "pricing": pricing})], 0)
    store.append(f"request:{request_id}", [
        ev.ServiceRequested(request_id=request_id, service_id=service, customer_id=customer),
        ev.RequestStarted(request_id=request_id, run_id=run_id, pipeline=pipeline)], 0)


def finished(log: str, request_id: str, run_id: str, summary: dict) -> None:
    EventLog(log).append(f"request:{request_id}", [ev.RequestFinished(
        request_id=request_id, run_id=run_id, status=summary["status"],
        outputs={"recordsProcessed": summary["recordsLoaded"], "bytesProcessed": summary["bytesProcessed"]})], 2)


def test_a_batch_run_records_its_usage_once_with_its_end_and_is_charged_for_it(tmp_path, uniq):
    name, log = f"usage-{uniq}", f"sqlite:///{tmp_path}/events.db"
    request(log, "sync", "r1", name, "run-1", PER_GB, "pipeline")

    summary = Pipeline.from_dict(csv_spec(tmp_path, name)).run(log=log, runtime="local", run_id="run-1")
    finished(log, "r1", "run-1", summary)

    events = recorded(log, name)
    [usage] = usage_of(events, "run-1")
    assert summary["status"] == "success" and summary["recordsLoaded"] == 250
    assert (usage.event.bytes, usage.event.records, usage.event.enriched, usage.event.final) == (
        summary["bytesProcessed"], 250, 0, True)
    assert isinstance(events[usage.version].event, ev.RunSucceeded)      # the next event: the run's end
    [charge] = settle(EventLog(log))
    assert (charge.charge_id, charge.customer_id) == ("r1", "acme")
    assert D(charge.amount) == quote(PER_GB, {"bytes": summary["bytesProcessed"], "records": 250})
    assert project(EventLog(log)).charges("acme")[0]["amount"] == "0.10"     # 3.9 kB: the minimum charge


def test_a_failed_run_records_what_it_used_before_failing(tmp_path, uniq):
    name, log = f"usage-failed-{uniq}", f"sqlite:///{tmp_path}/events.db"
    with sqlite3.connect(tmp_path / "out.db") as conn:      # the second batch breaks the table's rule
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT CHECK (name <> 'n150'))")
    request(log, "sync", "r1", name, "run-1", PER_GB, "pipeline")

    summary = Pipeline.from_dict(csv_spec(tmp_path, name)).run(log=log, runtime="local", run_id="run-1")
    finished(log, "r1", "run-1", summary)

    events = recorded(log, name)
    [usage] = usage_of(events, "run-1")
    assert (summary["status"], summary["recordsLoaded"]) == ("failed", 100)
    assert (usage.event.bytes, usage.event.records, usage.event.final) == (summary["bytesProcessed"], 100, True)
    assert isinstance(events[usage.version].event, ev.RunFailed)
    assert settle(EventLog(log)) == []                        # a failed request is not charged


def test_a_stream_records_usage_with_the_first_checkpoint_of_each_clock_hour(kafka, tmp_path, uniq, monkeypatch):
    name, log, run_id = f"usage-stream-{uniq}", f"sqlite:///{tmp_path}/events.db", f"run-{uniq}"
    topic = Topic(kafka, f"usage-{uniq}", partitions=2)
    topic.send(0, [event(i, "a", i) for i in range(0, 60, 2)])
    topic.send(1, [event(i, "b", i) for i in range(1, 60, 2)])
    readings = []

    def clock() -> float:
        """An hour ahead from its second reading on: the run crosses a clock hour."""
        readings.append(1)
        return time.time() + (3600 if len(readings) > 1 else 0)

    monkeypatch.setattr(StreamRun, "clock", staticmethod(clock))
    request(log, "events", "s1", name, run_id, PER_HOUR, "stream")
    spec = stream_spec(name, topic, [Windowing("tumbling", size_ms=10_000).processor()], [database(tmp_path / "w.db")])

    summary = Pipeline.from_dict(spec).run(log=log, runtime="local", until_idle=1.0, run_id=run_id)
    finished(log, "s1", run_id, summary)

    events = recorded(log, name)
    usages = usage_of(events, run_id)
    hourly, final = usages[:-1], usages[-1]
    assert summary["status"] == "success" and summary["recordsExtracted"] == 60
    assert hourly and all(not u.event.final for u in hourly) and final.event.final
    assert all(isinstance(events[u.version - 2].event, ev.CheckpointCommitted) for u in hourly)   # with a checkpoint
    assert isinstance(events[final.version].event, ev.RunSucceeded)
    assert len({h["start"] for h in hourly[0].event.hours}) >= 2                 # the hour it crossed
    hours = [h for u in usages for h in u.event.hours]
    assert all(h["start"] % 3600 == 0 and 0 < h["seconds"] <= 3600 for h in hours)
    assert sum(h["events"] for h in hours) == summary["recordsExtracted"]
    assert sum(u.event.records for u in usages) == summary["recordsLoaded"]
    assert sum(u.event.bytes for u in usages) == summary["bytesProcessed"]
    started = next(r.event.at for r in events if isinstance(r.event, ev.RunStarted) and r.event.run_id == run_id)
    assert abs(sum(h["seconds"] for h in hours) - (final.event.at - started)) < 0.01

    charges = settle(EventLog(log), now=final.event.at)
    per_hour: dict[int, list] = {}
    for h in hours:
        seconds, count = per_hour.get(h["start"], (0.0, 0))
        per_hour[h["start"]] = (seconds + h["seconds"], count + h["events"])
    assert len(charges) == len(per_hour) >= 2                                   # one charge per clock hour
    for charge in charges:
        [hour] = charge.usage["hours"]
        assert (hour["seconds"], hour["events"]) == (round(per_hour[hour["start"]][0], 3), per_hour[hour["start"]][1])
        assert D(charge.amount) == quote(PER_HOUR, charge.usage)
