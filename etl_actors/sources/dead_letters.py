"""The dead-letter store as a source, for a redrive.

A redrive sends a pipeline's pending dead letters through its *current* spec from the
stage where they failed: a letter of ``transform:<step>`` enters the chain at that
step, one of ``load`` (``load:<i>``) goes straight to that sink. Letters of the stages
a redrive cannot replay are left pending: ``extract`` (a row the source could not
parse, or a partition it could not read, which every normal run reads again) and
``window`` (a late event: its window has been emitted).

Partitions are the stages; batches are at most ``batch_size`` letters in id order,
named by the letter ids they hold, so a redrive interrupted and run again forms the
same batches and a ledgered sink recognises the ones it already loaded. Rows get back
the Arrow types they had when they failed (the schema is stored with the letter).
"""
from __future__ import annotations

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
        after = int(position or 0)
        log = self._log()
        while True:
            letters = [d for d in log.dead_letters(self.pipeline, self.run_id, limit=self.batch_size, pending=True,
                                                   stage=partition, after_id=after) if d["id"] <= self.until_id]
            if not letters:
                return
            yield from self._batches(partition, letters)
            after = letters[-1]["id"]

    def _batches(self, stage: str, letters: list[dict]) -> Iterator[SourceBatch]:
        """One batch per run of consecutive letters sharing a schema (a batch holds one
        table) and the run they came from (whose run-wide state, such as a unique
        rule's seen values, judges them again)."""
        start = 0
        for end in range(1, len(letters) + 1):
            if end == len(letters) or _group(letters[end]) != _group(letters[start]):
                group = letters[start:end]
                ids = [d["id"] for d in group]
                yield SourceBatch(table=_table(group), batch_id=f"redrive:{stage}:{ids[0]}-{ids[-1]}",
                                  partition=stage, position=ids[-1], resume_at=stage,
                                  letter_ids=tuple(ids), origin_run=group[0]["runId"])
                start = end

    def estimate_bytes(self, partition: str) -> int | None:
        return None

    def describe(self) -> dict:
        return {"type": self.type, "pipeline": self.pipeline, "runId": self.run_id, "stage": self.stage}

    def _log(self):
        from ..eventlog import EventLog

        return EventLog(self.log_url)


def _group(letter: dict) -> tuple:
    return letter["schema"], letter["runId"]


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
