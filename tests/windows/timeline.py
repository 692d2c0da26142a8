"""Scripted time for window tests: partitions feed batches, the watermark advances.

    run = Timeline(spec)
    run.batch((0, "a", 1), (30, "b", 2))     # (seconds after T0, key, value)
    run.advance()                            # to the global watermark
    assert run.rows() == [...]               # emitted so far, times in seconds after T0

``Timeline`` does what the runtime does with the pure core: ``pre_aggregate`` per
batch with the partition's ``max_seen``, partials to the shard states, ``advance`` to
the global watermark (the least partition watermark) and that as the next floor.
"""
from __future__ import annotations

import pyarrow as pa

from etl_actors.windows import WindowSpec, WindowState, pre_aggregate

T0 = 1_699_999_980_000          # a whole minute, in epoch ms


def at(seconds: float) -> int:
    return T0 + round(seconds * 1000)


def spec(kind: str = "tumbling", **overrides) -> WindowSpec:
    """A window over ``t`` keyed by ``k``, counting events and summing ``v``."""
    shape = {"tumbling": dict(size_ms=60_000, slide_ms=None, gap_ms=None),
             "sliding": dict(size_ms=60_000, slide_ms=20_000, gap_ms=None),
             "session": dict(size_ms=None, slide_ms=None, gap_ms=30_000)}[kind]
    fields = dict(id="w", kind=kind, key_by=("k",), timestamp_field="t",
                  aggregations=(("n", "count", None), ("total", "sum", "v")), **shape)
    return WindowSpec(**{**fields, **overrides})


def events(*rows: tuple) -> pa.Table:
    """Rows of ``(seconds after T0, key, value)``; a time of None is missing."""
    return pa.table({"t": pa.array([None if r[0] is None else at(r[0]) for r in rows], pa.int64()),
                     "k": pa.array([r[1] for r in rows], pa.string()),
                     "v": pa.array([r[2] for r in rows], pa.int64())})


class Timeline:
    def __init__(self, spec: WindowSpec, partitions: int = 1, now_ms: int = 0):
        self.spec, self.now_ms = spec, now_ms
        self.states = [WindowState(spec) for _ in range(spec.parallelism)]
        self.max_seen: list[int | None] = [None] * partitions
        self.emitted: list[pa.Table] = []
        self.late: list[list[int]] = [[] for _ in range(partitions)]    # per partition, rows in its order
        self.bad: list[tuple[int, str]] = []
        self.dropped = 0
        self._read = [0] * partitions
        self.floor: int | None = None

    def batch(self, *rows: tuple, partition: int = 0, table: pa.Table | None = None) -> "Timeline":
        table = events(*rows) if table is None else table
        out = pre_aggregate(table, self.spec, self.max_seen[partition], self.floor, self.now_ms)
        self.max_seen[partition] = out.max_seen
        self.late[partition] += [self._read[partition] + int(i) for i in out.late]
        self.bad += [(self._read[partition] + i, reason) for i, reason in out.bad]
        self._read[partition] += table.num_rows
        for state, partial in zip(self.states, out.partials):
            self.dropped += state.add(partial)
        return self

    def watermark(self) -> int | None:
        if any(seen is None for seen in self.max_seen):
            return None
        return min(self.max_seen) - self.spec.max_out_of_orderness_ms

    def advance(self, watermark_ms: int | None = None) -> "Timeline":
        watermark_ms = self.watermark() if watermark_ms is None else watermark_ms
        self.emitted += [state.advance(watermark_ms) for state in self.states]
        self.floor = self.states[0].emitted_watermark
        return self

    def flush(self) -> "Timeline":
        self.emitted += [state.flush() for state in self.states]
        self.floor = self.states[0].emitted_watermark
        return self

    def restart(self) -> "Timeline":
        """The window actors crash and come back from their snapshots."""
        self.states = [WindowState.restore(self.spec, state.snapshot()) for state in self.states]
        return self

    def rows(self, seconds: bool = True) -> list[dict]:
        """Every row emitted so far, by window then key; bounds in seconds after T0."""
        rows = [row for table in self.emitted for row in table.to_pylist()]
        if seconds:
            for row in rows:
                row["windowStart"], row["windowEnd"] = (row["windowStart"] - T0) / 1000, (row["windowEnd"] - T0) / 1000
        return sorted(rows, key=lambda r: (r["windowStart"], r["windowEnd"], *(_order(r[k]) for k in self.spec.key_by)))


def _order(value) -> tuple:
    return (value is None, value if value is not None else 0)
