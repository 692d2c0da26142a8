"""The data plane's small types: what flows between extractor, transformer and loader.

Tables travel as ``pyarrow.Table``; these wrappers carry the facts the supervisor needs
(ids, positions, counts) without the rows.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa


@dataclass(frozen=True)
class DeadLetter:
    """One record that failed, and why. ``record`` holds plain JSON-able values."""

    reason: str
    record: dict


@dataclass(frozen=True)
class SourceBatch:
    """A batch read from one source partition.

    ``batch_id`` is deterministic: the same id always means the same rows, so a sink's
    ledger can recognise a replayed batch. ``position`` is where to resume once this
    batch (and every batch before it in the partition) is loaded; it is a plain
    msgpack-able value.
    """

    table: pa.Table
    batch_id: str
    partition: str
    position: Any
    rejects: tuple[DeadLetter, ...] = ()
    resume_at: str | None = None            # a redrive: the stage the rows enter at (transform:<id>, load, load:<i>)
    letter_ids: tuple[int, ...] = ()        # a redrive: the dead letters the rows came from
    origin_run: str | None = None           # a redrive: the run those letters came from


@dataclass(frozen=True)
class StepResult:
    """What one transformation step returns for a batch: the rows kept (``table``),
    the rows rejected (``rejects``, dead letters), and of the kept rows how many are
    ``flagged`` (loaded with the quality rules they broke) and ``enriched`` (given
    fields by a lookup). ``quality`` is a validation step's per-batch report:
    ``{"total", "passed", "failed", "warnings", "rules": {id: {"violations",
    "severity", "action", "examples"}}}``; the runtime folds it into the run's."""

    table: pa.Table
    rejects: tuple[DeadLetter, ...] = ()
    flagged: int = 0
    enriched: int = 0
    quality: Mapping | None = None


@dataclass(frozen=True)
class LoadResult:
    """What a sink returns for one batch.

    ``duplicate`` is true when the sink's ledger already held the batch id, so nothing
    was written. ``dead_letters`` are the rows the sink refused (``errorHandling:
    continue``); ``failed == len(dead_letters)``.
    """

    loaded: int
    failed: int = 0
    duplicate: bool = False
    dead_letters: tuple[DeadLetter, ...] = field(default=(), repr=False)


def table_digest(table: pa.Table, algorithm: str = "sha256", length: int = 24) -> str:
    """A hex digest of a table's schema and rows (its Arrow IPC stream): equal tables,
    equal digests, so an id made from it names the same rows on a replay."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.new(algorithm, sink.getvalue()).hexdigest()[:length]


def is_done(position: Any) -> bool:
    """Whether a partition position says the partition is finished for good."""
    return isinstance(position, Mapping) and bool(position.get("done"))


def jsonable(value: Any) -> Any:
    """A value fit for JSON / msgpack: dates and decimals become strings, and NaN and
    the infinities (which JSON has not) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def rows_as_dead_letters(table: pa.Table, reasons: list[str]) -> tuple[DeadLetter, ...]:
    """Pair each row of ``table`` with its reason."""
    return tuple(DeadLetter(reason, jsonable(row)) for row, reason in zip(table.to_pylist(), reasons))
