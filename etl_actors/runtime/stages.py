"""The stage workers: extractor, transformer and loader, as plain classes.

Each is built from frozen descriptions (a source, the transformation steps, a sink)
and opens its resources in the process it runs in. They report facts (counts,
positions, per-step metrics) as small dicts; the supervisor turns them into events.
Rows that fail are written to the dead-letter store here, keyed by batch id, so a
retried batch does not write them twice.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import pyarrow as pa

from .. import quality
from .arrow_ipc import ship_tables_as_ipc
from .readahead import ReadAhead
from ..batch import DeadLetter, StepResult, table_digest
from ..errors import StepFailed, first_line
from ..transforms.base import StepContext

FLAGS_COLUMN = "_quality_flags"
READ_AHEAD = 2          # batches an extractor reads (and transforms) ahead of the supervisor


class Stage:
    """What every stage worker shares: it can start afresh for a new run in the same
    process (a warm actor), by running ``__init__`` again with its first arguments,
    which each ``__init__`` keeps in ``_init_args``."""

    _init_args: tuple = ()

    def reset(self) -> None:
        self.close()
        self.__init__(*self._init_args)

    def close(self) -> None:
        """Release what the stage holds open."""


class Extractor(Stage):
    """Reads one partition at a time from a source, one batch per call.

    Chained (``steps`` given, see :func:`~.graph.chained`): it also runs the
    transformation chain on each batch it reads, so the table goes from here to the
    loaders, crossing the object store once. Batches are read (and transformed) on a
    thread of its own up to :data:`READ_AHEAD` ahead of :meth:`next_batch`."""

    def __init__(self, pipeline: str, source: Any, log_url: str, index: int = 0, steps: Sequence[Any] = ()):
        self._init_args = (pipeline, source, log_url, index, steps)
        self.pipeline, self.source, self.log_url, self.index = pipeline, source, log_url, index
        ship_tables_as_ipc()
        self.chain = Transformer(pipeline, steps, log_url, index) if steps else None
        self._reading: ReadAhead | None = None

    def __repr__(self) -> str:
        return f"Extractor[{self.pipeline}#{self.index}]"

    def use_source(self, source: Any) -> None:
        """Read ``source`` instead of the pipeline's until the next run (a redrive reads
        the dead-letter store)."""
        self.source = source

    def open(self, partition: str, position: Any, run_id: str) -> None:
        """Start reading ``partition`` after ``position`` for run ``run_id``."""
        self._stop_reading()
        self._reading = ReadAhead(self._ready(partition, position, run_id), READ_AHEAD, f"etl-read-{self.index}")

    def next_batch(self) -> tuple[dict | None, pa.Table | None]:
        """The next batch of the open partition as ``(report, table)``; ``(None, None)``
        once it is exhausted. Chained, the table is the chain's output and the report
        holds the chain's under ``transformed``."""
        item = self._reading.next() if self._reading is not None else None
        if item is None:
            self._stop_reading()
            return None, None
        return item

    def _ready(self, partition: str, position: Any, run_id: str) -> Iterator[tuple[dict, pa.Table]]:
        for batch in self.source.read(partition, position):
            if batch.rejects:
                _log(self.log_url).put_dead_letters(self.pipeline, run_id, batch.batch_id, "extract", batch.rejects)
            report = {"batch_id": batch.batch_id, "partition": batch.partition, "position": batch.position,
                      "rows": batch.table.num_rows, "bytes": int(getattr(batch, "bytes", batch.table.nbytes)),
                      "rejected": len(batch.rejects), "reject_reason": _first_reason(batch.rejects)}
            if batch.resume_at is not None:
                report.update(resume_at=batch.resume_at, letter_ids=list(batch.letter_ids),
                              origin_run=batch.origin_run)
            table = batch.table
            if self.chain is not None and not (batch.resume_at or "").startswith("load"):
                start = batch.resume_at.partition(":")[2] if batch.resume_at is not None else None
                table, report["transformed"] = self.chain.apply(table, batch.batch_id, run_id, start,
                                                                batch.origin_run)
            yield report, table

    def _stop_reading(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.stop()

    def close(self) -> None:
        self._stop_reading()


def _first_reason(letters: Sequence[DeadLetter]) -> str:
    return letters[0].reason if letters else ""


def split_chain(steps: Sequence[Any]) -> tuple[tuple, Any | None, tuple]:
    """Split the steps at the first blocking one: ``(before, blocking, after)``."""
    for i, step in enumerate(steps):
        if step.blocking:
            return tuple(steps[:i]), step, tuple(steps[i + 1:])
    return tuple(steps), None, ()


class Transformer(Stage):
    """Applies the transformation chain to a batch.

    Steps run in order; each records recordsIn, recordsOut and its duration. A failing
    step with ``required: false`` is recorded and skipped; a failing required step
    raises :class:`StepFailed` naming it. When the chain holds a blocking step
    (aggregate), :meth:`apply` returns that step's partial state and :meth:`finish`
    combines the partials and runs the steps after it.
    """

    def __init__(self, pipeline: str, steps: Sequence[Any], log_url: str, index: int = 0):
        self._init_args = (pipeline, steps, log_url, index)
        self.pipeline, self.log_url, self.index = pipeline, log_url, index
        ship_tables_as_ipc()
        self.before, self.blocking, self.after = split_chain(steps)
        for step in steps:
            step.open()

    def __repr__(self) -> str:
        return f"Transformer[{self.pipeline}#{self.index}]"

    def apply(self, table: pa.Table, batch_id: str, run_id: str, start: str | None = None,
              scope: str | None = None) -> tuple[pa.Table, dict]:
        """The steps before the blocking one. A redrive starts at step ``start`` and
        judges run-wide rules by the run its letters came from (``scope``)."""
        steps = self.before
        if start is not None:
            ids = [s.id for s in steps]
            steps = steps[ids.index(start):] if start in ids else ()
        table, report = self._run_steps(steps, table, batch_id, run_id, scope)
        if self.blocking is not None:
            table = self._timed_partial(table, report)
        return table, report

    def finish_refs(self, batch_id: str, run_id: str, *partials):
        """``finish`` with the partial tables passed as top-level (resolved) arguments."""
        return self.finish(list(partials), batch_id, run_id)

    def finish(self, partials: Sequence[pa.Table], batch_id: str, run_id: str) -> tuple[pa.Table, dict]:
        """Combine the blocking step's partials, then run the steps after it."""
        started = time.perf_counter()
        table = self.blocking.combine(list(partials))
        head = _step_metrics(self.blocking.id, sum(p.num_rows for p in partials), table.num_rows, started)
        table, report = self._run_steps(self.after, table, batch_id, run_id)
        report["steps"].insert(0, head)
        report["batch_id"] = content_id("aggregate", table)
        return table, report

    def _timed_partial(self, table: pa.Table, report: dict) -> pa.Table:
        started = time.perf_counter()
        try:
            partial = self.blocking.partial(table)
        except Exception as exc:  # noqa: BLE001 - a blocking step cannot be skipped
            raise StepFailed(f"step {self.blocking.id!r} failed: {first_line(exc, with_type=True)}", step=self.blocking.id) from exc
        report["steps"].append(_step_metrics(self.blocking.id, table.num_rows, table.num_rows, started, partial=True))
        return partial

    def _run_steps(self, steps, table: pa.Table, batch_id: str, run_id: str,
                   scope: str | None = None) -> tuple[pa.Table, dict]:
        """Run ``steps`` in order. Every row in ends as kept (possibly flagged or
        enriched), rejected (a dead letter) or filtered; the report counts each."""
        report = {"rows_in": table.num_rows, "steps": [], "rejected": 0, "skipped": [], "reasons": [],
                  "enriched": 0, "flagged": 0, "quality": {}}
        ctx = StepContext(self.pipeline, scope or run_id, batch_id, self.log_url)
        for step in steps:
            table = self._run_step(step, table, ctx, run_id, report)
        report["rows_out"] = table.num_rows
        report["filtered"] = report["rows_in"] - report["rows_out"] - report["rejected"]
        report["flagged"] = flagged_rows(table, report["flagged"])
        report["quality"] = quality.of_steps(report["quality"])
        return table, report

    def _run_step(self, step, table: pa.Table, ctx: "StepContext", run_id: str, report: dict) -> pa.Table:
        started = time.perf_counter()
        batch_id = ctx.batch_id
        try:
            result: StepResult = step.apply_batch(table, ctx)
        except Exception as exc:  # noqa: BLE001 - the step's own failure, reported by id
            error = first_line(exc, with_type=True)
            if step.required:
                raise StepFailed(f"step {step.id!r} failed: {error}", step=step.id,
                                 path=getattr(exc, "path", None)) from exc
            report["skipped"].append({"step": step.id, "error": error})
            report["steps"].append(_step_metrics(step.id, table.num_rows, table.num_rows, started,
                                                 success=False, error=error))
            return table
        if result.rejects:
            self._put_rejects(f"transform:{step.id}", result.rejects, batch_id, run_id, table.schema)
            report["rejected"] += len(result.rejects)
            report["reasons"].append(result.rejects[0].reason)
        report["enriched"] += result.enriched
        report["flagged"] += result.flagged
        if result.quality:
            report["quality"][step.id] = result.quality
        report["steps"].append(_step_metrics(step.id, table.num_rows, result.table.num_rows, started))
        return result.table


    def _put_rejects(self, stage: str, rejects: Sequence[DeadLetter], batch_id: str, run_id: str,
                     schema: pa.Schema | None = None) -> None:
        _log(self.log_url).put_dead_letters(self.pipeline, run_id, batch_id, stage, rejects, schema)


def _step_metrics(step_id: str, rows_in: int, rows_out: int, started: float, success: bool = True,
                  error: str | None = None, partial: bool = False) -> dict:
    metrics = {"id": step_id, "recordsIn": rows_in, "recordsOut": rows_out,
               "durationMs": round((time.perf_counter() - started) * 1000, 3), "success": success}
    if error:
        metrics["error"] = error
    if partial:
        metrics["partial"] = True
    return metrics


class Loader(Stage):
    """Writes batches to one sink, one transaction per batch.

    May be retried: a batch id already in the sink's ledger is a no-op, so calling
    :meth:`load` twice with the same batch leaves its rows once.
    """

    def __init__(self, pipeline: str, sink: Any, log_url: str, index: int = 0):
        self._init_args = (pipeline, sink, log_url, index)
        self.pipeline, self.sink, self.log_url, self.index = pipeline, sink, log_url, index
        self._writer = None

    def __repr__(self) -> str:
        return f"Loader[{self.pipeline}#{self.index}]"

    @property
    def writer(self):
        if self._writer is None:
            self._writer = self.sink.open(self.pipeline)
        return self._writer

    def load(self, table: pa.Table, batch_id: str, run_id: str) -> dict:
        writer = self.writer
        writer.run_id = run_id
        result = writer.write(table, batch_id)
        if result.dead_letters:
            stage = "load" if self.index == 0 else f"load:{self.index}"
            _log(self.log_url).put_dead_letters(self.pipeline, run_id, batch_id, stage, result.dead_letters,
                                                table.schema)
        return {"batch_id": batch_id, "loaded": result.loaded, "failed": result.failed,
                "duplicate": result.duplicate, "bytes": int(table.nbytes),
                "reason": result.dead_letters[0].reason if result.dead_letters else ""}

    def complete_partition(self, partition: str, run_id: str) -> None:
        """Every batch of ``partition`` is written: let the sink assemble its output
        (idempotent, so a retry after a crash is harmless)."""
        writer = self.writer
        writer.run_id = run_id
        writer.complete_partition(partition)

    def finish(self) -> None:
        self.writer.finish()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def flagged_rows(table: pa.Table, counted: int) -> int:
    """How many rows of the chain's output carry quality flags: the non-null
    ``_quality_flags`` (a row flagged then dropped by a later filter is not loaded
    flagged); ``counted``, the steps' own count, when the column is not there."""
    if FLAGS_COLUMN not in table.column_names:
        return counted
    return table.num_rows - table.column(FLAGS_COLUMN).null_count


def content_id(prefix: str, table: pa.Table) -> str:
    """A batch id derived from a table's contents: equal tables, equal ids."""
    return f"{prefix}:{table_digest(table)}"



def _log(url: str):
    from ..eventlog import EventLog

    return EventLog(url)
