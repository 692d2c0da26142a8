"""Session windows: ``[first event, last event + gap)`` per key; sessions of a key that
overlap merge, in a batch and across batches."""
from .timeline import Timeline, spec


#   gap 30 s, maxOutOfOrderness 60 s
#   seconds   0    5   10        35             65     95
#   batch 1   a0   b5  a10
#   batch 2                      a35
#   a: [0, 30) + [10, 40) + [35, 65)  ->  [0, 65)     b: [5, 35)
def test_sessions_of_a_key_merge_across_batches():
    run = Timeline(spec("session", max_out_of_orderness_ms=60_000))
    run.batch((0, "a", 1), (5, "b", 2), (10, "a", 3)).advance()
    run.batch((35, "a", 4)).flush()
    assert run.rows() == [{"windowStart": 0, "windowEnd": 65, "k": "a", "n": 3, "total": 8},
                          {"windowStart": 5, "windowEnd": 35, "k": "b", "n": 1, "total": 2}]


#   gap 30 s: a0 and a30 are exactly one gap apart: two sessions
def test_an_event_a_whole_gap_after_the_last_starts_a_new_session():
    run = Timeline(spec("session")).batch((0, "a", 1), (30, "a", 1)).flush()
    assert [(r["windowStart"], r["windowEnd"]) for r in run.rows()] == [(0, 30), (30, 60)]


#   gap 30 s, maxOutOfOrderness 30 s
#   a0 -> [0, 30), a50 -> [50, 80); then a25 (watermark 20) bridges them: [0, 80)
def test_an_out_of_order_event_bridges_two_sessions():
    run = Timeline(spec("session", max_out_of_orderness_ms=30_000))
    run.batch((0, "a", 1), (50, "a", 1)).advance()
    run.batch((25, "a", 1)).flush()
    assert [(r["windowStart"], r["windowEnd"], r["n"]) for r in run.rows()] == [(0, 80, 3)]


#   gap 30 s, no out-of-orderness: a0 -> [0, 30), b40 moves the watermark to 40 and
#   [0, 30) is emitted; a15 is behind the watermark: late, although [15, 45) is
#   not over, because it would have joined a session already emitted.
def test_a_session_event_behind_the_watermark_is_late():
    run = Timeline(spec("session")).batch((0, "a", 1), (40, "b", 1)).advance()
    run.batch((15, "a", 1)).flush()
    assert run.late == [[2]]
    assert [(r["k"], r["windowStart"], r["windowEnd"]) for r in run.rows()] == [("a", 0, 30), ("b", 40, 70)]
