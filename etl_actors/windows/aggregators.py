"""Aggregators: Beam's ``create / add / merge / result``, over many groups at once.

An aggregator keeps its per-group state in one or more Arrow columns (:class:`State`):

* create: ``State.type(value_type)``, the column type of an empty state;
* add: ``State.add``, the Arrow hash aggregation that folds a batch of input values
  into one state per group;
* merge: ``State.merge``, the one that folds several states of a group into one
  (``"union"`` for lists of distinct values, which Arrow has not, see
  :func:`union_lists`);
* result: ``Aggregator.result(states)``, the final column from the merged states.

States are plain Arrow columns (counts, sums, minima, maxima, lists of distinct
values), so a table of them serialises as it is. Nulls are skipped as in SQL: a group
of only nulls has a null sum, avg, min and max, and counts of 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNION = "union"


@dataclass(frozen=True)
class State:
    """One state column: ``kind(field)``, e.g. ``sum(value)``; ``count(*)`` counts events."""

    kind: str
    field: str | None

    _MERGE: ClassVar[dict[str, str]] = {"count": "sum", "sum": "sum", "min": "min", "max": "max", "distinct": UNION}

    @property
    def column(self) -> str:
        return f"{self.kind}({self.field or '*'})"

    @property
    def add(self) -> str:
        return "count_all" if self.field is None else self.kind

    @property
    def merge(self) -> str:
        return self._MERGE[self.kind]

    def type(self, value_type: pa.DataType) -> pa.DataType:
        """The state's column type for input values of ``value_type`` (null: unknown)."""
        if self.kind == "count":
            return pa.int64()
        if self.kind == "distinct":
            return pa.list_(value_type)
        if self.kind == "sum":
            return _sum_type(value_type)
        return value_type


EVENTS = State("count", None)


@dataclass(frozen=True)
class Aggregator:
    """Output column ``name`` from ``field``; subclasses name their states and result."""

    name: str
    field: str | None

    func: ClassVar[str]

    @property
    def states(self) -> tuple[State, ...]:
        raise NotImplementedError

    def result(self, states: pa.Table) -> pa.Array:
        raise NotImplementedError


class Count(Aggregator):
    """Events (no field), or events whose field is not null."""

    func = "count"

    @property
    def states(self):
        return (State("count", self.field),)

    def result(self, states):
        return pc.fill_null(states[self.states[0].column], 0)


class CountDistinct(Aggregator):
    func = "count_distinct"

    @property
    def states(self):
        return (State("distinct", self.field),)

    def result(self, states):
        return pc.fill_null(pc.list_value_length(states[self.states[0].column]), 0).cast(pa.int64())


class Sum(Aggregator):
    """int64 for integer input, float64 for floating point, else Arrow's sum type."""

    func = "sum"

    @property
    def states(self):
        return (State("sum", self.field),)

    def result(self, states):
        column = states[self.states[0].column]
        return column.cast(_sum_type(column.type))


class Avg(Aggregator):
    func = "avg"

    @property
    def states(self):
        return State("sum", self.field), State("count", self.field)

    def result(self, states):
        total = states[self.states[0].column].cast(pa.float64())
        count = pc.fill_null(states[self.states[1].column], 0)
        return pc.if_else(pc.equal(count, 0), pa.scalar(None, pa.float64()), pc.divide(total, count.cast(pa.float64())))


class Min(Aggregator):
    func = "min"

    @property
    def states(self):
        return (State("min", self.field),)

    def result(self, states):
        return states[self.states[0].column]


class Max(Min):
    func = "max"

    @property
    def states(self):
        return (State("max", self.field),)


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.func: cls for cls in (Count, CountDistinct, Sum, Avg, Min, Max)}


def aggregators(spec) -> tuple[Aggregator, ...]:
    """The spec's aggregators in output order."""
    return tuple(AGGREGATORS[func](name, field) for name, func, field in spec.aggregations)


def states(spec) -> tuple[State, ...]:
    """Every state column the spec needs, each once; ``count(*)`` (events) first."""
    return tuple(dict.fromkeys([EVENTS, *(s for a in aggregators(spec) for s in a.states)]))


def union_lists(lists: pa.ChunkedArray | pa.Array, rows_of_group: pa.ChunkedArray | pa.Array) -> pa.ListArray:
    """The merge of count_distinct states: per group, the distinct values of the
    ``lists`` of its rows, ``rows_of_group`` listing the row numbers of each group."""
    lists, rows_of_group = _one_chunk(lists), _one_chunk(rows_of_group)
    values = pc.list_flatten(lists)
    if len(values) == 0:
        return pa.array([[]] * len(rows_of_group), lists.type)
    group_of_row = np.empty(len(lists), dtype=np.int64)
    group_of_row[pc.list_flatten(rows_of_group).to_numpy()] = pc.list_parent_indices(rows_of_group).to_numpy()
    owner = group_of_row[pc.list_parent_indices(lists).to_numpy()]
    unique = pa.table({"group": owner, "value": values}).group_by(["group", "value"], use_threads=False).aggregate([])
    owner = unique["group"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(rows_of_group)))])
    order = pa.array(np.argsort(owner, kind="stable"))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), _one_chunk(unique["value"]).take(order))


def _one_chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _sum_type(value_type: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(value_type):
        return pa.int64()
    if pa.types.is_floating(value_type):
        return pa.float64()
    return value_type
