"""Live leases: one run of a pipeline at a time, from any process, machine or cluster
that shares the event log.

A lease is a row of ``etl_leases`` beside the events: the run that holds it (its run
id, host, pid and the process's start time, and on Ray its supervisor actor and
cluster), the epoch (the fencing token every append checks), and ``expires_at``,
which the holder's heartbeat moves on every few seconds. Times come from the
database's clock, so machines with skewed clocks agree on when a lease expires.

A new run takes the lease when

- nobody holds it (never taken, or released at the end of a run);
- its holder is provably gone: on this host its process no longer exists (or the pid
  now belongs to another process), or on this Ray cluster its supervisor actor is
  dead (the caller says so through ``is_gone``);
- its heartbeat expired (``leaseTimeout``, default 30 s, without one);
- or with ``force``.

Otherwise it is refused with :class:`~etl_actors.errors.LeaseHeld`, naming the holder,
its run and since when. Acquisition happens under the log's write lock, so of two runs
started at the same moment exactly one gets the lease and the other that refusal.

    >>> leases = Leases(EventLog("sqlite:///.etl_actors/events.db"))    # doctest: +SKIP
    >>> grant = leases.acquire("orders", Owner.here("r1"), timeout=30)  # doctest: +SKIP
    >>> leases.renew("orders", grant.lease.epoch, timeout=30)           # doctest: +SKIP
    True
"""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa

from .db import is_postgres
from .errors import LeaseHeld
from .eventlog import EventLog, leases_table


@dataclass(frozen=True)
class Owner:
    """Who runs a pipeline: a run in a process on a host (and on Ray, an actor)."""

    run_id: str
    host: str
    pid: int
    started: float | None = None        # the process's start (clock ticks after boot), to tell a reused pid
    actor: str | None = None
    cluster: str | None = None

    @classmethod
    def here(cls, run_id: str, actor: str | None = None, cluster: str | None = None) -> "Owner":
        """This process, running ``run_id``."""
        pid = os.getpid()
        return cls(run_id, socket.gethostname(), pid, process_started(pid), actor, cluster)

    def describe(self) -> str:
        where = f"{self.host}:{self.pid}"
        return f"run {self.run_id} on {where}" + (f" (Ray actor {self.actor[:12]})" if self.actor else "")


@dataclass(frozen=True)
class Lease:
    pipeline: str
    epoch: int
    owner: Owner
    acquired_at: float
    heartbeat_at: float
    expires_at: float
    released: bool


@dataclass(frozen=True)
class Grant:
    """A lease just taken, and how: ``previous`` is the lease it replaced, ``reason``
    says why that one could be taken ('' when it was free)."""

    lease: Lease
    previous: Lease | None = None
    reason: str = ""


def process_started(pid: int) -> float | None:
    """When process ``pid`` started, in clock ticks after boot (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_gone(owner: Owner) -> bool:
    """Whether ``owner`` ran on this host and its process no longer exists (or its pid
    was taken by another process since)."""
    if owner.host != socket.gethostname():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    started = process_started(owner.pid)
    return owner.started is not None and started is not None and started != owner.started


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC, to the second (``2026-12-01T21:55:26Z``)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Leases:
    """The leases of the pipelines whose events live in ``log``."""

    def __init__(self, log: EventLog):
        self.log = log

    def now(self, conn: sa.Connection) -> float:
        """The database's clock, in epoch seconds."""
        if is_postgres(conn.engine):
            query = "SELECT extract(epoch from clock_timestamp())"
        else:
            query = "SELECT (julianday('now') - 2440587.5) * 86400.0"
        return float(conn.exec_driver_sql(query).scalar())

    def current(self, pipeline: str) -> Lease | None:
        """The pipeline's lease row, live or not; None when it never had one."""
        with self.log._engine.connect() as conn:
            return _lease(conn, pipeline)

    def live(self, pipeline: str) -> Lease | None:
        """The pipeline's lease while a run holds it: not released, its holder's
        process not provably gone, not expired by the database's clock."""
        with self.log._engine.connect() as conn:
            lease, now = _lease(conn, pipeline), self.now(conn)
        if lease is None or lease.released or process_gone(lease.owner) or lease.expires_at <= now:
            return None
        return lease

    def acquire(self, pipeline: str, owner: Owner, timeout: float, min_epoch: int = 0, force: bool = False,
                is_gone: Callable[[Owner], bool] = process_gone) -> Grant:
        """Take the pipeline's lease for ``owner`` (see the module docstring) with an
        epoch above the last one and above ``min_epoch``; raise LeaseHeld when a live
        run holds it."""
        with self.log.write_transaction() as conn:
            now = self.now(conn)
            previous = _lease(conn, pipeline)
            reason = self._takeover(previous, now, force, is_gone) if previous is not None else ""
            epoch = max(previous.epoch if previous else 0, min_epoch) + 1
            row = {"pipeline": pipeline, "epoch": epoch, "run_id": owner.run_id, "owner_host": owner.host,
                   "owner_pid": owner.pid, "owner_started": owner.started, "owner_actor": owner.actor,
                   "owner_cluster": owner.cluster, "acquired_at": now, "heartbeat_at": now,
                   "expires_at": now + timeout, "released": False}
            if previous is None:
                conn.execute(leases_table.insert().values(**row))
            else:
                conn.execute(leases_table.update().where(leases_table.c.pipeline == pipeline).values(**row))
        lease = Lease(pipeline, epoch, owner, now, now, now + timeout, False)
        return Grant(lease, previous if previous is not None and not previous.released else None, reason)

    def refuse_early(self, pipeline: str) -> None:
        """Raise LeaseHeld now if a live run outside any Ray cluster holds the lease
        (so a run on Ray is refused before Ray and its actors start); a lease held by a
        Ray supervisor is left to the supervisor, which can tell whether that one lives."""
        with self.log._engine.connect() as conn:
            held, now = _lease(conn, pipeline), self.now(conn)
        if held is not None and held.owner.actor is None:
            self._takeover(held, now, False, process_gone)

    def _takeover(self, held: Lease, now: float, force: bool, is_gone: Callable[[Owner], bool]) -> str:
        """Why ``held`` may be taken over ('' when it was released); raise LeaseHeld when
        it may not."""
        if held.released:
            return ""
        if force:
            return f"taken over with --force from {held.owner.describe()}"
        if is_gone(held.owner):
            return f"its supervisor ({held.owner.describe()}) was lost"
        if held.expires_at <= now:
            return (f"its lease expired: no heartbeat from {held.owner.describe()} "
                    f"for {now - held.heartbeat_at:.0f} s")
        raise LeaseHeld(
            f"pipeline {held.pipeline!r} is already running: {held.owner.describe()} since "
            f"{iso(held.acquired_at)} (last heartbeat {max(0.0, now - held.heartbeat_at):.0f} s ago; its lease "
            f"expires in {held.expires_at - now:.0f} s if no other comes); wait for it to end, or take it "
            f"over with `etl-actors run --force`",
            pipeline=held.pipeline, owner=held.owner.describe(), since=iso(held.acquired_at))

    def renew(self, pipeline: str, epoch: int, timeout: float) -> bool:
        """Move the lease's expiry on; False when it is no longer this epoch's."""
        with self.log.write_transaction() as conn:
            now = self.now(conn)
            t = leases_table
            done = conn.execute(t.update().where(t.c.pipeline == pipeline, t.c.epoch == epoch, ~t.c.released)
                                .values(heartbeat_at=now, expires_at=now + timeout))
            return done.rowcount == 1

    def release(self, pipeline: str, epoch: int) -> None:
        """End the lease of ``epoch`` (a later epoch's lease is left alone)."""
        with self.log.write_transaction() as conn:
            t = leases_table
            conn.execute(t.update().where(t.c.pipeline == pipeline, t.c.epoch == epoch).values(released=True))


def _lease(conn: sa.Connection, pipeline: str) -> Lease | None:
    row = conn.execute(sa.select(leases_table).where(leases_table.c.pipeline == pipeline)).first()
    if row is None:
        return None
    owner = Owner(row.run_id, row.owner_host, row.owner_pid, row.owner_started, row.owner_actor, row.owner_cluster)
    return Lease(row.pipeline, row.epoch, owner, row.acquired_at, row.heartbeat_at, row.expires_at,
                 bool(row.released))


class Heartbeat:
    """Renews a lease every ``interval`` seconds on a thread of its own (so a busy
    event loop cannot starve it) until stopped; calls ``on_lost`` once if the lease
    turns out to be someone else's. A renewal that fails (the log unreachable for a
    moment) is tried again at the next beat; the lease expires if none succeeds."""

    def __init__(self, leases: Leases, lease: Lease, timeout: float, on_lost: Callable[[], None]):
        self.leases, self.lease, self.timeout, self.on_lost = leases, lease, timeout, on_lost
        self.interval = max(0.2, min(5.0, timeout / 6))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease:{lease.pipeline}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                alive = self.leases.renew(self.lease.pipeline, self.lease.epoch, self.timeout)
            except Exception:  # noqa: BLE001 - try again at the next beat
                continue
            if not alive:
                self.on_lost()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
