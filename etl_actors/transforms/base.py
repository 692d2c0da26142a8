"""The transform contract.

A step is a frozen dataclass with an ``id``, built from its spec section. It maps one
Arrow table to another over whole columns (``pyarrow.compute``); rows it cannot handle
come back as dead letters with a reason instead of failing the batch.

``required: false`` means that when the step raises, the runtime records the failure
and passes the batch on unchanged. A *blocking* step (aggregate) needs all of its
input: the runtime calls ``partial`` per batch and ``combine`` once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import pyarrow as pa

from ..batch import StepResult


@dataclass(frozen=True)
class StepContext:
    """Where a batch is being transformed: steps that keep run-wide state (the seen
    values of a ``unique`` rule) key it by run and batch, in the event log's database
    at ``log_url``, so a batch transformed again after a crash gets the same answer.
    ``run_id`` is the run whose run-wide state applies: for a redrive, the run its
    letters came from (a duplicate stays a duplicate of what that run loaded)."""

    pipeline: str
    run_id: str
    batch_id: str
    log_url: str


class Transform:
    """Base class of transformation steps; subclasses are frozen dataclasses with
    fields ``id: str`` and ``required: bool``."""

    type: ClassVar[str]
    blocking: ClassVar[bool] = False
    pooled: ClassVar[bool] = False      # runs on the transformer pool, never chained into an extractor

    @classmethod
    def from_spec(cls, section, ctx) -> "Transform":
        raise NotImplementedError

    def open(self) -> None:
        """Prepare in the worker process at the start of every run (load lookup
        tables, import handlers); a worker may serve several runs."""

    def apply(self, table: pa.Table) -> StepResult:
        raise NotImplementedError

    def apply_batch(self, table: pa.Table, ctx: StepContext | None) -> StepResult:
        """``apply`` with the batch's context; the runtime calls this one."""
        return self.apply(table)

    # blocking steps only
    def partial(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def combine(self, partials: Sequence[pa.Table]) -> pa.Table:
        raise NotImplementedError


def common_step_fields(section) -> dict:
    """``id`` and ``required`` as every step reads them (``id`` defaults to the type)."""
    return {
        "id": section.get("id", section.get("type", types=str), types=str),
        "required": section.get("required", True, types=bool),
    }
