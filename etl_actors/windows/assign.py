"""The extractor's half of a window: events of one batch into compact partials.

:func:`pre_aggregate` runs on every batch of one source partition, rows in that
partition's order. It reads each event's time, drops late events, assigns the rest
to windows and folds them into one row per (window, key), split by key-hash shard.

Lateness is decided from the partition's own order alone, so a replay from a
checkpoint drops the same events and fills the same windows whatever the batch
boundaries. Before row ``i`` the partition has seen ``seen_i``, the greatest event
time of its earlier rows (``max_seen`` carries it across batches); its watermark is
``seen_i - maxOutOfOrderness`` and the effective one ``eff_i`` is that or
``floor_ms`` (the watermark at which windows were already emitted), the greater.
Window ``[start, end)`` of row ``i`` is late when ``end + allowedLateness <= eff_i``;
a row all of whose windows are late is returned in ``late``. For sessions the rule
uses ``t + 1`` for ``end`` (see ``assigners.py``): a session event more than the
allowed lateness behind the watermark is late.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .assigners import Assignment, assigner
from .groups import END, START, fold, shards
from .times import event_times

NONE = np.iinfo(np.int64).min


@dataclass
class Assigned:
    """What one batch gave: ``partials[s]`` for shard ``s`` (maybe empty); ``late``
    and ``bad`` index rows of the input; ``counted`` events went into a window."""

    partials: list[pa.Table]
    late: np.ndarray
    bad: list[tuple[int, str]]
    max_seen: int | None
    counted: int


def pre_aggregate(table: pa.Table, spec, max_seen: int | None, floor_ms: int | None, now_ms: int) -> Assigned:
    """Fold one batch of a partition into partials; ``max_seen`` is the partition's
    greatest event time before it (None: nothing yet). Without a timestamp field
    every event happens at ``now_ms``.

    >>> from etl_actors.windows.spec import WindowSpec
    >>> spec = WindowSpec("w", "tumbling", 60_000, None, None, timestamp_field="t",
    ...                   aggregations=(("n", "count", None),))
    >>> times = ["2024-01-01T00:00:05Z", "2024-01-01T00:01:30Z", "2024-01-01T00:00:50Z"]
    >>> out = pre_aggregate(pa.table({"t": times}), spec, max_seen=None, floor_ms=None, now_ms=0)
    >>> out.partials[0].select(["windowStart", "count(*)"]).to_pylist(), out.late.tolist()
    ([{'windowStart': 1704067200000, 'count(*)': 1}, {'windowStart': 1704067260000, 'count(*)': 1}], [2])
    """
    times = event_times(table, spec.timestamp_field, now_ms)
    marks = effective_watermarks(times.ms, times.valid, max_seen, spec.max_out_of_orderness_ms, floor_ms)
    windows = assigner(spec).assign(times.ms)
    keep = times.valid[windows.rows] & (windows.bounds + spec.allowed_lateness_ms > marks[windows.rows])
    counted = np.zeros(table.num_rows, dtype=bool)
    counted[windows.rows[keep]] = True
    partial = fold(_windowed(table, spec, windows, keep), spec, merge=False)
    return Assigned(partials=_by_shard(partial, spec), late=np.nonzero(times.valid & ~counted)[0], bad=times.bad,
                    max_seen=_greatest(max_seen, times.ms[times.valid]), counted=int(counted.sum()))


def effective_watermarks(ms: np.ndarray, valid: np.ndarray, max_seen: int | None, out_of_order: int,
                         floor_ms: int | None) -> np.ndarray:
    """Per row, the effective watermark before it (``NONE``: no watermark yet)."""
    start = np.array([NONE if max_seen is None else max_seen], dtype=np.int64)
    before = np.maximum.accumulate(np.concatenate([start, np.where(valid, ms, NONE)]))[:-1]
    marks = np.where(before == NONE, NONE, before - out_of_order)
    return np.maximum(marks, NONE if floor_ms is None else floor_ms)


def _windowed(table: pa.Table, spec, windows: Assignment, keep: np.ndarray) -> pa.Table:
    """One row per (event, window) kept: the window, the keys and the fields read."""
    rows = windows.rows[keep]
    columns = {START: windows.starts[keep], END: windows.ends[keep]}
    names = list(dict.fromkeys([*spec.key_by, *spec.fields]))
    present = table.select([n for n in names if n in table.column_names])
    if not np.array_equal(rows, np.arange(table.num_rows)):
        present = present.take(pa.array(rows))
    for name in names:
        columns[name] = _plain(present[name]) if name in present.column_names else pa.nulls(len(rows))
    return pa.table(columns)


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encoded values as plain ones: batches' dictionaries differ."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def _by_shard(partial: pa.Table, spec) -> list[pa.Table]:
    if spec.parallelism == 1:
        return [partial]
    ids = shards(partial, spec.key_by, spec.parallelism)
    return [partial.filter(pa.array(ids == shard)) for shard in range(spec.parallelism)]


def _greatest(max_seen: int | None, times: np.ndarray) -> int | None:
    if not len(times):
        return max_seen
    latest = int(times.max())
    return latest if max_seen is None else max(max_seen, latest)
