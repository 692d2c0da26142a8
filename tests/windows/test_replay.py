"""Replays are deterministic: however a partition's events are cut into batches, and
wherever the window actors restart from a snapshot, the same windows are emitted with
the same values and the same events are late, as a plain one-event-at-a-time
reference computes them."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from etl_actors.windows import WindowSpec

from .reference import reference
from .timeline import T0, Timeline

AGGREGATIONS = (("n", "count", None), ("present", "count", "v"), ("distinct", "count_distinct", "v"),
                ("total", "sum", "v"), ("mean", "avg", "v"), ("lo", "min", "v"), ("hi", "max", "v"))

shapes = st.sampled_from([
    dict(kind="tumbling", size_ms=10_000, slide_ms=None, gap_ms=None),
    dict(kind="tumbling", size_ms=60_000, slide_ms=None, gap_ms=None),
    dict(kind="sliding", size_ms=30_000, slide_ms=10_000, gap_ms=None),
    dict(kind="sliding", size_ms=25_000, slide_ms=10_000, gap_ms=None),
    dict(kind="session", size_ms=None, slide_ms=None, gap_ms=5_000),
    dict(kind="session", size_ms=None, slide_ms=None, gap_ms=20_000),
])
specs = st.builds(
    lambda shape, ooo, lateness, parallelism: WindowSpec(
        id="w", key_by=("k",), timestamp_field="t", max_out_of_orderness_ms=ooo, allowed_lateness_ms=lateness,
        parallelism=parallelism, aggregations=AGGREGATIONS, **shape),
    shapes, st.sampled_from([0, 1_000, 10_000, 60_000]), st.sampled_from([0, 5_000]), st.integers(1, 3))
times = st.one_of(st.integers(0, 18).map(lambda s: T0 + s * 5000),       # on a grid: equal and touching bounds
                  st.integers(0, 90_000).map(lambda ms: T0 + ms))
keys, values = st.sampled_from(["a", "b", None]), st.one_of(st.none(), st.integers(-5, 20))
scattered = st.lists(st.tuples(times, keys, values), min_size=5, max_size=60)
steps = st.one_of(st.integers(-2, 3).map(lambda s: s * 5000), st.integers(-8_000, 12_000))
walking = st.lists(st.tuples(steps, keys, values), min_size=5, max_size=60).map(
    lambda rows: [(T0 + 30_000 + sum(step for step, _, _ in rows[:i + 1]), k, v) for i, (_, k, v) in enumerate(rows)])
events = st.one_of(scattered, walking)          # anywhere, or a stream running forward a little out of order


def replay(timeline: Timeline, partitions: list[list[tuple]], schedule: list[tuple[int, int, bool]]) -> Timeline:
    """Feed ``partitions`` batch by batch: ``(partition, batch size, restart after)``,
    then the rest of every partition, then end of input."""
    read = [0] * len(partitions)
    for partition, size, restart in schedule:
        rows = partitions[partition][read[partition]:read[partition] + size]
        read[partition] += len(rows)
        timeline.batch(partition=partition, table=_table(rows)).advance()
        if restart:
            timeline.restart()
    for partition, rows in enumerate(partitions):
        timeline.batch(partition=partition, table=_table(rows[read[partition]:])).advance()
    return timeline.flush()


def _table(rows: list[tuple]):
    import pyarrow as pa

    return pa.table({"t": pa.array([r[0] for r in rows], pa.int64()), "k": pa.array([r[1] for r in rows], pa.string()),
                     "v": pa.array([r[2] for r in rows], pa.int64())})


@settings(max_examples=80, deadline=None)
@given(spec=specs, partition=events, cuts=st.lists(st.tuples(st.integers(0, 15), st.booleans()), max_size=8))
def test_any_batch_split_and_restart_emit_what_the_reference_does(spec, partition, cuts):
    timeline = replay(Timeline(spec), [partition], [(0, size, restart) for size, restart in cuts])
    rows, late = reference(spec, [partition])
    assert timeline.rows(seconds=False) == rows
    assert timeline.late == late
    assert timeline.dropped == 0


@settings(max_examples=60, deadline=None)
@given(spec=specs, partitions=st.lists(events, min_size=2, max_size=3),
       schedule=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 15), st.booleans()), max_size=10))
def test_partitions_interleaved_in_any_order_emit_what_the_reference_does(spec, partitions, schedule):
    schedule = [(p % len(partitions), size, restart) for p, size, restart in schedule]
    timeline = replay(Timeline(spec, partitions=len(partitions)), partitions, schedule)
    rows, late = reference(spec, partitions)
    assert timeline.rows(seconds=False) == rows
    assert timeline.late == late
