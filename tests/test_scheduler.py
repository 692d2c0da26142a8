"""The scheduler's core, without Ray: a fake clock drives ``tick``, a recording
launcher stands in for the runs (except where a real local run is the point)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import yaml

from etl_actors import events as ev
from etl_actors.errors import SpecError, UsageError
from etl_actors.eventlog import EventLog
from etl_actors.leases import Leases, Owner
from etl_actors.scheduler import Scheduler, ThreadLauncher, schedule_stream

UTC = timezone.utc


def at(text: str) -> float:
    """Epoch seconds of a UTC wall-clock time such as '2026-06-01 10:05'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Run:
    """A run the recording launcher 'started': in progress until ``finish()``."""

    def __init__(self, pipeline: str, ids: list[str], running: bool):
        self.pipeline, self.ids, self.running = pipeline, ids, running

    def is_alive(self) -> bool:
        return self.running

    def finish(self) -> None:
        self.running = False


class RecordingLauncher:
    def __init__(self, hold: bool = False):
        self.hold = hold          # runs stay in progress until finished
        self.runs: list[Run] = []
        self.requests: list[tuple[str, str]] = []

    def request(self, service_id: str, customer_id: str) -> str:
        self.requests.append((service_id, customer_id))
        return f"req_{len(self.requests)}"

    def start(self, armed, ids) -> Run:
        run = Run(armed.pipeline, list(ids), self.hold)
        self.runs.append(run)
        return run


@pytest.fixture
def log_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/events.db"


def pipeline_body(tmp_path) -> dict:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "orders.csv").write_text("order_id,amount\n1,10\n2,20\n3,30\n")
    return {"source": {"type": "file", "path": str(tmp_path / "in"), "format": "csv"},
            "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "orders",
                            "mode": "upsert", "keyFields": ["order_id"]}}


def write_spec(tmp_path, name: str = "orders", **schedule) -> str:
    spec = {"name": name, "pipeline": pipeline_body(tmp_path),
            "schedule": {"type": "cron", "expression": "*/5 * * * *", "timezone": "UTC", **schedule}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def kinds(events) -> list[tuple[str, str]]:
    """(event type, fire time) pairs, as a timeline reads."""
    return [(e.type, iso(e.fire_time) if hasattr(e, "fire_time") else "") for e in events]


def stream(log_url: str, pipeline: str = "orders") -> list[ev.Event]:
    return [r.event for r in EventLog(log_url).read(schedule_stream(pipeline))]


def test_a_five_minute_schedule_armed_at_10_02_fires_at_10_05_and_10_10_only(tmp_path, log_url):
    clock, launcher = Clock(at("2026-06-01 10:02")), RecordingLauncher()
    scheduler = Scheduler(log_url, clock, launcher)
    [row] = scheduler.arm([write_spec(tmp_path)])
    assert row["nextFire"] == "2026-06-01T10:05:00Z" and not row["reused"]
    fired = []
    for minute in range(3, 13):                    # 10:03 ... 10:12, one tick a minute
        fired += scheduler.tick(at(f"2026-06-01 10:{minute:02d}"))
    assert kinds(fired) == [("ScheduleFired", "2026-06-01 10:05"), ("ScheduleFired", "2026-06-01 10:10")]
    assert [r.ids for r in launcher.runs] == [[e.run_id] for e in fired]
    assert not any(e.catch_up for e in fired)
    assert [e.type for e in stream(log_url)] == ["ScheduleArmed", "ScheduleFired", "ScheduleFired"]
    assert stream(log_url)[0].at == at("2026-06-01 10:02")


@pytest.mark.parametrize("day, fires_at", [("2026-03-29", "2026-03-29 01:00"),    # 02:30 skipped: at 03:00 CEST
                                           ("2026-10-25", "2026-10-25 00:30")])   # 02:30 twice: the first one
def test_a_daily_0230_berlin_schedule_fires_once_on_a_daylight_saving_change_day(tmp_path, log_url, day, fires_at):
    start = at(f"{day} 00:00") - 3 * 3600          # 01:00 or 02:00 local, the evening before
    scheduler = Scheduler(log_url, Clock(start), RecordingLauncher())
    scheduler.arm([write_spec(tmp_path, expression="30 2 * * *", timezone="Europe/Berlin")])
    fired = []
    for minute in range(1, 27 * 60):               # minute by minute through the whole local day
        fired += scheduler.tick(start + 60 * minute)
    assert kinds(fired) == [("ScheduleFired", fires_at)]


def test_a_fire_time_that_finds_the_previous_run_still_running_is_skipped_and_recorded(tmp_path, log_url):
    launcher = RecordingLauncher(hold=True)
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), launcher)
    scheduler.arm([write_spec(tmp_path)])
    [first] = scheduler.tick(at("2026-06-01 10:05"))
    [skipped] = scheduler.tick(at("2026-06-01 10:10"))
    assert skipped.type == "ScheduleSkipped" and skipped.reason == f"a run is in progress (run {first.run_id})"
    assert scheduler.next_fire_times()[0]["running"] == f"run {first.run_id}"
    launcher.runs[0].finish()
    [second] = scheduler.tick(at("2026-06-01 10:15"))
    assert second.type == "ScheduleFired" and len(launcher.runs) == 2
    assert [e.type for e in stream(log_url)] == ["ScheduleArmed", "ScheduleFired", "ScheduleSkipped",
                                                 "ScheduleFired"]


def test_a_live_lease_held_by_another_run_skips_the_fire_time(tmp_path, log_url):
    launcher = RecordingLauncher()
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), launcher)
    scheduler.arm([write_spec(tmp_path)])
    leases = Leases(EventLog(log_url))
    grant = leases.acquire("orders", Owner.here("r-manual"), timeout=30)   # `etl-actors run` elsewhere
    [skipped] = scheduler.tick(at("2026-06-01 10:05"))
    assert skipped.reason == "a run is in progress (run r-manual)" and launcher.runs == []
    leases.release("orders", grant.lease.epoch)
    [fired] = scheduler.tick(at("2026-06-01 10:10"))
    assert fired.type == "ScheduleFired" and len(launcher.runs) == 1


@pytest.mark.parametrize("catch_up, runs", [("none", 0), ("latest", 1), ("all", 3)])
def test_after_downtime_missed_fire_times_follow_catch_up(tmp_path, log_url, catch_up, runs):
    before = Scheduler(log_url, Clock(at("2026-06-01 10:02")), RecordingLauncher())
    before.arm([write_spec(tmp_path, catchUp=catch_up)])
    before.tick(at("2026-06-01 10:05"))
    # the scheduler is down through 10:10, 10:15 and 10:20, and back at 10:23
    launcher = RecordingLauncher()
    after = Scheduler(log_url, Clock(at("2026-06-01 10:23")), launcher)
    assert after.armed["orders"].schedule.catch_up == catch_up
    events = after.tick()
    fired = [e for e in events if e.type == "ScheduleFired"]
    skipped = [e for e in events if e.type == "ScheduleSkipped"]
    assert len(fired) == runs and len(skipped) == 3 - runs
    assert all(e.catch_up for e in fired)                             # fired late, and says so
    assert all(e.reason == f"missed while the scheduler was down (catchUp: {catch_up})" for e in skipped)
    assert sorted(kinds(events), key=lambda k: k[1]) == kinds(events)  # oldest first
    if catch_up == "latest":
        assert kinds(fired) == [("ScheduleFired", "2026-06-01 10:20")]
    assert [r.ids for r in launcher.runs] == ([[e.run_id for e in fired]] if fired else [])   # one after another
    assert after.tick(at("2026-06-01 10:24")) == []                   # each fire time is handled once
    assert kinds(stream(log_url)[2:]) == kinds(events)


def test_disarm_stops_firing_and_stays_disarmed_after_a_restart(tmp_path, log_url):
    launcher = RecordingLauncher()
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), launcher)
    scheduler.arm([write_spec(tmp_path)])
    assert len(scheduler.tick(at("2026-06-01 10:05"))) == 1
    assert scheduler.disarm("orders") is True
    assert scheduler.tick(at("2026-06-01 10:10")) == [] and len(launcher.runs) == 1
    restarted = Scheduler(log_url, Clock(at("2026-06-01 10:30")), launcher)
    assert restarted.next_fire_times() == [] and restarted.tick() == []
    assert restarted.disarm("orders") is False


def test_arming_the_same_schedule_twice_is_a_no_op_and_a_changed_one_rearms(tmp_path, log_url):
    clock = Clock(at("2026-06-01 10:02"))
    scheduler = Scheduler(log_url, clock, RecordingLauncher())
    path = write_spec(tmp_path)
    scheduler.arm([path])
    clock.now = at("2026-06-01 10:03")
    [again] = Scheduler(log_url, clock, RecordingLauncher()).arm([path])      # a new CLI call, a restarted actor
    assert again["reused"] and [e.type for e in stream(log_url)] == ["ScheduleArmed"]
    write_spec(tmp_path, expression="0 * * * *")
    [changed] = scheduler.arm([path])
    assert not changed["reused"] and changed["nextFire"] == "2026-06-01T11:00:00Z"
    armed = [e for e in stream(log_url) if e.type == "ScheduleArmed"]
    assert [(e.expression, e.at) for e in armed] == [("*/5 * * * *", at("2026-06-01 10:02")),
                                                     ("0 * * * *", at("2026-06-01 10:03"))]
    assert scheduler.tick(at("2026-06-01 10:05")) == []                      # the old expression is gone


def test_a_bad_spec_arms_nothing_and_errors_name_the_file(tmp_path, log_url):
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), RecordingLauncher())
    good = write_spec(tmp_path)
    bad = write_spec(tmp_path, name="bad", expression="61 * * * *")
    with pytest.raises(SpecError) as error:
        scheduler.arm([good, bad])
    assert str(error.value).startswith(f"{bad}: schedule.expression:")
    unscheduled = tmp_path / "plain.yaml"
    unscheduled.write_text(yaml.safe_dump({"name": "plain", "pipeline": pipeline_body(tmp_path)}))
    with pytest.raises(UsageError, match=f"{unscheduled}: pipeline 'plain' has no schedule"):
        scheduler.arm([good, str(unscheduled)])
    assert scheduler.next_fire_times() == [] and EventLog(log_url).streams("schedule:") == []


def test_a_service_with_a_schedule_is_armed_and_fires_a_request_charged_to_its_customer(tmp_path, log_url):
    spec = {"name": "svc-nightly-1a2b", "pipeline": pipeline_body(tmp_path),
            "schedule": {"type": "cron", "expression": "*/5 * * * *", "timezone": "UTC"}}
    EventLog(log_url).append("service:svc1", [ev.ServiceCreated("svc1", "Nightly", spec, customer_id="acme")], 0)
    launcher = RecordingLauncher()
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), launcher)
    [armed] = scheduler.tick()
    assert (armed.type, armed.pipeline, armed.service_id) == ("ScheduleArmed", "svc-nightly-1a2b", "svc1")
    [fired] = scheduler.tick(at("2026-06-01 10:05"))
    assert launcher.requests == [("svc1", "acme")]
    assert (fired.request_id, fired.run_id) == ("req_1", "") and launcher.runs[0].ids == ["req_1"]
    assert scheduler.next_fire_times()[0]["source"] == "service svc1"
    restarted = Scheduler(log_url, Clock(at("2026-06-01 10:06")), launcher)
    assert restarted.tick() == []                                            # armed once, not again
    restarted.disarm("svc-nightly-1a2b")
    assert Scheduler(log_url, Clock(at("2026-06-01 10:20")), launcher).tick() == []   # stays disarmed


def test_a_fired_spec_runs_for_real_with_trigger_schedule_and_its_run_id(tmp_path, log_url):
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), ThreadLauncher(log_url, runtime="local"))
    scheduler.arm([write_spec(tmp_path)])
    [fired] = scheduler.tick(at("2026-06-01 10:05"))
    scheduler.running["orders"][1].join(60)
    started = [r.event for r in EventLog(log_url).read("pipeline:orders") if r.type == "RunStarted"]
    assert [(e.run_id, e.trigger) for e in started] == [(fired.run_id, "schedule")]
    assert any(r.type == "RunSucceeded" for r in EventLog(log_url).read("pipeline:orders"))
    with sqlite3.connect(tmp_path / "wh.db") as db:
        assert db.execute("SELECT order_id, amount FROM orders ORDER BY order_id").fetchall() == \
            [(1, 10), (2, 20), (3, 30)]


def test_a_run_that_cannot_start_is_said_on_stderr_and_the_scheduler_goes_on(tmp_path, log_url, capfd):
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), ThreadLauncher(log_url, runtime="local"))
    path = write_spec(tmp_path)
    scheduler.arm([path])
    (tmp_path / "orders.yaml").unlink()
    [fired] = scheduler.tick(at("2026-06-01 10:05"))
    scheduler.running["orders"][1].join(30)
    said = capfd.readouterr().err
    assert f"orders: scheduled run {fired.run_id} did not complete: SpecError: cannot read spec" in said
    assert EventLog(log_url).read("pipeline:orders") == []                   # nothing false recorded
    [again] = scheduler.tick(at("2026-06-01 10:10"))
    assert again.type == "ScheduleFired"


def test_schedule_command_refuses_a_bad_spec_before_any_ray_with_exit_2(tmp_path, log_url):
    bad = write_spec(tmp_path, name="bad", timezone="Mars/Olympus")
    out = subprocess.run([sys.executable, "-m", "etl_actors", "schedule", bad, "--log", log_url],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})
    assert out.returncode == 2, out.stderr
    assert f"invalid spec: {bad}: schedule.timezone: unknown time zone 'Mars/Olympus'" in out.stderr
    assert EventLog(log_url).streams("schedule:") == []


def test_a_new_schedule_never_catches_up_fire_times_before_it_was_armed(tmp_path, log_url):
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), RecordingLauncher())
    scheduler.arm([write_spec(tmp_path, catchUp="all")])
    assert scheduler.tick(at("2026-06-01 10:04")) == []
    assert kinds(scheduler.tick(at("2026-06-01 10:05") + 30)) == [("ScheduleFired", "2026-06-01 10:05")]


def test_a_scheduled_service_runs_a_request_of_its_customer_for_real(tmp_path, log_url):
    from etl_actors.service import runner

    log = EventLog(log_url)
    service_id = runner.create_service(log, {"name": "Nightly orders", "pipeline": pipeline_body(tmp_path),
                                             "schedule": {"type": "cron", "expression": "*/5 * * * *"},
                                             "customerId": "acme"})
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), ThreadLauncher(log_url, runtime="local"))
    [armed] = scheduler.tick()
    [fired] = scheduler.tick(at("2026-06-01 10:05"))
    scheduler.running[armed.pipeline][1].join(60)
    view = runner.view_from_log(log, fired.request_id)
    assert (view["serviceId"], view["customerId"], view["trigger"], view["status"]) == \
        (service_id, "acme", "schedule", "success")
    assert view["outputs"]["recordsProcessed"] == 3
    with sqlite3.connect(tmp_path / "wh.db") as db:
        assert db.execute("SELECT count(*) FROM orders").fetchone() == (3,)


def test_a_service_that_refuses_a_scheduled_request_is_skipped_once_per_fire_time(tmp_path, log_url):
    from etl_actors.service import runner

    body = {"name": "Per table", "pipeline": pipeline_body(tmp_path), "schedule": {"cron": "*/5 * * * *"}}
    body["pipeline"]["destination"]["table"] = "${inputs.table}"     # a schedule gives no inputs
    runner.create_service(EventLog(log_url), body)
    scheduler = Scheduler(log_url, Clock(at("2026-06-01 10:02")), ThreadLauncher(log_url, runtime="local"))
    scheduler.tick()
    [skipped] = scheduler.tick(at("2026-06-01 10:05"))
    assert skipped.type == "ScheduleSkipped" and skipped.reason.startswith("the service refused the request: ")
    assert "inputs.table" in skipped.reason and scheduler.running == {}
    assert scheduler.tick(at("2026-06-01 10:06")) == []
