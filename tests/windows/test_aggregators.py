"""Aggregations skip nulls as SQL does, keep their input types, and merge exactly."""
import numpy as np
import pyarrow as pa

from etl_actors.windows import WindowSpec, WindowState, pre_aggregate
from etl_actors.windows.aggregators import union_lists

from .timeline import T0

ALL = (("n", "count", None), ("present", "count", "v"), ("distinct", "count_distinct", "v"), ("total", "sum", "v"),
       ("mean", "avg", "v"), ("lo", "min", "v"), ("hi", "max", "v"))


def window(**overrides) -> WindowSpec:
    return WindowSpec(**{"id": "w", "kind": "tumbling", "size_ms": 60_000, "slide_ms": None, "gap_ms": None,
                         "key_by": ("k",), "timestamp_field": "t", "aggregations": ALL, **overrides})


def emit(spec: WindowSpec, *tables: pa.Table) -> list[dict]:
    state = WindowState(spec)
    for table in tables:
        for partial in pre_aggregate(table, spec, None, None, 0).partials:
            state.add(partial)
    return state.flush().drop_columns(["windowStart", "windowEnd"]).to_pylist()


def test_nulls_are_skipped_and_a_null_key_is_a_key():
    table = pa.table({"t": [T0] * 5, "k": ["a", "a", "a", None, "b"], "v": [2, None, 2, 7, None]})
    assert emit(window(), table) == [
        {"k": "a", "n": 3, "present": 2, "distinct": 1, "total": 4, "mean": 2.0, "lo": 2, "hi": 2},
        {"k": "b", "n": 1, "present": 0, "distinct": 0, "total": None, "mean": None, "lo": None, "hi": None},
        {"k": None, "n": 1, "present": 1, "distinct": 1, "total": 7, "mean": 7.0, "lo": 7, "hi": 7}]


def test_partials_of_several_batches_merge_to_what_one_batch_gives():
    rng = np.random.default_rng(7)
    table = pa.table({"t": T0 + rng.integers(0, 180_000, 300), "k": rng.choice(["a", "b", "c"], 300),
                      "v": pa.array(rng.integers(0, 9, 300), mask=rng.random(300) < 0.2)})
    slices = [table.slice(0, 100), table.slice(100, 1), table.slice(101)]
    spec = window(max_out_of_orderness_ms=180_000)
    assert emit(spec, *slices) == emit(spec, table)


def test_sums_are_int64_or_float64_and_minima_keep_their_type():
    table = pa.table({"t": [T0, T0], "k": ["a", "a"], "v": pa.array([1.5, 2.0], pa.float32()),
                      "i": pa.array([3, 4], pa.int16()), "s": ["pear", "apple"]})
    spec = window(aggregations=(("fs", "sum", "v"), ("is", "sum", "i"), ("first", "min", "s"), ("last", "max", "s")))
    state = WindowState(spec)
    state.add(pre_aggregate(table, spec, None, None, 0).partials[0])
    emitted = state.flush()
    assert [f.type for f in emitted.schema][3:] == [pa.float64(), pa.int64(), pa.string(), pa.string()]
    assert emitted.drop_columns(["windowStart", "windowEnd"]).to_pylist() == [
        {"k": "a", "fs": 3.5, "is": 7, "first": "apple", "last": "pear"}]


def test_missing_fields_read_as_nulls():
    assert emit(window(), pa.table({"t": [T0]})) == [
        {"k": None, "n": 1, "present": 0, "distinct": 0, "total": None, "mean": None, "lo": None, "hi": None}]


def test_union_of_distinct_lists_per_group():
    lists = pa.array([[1, 2], [2, 3], [], [4]])
    rows_of_group = pa.array([[0, 1], [2], [3]])
    assert [sorted(v) for v in union_lists(lists, rows_of_group).to_pylist()] == [[1, 2, 3], [], [4]]
