"""Allowed lateness keeps windows open past the watermark; the floor (the watermark
windows were emitted at) makes events of emitted windows late in every partition."""
import pyarrow as pa

from etl_actors.windows import WindowState, pre_aggregate

from .timeline import T0, Timeline, events, spec


#   allowedLateness 30 s, one-minute windows
#   seconds   10        |60   70        90  95
#   events    a10            a70 a20         a95 a30
#   [0, 60) stays open until the watermark reaches 90: a20 counts, a30 is late.
def test_allowed_lateness_keeps_a_window_open_past_its_end():
    run = Timeline(spec(allowed_lateness_ms=30_000))
    run.batch((10, "a", 1), (70, "a", 1), (20, "a", 1)).advance()
    assert run.rows() == []
    run.batch((95, "a", 1), (30, "a", 1)).advance()
    assert run.late == [[4]]
    assert [(r["windowStart"], r["n"]) for r in run.rows()] == [(0, 2)]


#   two partitions; partition 1 was idle, so the global watermark moved to 70 without
#   it and [0, 60) was emitted. When it resumes with a10, a10 is late: the floor (70)
#   is above the partition's own watermark (none yet).
def test_an_idle_partition_resuming_behind_the_emitted_watermark_has_its_events_late():
    run = Timeline(spec(), partitions=2)
    run.batch((5, "a", 1), (70, "a", 1), partition=0).advance(watermark_ms=T0 + 70_000)
    run.batch((10, "a", 1), (75, "a", 1), partition=1).flush()
    assert run.late == [[], [0]]
    assert [(r["windowStart"], r["n"]) for r in run.rows()] == [(0, 1), (60, 2)]


# The floor a batch was cut with can be older than the state's: then the state drops
# the partial's windows it already emitted and says how many events that was.
def test_the_state_drops_partials_of_windows_it_already_emitted():
    window = spec()
    state = WindowState(window)
    state.add(pre_aggregate(events((5, "a", 1)), window, None, None, 0).partials[0])
    assert len(state.advance(T0 + 60_000)) == 1
    stale = pre_aggregate(events((6, "a", 1), (7, "b", 1), (61, "a", 1)), window, None, floor_ms=None, now_ms=0)
    assert stale.counted == 3
    assert state.add(stale.partials[0]) == 2
    assert state.flush().column("n").to_pylist() == [1]


def test_after_a_flush_events_of_the_flushed_windows_are_late():
    run = Timeline(spec()).batch((5, "a", 1)).flush()
    assert run.states[0].emitted_watermark == T0 + 60_000
    run.batch((59, "b", 1), (60, "b", 1)).flush()
    assert run.late == [[1]]
    assert [(r["windowStart"], r["k"]) for r in run.rows()] == [(0, "a"), (60, "b")]


def test_missing_and_unreadable_times_are_bad_not_late():
    table = pa.table({"t": [str(T0), "abc", None, "2023-11-14T22:13:05Z"], "k": ["a"] * 4, "v": [1] * 4})
    run = Timeline(spec()).batch(table=table)
    assert run.bad == [(0, f"t: cannot read '{T0}' as a time"), (1, "t: cannot read 'abc' as a time"),
                       (2, "t: missing")]
    assert run.late == [[]]
