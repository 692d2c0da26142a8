"""Rows folded into one per (window, key), and keys spread over shards.

A *partial* (what :func:`fold` returns) has the columns ``windowStart``,
``windowEnd`` (int64 epoch ms), the keyBy fields, then one column per
:class:`~.aggregators.State` of the spec, ``count(*)`` (the events) first.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .aggregators import UNION, State, states, union_lists
from .assigners import assigner

START, END = "windowStart", "windowEnd"
_ROW, _SESSION = "__etl_row", "__etl_session"


def fold(table: pa.Table, spec, merge: bool) -> pa.Table:
    """One row per window and key of ``table``, whose columns are ``windowStart``,
    ``windowEnd``, the keys and either the input fields (``merge=False``: each state
    adds its field's values) or state columns (``merge=True``: states merge).
    Sessions of a key that overlap become one."""
    wanted = states(spec)
    table, by, steps = _windows(table, spec)
    for step in (_step(s, table, merge) for s in wanted):
        if step and step not in steps:
            steps.append(step)
    if merge and any(s.merge == UNION for s in wanted):
        table = table.append_column(_ROW, pa.array(np.arange(table.num_rows)))
    grouped = table.group_by(by, use_threads=False).aggregate(steps)
    out = {START: grouped[_name(*steps[0]) if by[0] == _SESSION else START], END: grouped[_name(END, "max")]}
    out.update((k, grouped[k]) for k in spec.key_by)
    out.update((s.column, _state(s, grouped, merge, table)) for s in wanted)
    return pa.table(out)


def _windows(table: pa.Table, spec) -> tuple[pa.Table, list[str], list[tuple]]:
    """How rows group into windows: ``(table, group by, aggregations of the bounds)``.
    Fixed windows group by start; sessions by session, numbered here."""
    keys = list(spec.key_by)
    if not assigner(spec).merges:
        return table, [START, *keys], [(END, "max")]
    sessions = assigner(spec).merge(_int64(table[START]), _int64(table[END]), key_ids(table, keys))
    return table.append_column(_SESSION, pa.array(sessions)), [_SESSION, *keys], [(START, "min"), (END, "max")]


def _step(state: State, table: pa.Table, merge: bool) -> tuple | None:
    """The Arrow aggregation that computes ``state`` per group (None: done apart)."""
    if merge:
        return (_ROW, "list") if state.merge == UNION else (state.column, state.merge)
    if state.field is None:
        return [], "count_all"
    if state.add == "distinct" and pa.types.is_null(table.schema.field(state.field).type):
        return None                         # Arrow's hash_distinct cannot take the null type
    return state.field, state.add


def _state(state: State, grouped: pa.Table, merge: bool, table: pa.Table) -> pa.ChunkedArray | pa.Array:
    if merge and state.merge == UNION:
        return union_lists(table[state.column], grouped[_name(_ROW, "list")])
    step = _step(state, table, merge)
    if step is None:
        return pa.array([[]] * grouped.num_rows, pa.list_(pa.null()))
    column = grouped[_name(*step)]
    return column.cast(state.type(column.type)) if state.kind == "sum" else column


def _name(column, function: str) -> str:
    return function if column == [] else f"{column}_{function}"


def key_ids(table: pa.Table, keys: list[str]) -> np.ndarray:
    """Per row, the number of its key (0, 1, ... by first appearance); a null is a key."""
    if not keys:
        return np.zeros(table.num_rows, dtype=np.int64)
    numbered = table.select(keys).append_column(_ROW, pa.array(np.arange(table.num_rows)))
    rows = numbered.group_by(keys, use_threads=False).aggregate([(_ROW, "list")])[_name(_ROW, "list")].combine_chunks()
    ids = np.empty(table.num_rows, dtype=np.int64)
    ids[pc.list_flatten(rows).to_numpy()] = pc.list_parent_indices(rows).to_numpy()
    return ids


def _int64(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.int64, copy=False)


# --- shards --------------------------------------------------------------------------

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_BASE = 0x100000001B3                                           # odd: invertible modulo 2**64
_STEP = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x2545F4914F6CDD1D)


def shards(table: pa.Table, keys: tuple[str, ...], parallelism: int) -> np.ndarray:
    """Per row, its shard: a hash of its key values that is the same in every process
    and run (never Python's salted ``hash``) modulo ``parallelism``. A value hashes
    alike whatever its integer type, and a whole float like the integer."""
    if parallelism == 1 or not keys:
        return np.zeros(table.num_rows, dtype=np.int64)
    digest = np.zeros(table.num_rows, dtype=np.uint64)
    for key in keys:
        digest = _mix(digest * np.uint64(31) + _hash(table[key].combine_chunks()))
    return (digest % np.uint64(parallelism)).astype(np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's step."""
    x = x + _STEP
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _hash(column: pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pa.types.is_null(kind):
        return np.full(len(column), _NULL)
    if pa.types.is_floating(kind):
        values = pc.fill_null(column, 0).to_numpy().astype(np.float64)
        whole = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2.0 ** 63)
        bits = np.where(whole, np.where(whole, values, 0).astype(np.int64), (values + 0.0).view(np.int64))
        digest = _mix(bits.view(np.uint64) ^ np.where(whole, np.uint64(0), np.uint64(1)))
    elif _is_whole_number(kind):
        digest = _mix(pc.fill_null(_as_int64(column), 0).to_numpy().view(np.uint64))
    else:
        as_bytes = pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
        digest = _hash_bytes(column if as_bytes else column.cast(pa.string()))
    return np.where(column.is_valid().to_numpy(zero_copy_only=False), digest, _NULL)


def _is_whole_number(kind: pa.DataType) -> bool:
    return any(test(kind) for test in (pa.types.is_integer, pa.types.is_boolean, pa.types.is_timestamp,
                                       pa.types.is_date, pa.types.is_time, pa.types.is_duration))


def _as_int64(column: pa.Array) -> pa.Array:
    if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
        return column.cast(pa.int64(), safe=False)
    return column.view(pa.int32() if column.type.bit_width == 32 else pa.int64()).cast(pa.int64())


def _hash_bytes(column: pa.Array) -> np.ndarray:
    """A polynomial hash of each value's bytes, for all values at once: the sum of
    ``(byte + 1) * BASE**position``, through prefix sums over the whole buffer."""
    column = column.cast(pa.large_binary())
    _, offsets_buffer, data_buffer = column.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[column.offset:column.offset + len(column) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buffer else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1] - offsets[0], offsets[1:] - offsets[0]
    powers, inverse = _powers(_BASE, len(data)), _powers(pow(_BASE, -1, 2 ** 64), len(data))
    prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[:-1])])
    return _mix((prefix[ends] - prefix[starts]) * inverse[starts] ^ (ends - starts).astype(np.uint64))


def _powers(base: int, count: int) -> np.ndarray:
    """``base**0 .. base**count`` modulo 2**64."""
    return np.concatenate([np.ones(1, np.uint64), np.cumprod(np.full(count, base, dtype=np.uint64))])
