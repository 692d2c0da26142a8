"""Sliding windows: an event belongs to every window ``[s, s + size)`` (``s`` a
multiple of the slide) that covers it."""
from .timeline import Timeline, spec


#   size 60 s, slide 20 s
#   seconds   -20     0      20     40  45  60     80     100
#   windows    [----------------------)                       [-20, 40)
#                     [----------------------)                [0, 60)
#                            [----------------------)         [20, 80)
#                                   [----------------------)  [40, 100)
#   event                                a45: in [0, 60), [20, 80), [40, 100)
def test_an_event_is_counted_in_every_window_that_covers_it():
    run = Timeline(spec("sliding")).batch((45, "a", 5)).flush()
    assert [(r["windowStart"], r["windowEnd"], r["n"], r["total"]) for r in run.rows()] == [
        (0, 60, 1, 5), (20, 80, 1, 5), (40, 100, 1, 5)]


#   size 25 s, slide 10 s: windows start every 10 s and overlap by 15 s
#   a12 is in [-10, 15), [0, 25), [10, 35); a17 only in the last two
def test_a_slide_that_does_not_divide_the_size():
    run = Timeline(spec("sliding", size_ms=25_000, slide_ms=10_000)).batch((12, "a", 1), (17, "a", 1)).flush()
    assert [(r["windowStart"], r["n"]) for r in run.rows()] == [(-10, 1), (0, 2), (10, 2)]


#   size 60 s, slide 20 s, no out-of-orderness
#   a45, then a70 (watermark 70), then a50: [0, 60) has closed, [20, 80) and [40, 100)
#   are open, so a50 counts in those two and is not late.
def test_an_event_late_for_some_of_its_windows_counts_in_the_others():
    run = Timeline(spec("sliding")).batch((45, "a", 1), (70, "a", 1), (50, "a", 1)).flush()
    assert run.late == [[]]
    assert [(r["windowStart"], r["n"]) for r in run.rows()] == [(0, 1), (20, 3), (40, 3), (60, 1)]
