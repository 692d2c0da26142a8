"""The event log contract, run against every backend by subclassing ``EventLogContract``."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import ClassVar

import pytest
import sqlalchemy as sa

from etl_actors.batch import DeadLetter
from etl_actors.errors import ConcurrencyError, TransientError, UsageError
from etl_actors.eventlog import EventLog
from etl_actors.events import (BatchLoaded, Event, PhaseStarted, RunStarted, UnknownEvent,
                               upcaster)


@dataclass(frozen=True)
class ParcelWeighed(Event):
    """Test-only event at schema 2 (grams); schema 1 stored pounds as ``lb``."""
    schema: ClassVar[int] = 2
    parcel: str
    grams: int


@upcaster("ParcelWeighed", 1)
def _pounds_to_grams(payload: dict) -> dict:
    rest = {key: value for key, value in payload.items() if key != "lb"}
    return {**rest, "grams": round(payload["lb"] * 453.59237)}


@dataclass(frozen=True)
class ParcelWeighedV1(Event):
    """What an older release wrote for ParcelWeighed."""
    schema: ClassVar[int] = 1
    parcel: str
    lb: float

    @property
    def type(self) -> str:
        return "ParcelWeighed"


@dataclass(frozen=True)
class ParcelTeleportedByANewerRelease(Event):
    """A type written by a newer release that this one does not know."""
    parcel: str

    @property
    def type(self) -> str:
        return "ParcelTeleported"


def phases(*names: str) -> list[PhaseStarted]:
    return [PhaseStarted(run_id="r1", phase=name) for name in names]


class EventLogContract:
    """Every backend must pass these; a subclass only provides the ``url`` fixture."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def log(self, url):
        with EventLog(url) as log:
            yield log

    def test_append_and_read_round_trip_the_events(self, log):
        started = RunStarted(pipeline="orders", run_id="r1", epoch=3, watermark={"a.csv": 10},
                             partitions=["a.csv", "b.csv"])
        loaded = BatchLoaded(run_id="r1", batch_id="b-1", partition="a.csv",
                             position={"offset": 20, "file": "a.csv"}, rows=10, bytes=512)
        before = time.time()
        assert log.append("pipeline:orders", [started, loaded], expected_version=0) == 2
        recorded = log.read("pipeline:orders")
        assert [r.event for r in recorded] == [started, loaded]
        assert [(r.stream, r.version, r.type) for r in recorded] == [
            ("pipeline:orders", 1, "RunStarted"), ("pipeline:orders", 2, "BatchLoaded")]
        assert before - 1 <= recorded[0].recorded_at <= time.time() + 1

    def test_versions_are_gapless_and_read_starts_at_from_version(self, log):
        version = log.append("s", phases("a"), 0)
        version = log.append("s", phases("b", "c"), version)
        assert version == log.version("s") == 3
        assert log.version("never-written") == 0
        assert [(r.version, r.event.phase) for r in log.read("s", from_version=2)] == [(2, "b"), (3, "c")]

    def test_append_at_a_stale_version_raises_with_the_actual_version(self, log):
        log.append("s", phases("a", "b"), 0)
        with pytest.raises(ConcurrencyError) as caught:
            log.append("s", phases("zombie"), expected_version=1)
        assert (caught.value.expected, caught.value.actual) == (1, 2)
        assert [r.event.phase for r in log.read("s")] == ["a", "b"]

    def test_racing_writers_get_every_version_exactly_once(self, log):
        barrier = threading.Barrier(2)

        def writer(name: str) -> None:
            barrier.wait()
            for i in range(50):
                while True:
                    try:
                        log.append("race", phases(f"{name}{i}"), log.version("race"))
                        break
                    except ConcurrencyError:
                        pass

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(writer, ["a", "b"]))
        recorded = log.read("race")
        assert [r.version for r in recorded] == list(range(1, 101))
        assert sorted(r.event.phase for r in recorded) == sorted(f"{n}{i}" for n in "ab" for i in range(50))

    def test_read_all_is_in_global_order_and_honours_position_limit_and_prefix(self, log):
        log.append("orders-1", phases("o1"), 0)
        log.append("users-1", phases("u1"), 0)
        log.append("orders-2", phases("o2", "o3"), 0)
        everything = log.read_all()
        assert [r.event.phase for r in everything] == ["o1", "u1", "o2", "o3"]
        assert [r.position for r in everything] == sorted(r.position for r in everything)
        after_first = everything[0].position
        assert [r.event.phase for r in log.read_all(after_first, limit=2)] == ["u1", "o2"]
        assert [r.event.phase for r in log.read_all(after_first, stream_prefix="orders-")] == ["o2", "o3"]

    def test_read_all_and_follow_keep_to_one_stream_exactly(self, log):
        log.append("orders-1", phases("o1"), 0)
        log.append("orders-10", phases("o10"), 0)      # "orders-1" is its prefix
        assert [r.event.phase for r in log.read_all(stream="orders-1")] == ["o1"]
        stop = threading.Event()
        followed = log.follow(stream="orders-1", stop=stop, poll_interval=0.01)
        first = next(followed)
        stop.set()                                     # the rest of that page, then it returns
        assert [r.event.phase for r in [first, *followed]] == ["o1"]

    def test_streams_lists_names_by_literal_prefix(self, log):
        for stream in ["pipeline:b", "pipeline:a", "pipe_x", "pipeAx"]:
            log.append(stream, phases("x"), 0)
        assert log.streams("pipeline:") == ["pipeline:a", "pipeline:b"]
        assert log.streams("pipe_") == ["pipe_x"]
        assert len(log.streams()) == 4

    def test_follow_yields_events_appended_after_it_started_and_stops(self, log):
        log.append("s", phases("old"), 0)
        start = log.read_all()[-1].position
        stop = threading.Event()

        def append_later():
            for name in ["n1", "n2", "n3"]:
                time.sleep(0.05)
                log.append("s", phases(name), log.version("s"))

        writer = threading.Thread(target=append_later)
        writer.start()
        seen = []
        for recorded in log.follow(start, poll_interval=0.02, stop=stop):
            seen.append(recorded.event.phase)
            if len(seen) == 3:
                stop.set()
        writer.join()
        assert seen == ["n1", "n2", "n3"]

    def test_follow_returns_when_stopped_while_idle(self, log):
        stop = threading.Event()
        threading.Timer(0.1, stop.set).start()
        began = time.monotonic()
        assert list(log.follow(poll_interval=0.05, stop=stop)) == []
        assert time.monotonic() - began < 2

    def test_old_schema_payloads_are_upcast_when_read(self, log):
        log.append("parcels", [ParcelWeighedV1(parcel="p-1", lb=2.0)], 0)
        log.append("parcels", [ParcelWeighed(parcel="p-2", grams=500)], 1)
        recorded = [r.event for r in log.read("parcels")]
        assert all(type(event) is ParcelWeighed for event in recorded)
        assert [(event.parcel, event.grams) for event in recorded] == [("p-1", 907), ("p-2", 500)]

    def test_unknown_event_type_is_kept_as_unknown_event(self, log):
        future = ParcelTeleportedByANewerRelease(parcel="p-9")
        log.append("parcels", [future], 0)
        [recorded] = log.read("parcels")
        assert isinstance(recorded.event, UnknownEvent)
        assert recorded.event.name == "ParcelTeleported"
        assert recorded.event.payload["parcel"] == "p-9"
        assert recorded.event.at == future.at

    def test_dead_letters_round_trip_and_a_retried_batch_adds_none(self, log):
        letters = [DeadLetter("amount is not a number", {"id": 1, "amount": "x"}),
                   DeadLetter("missing email", {"id": 2, "signed_up": date(2024, 5, 1)})]
        assert log.put_dead_letters("orders", "run-1", "b-1", "load", letters) == 2
        assert log.put_dead_letters("orders", "run-2", "b-1", "load", letters) == 0
        assert log.put_dead_letters("orders", "run-2", "b-2", "load", letters[:1]) == 1
        run1 = log.dead_letters("orders", run_id="run-1")
        assert [(d["runId"], d["batchId"], d["stage"], d["reason"]) for d in run1] == [
            ("run-1", "b-1", "load", "amount is not a number"), ("run-1", "b-1", "load", "missing email")]
        assert run1[1]["record"] == {"id": 2, "signed_up": "2024-05-01"}
        assert (log.dead_letter_count("orders"), log.dead_letter_count("orders", "run-1")) == (3, 2)
        assert len(log.dead_letters("orders", limit=1)) == 1 and log.dead_letters("other") == []

    def test_events_survive_a_new_event_log_on_the_same_url(self, log, url):
        log.append("s", phases("kept"), 0)
        log.close()
        assert [r.event.phase for r in EventLog(url).read("s")] == ["kept"]

    def test_two_processes_creating_the_log_at_once_both_append(self, url):
        script = ("import sys; from etl_actors.eventlog import EventLog; from etl_actors.events import PhaseStarted;"
                  "EventLog(sys.argv[1]).append(sys.argv[2], [PhaseStarted(run_id='r', phase='p')], 0)")
        procs = [subprocess.Popen([sys.executable, "-c", script, url, f"proc-{i}"]) for i in range(2)]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        assert EventLog(url).streams("proc-") == ["proc-0", "proc-1"]



def test_processes_opening_a_new_sqlite_log_at_the_same_instant_all_append(tmp_path):
    """Switching a new file to WAL from several processes at once made SQLite refuse all
    but one with "database is locked" at once; the switch is now retried."""
    script = ("import sys, time; from etl_actors.eventlog import EventLog; from etl_actors.events import PhaseStarted;"
              "start = float(sys.argv[3])\nwhile time.time() < start: pass\n"
              "EventLog(sys.argv[1]).append(sys.argv[2], [PhaseStarted(run_id='r', phase='p')], 0)")
    for attempt in range(3):
        url, start = f"sqlite:///{tmp_path}/events-{attempt}.db", time.time() + 2
        procs = [subprocess.Popen([sys.executable, "-c", script, url, f"proc-{i}", str(start)],
                                  stderr=subprocess.PIPE, text=True) for i in range(6)]
        outcomes = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
        assert [code for code, _ in outcomes] == [0] * 6, [err[-500:] for _, err in outcomes]
        assert EventLog(url).streams("proc-") == [f"proc-{i}" for i in range(6)]


def test_a_refused_switch_to_wal_is_tried_again_until_it_takes():
    """What SQLite does to all but one process switching a new file at once."""
    import sqlite3

    from etl_actors.db import _use_wal

    class Contended:
        def __init__(self):
            self.refusals, self.mode = 2, "delete"

        def execute(self, sql):
            if sql == "PRAGMA journal_mode=WAL":
                if self.refusals:
                    self.refusals -= 1
                    raise sqlite3.OperationalError("database is locked")
                self.mode = "wal"
            return self

        def fetchone(self):
            return (self.mode,)

    cursor = Contended()
    _use_wal(cursor)
    assert (cursor.mode, cursor.refusals) == ("wal", 0)


def test_repr_hides_the_password(pg_schema):
    log = EventLog(pg_schema)
    assert log.url == pg_schema
    assert "etl:***@" in repr(log) and "etl:etl@" not in repr(log)


def test_a_wrong_password_is_said_without_the_password(pg_schema):
    url = sa.engine.make_url(pg_schema).set(password="not-the-password-42").render_as_string(hide_password=False)
    with pytest.raises(TransientError) as caught:
        EventLog(url)
    assert "password authentication failed" in str(caught.value)
    assert "not-the-password-42" not in str(caught.value) and "etl:***@" in str(caught.value)


def test_only_sqlite_and_postgresql_logs_are_accepted():
    with pytest.raises(UsageError, match="'mysql' is not supported"):
        EventLog("mysql://etl:pw@localhost/etl")


class TestSqliteEventLog(EventLogContract):
    @pytest.fixture
    def url(self, tmp_path):
        return f"sqlite:///{tmp_path}/events.db"


class TestPostgresEventLog(EventLogContract):
    @pytest.fixture
    def url(self, pg_schema):
        return pg_schema
