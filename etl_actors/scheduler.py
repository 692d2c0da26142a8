"""The scheduler: fires pipelines and services on their cron schedules. On Ray it
lives in one detached actor per event log (:mod:`etl_actors.scheduler_actor`, which
also holds ``etl-actors schedule``); the scheduling itself is here, testable with a
fake clock.

What is armed, and up to which fire time each schedule was handled, are events in
stream ``schedule:<pipeline>`` (``ScheduleArmed``, ``ScheduleFired``,
``ScheduleSkipped``, ``ScheduleDisarmed``): a scheduler restarted (by Ray, or after
the cluster went down) folds them and applies ``catchUp`` to the fire times it missed
(see :func:`etl_actors.schedules.due`). Guarantees:

- each fire time after a schedule was armed is handled once: fired (``ScheduleFired``
  naming the run or the service request it starts) or skipped (``ScheduleSkipped``
  saying why). The event is appended before the run starts; a scheduler that finds
  the stream moved on (another scheduler on the same log handled that time) starts
  nothing.
- a pipeline never runs twice at once: a fire time that finds a run of the pipeline
  in progress (one this scheduler started, or a live lease held by anyone on the log)
  is skipped; catch-up runs of one tick run one after another.
- a run that fails is recorded by the run itself; the scheduler outlives any run.

Spec files are read where the scheduler actor runs, when armed and at every firing
(so an edited spec's next run uses the edit): their paths are made absolute and the
files must be readable on that node, and ``${ENV}`` references are resolved in the
actor's environment (the Ray node's), not the shell that armed them. Services
(``ServiceCreated`` with a ``schedule``) are armed as they appear in the log.

    $ etl-actors schedule examples/analytics_dw.yaml     # doctest: +SKIP
    analytics-dw: '0 2 * * *' Europe/Berlin, next 2026-12-03T01:00:00Z
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from . import events as ev
from .errors import ConcurrencyError, EtlError, SpecError, SpecErrors, UsageError, first_line
from .eventlog import EventLog
from .leases import Leases, iso
from .pipeline import Pipeline
from .schedules import GRACE, Schedule, due, fire_times, next_fire_time
from .spec import PipelineSpec, Section, parse_file


ACTOR_PREFIX = "etl-actors-scheduler-"


def schedule_stream(pipeline: str) -> str:
    return f"schedule:{pipeline}"


def scheduler_name(log_url: str) -> str:
    """The actor name of the scheduler of ``log_url`` (one per log on a cluster)."""
    return ACTOR_PREFIX + hashlib.sha256(log_url.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Armed:
    """A schedule the scheduler holds: what fires, from which spec file or service,
    ``handled`` the arming time and then the last fire time handled (fired or skipped),
    ``fired`` the last fire time that started a run."""

    pipeline: str
    schedule: Schedule
    spec: str = ""
    service_id: str = ""
    handled: float = 0.0
    fired: float | None = None

    @property
    def source(self) -> str:
        return self.spec or f"service {self.service_id}"


def evolve(armed: Armed | None, event: ev.Event) -> Armed | None:
    """The schedule after ``event`` of its stream."""
    if isinstance(event, ev.ScheduleArmed):
        return Armed(event.pipeline, Schedule(event.expression, event.timezone, catch_up=event.catch_up),
                     event.spec, event.service_id, handled=event.at)
    if armed is None or isinstance(event, ev.ScheduleDisarmed):
        return None
    if isinstance(event, ev.ScheduleFired):
        return replace(armed, handled=max(armed.handled, event.fire_time), fired=event.fire_time)
    if isinstance(event, ev.ScheduleSkipped):
        return replace(armed, handled=max(armed.handled, event.fire_time))
    return armed


def scheduled_spec(path: str) -> tuple[PipelineSpec, Schedule]:
    """The spec at ``path`` and its schedule; every error names the file."""
    try:
        spec = parse_file(path)
    except SpecErrors as exc:
        raise SpecErrors([_in_file(path, e) for e in exc.errors]) from None
    except SpecError as exc:
        raise _in_file(path, exc) from None
    if spec.schedule is None:
        raise UsageError(f"{path}: pipeline {spec.name!r} has no schedule (add "
                         "schedule: {type: cron, expression: '0 2 * * *', timezone: UTC})")
    return spec, Schedule.from_spec(Section(spec.schedule, "schedule"))


def _in_file(path: str, error: SpecError) -> SpecError:
    if error.path:
        return SpecError(f"{path}: {error.path}", error.reason)
    return error if path in str(error) else SpecError(path, error.reason)


class Scheduler:
    """The armed schedules of the log at ``log_url``, and what fires when.

    A plain class: the actor drives it with the real clock, tests with a fake one.
    ``launcher`` starts the runs (:class:`ThreadLauncher` by default). One caller at
    a time (the actor serialises its calls).
    """

    def __init__(self, log_url: str, clock: Callable[[], float] = time.time, launcher: Any = None):
        self.log_url, self.clock = log_url, clock
        self.log = EventLog(log_url)
        self.leases = Leases(self.log)
        self.launcher = launcher or ThreadLauncher(log_url)
        self.armed: dict[str, Armed] = {}
        self.running: dict[str, tuple[str, Any]] = {}    # pipeline -> ("run <id>" | "request <id>", handle)
        self._versions: dict[str, int] = {}
        self._services: dict[str, ev.ServiceCreated] = {}
        self._services_seen: set[str] = set()            # armed once (a disarmed one stays so) or refused
        self._services_position = 0
        self._read_services()
        for stream in self.log.streams("schedule:"):
            self._recover(stream)

    # --- commands ----------------------------------------------------------------------

    def arm(self, paths: Sequence[str]) -> list[dict]:
        """Arm the schedule of each spec file (all validated first: one bad file arms
        none). A pipeline armed with the same schedule from the same file is left as it
        is (``reused``); a changed one is armed again from now."""
        specs = [scheduled_spec(os.path.abspath(path)) for path in paths]
        names = [spec.name for spec, _ in specs]
        if len(set(names)) < len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise UsageError(f"several specs name pipeline {', '.join(map(repr, twice))}; arm one of each")
        now = self.clock()
        fresh = {spec.name: bool(self._arm(Armed(spec.name, schedule, spec=spec.spec_file, handled=now)))
                 for spec, schedule in specs}
        return [{**self._row(self.armed[name], now), "reused": not fresh[name]} for name in names]

    def disarm(self, pipeline: str) -> bool:
        """Stop firing ``pipeline`` (a run in progress goes on); False when not armed."""
        if pipeline not in self.armed:
            return False
        self._append(pipeline, [ev.ScheduleDisarmed(pipeline, at=self.clock())])
        del self.armed[pipeline]
        return True

    def tick(self, now: float | None = None) -> list[ev.Event]:
        """Arm new services' schedules and handle every fire time up to ``now`` (the
        clock's when None); return the events recorded."""
        now = self.clock() if now is None else now
        events = self._arm_services(now)
        for name in sorted(self.armed):
            try:
                events += self._fire(self.armed[name], now)
            except ConcurrencyError:
                pass  # another scheduler on this log handled it; _append re-read the stream
            except Exception as exc:  # noqa: BLE001 - one schedule's trouble stops no other; tried again next tick
                say(f"{name}: not fired, trying again: {first_line(exc, with_type=True)}")
        return events

    def next_fire_times(self, now: float | None = None) -> list[dict]:
        """Each armed schedule: pipeline, expression, timezone, catchUp, source (spec
        file or service), last fired, next fire time and the run in progress."""
        now = self.clock() if now is None else now
        return [self._row(self.armed[name], now) for name in sorted(self.armed)]

    def next_fire(self, now: float | None = None) -> float | None:
        """The earliest next fire time of any armed schedule (epoch seconds)."""
        now = self.clock() if now is None else now
        return min((_next(a, now) for a in self.armed.values()), default=None)

    # --- firing ------------------------------------------------------------------------

    def _fire(self, armed: Armed, now: float) -> list[ev.Event]:
        at, handled = _utc(now), _utc(armed.handled)
        passed = fire_times(armed.schedule, handled, at)
        if not passed:
            return []
        chosen = due(armed.schedule, handled, at)
        busy = self._in_progress(armed.pipeline) if chosen else None
        events: list[ev.Event] = []
        for fire in passed:
            if fire not in chosen:
                reason = f"missed while the scheduler was down (catchUp: {armed.schedule.catch_up})"
                events.append(ev.ScheduleSkipped(armed.pipeline, fire.timestamp(), reason, at=now))
            elif busy:
                reason = f"a run is in progress ({busy})"
                events.append(ev.ScheduleSkipped(armed.pipeline, fire.timestamp(), reason, at=now))
            else:
                events.append(self._fired(armed, fire, late=at - fire > GRACE, now=now))
        self._append(armed.pipeline, events)
        for event in events:
            armed = evolve(armed, event)
        self.armed[armed.pipeline] = armed
        self._launch(armed, [e for e in events if isinstance(e, ev.ScheduleFired)])
        return events

    def _fired(self, armed: Armed, fire: datetime, late: bool, now: float) -> ev.Event:
        """The firing of a spec file (a new run id), or of a service (a new request of
        its customer; skipped when the service refuses it, e.g. for want of inputs)."""
        if not armed.service_id:
            return ev.ScheduleFired(armed.pipeline, fire.timestamp(), uuid.uuid4().hex[:12], catch_up=late, at=now)
        try:
            request = self.launcher.request(armed.service_id, self._services[armed.service_id].customer_id)
        except EtlError as exc:
            reason = f"the service refused the request: {first_line(exc)}"
            return ev.ScheduleSkipped(armed.pipeline, fire.timestamp(), reason, at=now)
        return ev.ScheduleFired(armed.pipeline, fire.timestamp(), request_id=request, catch_up=late, at=now)

    def _launch(self, armed: Armed, fired: list[ev.ScheduleFired]) -> None:
        if not fired:
            return
        ids = [e.request_id or e.run_id for e in fired]
        label = f"request {ids[-1]}" if armed.service_id else f"run {ids[-1]}"
        self.running[armed.pipeline] = (label, self.launcher.start(armed, ids))

    def _in_progress(self, pipeline: str) -> str | None:
        """The run of ``pipeline`` in progress, if any: one this scheduler started that
        has not ended, or whichever run holds a live lease on the log."""
        label, handle = self.running.get(pipeline, ("", None))
        if handle is not None and handle.is_alive():
            return label
        self.running.pop(pipeline, None)
        lease = self.leases.live(pipeline)
        return f"run {lease.owner.run_id}" if lease is not None else None

    # --- services ----------------------------------------------------------------------

    def _read_services(self) -> None:
        for recorded in self.log.read_all(self._services_position, stream_prefix="service:"):
            self._services_position = recorded.position
            event = recorded.event
            if isinstance(event, ev.ServiceCreated) and isinstance(event.spec.get("schedule"), dict):
                self._services[event.service_id] = event

    def _arm_services(self, now: float) -> list[ev.Event]:
        self._read_services()
        events: list[ev.Event] = []
        for service_id, created in self._services.items():
            if service_id in self._services_seen:
                continue
            self._services_seen.add(service_id)
            try:
                schedule = Schedule.from_spec(Section(created.spec["schedule"], "schedule"))
                events += self._arm(Armed(str(created.spec.get("name")), schedule, service_id=service_id,
                                          handled=now))
            except (SpecError, ConcurrencyError) as exc:
                say(f"service {service_id}: schedule not armed: {first_line(exc)}")
        return events

    # --- the log -----------------------------------------------------------------------

    def _arm(self, armed: Armed) -> list[ev.Event]:
        held = self.armed.get(armed.pipeline)
        if held is not None and (held.schedule, held.spec, held.service_id) == \
                (armed.schedule, armed.spec, armed.service_id):
            return []
        schedule = armed.schedule
        event = ev.ScheduleArmed(armed.pipeline, schedule.expression, schedule.timezone, armed.spec,
                                 armed.service_id, catch_up=schedule.catch_up, at=armed.handled)
        self._append(armed.pipeline, [event])
        self.armed[armed.pipeline] = armed
        return [event]

    def _append(self, pipeline: str, events: list[ev.Event]) -> None:
        """Append to the schedule's stream; when another writer moved it on, re-read it
        (its state is then the log's) and raise ConcurrencyError."""
        stream = schedule_stream(pipeline)
        try:
            self._versions[stream] = self.log.append(stream, [ev.redacted(e) for e in events],
                                                     self._versions.get(stream, 0))
        except ConcurrencyError:
            self._recover(stream)
            raise

    def _recover(self, stream: str) -> None:
        """Fold the stream into the schedule it describes."""
        recorded = self.log.read(stream)
        self._versions[stream] = recorded[-1].version if recorded else 0
        armed = None
        for item in recorded:
            armed = evolve(armed, item.event)
            if isinstance(item.event, ev.ScheduleArmed) and item.event.service_id:
                self._services_seen.add(item.event.service_id)
        name = stream.split(":", 1)[1]
        if armed is None:
            self.armed.pop(name, None)
        else:
            self.armed[name] = armed

    def _row(self, armed: Armed, now: float) -> dict:
        schedule = armed.schedule
        return {"pipeline": armed.pipeline, "expression": schedule.expression, "timezone": schedule.timezone,
                "catchUp": schedule.catch_up, "source": armed.source, "spec": armed.spec,
                "serviceId": armed.service_id, "lastFired": iso(armed.fired) if armed.fired is not None else None,
                "nextFire": iso(_next(armed, now)), "running": self._in_progress(armed.pipeline)}


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _next(armed: Armed, now: float) -> float:
    return next_fire_time(armed.schedule, _utc(max(now, armed.handled))).timestamp()


def say(message: str) -> None:
    print(f"etl-actors scheduler: {message}", file=sys.stderr, flush=True)


class ThreadLauncher:
    """Starts what a scheduler fires on a thread per firing, so a tick never waits for
    a run: a spec file's pipeline with ``Pipeline.run(trigger="schedule")``, a service's
    request with the service runner. The runs of one firing go one after another.

    A run that fails is recorded by the run. One that cannot start (its spec file gone
    or now invalid, a run that took the lease meanwhile) is said on stderr and nothing
    is recorded for it.
    """

    def __init__(self, log_url: str, runtime: str = "ray"):
        self.log_url, self.runtime = log_url, runtime

    def request(self, service_id: str, customer_id: str) -> str:
        """A new request of the service (recorded in the log), run later by :meth:`start`."""
        from .service import runner

        return runner.create_request(EventLog(self.log_url), service_id, customer_id, trigger="schedule")

    def start(self, armed: Armed, ids: Sequence[str]) -> threading.Thread:
        """Run ``ids`` (run ids, or a service's request ids) in order on a new thread."""
        thread = threading.Thread(target=self._runs, args=(armed, list(ids)), daemon=True,
                                  name=f"schedule:{armed.pipeline}")
        thread.start()
        return thread

    def _runs(self, armed: Armed, ids: list[str]) -> None:
        for run in ids:
            try:
                self._run(armed, run)
            except Exception as exc:  # noqa: BLE001 - the scheduler outlives any run
                say(f"{armed.pipeline}: scheduled run {run} did not complete: {first_line(exc, with_type=True)}")

    def _run(self, armed: Armed, run: str) -> None:
        if armed.service_id:
            from .service import runner

            runner.execute(self.log_url, run, runtime=self.runtime)
            return
        with Pipeline.from_file(armed.spec) as pipeline:
            pipeline.run(self.log_url, runtime=self.runtime, trigger="schedule", run_id=run)
