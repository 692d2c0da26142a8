"""The windowing rules in plain Python, one event at a time: what the vectorised core
must agree with. Events are ``(epoch ms, key, value)`` per partition, in order."""
from __future__ import annotations

from collections import defaultdict


def reference(spec, partitions: list[list[tuple]]) -> tuple[list[dict], list[list[int]]]:
    """The rows every window emits (sorted by window, then key) and, per partition,
    the positions of its late events."""
    groups: dict[tuple, list] = defaultdict(list)
    late = []
    for events in partitions:
        late.append(_assign(spec, events, groups))
    if spec.kind == "session":
        groups = _merge_sessions(groups)
    rows = [_row(spec, start, end, key, values) for (start, end, key), values in groups.items()]
    return sorted(rows, key=lambda r: (r["windowStart"], r["windowEnd"], r["k"] is None, r["k"] or "")), late


def _assign(spec, events: list[tuple], groups: dict) -> list[int]:
    seen, late = None, []
    for i, (t, key, value) in enumerate(events):
        watermark = None if seen is None else seen - spec.max_out_of_orderness_ms
        kept = [w for w in _windows(spec, t) if watermark is None or w[2] + spec.allowed_lateness_ms > watermark]
        if not kept:
            late.append(i)
        for start, end, _ in kept:
            groups[(start, end, key)].append(value)
        seen = t if seen is None else max(seen, t)
    return late


def _windows(spec, t: int) -> list[tuple[int, int, int]]:
    """``(start, end, the bound lateness is judged by)`` of every window of ``t``."""
    if spec.kind == "session":
        return [(t, t + spec.gap_ms, t + 1)]
    slide = spec.slide_ms or spec.size_ms
    start = t // slide * slide
    out = []
    while start + spec.size_ms > t:
        out.append((start, start + spec.size_ms, start + spec.size_ms))
        start -= slide
    return out


def _merge_sessions(groups: dict) -> dict:
    by_key: dict = defaultdict(list)
    for (start, end, key), values in groups.items():
        by_key[key].append((start, end, values))
    merged = {}
    for key, windows in by_key.items():
        windows.sort(key=lambda w: w[0])
        current = None
        for start, end, values in windows:
            if current is not None and start < current[1]:
                current = (current[0], max(current[1], end), current[2] + values)
            else:
                if current is not None:
                    merged[(current[0], current[1], key)] = current[2]
                current = (start, end, list(values))
        merged[(current[0], current[1], key)] = current[2]
    return merged


def _row(spec, start: int, end: int, key, values: list) -> dict:
    present = [v for v in values if v is not None]
    row = {"windowStart": start, "windowEnd": end, "k": key}
    for name, func, field in spec.aggregations:
        row[name] = {
            "count": lambda: len(values) if field is None else len(present),
            "count_distinct": lambda: len(set(present)),
            "sum": lambda: sum(present) if present else None,
            "avg": lambda: sum(present) / len(present) if present else None,
            "min": lambda: min(present) if present else None,
            "max": lambda: max(present) if present else None,
        }[func]()
    return row
