"""What the stream tests share: a topic that remembers what was sent where, the spec of
a stream, the destination's rows and the dead letters, and :class:`Reference`, the
windowing rules applied plainly, one event at a time, for the tests to compare with.

    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    topic.send(0, [event(10, "a", 1), event(70, "b", 2)])
    ref = Reference(Windowing("tumbling", size_ms=60_000))
    ref.read(topic.sent)
    ref.flush()                      # what --until-idle does at the end
    assert windows_in(db) == ref.rows()
"""
from __future__ import annotations

import random
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field

from etl_actors.eventlog import EventLog

T0 = 1_700_000_000_000 // 3_600_000 * 3_600_000       # a whole hour, in epoch ms
AGGREGATIONS = {"n": "count", "users": "count_distinct:userId", "total": "sum:value", "lo": "min:value",
                "hi": "max:value"}


def event(seconds: float, user: str, value: int, **more) -> dict:
    """An event ``seconds`` after T0."""
    return {"userId": user, "value": value, "timestamp": T0 + round(seconds * 1000), **more}


def noisy_events(rng: random.Random, count: int, start_s: float, step_ms: int, jitter_ms: int, late_every: int,
                 late_by_ms: int, users: int = 7, pages: int = 0) -> list[dict]:
    """``count`` events whose times advance by ``step_ms`` each, up to ``jitter_ms`` out of
    order, and every ``late_every``-th ``late_by_ms`` behind (0: never)."""
    out = []
    for i in range(count):
        ms = round(start_s * 1000) + i * step_ms + rng.randint(-jitter_ms, 0)
        if late_every and i % late_every == late_every - 1:
            ms -= late_by_ms
        extra = {"page": f"p{rng.randrange(pages)}", "region": rng.choice(["eu", "us"])} if pages else {}
        out.append(event(ms / 1000, f"u{rng.randrange(users)}", rng.randint(-3, 50), **extra))
    return out


class Topic:
    """A fresh topic; ``sent`` holds ``(partition, offset, value)`` of every message, in
    the order each partition got them."""

    def __init__(self, kafka, name: str, partitions: int = 1):
        self.kafka, self.name, self.partitions = kafka, name, partitions
        kafka.create_topic(name, partitions)
        self.next = [0] * partitions
        self.sent: list[tuple[int, int, object]] = []

    def send(self, partition: int, values: list) -> list[tuple[int, int, object]]:
        self.kafka.produce(self.name, values, partition=partition)
        sent = [(partition, self.next[partition] + i, v) for i, v in enumerate(values)]
        self.next[partition] += len(values)
        self.sent += sent
        return sent

    def ends(self) -> dict[str, int]:
        """``{"topic:partition": next offset}``: what a stream that read everything is at."""
        return {f"{self.name}:{p}": n for p, n in enumerate(self.next)}


@dataclass(frozen=True)
class Windowing:
    """The window processor of a test stream, and which windows an event time falls in."""

    kind: str = "tumbling"
    size_ms: int = 60_000
    slide_ms: int | None = None
    gap_ms: int | None = None
    out_of_order_ms: int = 5_000
    lateness_ms: int = 0
    key_by: tuple[str, ...] = ("userId",)
    parallelism: int = 1

    def processor(self, **more) -> dict:
        shape = {"type": self.kind}
        if self.kind == "session":
            shape["gap"] = self.gap_ms
        else:
            shape["size"] = self.size_ms
        if self.kind == "sliding":
            shape["slide"] = self.slide_ms
        return {"id": "minute", "type": "window", "window": shape, "keyBy": list(self.key_by),
                "timestampField": "timestamp", "maxOutOfOrderness": self.out_of_order_ms,
                "allowedLateness": self.lateness_ms, "windowParallelism": self.parallelism,
                "aggregations": AGGREGATIONS, **more}

    def windows(self, t: int) -> list[tuple[int, int, int]]:
        """``(start, end, bound)`` of every window of time ``t``; a window is late when
        ``bound + allowed lateness <= watermark`` (a session's bound is ``t + 1``)."""
        if self.kind == "session":
            return [(t, t + self.gap_ms, t + 1)]
        slide = self.slide_ms or self.size_ms
        out, start = [], t // slide * slide
        while start + self.size_ms > t:
            out.append((start, start + self.size_ms, start + self.size_ms))
            start -= slide
        return out


@dataclass
class Reference:
    """The stream's semantics, one event at a time. Per partition, in offset order, an
    event is judged against ``seen`` (the greatest event time of the partition's earlier
    events, across runs) and ``floor`` (the watermark up to which a ``--until-idle``
    flush emitted windows): its window is late when ``bound + allowedLateness <=
    max(seen - maxOutOfOrderness, floor)``; an event all of whose windows are late is a
    dead letter."""

    w: Windowing
    seen: dict[int, int] = field(default_factory=dict)
    floor: int | None = None
    assigned: list[tuple[int, int, tuple, dict]] = field(default_factory=list)
    late: list[tuple[int, int]] = field(default_factory=list)

    def read(self, sent: list[tuple[int, int, object]]) -> "Reference":
        """Read messages as ``Topic.sent`` lists them; bytes (poison) are skipped."""
        for partition, offset, value in sent:
            if isinstance(value, dict):
                self._event(partition, offset, value)
        return self

    def _event(self, partition: int, offset: int, value: dict) -> None:
        t, seen = value["timestamp"], self.seen.get(partition)
        marks = [m for m in (None if seen is None else seen - self.w.out_of_order_ms, self.floor) if m is not None]
        watermark = max(marks) if marks else None
        kept = [(s, e) for s, e, bound in self.w.windows(t)
                if watermark is None or bound + self.w.lateness_ms > watermark]
        if not kept:
            self.late.append((partition, offset))
        for start, end in kept:
            self.assigned.append((start, end, tuple(value.get(k) for k in self.w.key_by), value))
        self.seen[partition] = t if seen is None else max(seen, t)

    def flush(self) -> "Reference":
        """Every window is emitted: from now on, events of windows ending (plus the
        allowed lateness) at or before the last one's end are late."""
        ends = [row["windowEnd"] for row in self.rows()]
        if ends:
            self.floor = max(self.floor or ends[0], max(ends) + self.w.lateness_ms)
        return self

    def rows(self) -> list[dict]:
        """Every window's row, as the destination holds it, in :func:`ordered` order."""
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for start, end, key, value in self.assigned:
            groups[(start, end, key)].append(value)
        if self.w.kind == "session":
            groups = self._sessions(groups)
        return ordered([self._row(start, end, key, values) for (start, end, key), values in groups.items()])

    @staticmethod
    def _sessions(groups: dict) -> dict:
        by_key: dict[tuple, list] = defaultdict(list)
        for (start, end, key), values in groups.items():
            by_key[key].append((start, end, values))
        merged = {}
        for key, windows in by_key.items():
            windows.sort(key=lambda w: w[0])
            start, end, values = windows[0]
            for s, e, v in windows[1:]:
                if s < end:                    # overlapping sessions merge; touching ones do not
                    end, values = max(end, e), values + v
                else:
                    merged[(start, end, key)] = values
                    start, end, values = s, e, list(v)
            merged[(start, end, key)] = values
        return merged

    def _row(self, start: int, end: int, key: tuple, values: list[dict]) -> dict:
        numbers = [v["value"] for v in values]
        return {"windowStart": start, "windowEnd": end, **dict(zip(self.w.key_by, key)), "n": len(values),
                "users": len({v["userId"] for v in values}), "total": sum(numbers), "lo": min(numbers),
                "hi": max(numbers)}


def ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: tuple((k, str(v)) for k, v in sorted(r.items())))


def stream_spec(name: str, topic: Topic, processors: list[dict], sinks: list[dict], parallelism: int = 1,
                checkpoint: str = "200ms", **source) -> dict:
    return {"name": name,
            "stream": {"source": {"type": "kafka", "topic": topic.name, "consumerGroup": f"g-{name}",
                                  "bootstrapServers": topic.kafka.bootstrap, "startFrom": "earliest",
                                  "parallelism": parallelism, **source},
                       "processors": processors, "sinks": sinks},
            "runtime": {"checkpointInterval": checkpoint}}


def database(path, table: str = "windows", **more) -> dict:
    return {"type": "database", "connection": f"sqlite:///{path}", "table": table, **more}


def windows_in(path, table: str = "windows") -> list[dict]:
    """Every row of the destination table (none when it does not exist yet)."""
    try:
        with sqlite3.connect(path) as conn:
            conn.row_factory = sqlite3.Row
            return ordered([dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')])
    except sqlite3.OperationalError:
        return []


def letters(log: str, pipeline: str, stage: str | None = None) -> list[dict]:
    return [d for d in EventLog(log).dead_letters(pipeline) if stage is None or d["stage"] == stage]


def late_letters(log: str, pipeline: str) -> list[tuple[int, int]]:
    """``(partition, offset)`` of every late dead letter, repeats kept, sorted."""
    return sorted((d["record"]["_partition"], d["record"]["_offset"]) for d in letters(log, pipeline)
                  if d["reason"] == "late")


def wait_for(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)
