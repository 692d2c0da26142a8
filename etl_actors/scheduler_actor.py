"""The scheduler on Ray: one detached, named actor per event log that ticks by itself
(:class:`SchedulerActor`, :func:`ensure_scheduler`), and ``etl-actors schedule`` which
arms spec files in it, lists and disarms (:func:`schedule_command`). The scheduling
itself, and its guarantees, are :mod:`etl_actors.scheduler`'s.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from . import events as ev
from .errors import EtlError, UsageError, first_line
from .eventlog import EventLog, check_durable
from .pipeline import check_ray_address, ensure_ray, resolve_log_url
from .redaction import redact_url
from .scheduler import ACTOR_PREFIX, Scheduler, say, scheduler_name, scheduled_spec


MAX_SLEEP_S = 1.0       # the actor looks for new services and disarms at least this often
CALL_TIMEOUT_S = 60.0


# --- on Ray ------------------------------------------------------------------------------

class SchedulerActor:
    """A :class:`Scheduler` on Ray that ticks by itself: it sleeps until the earliest
    next fire time (at most ``MAX_SLEEP_S``) and fires. Every call to the scheduler runs
    on one worker thread, so ticks, arms and disarms never interleave and the event
    loop stays free. May be restarted: ``__init__`` recovers from the log, and every
    method may be retried."""

    def __init__(self, log_url: str):
        self.log_url = log_url
        self.scheduler = Scheduler(log_url)
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler")
        self._loop = asyncio.get_event_loop().create_task(self._tick_forever())

    async def _call(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._calls, fn, *args)

    async def _tick_forever(self) -> None:
        while True:
            delay = MAX_SLEEP_S
            try:
                await self._call(self.scheduler.tick)
                earliest = await self._call(self.scheduler.next_fire)
                if earliest is not None:
                    delay = min(MAX_SLEEP_S, max(0.0, earliest - time.time()))
            except Exception as exc:  # noqa: BLE001 - the log may be out of reach for a while
                say(f"tick failed, trying again: {first_line(exc, with_type=True)}")
            await asyncio.sleep(delay)

    async def arm(self, paths: list[str]) -> list[dict]:
        return await self._call(self.scheduler.arm, paths)

    async def disarm(self, pipeline: str) -> bool:
        return await self._call(self.scheduler.disarm, pipeline)

    async def list(self) -> list[dict]:
        rows = await self._call(self.scheduler.next_fire_times)
        return [{**row, "log": redact_url(self.log_url)} for row in rows]

    async def tick(self, now: float) -> list[ev.Event]:
        """For tests: handle the fire times up to ``now`` as if the clock said so."""
        return await self._call(self.scheduler.tick, now)


def ensure_scheduler(log_url: str):
    """The handle of the scheduler actor of ``log_url``, created when missing: detached
    (it outlives its creator and lives as long as the cluster), named by the log, in the
    ``etl_actors`` namespace, restarted whenever it dies. Connects to Ray first if this
    process has not (:func:`~etl_actors.pipeline.ensure_ray`)."""
    import ray

    from .runtime.actors import NAMESPACE

    ensure_ray()
    actor = ray.remote(SchedulerActor).options(
        name=scheduler_name(log_url), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=2, num_cpus=0)
    return actor.remote(log_url)


# --- the command -------------------------------------------------------------------------

def schedule_command(args) -> int:
    """``etl-actors schedule SPEC... | --list | --stop NAME`` (see the module docstring)."""
    if sum((bool(args.specs), args.list, args.stop is not None)) != 1:
        raise UsageError("give spec files to arm, or --list, or --stop NAME (one of them)")
    if args.list:
        return _list(args)
    log_url = resolve_log_url(args.log)
    check_durable(log_url)
    if args.stop is not None:
        return _stop(args.stop, log_url)
    EventLog(log_url)   # an unreachable log is said here, not by an actor that keeps restarting
    paths = [os.path.abspath(path) for path in args.specs]
    for path in paths:
        scheduled_spec(path)
    _connect(start=True)
    rows = _get(ensure_scheduler(log_url).arm.remote(paths))
    for row in rows:
        if row["reused"]:
            _tell(f"{row['pipeline']} was already armed with this schedule")
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(f"{row['pipeline']}: {row['expression']!r} {row['timezone']}, next {row['nextFire']}")
    _tell(f"armed by scheduler {scheduler_name(log_url)} (log {redact_url(log_url)}); it keeps firing after "
          "this command ends: `etl-actors schedule --list`, `--stop NAME`")
    return 0


def _list(args) -> int:
    """Every scheduler's schedules on the cluster (only the one of ``--log`` if given)."""
    rows: list[dict] = []
    if _connect(start=False):
        import ray

        from .runtime.actors import NAMESPACE

        wanted = scheduler_name(resolve_log_url(args.log)) if args.log else None
        for actor in ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"]
            if actor["namespace"] == NAMESPACE and name.startswith(ACTOR_PREFIX) and wanted in (None, name):
                rows += _get(ray.get_actor(name, namespace=NAMESPACE).list.remote())
    if args.json:
        _print_json(rows)
    elif not rows:
        _tell("no schedules are armed")
    else:
        _print_table(rows)
    return 0


def _stop(pipeline: str, log_url: str) -> int:
    import ray

    from .runtime.actors import NAMESPACE

    where = f"log {redact_url(log_url)}"
    if not _connect(start=False):
        raise EtlError(f"no Ray cluster is running, so no schedule is armed ({where})")
    try:
        scheduler = ray.get_actor(scheduler_name(log_url), namespace=NAMESPACE)
    except ValueError:
        raise EtlError(f"no scheduler runs for {where} on this Ray cluster") from None
    if not _get(scheduler.disarm.remote(pipeline)):
        raise EtlError(f"no schedule is armed for pipeline {pipeline!r} ({where})")
    print(f"{pipeline}: disarmed")
    return 0


def _print_table(rows: list[dict]) -> None:
    columns = ("pipeline", "expression", "timezone", "catchUp", "nextFire", "lastFired", "running", "source")
    table = [[str(row.get(c) or "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    for line in [list(columns), *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _print_json(data) -> None:
    import json

    print(json.dumps(data), flush=True)


def _tell(message: str) -> None:
    print(f"etl-actors: {message}", file=sys.stderr, flush=True)


def _get(ref, timeout: float = CALL_TIMEOUT_S):
    """``ray.get`` that raises the actor's own error, not Ray's wrapper."""
    import ray

    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, Exception) else exc) from None


def _connect(start: bool) -> bool:
    """Connect to a Ray cluster the detached scheduler outlives this command in: the
    one at ``RAY_ADDRESS``, else the one the last ``ray start`` on this machine began;
    with ``start``, start one (``ray start --head``) when neither answers. False when
    there is none and ``start`` is not given."""
    import ray

    if ray.is_initialized():
        return True
    if os.environ.get("RAY_ADDRESS"):
        ensure_ray()
        return True
    address = _started_cluster()
    if address is None:
        if not start:
            return False
        address = _start_cluster()
    ensure_ray(address=address)
    return True


def _started_cluster() -> str | None:
    """The address the last ``ray start --head`` here wrote, if it still answers (a
    plain ``ray.init(address="auto")`` would also attach to any Ray it finds running,
    such as another program's private one)."""
    from ray._private.utils import read_ray_address   # private: pinned with ray==2.60.0

    address = read_ray_address()
    if not address:
        return None
    try:
        check_ray_address(address, timeout_s=2.0)
    except EtlError:
        return None
    return address


def _start_cluster() -> str:
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    command = [ray_bin if os.path.exists(ray_bin) else shutil.which("ray") or "ray", "start", "--head",
               f"--num-cpus={os.cpu_count() or 1}", "--include-dashboard=false", "--disable-usage-stats"]
    _tell("no Ray cluster is running: starting one with `ray start --head` (it stays up for the scheduler; "
          "`ray stop` ends it)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    address = _started_cluster()
    if done.returncode != 0 or address is None:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise EtlError(f"`ray start --head` failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return address
