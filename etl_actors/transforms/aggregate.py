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
import pyarrow.compute as pc

from ..batch import StepResult
from ..errors import SpecError, TerminalError
from ..spec import describe
from .base import Transform, common_step_fields

FUNCS = ("sum", "avg", "min", "max", "count", "count_distinct")
ALL_ROWS = "*"
_NO_KEY = "__etl_group"

# the partial state each function needs: (state, Arrow function per batch, Arrow function to
# merge); distinct values (lists) are merged apart, see _count_distinct
_ROW = "__etl_row"
_EMPTY_TYPES = {"count": pa.int64(), "distinct": pa.list_(pa.null())}
_STATES = {"sum": [("sum", "sum", "sum")], "avg": [("sum", "sum", "sum"), ("count", "count", "sum")],
           "min": [("min", "min", "min")], "max": [("max", "max", "max")],
           "count": [("count", "count", "sum")], "count_distinct": [("distinct", "distinct", None)]}


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
        """Per group of this batch, the mergeable state: sums, counts, min, max, and the
        distinct values as lists. Columns: the groupBy fields, then ``state:field``."""
        self._check_columns(table)
        states = self._states()
        keyed, keys = self._keyed(table)
        grouped = keyed.group_by(keys, use_threads=False).aggregate(
            [([] if f == ALL_ROWS else f, "count_all" if f == ALL_ROWS else fn) for _, f, fn, _ in states])
        columns = {k: grouped[k] for k in keys}
        columns.update({name: grouped[_arrow_name(f, fn)] for name, f, fn, _ in states})
        return pa.table(columns)

    def combine(self, partials: Sequence[pa.Table]) -> pa.Table:
        """Merge partial states (of any number of batches) into the final table."""
        states = self._states()
        table = pa.concat_tables(list(partials), promote_options="permissive") if partials else None
        if table is None or (table.num_rows == 0 and not self.group_by):
            table = self._empty_state(states, table)
        table = table.append_column(_ROW, pa.array(np.arange(table.num_rows)))
        merged = table.group_by(list(self.group_by) or [_NO_KEY], use_threads=False).aggregate(
            [(name, merge) for name, _, _, merge in states if merge] + [(_ROW, "list")])
        out = {k: merged[k] for k in self.group_by}
        for field, func in self.aggregations:
            out[_output_name(field, func)] = _finish(func, field, merged, table)
        return pa.table(out)

    def _states(self) -> list[tuple[str, str, str, str]]:
        """``(state column, input field, Arrow function, Arrow merge function)``, unique."""
        seen: dict[str, tuple[str, str, str, str]] = {}
        for field, func in self.aggregations:
            for state, fn, merge in _STATES[func]:
                seen.setdefault(f"{state}:{field}", (f"{state}:{field}", field, fn, merge))
        return list(seen.values())

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

    def _empty_state(self, states, table: pa.Table | None) -> pa.Table:
        """The one state row of a global aggregation over no rows: counts 0, the rest null."""
        columns = {_NO_KEY: pa.array([0], pa.int8())} if not self.group_by else {k: pa.array([], pa.null())
                                                                                 for k in self.group_by}
        rows = 1 if not self.group_by else 0
        for name, *_ in states:
            kind = table.schema.field(name).type if table is not None else _EMPTY_TYPES.get(name.split(":")[0], pa.null())
            columns[name] = pa.array([0 if name.startswith("count:") else None] * rows, kind)
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


def _arrow_name(field: str, fn: str) -> str:
    return "count_all" if field == ALL_ROWS else f"{field}_{fn}"


def _output_name(field: str, func: str) -> str:
    return "count" if field == ALL_ROWS else f"{func}_{field}"


def _finish(func: str, field: str, merged: pa.Table, states: pa.Table) -> pa.Array:
    """The final value of ``func`` over ``field`` from the merged state columns."""
    if func == "count_distinct":
        return _count_distinct(states[f"distinct:{field}"].combine_chunks(), merged[f"{_ROW}_list"].combine_chunks())
    if func == "avg":
        total = pc.cast(merged[f"sum:{field}_sum"], pa.float64())
        count = merged[f"count:{field}_sum"]
        return pc.if_else(pc.equal(count, 0), pa.scalar(None, pa.float64()), pc.divide(total, pc.cast(count, pa.float64())))
    state = {"sum": "sum", "count": "count", "min": "min", "max": "max"}[func]
    merge = {"sum": "sum", "count": "sum", "min": "min", "max": "max"}[func]
    return merged[f"{state}:{field}_{merge}"]


def _count_distinct(lists: pa.Array, rows_of_group: pa.Array) -> pa.Array:
    """Per group, the number of distinct values in the ``lists`` of its state rows.

    ``rows_of_group`` lists, per merged group, the state rows that fell into it.
    """
    group_of_row = np.empty(len(lists), dtype=np.int64)
    group_of_row[pc.list_flatten(rows_of_group).to_numpy()] = pc.list_parent_indices(rows_of_group).to_numpy()
    group_of_value = pc.take(pa.array(group_of_row), pc.list_parent_indices(lists))
    pairs = pa.table({"g": group_of_value, "v": pc.list_flatten(lists)})
    counts = pairs.group_by("g", use_threads=False).aggregate([("v", "count_distinct")])
    position = pc.index_in(pa.array(np.arange(len(rows_of_group))), value_set=counts["g"])
    return pc.fill_null(pc.take(counts["v_count_distinct"], position), 0)
