"""``type: filter``: keep the rows whose condition is true.

    - {id: active, type: filter, condition: "status == 'active' and age >= 18"}

The condition is compiled when the spec is read, so a bad one fails validation with
its path. Rows whose condition is false or null (SQL semantics) are dropped; they are
counted as filtered by the runtime, not dead-lettered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from ..batch import StepResult
from ..errors import TerminalError
from ..expressions import Expression, compile_expression
from .base import Transform, common_step_fields


@dataclass(frozen=True)
class FilterStep(Transform):
    """Keeps the rows of a table for which ``condition`` is true."""

    id: str
    condition: Expression
    required: bool = True

    type: ClassVar[str] = "filter"

    @classmethod
    def from_spec(cls, section, ctx) -> "FilterStep":
        common = common_step_fields(section)
        condition = compile_expression(section.get("condition", types=str), section.at("condition"))
        section.done()
        return cls(condition=condition, **common)

    def apply(self, table: pa.Table) -> StepResult:
        mask = self.condition.evaluate(table)
        if not pa.types.is_boolean(mask.type):
            raise TerminalError(f"step {self.id!r}: condition {self.condition.text!r} gives {mask.type} "
                                f"values, expected true/false", step=self.id)
        return StepResult(table.filter(mask, null_selection_behavior="drop"))
