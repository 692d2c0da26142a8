"""The dead-letter store as a source, for a redrive.

A redrive sends a pipeline's pending dead letters through its *current* spec from the
stage where they failed: a letter of ``transform:<step>`` enters the chain at that
step, one of ``load`` (``load:<i>``) goes straight to that sink. Letters of the stages
a redrive cannot replay are left pending: ``extract`` (a row the source could not
parse, or a partition it could not read, which every normal run reads again) and
``window`` (a late event: its window has been emitted).

Partitions are the stages; a batch is a chunk of at most ``batch_size`` letters of one
original batch (by their index in it), named by that batch and chunk, so a redrive
interrupted and run again forms the same batches (with the same letters: a batch's
letters are marked redriven in the transaction that records it) and a ledgered sink
recognises the ones it already loaded. Rows get back
the Arrow types they had when they failed (the schema is stored with the letter).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import pyarrow as pa

from ..batch import SourceBatch
from .base import Source


def replayable(stage: str) -> bool:
    return stage == "load" or stage.startswith("load:") or stage.startswith("transform:")


@dataclass(frozen=True)
class DeadLetterSource(Source):
    """The pending letters of ``pipeline`` (of run ``run_id`` / stage ``stage`` when
    given) in the log at ``log_url``."""

    type: ClassVar[str] = "dead-letters"

    log_url: str
    pipeline: str
    run_id: str | None = None
    stage: str | None = None
    stages: tuple[str, ...] = ()    # the stages the current spec can take letters back at
    until_id: int = 0               # letters up to this id (those written by the redrive itself wait)
    batch_size: int = 10_000

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        return sorted(s for s in self.pending() if s in self.stages)

    def pending(self) -> dict[str, int]:
        """``{stage: letters}`` pending for this redrive, replayable or not."""
        stages = self._log().dead_letter_stages(self.pipeline, self.run_id, pending=True)
        return {s: n for s, n in stages.items() if self.stage is None or s == self.stage}

    def read(self, partition: str, position: Any | None) -> Iterator[SourceBatch]:
        """The pending letters of stage ``partition``: one batch per chunk of
        ``batch_size`` letters of one original batch (by their index in it), so a batch
        is named by what it holds, whichever letters are still pending and however the
        store is paged; ``position`` ``[first id of the original batch, chunk]``
        resumes after that chunk."""
        after_first, after_chunk = position if position else (0, -1)
        log = self._log()
        for first, run_id, batch_id in log.dead_letter_groups(self.pipeline, partition, self.run_id, self.until_id):
            if first < after_first:
                continue
            letters = [d for d in log.dead_letters(self.pipeline, run_id, pending=True, stage=partition,
                                                   batch_id=batch_id) if d["id"] <= self.until_id]
            chunks: dict[int, list[dict]] = {}
            for letter in letters:
                chunks.setdefault(letter["idx"] // self.batch_size, []).append(letter)
            for chunk, group in sorted(chunks.items()):
                if first == after_first and chunk <= after_chunk:
                    continue
                yield SourceBatch(table=_table(group), partition=partition, position=[first, chunk],
                                  batch_id=f"redrive:{partition}:{_digest(run_id, batch_id)}:{chunk}",
                                  resume_at=partition, letter_ids=tuple(d["id"] for d in group),
                                  origin_run=run_id)

    def estimate_bytes(self, partition: str) -> int | None:
        return None

    def describe(self) -> dict:
        return {"type": self.type, "pipeline": self.pipeline, "runId": self.run_id, "stage": self.stage}

    def _log(self):
        from ..eventlog import EventLog

        return EventLog(self.log_url)


def _digest(run_id: str, batch_id: str) -> str:
    return hashlib.sha256(f"{run_id}\0{batch_id}".encode()).hexdigest()[:20]


def _table(letters: list[dict]) -> pa.Table:
    """The letters' records as a table with the types they had (when the schema was
    stored and every value still fits it), else as the values read from JSON."""
    from ..eventlog import decode_schema

    records = [d["record"] for d in letters]
    schema = decode_schema(letters[0]["schema"])
    if schema is not None:
        try:
            return _typed(records, schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
            pass
    return pa.Table.from_pylist(records)


def _typed(records: list[dict], schema: pa.Schema) -> pa.Table:
    """Build each column from the JSON values, then cast it to its old type (dates
    and timestamps were stored as ISO text, decimals as text, nested values as JSON)."""
    columns = []
    for field in schema:
        values = [r.get(field.name) for r in records]
        columns.append(_column(values, field.type))
    table = pa.Table.from_arrays(columns, schema=schema)
    extra = sorted({k for r in records for k in r} - set(schema.names))
    for name in extra:   # a field the schema did not know (it should not happen): keep it
        table = table.append_column(name, pa.array([r.get(name) for r in records]))
    return table


def _column(values: list, type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        if pa.types.is_nested(type_) and all(isinstance(v, (str, type(None))) for v in values):
            values = [json.loads(v) if isinstance(v, str) else v for v in values]
            return pa.array(values, type=type_)
        return pa.array(values).cast(type_)
