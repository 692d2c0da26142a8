"""The transform contract.

A step is a frozen dataclass with an ``id``, built from its spec section. It maps one
Arrow table to another over whole columns (``pyarrow.compute``); rows it cannot handle
come back as dead letters with a reason instead of failing the batch.

``required: false`` means that when the step raises, the runtime records the failure
and passes the batch on unchanged. A *blocking* step (aggregate) needs all of its
input: the runtime calls ``partial`` per batch and ``combine`` once at the end.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import pyarrow as pa

from ..batch import StepResult


class Transform:
    """Base class of transformation steps; subclasses are frozen dataclasses with
    fields ``id: str`` and ``required: bool``."""

    type: ClassVar[str]
    blocking: ClassVar[bool] = False

    @classmethod
    def from_spec(cls, section, ctx) -> "Transform":
        raise NotImplementedError

    def open(self) -> None:
        """Prepare in the worker process at the start of every run (load lookup
        tables, import handlers); a worker may serve several runs."""

    def apply(self, table: pa.Table) -> StepResult:
        raise NotImplementedError

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
