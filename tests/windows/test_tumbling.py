"""Tumbling windows: each event in exactly one window, ``[floor(t / size) * size, + size)``."""
import pyarrow as pa

from etl_actors.windows import WindowSpec, pre_aggregate

from .timeline import T0, Timeline, spec


# maxOutOfOrderness 10 s, one-minute windows
#
#   seconds  0        50   55 58   65   72        120
#            |--- [0, 60) ----|----- [60, 120) ----|
#   events   a5       a50  a55 a58  b65  b72
#   order    1        2    4   6    3    5
#   watermark before:      55  62                    (latest seen - 10 s)
#
# a55 comes after b65, 5 s out of order: counted. a58 comes after b72, when the
# watermark (62) has passed [0, 60): late.
def test_counts_out_of_order_events_within_the_bound_and_drops_those_beyond():
    run = Timeline(spec(max_out_of_orderness_ms=10_000))
    run.batch((5, "a", 1), (50, "a", 2), (65, "b", 3), (55, "a", 4), (72, "b", 5), (58, "a", 6)).advance()
    assert run.late == [[5]]
    assert run.rows() == [{"windowStart": 0, "windowEnd": 60, "k": "a", "n": 3, "total": 7}]
    run.flush()
    assert run.rows()[1:] == [{"windowStart": 60, "windowEnd": 120, "k": "b", "n": 2, "total": 8}]


#   seconds  10   30   |60   70        |120  125
#   batch 1  a10  a30
#   batch 2                  b70
#   batch 3                                 a125
# [0, 60) is emitted only when the watermark reaches 60 (after b70), [60, 120) after a125.
def test_a_window_is_emitted_once_the_watermark_passes_its_end():
    run = Timeline(spec())
    assert run.batch((10, "a", 1), (30, "a", 2)).advance().rows() == []
    assert [r["windowStart"] for r in run.batch((70, "b", 1)).advance().rows()] == [0]
    assert [r["windowStart"] for r in run.batch((125, "a", 1)).advance().rows()] == [0, 60]
    assert run.states[0].open_windows() == 1 and run.states[0].oldest_open_start() == T0 + 120_000


def test_without_key_by_there_is_one_global_row_per_window():
    run = Timeline(spec(key_by=(), aggregations=(("n", "count", None), ("keys", "count_distinct", "k"))))
    run.batch((1, "a", 1), (2, "b", 1), (3, None, 1), (61, "a", 1)).flush()
    assert run.rows() == [{"windowStart": 0, "windowEnd": 60, "n": 3, "keys": 2},
                          {"windowStart": 60, "windowEnd": 120, "n": 1, "keys": 1}]


def test_times_before_1970_fall_in_windows_aligned_on_the_epoch():
    window = WindowSpec("w", "tumbling", 60_000, None, None, timestamp_field="t", aggregations=(("n", "count", None),))
    times = pa.array([-60_001, -1, 0, 59_999], pa.timestamp("ms"))
    partial = pre_aggregate(pa.table({"t": times}), window, None, None, now_ms=0).partials[0]
    assert partial.select(["windowStart", "windowEnd", "count(*)"]).to_pylist() == [
        {"windowStart": -120_000, "windowEnd": -60_000, "count(*)": 1},
        {"windowStart": -60_000, "windowEnd": 0, "count(*)": 1},
        {"windowStart": 0, "windowEnd": 60_000, "count(*)": 2}]


#   processing time: every event of a batch happens at now; the clock moves on.
def test_without_a_timestamp_field_events_happen_when_processed():
    run = Timeline(spec(timestamp_field=None), now_ms=T0 + 59_000)
    run.batch((None, "a", 1), (None, "a", 2))
    run.now_ms = T0 + 61_000
    run.batch((None, "a", 4)).advance()
    assert run.rows() == [{"windowStart": 0, "windowEnd": 60, "k": "a", "n": 2, "total": 3}]
    assert run.late == [[]] and run.bad == []
