"""A stream run: long-lived, checkpointed, resumed from its last checkpoint.

Extractors poll their topic-partitions and hand each batch on (as window partials,
or as events for the sinks). Every ``checkpointInterval`` the supervisor takes a
consistent cut: it lets no new batch in, waits for those in flight, moves the
watermark (the least over partitions of their greatest event time minus
``maxOutOfOrderness``; idle partitions left out), has every window shard emit what
the watermark passed into every sink, and appends one ``CheckpointCommitted`` with
the positions, the watermark and the window state (stored beside the log in the same
transaction). Positions therefore never run ahead of the sinks.

After any failure (a lost child, a transient error past its in-place retries, a
crash of the whole run) the stream restarts from the last checkpoint: extractors
at its positions, window shards from its state. Emitted windows are deterministic
(lateness is decided by each partition's own order, see ``windows/assign.py``), so a
window emitted again after a replay has the same values, and sinks upsert it.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import events as ev
from ..usage import UsageMeter
from ..errors import EtlError, TerminalError
from .retry import is_transient
from .supervisor import ChildLost


class StreamRun:
    """One stream run's moving parts; see the module docstring. ``clock`` (epoch
    seconds) times the run's usage by UTC clock hour; tests replace it."""

    clock = staticmethod(time.time)

    def __init__(self, sup, run_id: str, trigger: str, until_idle: float | None = None):
        self.sup, self.spec, self.run_id, self.trigger = sup, sup.spec, run_id, trigger
        self.children, self.window, self.until_idle = sup.children, sup.spec.window, until_idle
        self.shards = self.window.parallelism if self.window is not None else 0
        self.cut = asyncio.Condition()
        self.in_flight, self.pausing = 0, False
        self.failure: BaseException | None = None
        self.idle_s = 0.0
        self.restarts = 0
        self.meter: UsageMeter | None = None     # usage since the last UsageRecorded, from RunStarted on

    # --- the run --------------------------------------------------------------------

    async def execute(self) -> None:
        sup, spec = self.sup, self.spec
        sup.append(ev.RunRequested(pipeline=spec.name, run_id=self.run_id, trigger=self.trigger,
                                   spec=spec.spec_file))
        requested_at, partitions = ev.now(), []
        try:
            partitions = await self._retrying("source", lambda: asyncio.to_thread(spec.source.partitions,
                                                                                    sup.watermarks))
            extractors = spec.source.parallelism or self.children.cpus()
            self.assignment = _spread(partitions, min(extractors, len(partitions)) or 1)
            await self.children.start({"extractor": len(self.assignment), "window": self.shards,
                                       "loader": len(spec.sinks)})
            await self._rewind()
            sup.append(ev.RunStarted(pipeline=spec.name, run_id=self.run_id, epoch=sup.epoch,
                                     watermark=dict(sup.watermarks), partitions=list(partitions)))
            await self._supervise()
            sup.append(self._final_usage(), ev.RunSucceeded(run_id=self.run_id, metrics=self._metrics()))
        except BaseException as exc:  # noqa: BLE001 - every failure ends the run in the log
            if self.run_id not in sup.runs.by_id:
                sup.append(ev.RunStarted(pipeline=spec.name, run_id=self.run_id, epoch=sup.epoch,
                                         watermark=dict(sup.watermarks), partitions=list(partitions),
                                         at=requested_at))
            await self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            await self.children.stop()

    def _metrics(self) -> dict:
        from ..projections import runs as runs_projection

        return runs_projection.summary(self.sup.runs.by_id[self.run_id])

    async def _supervise(self) -> None:
        """Run until stopped, idle long enough, or failed; restart from the last
        checkpoint after a lost child or a transient error."""
        while True:
            try:
                await self._until_done()
                return
            except (ChildLost, EtlError) as exc:
                if not isinstance(exc, ChildLost) and not is_transient(exc):
                    raise
                await self._recover(exc)

    async def _until_done(self) -> None:
        self.failure, self.stopping = None, False
        readers = [asyncio.create_task(self._read(i)) for i in range(len(self.assignment))]
        try:
            while True:
                await self._wait_tick(readers)
                if self.failure is not None:
                    raise self.failure
                flush = self._idle_for_long()
                if flush or self.sup._stopping:
                    self.stopping = True
                    await asyncio.gather(*readers, return_exceptions=True)
                    if self.failure is not None:
                        raise self.failure
                    await self._checkpoint(flush=flush, final=True)
                    return
                await self._checkpoint()
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _wait_tick(self, readers: list[asyncio.Task]) -> None:
        """Sleep until the next checkpoint, waking early for a failure or a stop."""
        deadline = time.monotonic() + self.spec.runtime.checkpoint_interval
        while time.monotonic() < deadline and self.failure is None and not self.sup._stopping:
            if self.until_idle is not None and self._idle_for_long():
                return
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _idle_for_long(self) -> bool:
        if self.until_idle is None:
            return False
        idle = time.monotonic() - self.last_message
        if idle >= self.until_idle:
            self.idle_s = idle
            return True
        return False

    # --- reading --------------------------------------------------------------------

    def _poll(self, index: int) -> asyncio.Task:
        return asyncio.ensure_future(self.children.call("extractor", index, "poll", self.run_id, self.floor,
                                                        returns=1 + (self.shards or 1)))

    async def _read(self, index: int) -> None:
        """Hand on the extractor's batches in order, with the next poll already under
        way while one is handed on (the extractor never waits for the supervisor)."""
        ahead = self._poll(index)
        try:
            while not self.stopping and self.failure is None:
                polled = await ahead
                ahead = self._poll(index) if not self.stopping else None
                report, tables = polled[0], polled[1:]
                if not report["count"]:
                    if report.get("busy"):      # the source is still catching up (a CDC slot's backlog): not idle
                        self.last_message = time.monotonic()
                    continue
                await self._enter()
                try:
                    await self._hand_on(report, tables)
                    self._took(report)
                finally:
                    await self._leave()
        except BaseException as exc:  # noqa: BLE001 - the supervising loop decides
            if self.failure is None and not isinstance(exc, asyncio.CancelledError):
                self.failure = exc
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
            if ahead is not None:
                await asyncio.gather(ahead, return_exceptions=True)

    async def _enter(self) -> None:
        async with self.cut:
            await self.cut.wait_for(lambda: not self.pausing)
            self.in_flight += 1

    async def _leave(self) -> None:
        async with self.cut:
            self.in_flight -= 1
            self.cut.notify_all()

    async def _hand_on(self, report: dict, tables) -> None:
        """A batch's partials to their window shards, or its events to every sink (as
        a batch named by the positions it ends at)."""
        if self.window is not None:
            dropped = await asyncio.gather(*(self.children.call("window", s, "add", t)
                                             for s, t in enumerate(tables) if t is not None))
            self.pending["late"] += sum(dropped)
            return
        table = tables[0]
        if table is not None:
            batch_id = report.get("batchId") or \
                "stream:" + ",".join(f"{p}<{o}" for p, o in sorted(report["positions"].items()))
            loaded = await self._load(table, batch_id)
            self.pending["loaded"] += loaded

    def _took(self, report: dict) -> None:
        """Record what a handed-on batch moved: its positions now go into the next cut."""
        pending = self.pending
        pending["letters"].extend(report["letters"])
        pending["positions"].update(report["positions"])
        pending["max_seen"].update({p: t for p, t in report["maxSeen"].items() if t is not None})
        for key, name in (("count", "extracted"), ("transformed", "transformed"), ("filtered", "filtered"),
                          ("rejected", "rejected"), ("late", "late"), ("bytes", "bytes")):
            pending[name] += report[key]
        now = time.monotonic()
        self.last_message = now
        for partition in report["positions"]:
            self.active[partition] = now
        self.highwater.update(report.get("highwater") or {})

    async def _load(self, table: Any, batch_id: str) -> int:
        """Write ``table`` to every sink; returns the first sink's count."""
        results = await asyncio.gather(*(
            self._sink_call(i, table, batch_id) for i in range(len(self.spec.sinks))))
        self.pending["rejected"] += sum(r["failed"] for r in results)
        return results[0]["loaded"]

    async def _sink_call(self, index: int, table: Any, batch_id: str) -> dict:
        attempt = 0
        while True:
            try:
                return await self.children.call("loader", index, "load", table, batch_id, self.run_id)
            except EtlError as exc:
                attempt += 1
                await self.sup.backoff(self.run_id, f"loader#{index}", exc, attempt)

    # --- checkpoints ----------------------------------------------------------------

    async def _checkpoint(self, flush: bool = False, final: bool = False) -> None:
        async with self.cut:
            self.pausing = True
            await self.cut.wait_for(lambda: self.in_flight == 0)
        try:
            if self.failure is not None:
                raise self.failure
            await self._commit(flush, final)
        finally:
            async with self.cut:
                self.pausing = False
                self.cut.notify_all()

    async def _commit(self, flush: bool, final: bool) -> None:
        pending = self.pending
        watermark = self._watermark()
        parts, windows, open_windows = [], 0, 0
        if self.window is not None:
            emitted = await asyncio.gather(*(self.children.call(
                "window", s, "advance", self.run_id, watermark, flush, returns=2) for s in range(self.shards)))
            for report, table in emitted:
                if report["rows"]:
                    pending["loaded"] += await self._load(table, report["batch_id"])
                windows += report["windows"]
                open_windows += report["open"]
                parts.append(report["snapshot"])
                if report["emitted"] is not None:
                    self.floor = max(self.floor or report["emitted"], report["emitted"])
        now, meter = self.clock(), self._meter()
        hourly = not final and meter.hour_passed(now)     # the first checkpoint of a clock hour records usage
        if not (final or pending["extracted"] or windows or pending["late"] or pending["letters"] or hourly):
            return
        seconds = max(1e-6, time.monotonic() - self.last_commit)
        positions = dict(pending["positions"])
        seq = self.sup.version + 1
        event = ev.CheckpointCommitted(
            run_id=self.run_id, seq=seq, positions=positions, max_seen=dict(pending["max_seen"]),
            watermark=watermark, emitted=self.floor, windows_open=open_windows, shards=len(parts),
            extracted=pending["extracted"], transformed=pending["transformed"], filtered=pending["filtered"],
            rejected=pending["rejected"], loaded=pending["loaded"], late=pending["late"], windows=windows,
            bytes=pending["bytes"], lag=self._lag(positions), rate=pending["extracted"] / seconds,
            idle_s=self.idle_s if final else 0.0)
        meter = meter.add(now, event.extracted, event.bytes, event.loaded)
        usage = [meter.recorded(now)] if hourly else []
        self.sup.append(event, *usage, snapshot=(self.spec.name, seq, parts) if self.window is not None else None,
                        letters=(self.spec.name, self.run_id, pending["letters"]))
        self.meter = meter.restarted(now) if hourly else meter
        self.restarts = 0
        self._reset_pending()
        self.last_commit = time.monotonic()
        self._commit_group(positions)

    def _commit_group(self, positions: dict) -> None:
        """Mirror the positions into the consumer group (best effort, not waited for),
        so standard lag tools see the group."""
        async def mirror() -> None:
            await asyncio.gather(*(self.children.call("extractor", i, "commit_group", positions)
                                   for i in range(len(self.assignment))), return_exceptions=True)

        self.mirroring = asyncio.ensure_future(mirror())

    def _watermark(self) -> int | None:
        """The least watermark over the partitions not idle; None before any event."""
        window = self.window
        if window is None:
            return None
        idle_ms = window.idle_timeout_ms
        now = time.monotonic()
        marks = []
        for partition in self.partitions:
            seen = self.pending["max_seen"].get(partition)
            idle = idle_ms is not None and (now - self.active.get(partition, self.opened_at)) * 1000 >= idle_ms
            if idle:
                continue
            if seen is None:
                return self.watermark
            marks.append(seen - window.max_out_of_orderness_ms)
        if marks:
            self.watermark = max(self.watermark if self.watermark is not None else min(marks), min(marks))
        return self.watermark

    def _lag(self, positions: dict) -> dict:
        return {p: max(0, self.highwater[p] - positions.get(p, 0)) for p in self.highwater}

    # --- recovery -------------------------------------------------------------------

    def _reset_pending(self) -> None:
        last = self.sup.checkpoint      # the supervisor folds every CheckpointCommitted it appends
        self.pending = {"positions": dict(last.positions) if last else {},
                        "max_seen": dict(last.max_seen) if last else {}, "letters": [],
                        **{k: 0 for k in ("extracted", "transformed", "filtered", "rejected", "loaded", "late",
                                          "bytes")}}

    async def _rewind(self) -> None:
        """Every child to the last checkpoint: extractors at its positions, window
        shards at its state, nothing pending."""
        sup = self.sup
        last = sup.checkpoint
        self._reset_pending()
        self.partitions = [p for group in self.assignment for p in group]
        self.floor = last.emitted if last else None
        self.watermark = last.watermark if last else None
        self.highwater, self.active = {}, {}
        self.last_message = self.opened_at = self.last_commit = time.monotonic()
        positions = {p: sup.watermarks.get(p) for p in self.partitions}
        if last is not None:
            positions.update({p: o for p, o in last.positions.items() if p in positions})
        parts = sup.log.snapshot(self.spec.name, last.seq) if last is not None and last.shards else None
        if last is not None and last.shards and (parts is None or len(parts) != self.shards):
            raise TerminalError(f"the window state of checkpoint {last.seq} is missing or has {len(parts or [])} "
                                f"parts for {self.shards} window actors (was windowParallelism changed?): run "
                                "with --reset to start the stream over")
        await asyncio.gather(
            *(self.children.call("extractor", i, "open", {p: positions[p] for p in group},
                                 {p: self.pending["max_seen"].get(p) for p in group})
              for i, group in enumerate(self.assignment)),
            *(self.children.call("window", s, "restore", parts[s] if parts else None) for s in range(self.shards)))

    async def _recover(self, exc: BaseException) -> None:
        """Restart the lost child (or wait out a transient error) and rewind."""
        self.restarts += 1
        limit = self.spec.runtime.max_child_restarts if isinstance(exc, ChildLost) else self.spec.runtime.max_retries
        if self.restarts > limit:
            raise exc
        if isinstance(exc, ChildLost):
            kind, _, index = exc.child.partition("#")
            self.sup.append(ev.ChildRestarted(run_id=self.run_id, child=exc.child, reason=exc.reason,
                                              attempt=self.restarts))
            await asyncio.sleep(min(0.1 * 2 ** (self.restarts - 1), 2.0))
            await self.children.restart(kind, int(index))
        else:
            await self.sup.backoff(self.run_id, "stream", exc, self.restarts)
        await self._rewind_retrying()

    async def _rewind_retrying(self) -> None:
        while True:
            try:
                return await self._rewind()
            except ChildLost as lost:
                kind, _, index = lost.child.partition("#")
                await self.children.restart(kind, int(index))
            except EtlError as exc:
                self.restarts += 1
                await self.sup.backoff(self.run_id, "stream", exc, self.restarts)

    async def _retrying(self, stage: str, call):
        attempt = 0
        while True:
            try:
                return await call()
            except EtlError as exc:
                attempt += 1
                await self.sup.backoff(self.run_id, stage, exc, attempt)

    async def _fail(self, exc: BaseException) -> None:
        self.sup.record_failure(self.run_id, exc, "the events since the last checkpoint are read again by the next run",
                                self._metrics, usage=self._final_usage)

    # --- usage ----------------------------------------------------------------------

    def _meter(self) -> UsageMeter:
        """The run's usage since its last ``UsageRecorded``: counted from ``RunStarted``,
        of the checkpoints committed only (what a failure makes the next run read again
        is billed once, then)."""
        if self.meter is None:
            self.meter = UsageMeter(self.spec.name, self.run_id, since=self.sup.runs.by_id[self.run_id].started_at)
        return self.meter

    def _final_usage(self) -> ev.UsageRecorded:
        """The usage up to the end of the run, appended with its end event."""
        return self._meter().recorded(self.clock(), final=True)


def _spread(partitions: list[str], extractors: int) -> list[list[str]]:
    """Partitions dealt round-robin to ``extractors`` groups (none empty)."""
    groups = [partitions[i::extractors] for i in range(extractors)]
    return [g for g in groups if g] or [[]]
