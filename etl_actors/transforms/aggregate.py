"""``type: aggregate``: group rows and aggregate columns.

    - id: by_country
      type: aggregate
      groupBy: [country]                  # optional: none gives one global row
      aggregations: {amount: [sum, avg], customer_id: count_distinct, "*": count}

The output has the groupBy columns, then one column per aggregation named
``<func>_<field>`` (``sum_amount``, ``avg_amount``, ``count_distinct_customer_id``;
``count`` for ``"*": count``, which counts rows). Functions: sum, avg, min, max,
count (non-null values), count_distinct (non-null distinct values). Nulls are skipped
as in SQL; a group of only nulls has a null sum/avg/min/max and a count of 0.

The step is blocking: the runtime calls :meth:`AggregateStep.partial` on each batch
and :meth:`AggregateStep.combine` once on all the partials, which gives the same
table as aggregating all the input at once (row order: groups by first appearance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import pyarrow as pa

from ..batch import StepResult
from ..errors import SpecError, TerminalError
from ..spec import describe
from ..windows.aggregators import AGGREGATORS, UNION, Aggregator, State, union_lists
from .base import Transform, common_step_fields

FUNCS = ("sum", "avg", "min", "max", "count", "count_distinct")
ALL_ROWS = "*"
_NO_KEY = "__etl_group"
_ROW = "__etl_row"


@dataclass(frozen=True)
class AggregateStep(Transform):
    """``aggregations`` is a tuple of ``(field, func)`` pairs in output order."""

    id: str
    aggregations: tuple[tuple[str, str], ...]
    group_by: tuple[str, ...] = ()
    required: bool = True

    type: ClassVar[str] = "aggregate"
    blocking: ClassVar[bool] = True

    @classmethod
    def from_spec(cls, section, ctx) -> "AggregateStep":
        common = common_step_fields(section)
        group_by = section.str_list("group_by", ())
        raw = section.get("aggregations", types=dict,
                          check=lambda v: None if v else "expected at least one aggregation, got none")
        aggregations = tuple(pair for field, funcs in raw.items()
                             for pair in _pairs(str(field), funcs, f"{section.at('aggregations')}.{field}"))
        section.done()
        return cls(aggregations=aggregations, group_by=group_by, **common)

    def apply(self, table: pa.Table) -> StepResult:
        return StepResult(self.combine([self.partial(table)]))

    def partial(self, table: pa.Table) -> pa.Table:
        """Per group of this batch, the mergeable state (see ``windows.aggregators``):
        sums, counts, min, max, and the distinct values as lists. Columns: the groupBy
        fields, then one per state (``sum(amount)``, ``count(*)``, ...)."""
        self._check_columns(table)
        states = self._states()
        keyed, keys = self._keyed(table)
        steps = list(dict.fromkeys(_add_step(s) for s in states))
        grouped = keyed.group_by(keys, use_threads=False).aggregate([([] if f is None else f, fn) for f, fn in steps])
        columns = {k: grouped[k] for k in keys}
        columns.update({s.column: grouped[_arrow_name(*_add_step(s))] for s in states})
        return pa.table(columns)

    def combine(self, partials: Sequence[pa.Table]) -> pa.Table:
        """Merge partial states (of any number of batches) into the final table."""
        states = self._states()
        table = pa.concat_tables(list(partials), promote_options="permissive") if partials else None
        if table is None or (table.num_rows == 0 and not self.group_by):
            table = self._empty_state(states, table)
        table = table.append_column(_ROW, pa.array(np.arange(table.num_rows)))
        merged = table.group_by(list(self.group_by) or [_NO_KEY], use_threads=False).aggregate(
            [(s.column, s.merge) for s in states if s.merge != UNION] + [(_ROW, "list")])
        merged_states = pa.table({s.column: _merged(s, merged, table) for s in states})
        out = {k: merged[k] for k in self.group_by}
        out.update((a.name, a.result(merged_states)) for a in self._aggregators())
        return pa.table(out)

    def _aggregators(self) -> list[Aggregator]:
        return [AGGREGATORS[func](_output_name(field, func), None if field == ALL_ROWS else field)
                for field, func in self.aggregations]

    def _states(self) -> list[State]:
        """Every state column the aggregations need, each once."""
        return list(dict.fromkeys(s for a in self._aggregators() for s in a.states))

    def _keyed(self, table: pa.Table) -> tuple[pa.Table, list[str]]:
        if self.group_by:
            return table, list(self.group_by)
        return table.append_column(_NO_KEY, pa.repeat(pa.scalar(0, pa.int8()), table.num_rows)), [_NO_KEY]

    def _check_columns(self, table: pa.Table) -> None:
        wanted = [*self.group_by, *(f for f, _ in self.aggregations if f != ALL_ROWS)]
        missing = [name for name in dict.fromkeys(wanted) if name not in table.column_names]
        if missing:
            raise TerminalError(f"step {self.id!r}: column(s) {', '.join(map(repr, missing))} not found "
                                f"(columns: {', '.join(table.column_names)})", step=self.id)

    def _empty_state(self, states: list[State], table: pa.Table | None) -> pa.Table:
        """The one state row of a global aggregation over no rows: counts 0, the rest null."""
        columns = {_NO_KEY: pa.array([0], pa.int8())} if not self.group_by else {k: pa.array([], pa.null())
                                                                                 for k in self.group_by}
        rows = 1 if not self.group_by else 0
        for state in states:
            kind = table.schema.field(state.column).type if table is not None else state.type(pa.null())
            columns[state.column] = pa.array([0 if state.kind == "count" else None] * rows, kind)
        return pa.table(columns)


def _pairs(field: str, funcs, path: str) -> list[tuple[str, str]]:
    names = [funcs] if isinstance(funcs, str) else funcs
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SpecError(path, f"expected a function name or a list of them ({', '.join(FUNCS)}), got {describe(funcs)}")
    for name in names:
        if name not in FUNCS:
            raise SpecError(path, f"{name!r} is not one of {', '.join(FUNCS)}")
        if field == ALL_ROWS and name != "count":
            raise SpecError(path, f"'*' (all rows) can only be counted, got {name!r}")
    return [(field, name) for name in names]


def _add_step(state: State) -> tuple[str | None, str]:
    return state.field, state.add


def _arrow_name(field: str | None, fn: str) -> str:
    return fn if field is None else f"{field}_{fn}"


def _output_name(field: str, func: str) -> str:
    return "count" if field == ALL_ROWS else f"{func}_{field}"


def _merged(state: State, merged: pa.Table, table: pa.Table) -> pa.ChunkedArray | pa.Array:
    """``state`` merged per group (lists of distinct values through each group's rows)."""
    if state.merge != UNION:
        return merged[f"{state.column}_{state.merge}"]
    return union_lists(table[state.column], merged[f"{_ROW}_list"])
