"""``type: filter``: keep the rows whose condition is true.

    - {id: active, type: filter, condition: "status == 'active' and age >= 18"}

The condition is compiled when the spec is read, so a bad one fails validation with
its path. Rows whose condition is false or null (SQL semantics) are dropped; they are
counted as filtered by the runtime, not dead-lettered. On change rows (a
``postgres-cdc`` stream: ``_op``, ``_lsn`` and ``_table`` columns) nothing is dropped:
a row the condition drops becomes a delete (``_op: d``), so a mirror removes the row
from the destination once it stops passing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from ..batch import StepResult
from ..columns import is_change_rows, key_only
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
        if is_change_rows(table):
            return StepResult(_as_deletes(table, mask))
        return StepResult(table.filter(mask, null_selection_behavior="drop"))


def _as_deletes(table: pa.Table, mask) -> pa.Table:
    """Change rows (a postgres-cdc stream): a row the condition drops becomes a delete
    of its key, so a mirror removes a row that stops passing; deletes and truncates
    pass as they are."""
    import pyarrow.compute as pc

    ops = table.column("_op")
    keep = pc.or_(pc.fill_null(mask, False), key_only(table))
    return table.set_column(table.schema.get_field_index("_op"), "_op", pc.if_else(keep, ops, "d"))
