"""The pipeline supervisor: the single writer of its pipeline's event stream.

On start it replays the stream (watermarks, run history, the last lease epoch). A run
takes the lease with the next epoch, reads every partition from its committed
position, keeps at most ``max_in_flight`` batches between extraction and commit,
and commits positions in order: a partition's watermark advances to the highest
position below which every batch is loaded.

Children are reached through a :class:`Children` implementation (in-process threads
in :mod:`.local`, Ray actors in :mod:`.actors`); batches travel between them as
references the supervisor never opens.
"""
from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import deque
from typing import Any, Mapping, Protocol

from .. import alerts
from .. import usage as usage_module
from .. import events as ev
from ..batch import DeadLetter, jsonable
from ..errors import ConcurrencyError, EtlError, LeaseLost, TerminalError, first_line
from ..eventlog import EventLog
from ..leases import Heartbeat, Leases, Owner, process_gone
from ..projections import runs as runs_projection
from ..projections import snapshots
from ..projections import streams as streams_projection
from ..projections import watermarks as watermarks_projection
from ..spec import PipelineSpec
from ..batch import is_done as _is_done
from .graph import chained, first_children, plan
from .retry import delay, is_transient
from .stages import split_chain


class ChildLost(EtlError):
    """A child process died while holding a call; ``child`` names it."""

    def __init__(self, child: str, reason: str):
        super().__init__(f"{child} was lost: {reason}", child=child, reason=reason)


class Children(Protocol):
    """How a supervisor reaches its children, of the kinds in :data:`.graph.STAGES`.
    A table travels as whatever carries it (the table itself in-process, an ObjectRef
    on Ray). Calls raise :class:`ChildLost` when the child died; :meth:`restart`
    replaces it."""

    def cpus(self) -> int: ...
    async def start(self, counts: Mapping[str, int]) -> None:
        """Have ``counts[kind]`` children of each kind ready, each with fresh state for a
        new run (a child kept from an earlier run is reset, not started again)."""
    async def call(self, kind: str, index: int, method: str, *args, returns: int = 1, resolve: int = 0) -> Any:
        """``method(*args)`` on child ``kind#index``; with ``returns > 1`` a tuple whose
        item ``resolve`` is a value and the rest carry tables."""
    async def restart(self, kind: str, index: int) -> None: ...
    def generation(self, kind: str, index: int) -> int: ...
    async def stop(self) -> None:
        """The run is over: release connections and files; children may stay warm."""

    async def shutdown(self) -> None:
        """End every child."""


class PartitionCommits:
    """The batches of one partition in extraction order; commits the loaded prefix."""

    def __init__(self):
        self.order: deque[str] = deque()
        self.loaded: dict[str, Any] = {}

    def extracted(self, batch_id: str) -> None:
        self.order.append(batch_id)

    def mark_loaded(self, batch_id: str, position: Any) -> tuple[bool, Any]:
        """Record a loaded batch; return ``(advanced, position)`` of the new commit."""
        self.loaded[batch_id] = position
        advanced, committed = False, None
        while self.order and self.order[0] in self.loaded:
            committed = self.loaded.pop(self.order.popleft())
            advanced = True
        return advanced, committed


class PipelineSupervisor:
    """Plans and drives the runs of one pipeline; see the module docstring."""

    def __init__(self, spec: PipelineSpec, log_url: str, children_factory, listeners=(),
                 identity: dict | None = None):
        self.spec = spec
        self.listeners = list(listeners)   # called with each appended event (metrics, logs)
        self.log = EventLog(log_url)
        self.log_url = log_url
        self.leases = Leases(self.log)
        self.identity = identity or {}     # on Ray: {"actor": id, "cluster": session} of this supervisor
        self.children = children_factory(spec, log_url)   # kept warm between runs
        self._stopping, self._stop_reason = False, "stopped on request"
        self.log_cost = [0, 0.0]            # events appended and seconds spent appending, this run
        self._current: str | None = None
        self.lease, self._heartbeat, self._lease_lost = None, None, None
        self.alert_options = spec.alerts or alerts.AlertOptions()
        self._deliveries: set[asyncio.Task] = set()
        self._deciding = False
        self.recover()

    def __repr__(self) -> str:
        return f"PipelineSupervisor[{self.spec.name}]"

    # --- state from the log ---------------------------------------------------------

    def recover(self) -> None:
        """Resume from the stream's newest snapshot and fold the events after it (see
        :mod:`..projections.snapshots`): version, lease epoch, spec digest, watermarks,
        run history, last checkpoint, alert state."""
        state = snapshots.recover(self.log, self.spec.name, self.alert_options)
        self.version, self.epoch, self.digest = state.version, state.epoch, state.digest
        self.watermarks, self.runs, self.checkpoint = state.watermarks, state.runs, state.checkpoint
        self.alerts, self._snapshot_at = state.alerts, state.snapshot

    def append(self, *events: ev.Event, snapshot: tuple | None = None, letters: tuple | None = None,
               redriven: tuple | None = None) -> None:
        """Append to the stream at the version this supervisor holds, fenced by its
        lease while a run holds one; fold the events, then tell the listeners (a
        listener that fails is reported, and changes neither the log nor the folds).
        Once more than ``snapshots.EVERY`` events were appended since the last
        snapshot, the folded state follows as one (in an append of its own)."""
        events = tuple(ev.redacted(e) for e in events)
        fence = (self.spec.name, self.lease.epoch) if self.lease is not None else None
        started = time.perf_counter()
        self.version = self.log.append(self.spec.stream, list(events), expected_version=self.version, fence=fence,
                                       snapshot=snapshot, letters=letters, redriven=redriven)
        self.log_cost[0] += len(events)
        self.log_cost[1] += time.perf_counter() - started
        failed = 0
        for event in events:
            self.watermarks = watermarks_projection.evolve(self.watermarks, event)
            self.runs = runs_projection.evolve(self.runs, event)
            self.checkpoint = streams_projection.evolve(self.checkpoint, event)
            self.alerts = alerts.evolve(self.alerts, event, self.alert_options)
            failed += alerts.failures(event)
        if self.version - self._snapshot_at > snapshots.EVERY:
            self.version = self._snapshot_at = snapshots.save_in(self.log, self.spec.stream, snapshots.PipelineState(
                self.version, self.epoch, self.digest, self.watermarks, self.runs, self.checkpoint, self.alerts),
                fence)
        if (failed or self.alerts.open is not None) and not self._deciding:
            self._alert()
        for event in events:
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception as exc:  # noqa: BLE001 - metrics and logs are best effort
                    print(f"etl-actors: listener {listener!r} failed on {event.type}: {exc!r}", file=sys.stderr)

    # --- alerts ----------------------------------------------------------------------

    def _alert(self) -> None:
        """Raise an alert once failures in the window pass the threshold, resolve it
        when they fall below (appended as facts), and post either to the webhook in
        the background."""
        opened = self.alerts.open
        decision = alerts.decide(self.alerts, self.spec.name, time.time(), self.alert_options)
        if decision is None:
            return
        self._deciding = True
        try:
            self.append(decision)
        finally:
            self._deciding = False
        webhook = self.alert_options.webhook
        if webhook:
            raised = opened if isinstance(decision, ev.AlertResolved) else None
            try:
                task = asyncio.get_running_loop().create_task(self._deliver(webhook, decision, raised))
            except RuntimeError:   # no loop here (a synchronous caller): deliver at once
                asyncio.run(self._deliver(webhook, decision, raised))
                return
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, webhook: str, alert, raised) -> None:
        delivered = await alerts.deliver(webhook, alert, raised=raised)
        try:
            self.append(delivered)
        except EtlError:
            pass   # the run ended and another holds the log: the receipt is the webhook's

    async def _delivered(self, timeout: float = 30.0) -> None:
        """Wait (a while) for the alert webhooks still being posted."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout)

    # --- the lease ------------------------------------------------------------------

    def _take_lease(self, run_id: str, force: bool) -> None:
        """Take the pipeline's lease for ``run_id`` (refused with LeaseHeld while another
        run's is live), record it, and keep it alive with a heartbeat."""
        name, timeout = self.spec.name, self.spec.runtime.lease_timeout
        owner = Owner.here(run_id, self.identity.get("actor"), self.identity.get("cluster"))
        grant = self.leases.acquire(name, owner, timeout, min_epoch=self.epoch, force=force, is_gone=self._gone)
        self.recover()
        self.lease, self.epoch, self._lease_lost = grant.lease, grant.lease.epoch, None
        try:
            self.append(*self._opening(owner, grant))
        except BaseException:
            self._release_lease()
            raise
        self._heartbeat = Heartbeat(self.leases, grant.lease, timeout, self._on_lease_lost)

    def _gone(self, owner: Owner) -> bool:
        """Whether the lease's holder is provably gone: its process on this host no
        longer exists, or it was a supervisor actor on this Ray cluster (this one holds
        the pipeline's unique actor name now, so that one is dead, or it was this
        actor before Ray restarted it)."""
        mine = self.identity.get("cluster")
        return process_gone(owner) or bool(mine and owner.actor and owner.cluster == mine)

    def _on_lease_lost(self) -> None:
        self._lease_lost = LeaseLost(self.spec.name, self.lease.epoch if self.lease else 0)

    def _release_lease(self) -> None:
        heartbeat, lease = self._heartbeat, self.lease
        self._heartbeat = self.lease = None
        if heartbeat is not None:
            heartbeat.stop()
        if lease is not None:
            try:
                self.leases.release(lease.pipeline, lease.epoch)
            except EtlError:
                pass  # the lease then expires on its own

    def _opening(self, owner: Owner, grant) -> list[ev.Event]:
        name = self.spec.name
        previous = grant.previous.owner.describe() if grant.previous is not None else ""
        opening: list[ev.Event] = [ev.LeaseAcquired(pipeline=name, epoch=self.epoch, owner=owner.describe(),
                                                    run_id=owner.run_id, previous=previous, reason=grant.reason)]
        why = grant.reason or "the run's supervisor was lost"
        for run in self.runs.unfinished(name):
            opening.append(ev.RunFailed(run_id=run.run_id, error=f"interrupted: {why}"))
        if self.digest != self.spec.digest:
            opening.append(ev.PipelineDefined(
                pipeline=name, digest=self.spec.digest, source=self.spec.source.describe(),
                destination=self.spec.destination.describe(),
                steps=[{"id": s.id, "type": s.type} for s in self.spec.transformations], plan=plan(self.spec),
                sinks=[s.describe() for s in self.spec.sinks]))
            self.digest = self.spec.digest
        return opening

    async def backoff(self, run_id: str, stage: str, exc: BaseException, attempt: int) -> None:
        """Wait before trying a transient failure again (``RetryScheduled``); raise it
        when it is not transient or ``maxRetries`` attempts have failed."""
        limit = self.spec.runtime.max_retries
        if not is_transient(exc) or attempt > limit:
            raise exc
        wait = delay(attempt, getattr(exc, "retry_after", None))
        self.append(ev.RetryScheduled(run_id=run_id, stage=stage, error=first_line(exc), attempt=attempt,
                                      limit=limit, delay=round(wait, 3)))
        await asyncio.sleep(wait)

    def record_failure(self, run_id: str, exc: BaseException, abandoned: str, metrics, usage=None) -> None:
        """Append ``RunFailed`` for ``exc`` (for a Ctrl-C: saying what was ``abandoned``),
        just after the run's ``UsageRecorded`` (a failed run used resources too):
        ``usage()``, by default the figures of the run's summary; fenced out, record
        nothing (the run now holding the lease recorded the end)."""
        if isinstance(exc, ConcurrencyError):
            self._lease_lost = self._lease_lost or exc
            return
        if isinstance(exc, asyncio.CancelledError):  # the local runner's Ctrl-C
            message = f"interrupted (Ctrl-C): {abandoned}"
        else:
            message = str(exc) if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
        used = usage() if usage is not None else usage_module.run_usage(self.runs.by_id[run_id])
        try:
            self.append(*self.quality_report(run_id), used,
                        ev.RunFailed(run_id=run_id, error=message or type(exc).__name__, metrics=metrics()))
        except ConcurrencyError:
            pass

    def quality_report(self, run_id: str) -> list[ev.Event]:
        """The run's ``QualityReported`` (folded from its batches), when a validation
        step ran; appended just before the run's end."""
        run = self.runs.by_id.get(run_id)
        if run is None or not run.quality:
            return []
        q = run.quality
        return [ev.QualityReported(run_id=run_id, total=q["total"], passed=q["passed"], failed=q["failed"],
                                   warnings=q["warnings"], rules=q["rules"])]

    # --- control --------------------------------------------------------------------

    def status(self) -> dict:
        last = self.runs.last(self.spec.name)
        lease = self.lease
        status = {"pipeline": self.spec.name, "running": self._current is not None, "runId": self._current,
                  "owner": lease.owner.describe() if lease else None, "since": lease.acquired_at if lease else None,
                  "watermark": self.spec.source.view_watermark(self.watermarks),
                  "lastRun": runs_projection.summary(last, self.spec.source.view_watermark) if last else None}
        if self.spec.is_stream:
            status["stream"] = streams_projection.view(self.checkpoint)
        return status

    def stop(self, reason: str = "stopped on request") -> None:
        """Finish the batches in flight, then end the run without reading more; the run
        fails with ``reason``."""
        self._stopping = True
        self._stop_reason = reason

    async def shutdown(self) -> None:
        await self.children.shutdown()

    # --- a run ----------------------------------------------------------------------

    async def run(self, trigger: str = "manual", run_id: str | None = None, reset: bool = False,
                  force: bool = False, until_idle: float | None = None, redrive: dict | None = None) -> dict:
        """Run the pipeline once from its committed watermark (from the very start of
        the source with ``reset``); return the run summary. With ``redrive``
        (``{"run": id or None, "stage": stage or None}``) the run reads the pending
        dead letters instead (trigger ``redrive``); see :mod:`etl_actors.sources.dead_letters`.

        Raises :class:`~etl_actors.errors.LeaseHeld` (and runs nothing) while another
        run of the pipeline holds a live lease, unless ``force``."""
        run_id = run_id or uuid.uuid4().hex[:12]
        self.log_cost = [0, 0.0]
        self._take_lease(run_id, force)
        try:
            self._stopping = False
            if reset:
                self.append(ev.WatermarkReset(pipeline=self.spec.name, reason=f"{trigger}: run from the start"))
            self._current = run_id
            if self.spec.is_stream:
                from .stream import StreamRun

                await StreamRun(self, run_id, trigger, until_idle).execute()
            else:
                await _Run(self, run_id, trigger, self._redrive_source(redrive)).execute()
        except ConcurrencyError:
            pass  # fenced out before the run began: the summary below says what the log says
        finally:
            self._current = None
            try:
                await self._delivered()
            finally:
                self._release_lease()
        if self._lease_lost is not None or run_id not in self.runs.by_id:
            self.recover()      # taken over: the new holder recorded how this run ended
        if run_id not in self.runs.by_id:
            raise self._lease_lost or LeaseLost(self.spec.name, self.epoch)
        summary = self.summary(run_id)
        summary["eventLog"] = {"events": self.log_cost[0], "appendMs": round(self.log_cost[1] * 1000, 1)}
        return summary

    def summary(self, run_id: str) -> dict:
        return runs_projection.summary(self.runs.by_id[run_id], self.spec.source.view_watermark)

    def _redrive_source(self, redrive: dict | None):
        """The dead-letter store as the source of a redrive run: the stages the current
        spec can take letters back at are the loaders and the steps before any
        blocking one (a letter of a step no longer in the spec waits)."""
        if redrive is None:
            return None
        from ..sources.dead_letters import DeadLetterSource

        before, blocking, _ = split_chain(self.spec.transformations)
        stages = ["load"] + [f"load:{i}" for i in range(1, len(self.spec.sinks))]
        if blocking is None:   # into an aggregate, letters would make an aggregate of themselves alone
            stages += [f"transform:{s.id}" for s in before]
        return DeadLetterSource(log_url=self.log_url, pipeline=self.spec.name, run_id=redrive.get("run"),
                                stage=redrive.get("stage"), stages=tuple(stages),
                                until_id=self.log.last_dead_letter_id(self.spec.name))


class _Run:
    """One run's moving parts; lives only while the run does."""

    def __init__(self, sup: PipelineSupervisor, run_id: str, trigger: str, redrive_source=None):
        self.sup, self.spec, self.run_id, self.trigger = sup, sup.spec, run_id, trigger
        self.redrive = redrive_source is not None
        self.source = redrive_source if self.redrive else self.spec.source
        self.children: Children = sup.children
        self.before, self.blocking, self.after = split_chain(self.spec.transformations)
        self.chained = chained(self.spec)    # the extractors run the steps; no transformers
        self.deferred = self.blocking is not None or any(s.commits_at_finish for s in self.spec.sinks)
        self.commits: dict[str, PartitionCommits] = {}
        self.last_loaded: dict[str, Any] = {}
        self.partials: list = []
        self.restarts: dict[str, int] = {}
        self.restart_locks: dict[str, asyncio.Lock] = {}
        self.transformer_load: list[int] = []
        self.slots: asyncio.Semaphore | None = None
        self.tasks: set[asyncio.Task] = set()
        self.failure: BaseException | None = None
        self.failed_partitions: list[str] = []

    async def execute(self) -> None:
        """Start the children, then the clock: ``RunStarted`` is appended once every
        child is up, so a run's duration is its work, not its actors' start-up."""
        sup, spec = self.sup, self.spec
        sup.append(ev.RunRequested(pipeline=spec.name, run_id=self.run_id, trigger=self.trigger,
                                   spec=spec.spec_file))
        requested_at, partitions, total = ev.now(), [], None
        watermark = dict(sup.watermarks)

        def started(at: float) -> ev.RunStarted:
            return ev.RunStarted(pipeline=spec.name, run_id=self.run_id, epoch=sup.epoch, watermark=watermark,
                                 partitions=list(partitions), total_bytes=total, at=at, trigger=self.trigger)

        try:  # listing the source may fail too (a missing folder): that is a failed run
            partitions, sizes = await self._list()
            total = sum(sizes) if partitions and all(s is not None for s in sizes) else None
            await self._start_children(len(partitions))
            sup.append(started(ev.now()))
            await self._execute(partitions)
        except BaseException as exc:  # noqa: BLE001 - every failure ends the run in the log
            if self.run_id not in sup.runs.by_id:
                sup.append(started(requested_at))
            await self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            await self.children.stop()

    async def _list(self) -> tuple[list[str], list[int | None]]:
        """The partitions to read and their sizes; a transient failure (a store that
        answers 503, a dropped connection) is tried again with backoff, like a read."""
        attempt = 0
        while True:
            try:
                partitions = self.source.partitions({} if self.redrive else self.sup.watermarks)
                return partitions, [self.source.estimate_bytes(p) for p in partitions]
            except EtlError as exc:
                attempt += 1
                await self.sup.backoff(self.run_id, "list", exc, attempt)

    async def _start_children(self, n_partitions: int) -> None:
        self.n_extractors = max(1, min(self.spec.runtime.extractors or self.children.cpus(), n_partitions))
        counts = {**first_children(self.spec, self.children.cpus), "extractor": self.n_extractors}
        await self.children.start({kind: n for kind, n in counts.items() if n})
        self.transformer_load = [0] * counts["transformer"]
        if self.redrive:
            for i in range(self.n_extractors):
                await self.children.call("extractor", i, "use_source", self.source)

    async def _execute(self, partitions: list[str]) -> None:
        runtime = self.spec.runtime
        self.slots = asyncio.Semaphore(runtime.max_in_flight)
        self.sup.append(ev.PhaseStarted(run_id=self.run_id, phase="extract"))
        queue = deque(partitions)
        readers = [asyncio.create_task(self._read(i, queue)) for i in range(self.n_extractors)]
        await self._gather(readers)
        await self._drain()
        if self.failed_partitions:
            count = len(self.failed_partitions)
            raise TerminalError(("" if count == 1 else f"{count} partitions could not be read: ")
                                + "; ".join(self.failed_partitions))
        if self.blocking is not None and not self.redrive:
            await self._finish_blocking()
        self.sup.append(ev.PhaseStarted(run_id=self.run_id, phase="finish"))
        await asyncio.gather(*(self._call("loader", i, lambda i=i: self.children.call("loader", i, "finish"))
                               for i in range(len(self.spec.sinks))))
        if self.deferred and not self.redrive:
            self.sup.append(*[ev.WatermarkCommitted(run_id=self.run_id, partition=p, position=pos,
                                                    done=_is_done(pos))
                              for p, pos in self.last_loaded.items()])
        if self.sup._stopping:
            self.sup._stopping = False
            raise EtlError(f"{self.sup._stop_reason}: ended after the batches in flight were committed")
        self.sup.append(*self.sup.quality_report(self.run_id), usage_module.run_usage(self.sup.runs.by_id[self.run_id]),
                        ev.RunSucceeded(run_id=self.run_id, metrics=self._metrics()))

    def _metrics(self) -> dict:
        return runs_projection.summary(self.sup.runs.by_id[self.run_id])

    async def _gather(self, tasks: list[asyncio.Task]) -> None:
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    async def _drain(self) -> None:
        while self.tasks:
            done, _ = await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                self.tasks.discard(task)
                if task.exception() is not None:
                    for other in self.tasks:
                        other.cancel()
                    raise task.exception()

    # --- extraction -------------------------------------------------------------------

    async def _read(self, index: int, queue: deque) -> None:
        while queue and not self.sup._stopping and self.failure is None:
            partition = queue.popleft()
            position = None if self.redrive else self.sup.watermarks.get(partition)
            self.commits[partition] = PartitionCommits()
            try:
                await self._call("extractor", index, lambda: self._open(index, partition, position))
                await self._read_partition(index, partition, position)
            except TerminalError as exc:
                if getattr(exc, "partition", None) != partition or exc is self.failure:
                    raise
                self._partition_failed(partition, position, exc)

    def _partition_failed(self, partition: str, position: Any, exc: TerminalError) -> None:
        """A partition the source cannot read (a file that is not what it says) fails
        alone: what it loaded stays committed, its position stays before the failure, and
        the other partitions go on. With the source's ``errorHandling: continue`` it is a
        dead letter of stage ``extract`` and the run can succeed; otherwise the run fails
        once the others are done, naming it."""
        reason = str(exc)
        skipped = self.source.error_handling == "continue"
        if skipped:
            letter = DeadLetter(reason, {"_file": partition, "_position": jsonable(position)})
            self.sup.log.put_dead_letters(self.spec.name, self.run_id, f"{partition}@{self.run_id}", "extract",
                                          [letter])
        else:
            self.failed_partitions.append(f"{partition}: {reason}")
        self.sup.append(ev.PartitionFailed(run_id=self.run_id, partition=partition, error=reason, skipped=skipped))

    async def _read_partition(self, index: int, partition: str, position: Any) -> None:
        while not self.sup._stopping:
            await self.slots.acquire()
            if self.failure is None and self.sup._lease_lost is not None:
                self.failure = self.sup._lease_lost
            if self.failure is not None:
                self.slots.release()
                raise self.failure
            try:
                report, ref = await self._next(index, partition, position)
            except BaseException:
                self.slots.release()
                raise
            if report is None:
                self.slots.release()
                return
            position = report["position"]
            self.commits[partition].extracted(report["batch_id"])
            events: list[ev.Event] = [ev.BatchExtracted(
                run_id=self.run_id, batch_id=report["batch_id"], partition=partition, rows=report["rows"],
                bytes=report["bytes"], rejected=report["rejected"])]
            if report["rejected"]:
                events.append(ev.RecordsRejected(run_id=self.run_id, batch_id=report["batch_id"], stage="extract",
                                                 count=report["rejected"], reason=report["reject_reason"]))
            if "transformed" in report:      # chained: the extractor ran the steps too
                events += self._transform_events(report["batch_id"], report["transformed"])
            self.sup.append(*events)
            task = asyncio.create_task(self._process(report, ref))
            self.tasks.add(task)
            task.add_done_callback(self._on_done)

    def _open(self, index: int, partition: str, position: Any):
        return self.children.call("extractor", index, "open", partition, position, self.run_id)

    async def _next(self, index: int, partition: str, position: Any):
        """The next batch; a lost extractor is restarted, and a transient error retried
        after a backoff, at the last extracted position."""
        attempt = 0
        while True:
            generation = self.children.generation("extractor", index)
            try:
                return await self.children.call("extractor", index, "next_batch", returns=2)
            except ChildLost as lost:
                await self._restarted("extractor", index, lost, generation)
            except EtlError as exc:
                attempt += 1
                await self._backoff(f"extractor#{index}", exc, attempt)
            await self._call("extractor", index, lambda: self._open(index, partition, position))

    def _on_done(self, task: asyncio.Task) -> None:
        self.slots.release()
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    # --- transform and load -----------------------------------------------------------

    async def _process(self, report: dict, ref: Any) -> None:
        batch_id, resume_at = report["batch_id"], report.get("resume_at")
        if resume_at is not None and resume_at.startswith("load"):   # a redriven letter of a sink
            sink = int(resume_at.partition(":")[2] or 0)
            result = await self._call("loader", sink, lambda: self.children.call(
                "loader", sink, "load", ref, batch_id, self.run_id))
            self._loaded(report, result)
            return
        out = ref if self.chained else await self._transform(report, ref)
        if self.blocking is not None:
            self.partials.append(out)
            self._loaded(report, {"loaded": 0, "failed": 0, "duplicate": False, "bytes": 0}, record=False)
            return
        done = self._loaded(report, await self._load_everywhere(out, batch_id))
        if done is not None:
            await self._complete(report["partition"], done)

    async def _transform(self, report: dict, ref: Any) -> Any:
        """Run the steps on a batch in the least busy transformer; its output's ref."""
        batch_id, resume_at = report["batch_id"], report.get("resume_at")
        start = resume_at.partition(":")[2] if resume_at is not None else None
        t = self.transformer_load.index(min(self.transformer_load))
        self.transformer_load[t] += 1
        try:
            out, tr = await self._call("transformer", t, lambda: self.children.call(
                "transformer", t, "apply", ref, batch_id, self.run_id, start, report.get("origin_run"),
                returns=2, resolve=1))
        finally:
            self.transformer_load[t] -= 1
        self.sup.append(*self._transform_events(batch_id, tr))
        return out

    def _transform_events(self, batch_id: str, tr: dict) -> list[ev.Event]:
        events: list[ev.Event] = [ev.BatchTransformed(
            run_id=self.run_id, batch_id=batch_id, rows_in=tr["rows_in"], rows_out=tr["rows_out"],
            rejected=tr["rejected"], filtered=tr["filtered"], steps=tr["steps"], flagged=tr.get("flagged", 0),
            enriched=tr.get("enriched", 0), quality=tr.get("quality") or {})]
        if tr["rejected"]:
            events.append(ev.RecordsRejected(run_id=self.run_id, batch_id=batch_id, stage="transform",
                                             count=tr["rejected"], reason=tr["reasons"][0]))
        events += [ev.StepSkipped(run_id=self.run_id, batch_id=batch_id, step=s["step"], error=s["error"])
                   for s in tr["skipped"]]
        return events

    def _loaded(self, report: dict, result: dict, record: bool = True) -> Any:
        """Record a loaded batch and commit what it completes; return the ``done``
        position a sink still has to complete the partition for, else None."""
        partition, batch_id = report["partition"], report["batch_id"]
        events: list[ev.Event] = []
        if record:
            events.append(ev.BatchLoaded(run_id=self.run_id, batch_id=batch_id, partition=partition,
                                         position=report["position"], rows=result["loaded"],
                                         failed=result["failed"], bytes=result["bytes"],
                                         duplicate=result["duplicate"]))
            if result["failed"]:
                events.append(ev.RecordsRejected(run_id=self.run_id, batch_id=batch_id, stage="load",
                                                 count=result["failed"], reason=result.get("reason", "")))
        if self.redrive:   # the letters leave the store with the event saying so; no watermark moves
            ids = report.get("letter_ids", [])
            if ids:
                events.append(ev.LettersRedriven(run_id=self.run_id, batch_id=batch_id, stage=partition,
                                                 letter_ids=ids))
            self.sup.append(*events, redriven=(self.spec.name, ids, self.run_id))
            return
        advanced, position = self.commits[partition].mark_loaded(batch_id, report["position"])
        done = None
        if advanced and self.deferred:
            self.last_loaded[partition] = position
        elif advanced and any(sink.completes_partitions for sink in self.spec.sinks):
            done = position if _is_done(position) else None   # committed by _complete, once
        elif advanced:
            events.append(ev.WatermarkCommitted(run_id=self.run_id, partition=partition, position=position,
                                                done=_is_done(position)))
        if events:
            self.sup.append(*events)
        return done

    async def _complete(self, partition: str, position: Any) -> None:
        """Every batch of ``partition`` is loaded: the sinks that assemble an output per
        partition do so (idempotently, so a crash before the commit below only makes
        the next run read the partition and assemble it again), then its ``done``
        position is committed. Their partitions commit no position before that."""
        await asyncio.gather(*(
            self._call("loader", i, lambda i=i: self.children.call("loader", i, "complete_partition", partition,
                                                                   self.run_id))
            for i, sink in enumerate(self.spec.sinks) if sink.completes_partitions))
        self.sup.append(ev.WatermarkCommitted(run_id=self.run_id, partition=partition, position=position, done=True))

    async def _load_everywhere(self, ref: Any, batch_id: str) -> dict:
        """Load a batch into every sink (concurrently); the counts are the first sink's,
        with the rows any sink refused."""
        results = await asyncio.gather(*(
            self._call("loader", i, lambda i=i: self.children.call("loader", i, "load", ref, batch_id, self.run_id))
            for i in range(len(self.spec.sinks))))
        first = dict(results[0])
        for other in results[1:]:
            first["failed"] += other["failed"]
            first["reason"] = first.get("reason") or other.get("reason", "")
        return first

    async def _finish_blocking(self) -> None:
        self.sup.append(ev.PhaseStarted(run_id=self.run_id, phase="aggregate"))
        batch_id = f"{self.run_id}:{self.blocking.id}"
        out, tr = await self._call("transformer", 0, lambda: self.children.call(
            "transformer", 0, "finish_refs", batch_id, self.run_id, *self.partials, returns=2, resolve=1))
        batch_id = tr.get("batch_id", batch_id)
        self.sup.append(ev.BatchTransformed(run_id=self.run_id, batch_id=batch_id, rows_in=tr["rows_in"],
                                            rows_out=tr["rows_out"], rejected=tr["rejected"], filtered=0,
                                            steps=tr["steps"], flagged=tr.get("flagged", 0),
                                            enriched=tr.get("enriched", 0), quality=tr.get("quality") or {}))
        result = await self._load_everywhere(out, batch_id)
        self.sup.append(ev.BatchLoaded(run_id=self.run_id, batch_id=batch_id, partition="", position=None,
                                       rows=result["loaded"], failed=result["failed"], bytes=result["bytes"],
                                       duplicate=result["duplicate"]))

    # --- failures -----------------------------------------------------------------------

    async def _call(self, kind: str, index: int, call):
        """Make a child call; when the child is lost, restart it and call again; when
        the call fails with a transient error, call again after a backoff (every call
        is safe to repeat: loads by the sink's ledger, the rest have no effects)."""
        attempt = 0
        while True:
            generation = self.children.generation(kind, index)
            try:
                return await call()
            except ChildLost as lost:
                await self._restarted(kind, index, lost, generation)
            except EtlError as exc:
                attempt += 1
                await self._backoff(f"{kind}#{index}", exc, attempt)

    async def _backoff(self, stage: str, exc: EtlError, attempt: int) -> None:
        await self.sup.backoff(self.run_id, stage, exc, attempt)

    async def _restarted(self, kind: str, index: int, lost: ChildLost, generation: int) -> None:
        """Replace a lost child once, however many calls in flight saw it die."""
        key = f"{kind}#{index}"
        async with self.restart_locks.setdefault(key, asyncio.Lock()):
            if self.children.generation(kind, index) == generation:
                await self._restart(kind, index, key, lost)

    async def _restart(self, kind: str, index: int, key: str, lost: ChildLost) -> None:
        if kind == "loader" and self.spec.sinks[index].commits_at_finish:
            raise EtlError(f"the loader was lost during a {self.spec.sinks[index].describe().get('mode', '')} run "
                           f"whose rows become visible only at its end ({lost.reason}); nothing was committed: "
                           "run again")
        self.restarts[key] = attempt = self.restarts.get(key, 0) + 1
        if attempt > self.spec.runtime.max_child_restarts:
            raise EtlError(f"{key} was lost {attempt} times; giving up: {lost.reason}")
        self.sup.append(ev.ChildRestarted(run_id=self.run_id, child=key, reason=lost.reason, attempt=attempt))
        await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
        await self.children.restart(kind, index)
        if kind == "extractor" and self.redrive:
            await self.children.call(kind, index, "use_source", self.source)

    async def _fail(self, exc: BaseException) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.sup.record_failure(self.run_id, exc, "the batches in flight were abandoned", self._metrics)


