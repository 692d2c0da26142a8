"""The window actor's state: snapshots, emitted schemas, open windows."""
import zlib

import msgpack
import pyarrow as pa
import pytest

from etl_actors.errors import TerminalError
from etl_actors.windows import WindowState, pre_aggregate, result_schema

from .timeline import T0, Timeline, events, spec

SCHEMA = pa.schema([("t", pa.int64()), ("k", pa.string()), ("v", pa.int64())])


#   a10 a20 | crash, restore | a30 b70 -> [0, 60) as if nothing happened
def test_a_restored_state_emits_what_the_one_that_crashed_would_have():
    run = Timeline(spec()).batch((10, "a", 1), (20, "a", 2)).advance().restart()
    run.batch((30, "a", 4), (70, "b", 8)).advance()
    assert run.rows() == [{"windowStart": 0, "windowEnd": 60, "k": "a", "n": 3, "total": 7}]
    assert run.restart().states[0].emitted_watermark == T0 + 70_000
    assert run.flush().rows()[1:] == [{"windowStart": 60, "windowEnd": 120, "k": "b", "n": 1, "total": 8}]


def test_a_snapshot_is_compressed_msgpack_of_plain_values():
    state = Timeline(spec()).batch((10, "a", 1), (70, "a", 1)).advance().states[0]
    document = msgpack.unpackb(zlib.decompress(state.snapshot()))
    assert document["v"] == 1 and document["emitted"] == T0 + 70_000 and document["through"] == T0 + 60_000
    assert isinstance(document["open"], bytes)       # the open windows, an Arrow IPC stream


def test_restoring_nothing_gives_an_empty_state():
    state = WindowState.restore(spec(), None)
    assert state.open_windows() == 0 and state.oldest_open_start() is None and state.emitted_watermark is None


def test_a_snapshot_of_other_aggregations_is_refused():
    snapshot = Timeline(spec()).batch((10, "a", 1)).states[0].snapshot()
    with pytest.raises(ValueError, match="keyBy or aggregations changed"):
        WindowState.restore(spec(aggregations=(("n", "count", None),)), snapshot)


def test_every_emitted_table_has_the_same_schema_even_an_empty_one():
    window = spec(aggregations=(("n", "count", None), ("total", "sum", "v"), ("mean", "avg", "v"),
                                ("lo", "min", "k"), ("users", "count_distinct", "k")))
    expected = pa.schema([("windowStart", pa.int64()), ("windowEnd", pa.int64()), ("k", pa.string()), ("n", pa.int64()),
                          ("total", pa.int64()), ("mean", pa.float64()), ("lo", pa.string()), ("users", pa.int64())])
    assert result_schema(window, SCHEMA) == expected
    run = Timeline(window).batch((10, "a", 1)).advance().batch((70, "a", 1)).advance()
    assert [t.schema for t in run.emitted] == [expected, expected]
    assert run.restart().states[0].advance(None).schema == expected


def test_before_any_data_unknown_types_are_null():
    schema = WindowState(spec()).advance(None).schema
    assert schema.field("k").type == pa.null() and schema.field("n").type == pa.int64()
    assert schema == result_schema(spec())


def test_a_batch_of_nulls_then_values_keeps_the_values_types():
    window = spec()
    state = WindowState(window)
    nulls = pa.table({"t": [T0], "k": pa.nulls(1), "v": pa.nulls(1)})
    state.add(pre_aggregate(nulls, window, None, None, 0).partials[0])
    state.add(pre_aggregate(events((1, "a", 2)), window, None, None, 0).partials[0])
    emitted = state.flush()
    assert emitted.schema.field("k").type == pa.string() and emitted.schema.field("total").type == pa.int64()
    assert emitted.to_pylist() == [{"windowStart": T0, "windowEnd": T0 + 60_000, "k": "a", "n": 1, "total": 2},
                                   {"windowStart": T0, "windowEnd": T0 + 60_000, "k": None, "n": 1, "total": None}]


def test_open_windows_count_each_window_and_key_once():
    run = Timeline(spec("sliding")).batch((5, "a", 1), (6, "a", 1), (7, "b", 1))
    assert run.states[0].open_windows() == 6
    assert run.states[0].oldest_open_start() == T0 - 40_000


def test_a_key_that_changes_type_is_a_terminal_error_naming_the_window():
    window = spec()
    state = WindowState(window)
    state.add(pre_aggregate(events((1, "a", 1)), window, None, None, 0).partials[0])
    numbers = pa.table({"t": [T0], "k": [7], "v": [1]})
    with pytest.raises(TerminalError, match="window 'w': a batch's keys or fields changed type"):
        state.add(pre_aggregate(numbers, window, None, None, 0).partials[0])
