"""The stream stages: an extractor that reads, transforms and pre-aggregates, and a
window operator that keeps window state and emits what the watermark passed.

The processors before the window run inside the extractor, on each topic-partition's
messages in offset order (chained, as Flink chains operators: nothing before a window
needs a repartition, so a batch crosses the object store once, as compact partials).
Every dead letter of a stream is keyed by its event's ``topic:partition@offset`` and
handed to the supervisor with the batch's report; it is written with the checkpoint
that covers its event, so a replay after a crash writes and counts each one once.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import pyarrow as pa

from ..batch import DeadLetter, jsonable
from ..columns import is_change_rows, key_only
from ..errors import StepFailed
from .stages import Stage, Transformer, content_id

OFFSET = "__etl_offset"


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Chain(Transformer):
    """The processors before the window, run on one partition's batch; their dead
    letters are kept, keyed by event offset, for the report."""

    def __init__(self, pipeline: str, steps: Sequence[Any], log_url: str, index: int = 0):
        super().__init__(pipeline, steps, log_url, index)
        self.partition, self.letters = "", []

    def _put_rejects(self, stage: str, rejects: Sequence[DeadLetter], batch_id: str, run_id: str,
                     schema=None) -> None:
        self.letters += by_offset(stage, self.partition, rejects)


def by_offset(stage: str, partition: str, letters: Sequence[DeadLetter],
              offsets: Sequence[int] | None = None) -> list[tuple[str, int, str, DeadLetter]]:
    """``letters`` keyed ``(partition@offset, idx, stage)``, the offset from ``offsets``
    or the record's ``__etl_offset``, which the record then names as ``_offset``."""
    keyed = []
    for i, letter in enumerate(letters):
        record = dict(letter.record)
        offset = record.pop(OFFSET, None) if offsets is None else offsets[i]
        topic, _, part = partition.rpartition(":")
        record.setdefault("_topic", topic)
        record.setdefault("_partition", int(part) if part.isdigit() else part)
        record.setdefault("_offset", offset)
        keyed.append((f"{partition}@{offset}", 0 if offset is not None else i, stage,
                      DeadLetter(letter.reason, record)))
    return keyed


class StreamExtractor(Stage):
    """Reads its topic-partitions from the positions it is opened at, one poll per
    call, and returns ``(report, *tables)``: with a window, one partial per window
    shard; without, the transformed events."""

    def __init__(self, pipeline: str, source: Any, steps: Sequence[Any], window: Any, log_url: str, index: int = 0):
        self._init_args = (pipeline, source, steps, window, log_url, index)
        self.pipeline, self.source, self.window, self.log_url, self.index = pipeline, source, window, log_url, index
        self.chain = _Chain(pipeline, steps, log_url, index)
        self.reader, self.clock = None, {}
        _warm()

    def __repr__(self) -> str:
        return f"StreamExtractor[{self.pipeline}#{self.index}]"

    @property
    def outputs(self) -> int:
        return self.window.parallelism if self.window is not None else 1

    def open(self, assignments: Mapping[str, int | None], max_seen: Mapping[str, int | None]) -> None:
        """Read ``assignments`` (``{"topic:partition": next offset or None}``), each
        partition having seen events up to ``max_seen`` (for lateness)."""
        self.close()
        self.clock = {p: max_seen.get(p) for p in assignments}
        self.reader = self.source.open_reader(dict(assignments))

    def poll(self, run_id: str, floor_ms: int | None) -> tuple:
        polled = self.reader.poll()
        report = {"positions": {}, "maxSeen": {}, "count": 0, "bytes": 0, "rows": 0, "transformed": 0,
                  "filtered": 0, "rejected": 0, "late": 0, "reason": "", "highwater": {}, "letters": []}
        outputs: list[list[pa.Table]] = [[] for _ in range(self.outputs)]
        for partition, batch in polled.items():
            self._partition(run_id, partition, batch, floor_ms, report, outputs)
        if polled:
            report["highwater"] = self.reader.highwater()
        report["busy"] = bool(getattr(self.reader, "busy", False))
        return (report, *[_concat(parts) for parts in outputs])

    def _partition(self, run_id: str, partition: str, batch, floor_ms, report: dict, outputs: list) -> None:
        report["positions"][partition] = batch.next_offset
        if getattr(batch, "batch_id", ""):          # a source that names its batches (postgres-cdc)
            report["batchId"] = batch.batch_id
        report["count"] += batch.count
        report["bytes"] += batch.bytes
        if batch.rejects:
            letters = [letter for _, letter in batch.rejects]
            report["letters"] += by_offset("extract", partition, letters, [offset for offset, _ in batch.rejects])
            report["rejected"] += len(letters)
            report["reason"] = report["reason"] or letters[0].reason
        if batch.table.num_rows == 0:     # only poison messages: nothing for the processors
            report["maxSeen"][partition] = self.clock.get(partition)
            return
        table = batch.table.append_column(OFFSET, pa.array(batch.offsets, pa.int64()))
        self.chain.partition, self.chain.letters = partition, []
        table, tr = self._changes(table, partition, run_id) if is_change_rows(table) else \
            self._chain(table, partition, run_id)
        report["rows"] += tr["rows_in"]
        report["transformed"] += tr["rows_out"]
        report["filtered"] += tr["filtered"]
        report["rejected"] += len(self.chain.letters)
        report["letters"] += self.chain.letters
        if tr["reasons"]:
            report["reason"] = report["reason"] or tr["reasons"][0]
        if self.window is None:
            outputs[0].append(table.drop_columns([c for c in table.column_names if c.startswith("__etl")]))
            report["maxSeen"][partition] = None
            return
        self._windowed(run_id, partition, table, floor_ms, report, outputs)

    def _chain(self, table: pa.Table, partition: str, run_id: str) -> tuple[pa.Table, dict]:
        """The processors on a batch. When a step fails on it, the batch is halved until
        the events it fails on are found alone: those become dead letters (stage
        ``transform:<step>``) and the rest go on, so one bad message does not stop the
        stream. When it fails the same way on the first and the last event alone, or on
        every event, the error is the step's, not the data's, and is raised (the stream
        stops before its position moves)."""
        try:
            return self.chain._run_steps(self.chain.before, table, partition, run_id)
        except StepFailed as failure:
            if self._systematic(table, failure, partition, run_id):
                raise
            letters = list(self.chain.letters)
            parts, failed = self._isolate(table, partition, run_id)
            if failed == table.num_rows:
                self.chain.letters = letters
                raise failure
        report = {"rows_in": table.num_rows, "rows_out": 0, "filtered": 0, "reasons": [], "rejected": failed}
        for part, tr in parts:
            report["rows_out"] += tr["rows_out"]
            report["filtered"] += tr["filtered"]
            report["reasons"] += tr["reasons"]
        tables = [part for part, _ in parts]
        return (_concat(tables) if tables else table.slice(0, 0)), report

    def _changes(self, table: pa.Table, partition: str, run_id: str) -> tuple[pa.Table, dict]:
        """Change rows (postgres-cdc): deletes carry only their key, so they pass the
        map steps (which shape every row) but not the filters and validations (a delete
        is never dropped or rejected for the columns it does not have); the rows come
        out in their order."""
        import pyarrow.compute as pc

        deleted = key_only(table)
        if not pc.any(deleted).as_py():
            return self._chain(table, partition, run_id)
        out, report = self._chain(table.filter(pc.invert(deleted)), partition, run_id)
        maps = [step for step in self.chain.before if step.type == "map"]
        deletes, _ = self.chain._run_steps(maps, table.filter(deleted), partition, run_id)
        merged = _concat([part for part in (out, deletes) if part.num_rows] or [out])
        if OFFSET in merged.column_names:       # (a map without keep drops it, and the change columns with it)
            merged = merged.take(pc.sort_indices(merged.column(OFFSET)))
        report = {**report, "rows_in": table.num_rows, "rows_out": report["rows_out"] + deletes.num_rows}
        return merged, report

    def _systematic(self, table: pa.Table, failure: StepFailed, partition: str, run_id: str) -> bool:
        letters = list(self.chain.letters)
        try:
            for row in (table.slice(0, 1), table.slice(table.num_rows - 1, 1)):
                try:
                    self.chain._run_steps(self.chain.before, row, partition, run_id)
                    return False
                except StepFailed as alone:
                    if str(alone) != str(failure):
                        return False
            return True
        finally:
            self.chain.letters = letters

    def _isolate(self, table: pa.Table, partition: str, run_id: str) -> tuple[list, int]:
        """``([(table, report)] of the parts the processors pass, events failed alone)``."""
        try:
            return [self.chain._run_steps(self.chain.before, table, partition, run_id)], 0
        except StepFailed as exc:
            if table.num_rows == 1:
                row = table.to_pylist()[0]
                self.chain.letters += by_offset(f"transform:{exc.step}", partition, [DeadLetter(str(exc), row)])
                return [], 1
        half = table.num_rows // 2
        head, failed_head = self._isolate(table.slice(0, half), partition, run_id)
        tail, failed_tail = self._isolate(table.slice(half), partition, run_id)
        return head + tail, failed_head + failed_tail

    def _windowed(self, run_id: str, partition: str, table: pa.Table, floor_ms, report: dict, outputs: list) -> None:
        from ..windows import pre_aggregate

        assigned = pre_aggregate(table, self.window, self.clock.get(partition), floor_ms, _now_ms())
        self.clock[partition] = assigned.max_seen
        report["maxSeen"][partition] = assigned.max_seen
        letters = [(int(i), "late") for i in assigned.late] + [(int(i), reason) for i, reason in assigned.bad]
        if letters:
            report["letters"] += self._late(partition, table, letters)
            report["late"] += len(letters)
        for shard, partial in enumerate(assigned.partials):
            if partial.num_rows:
                outputs[shard].append(partial)

    def _late(self, partition: str, table: pa.Table, letters: list[tuple[int, str]]) -> list:
        rows = table.take(pa.array([i for i, _ in letters], pa.int64())).to_pylist()
        return by_offset("window", partition, [DeadLetter(reason, jsonable(row)) for (_, reason), row in zip(letters, rows)])

    def commit_group(self, positions: Mapping[str, int]) -> None:
        if self.reader is not None:
            self.reader.commit_group({p: o for p, o in positions.items() if p in self.clock})

    def close(self) -> None:
        if self.reader is not None:
            reader, self.reader = self.reader, None
            reader.close()


def _warm() -> None:
    """Load at start what the first batch would otherwise load inside the run's clock
    (pyarrow's conversions import pandas when it is installed: most of a second)."""
    pa.Table.from_pydict({"x": [1]}).group_by("x").aggregate([("x", "count")])


def _concat(parts: list[pa.Table]) -> pa.Table | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts, promote_options="permissive")


class WindowOperator(Stage):
    """One key-hash shard of the window: adds partials, emits the windows the
    watermark passed (running the processors after the window on them), and hands
    out its state for the checkpoint."""

    def __init__(self, pipeline: str, window: Any, after: Sequence[Any], log_url: str, index: int = 0):
        from ..windows import WindowState

        self._init_args = (pipeline, window, after, log_url, index)
        self.pipeline, self.window, self.log_url, self.index = pipeline, window, log_url, index
        self.after = Transformer(pipeline, after, log_url, index) if after else None
        self.state = WindowState(window)
        _warm()

    def __repr__(self) -> str:
        return f"WindowOperator[{self.pipeline}#{self.index}]"

    def restore(self, data: bytes | None) -> int:
        """Start from a checkpoint's state (None: empty); return its open windows."""
        from ..windows import WindowState

        self.state = WindowState.restore(self.window, data)
        return self.state.open_windows()

    def add(self, *partials: pa.Table | None) -> int:
        """Merge partials; return the events dropped because their window was already
        emitted (possible only after an idle partition resumed)."""
        return sum(self.state.add(p) for p in partials if p is not None and p.num_rows)

    def advance(self, run_id: str, watermark: int | None, flush: bool = False) -> tuple[dict, pa.Table]:
        results = self.state.flush() if flush else self.state.advance(watermark)
        windows = results.num_rows
        if self.after is not None and windows:
            results, _ = self.after._run_steps(self.after.before, results, content_id("window", results), run_id)
        report = {"windows": windows, "rows": results.num_rows, "open": self.state.open_windows(),
                  "emitted": self.state.emitted_watermark, "snapshot": self.state.snapshot(),
                  "batch_id": content_id(f"window{self.index}", results) if results.num_rows else ""}
        return report, results

