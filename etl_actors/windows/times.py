"""Event times as epoch milliseconds, read from a column of any usual kind.

Numbers are epoch milliseconds, or epoch seconds when ``|v| < 1e11`` (before March
1973 as ms, after the year 5000 as seconds). Arrow timestamps (any unit, any zone)
and dates are exact. Text is ISO 8601, with or without a zone (none means UTC).
Times outside the years 1-9999 are refused, as are NaN and the infinities.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SECONDS_BELOW = 1e11
EARLIEST, LATEST = -62_135_596_800_000, 253_402_300_799_999      # 0001-01-01 .. 9999-12-31, in ms
_PER_MS = {"s": 1 / 1000, "ms": 1, "us": 1_000, "ns": 1_000_000}
_TEXT_TARGETS = (pa.timestamp("ms"), pa.timestamp("ms", "UTC"), pa.timestamp("ns"), pa.timestamp("ns", "UTC"))


@dataclass(frozen=True)
class EventTimes:
    """``ms[i]`` is row i's time when ``valid[i]``; ``bad`` gives each other row's reason."""

    ms: np.ndarray
    valid: np.ndarray
    bad: list[tuple[int, str]]


def event_times(table: pa.Table, field: str | None, now_ms: int) -> EventTimes:
    """Every row's event time; ``field`` None means processing time (``now_ms``)."""
    n = table.num_rows
    if field is None:
        return EventTimes(np.full(n, now_ms, dtype=np.int64), np.ones(n, dtype=bool), [])
    if field not in table.column_names:
        missing = [(i, f"{field}: missing") for i in range(n)]
        return EventTimes(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool), missing)
    column = table[field].combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    ms, readable = _as_ms(column)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    valid = present & readable & (ms >= EARLIEST) & (ms <= LATEST)
    return EventTimes(np.where(valid, ms, 0), valid, _reasons(column, field, present, valid))


def _as_ms(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds and, per row, whether the value could be read (nulls aside)."""
    kind = column.type
    if pa.types.is_integer(kind):
        values = _numbers(column).astype(np.int64)
        return np.where(np.abs(values) < SECONDS_BELOW, values * 1000, values), np.ones(len(values), dtype=bool)
    if pa.types.is_floating(kind):
        return _float_ms(_numbers(column).astype(np.float64))
    if pa.types.is_timestamp(kind):
        return _scaled(column.cast(pa.int64()), _PER_MS[kind.unit]), np.ones(len(column), dtype=bool)
    if pa.types.is_date32(kind):
        return _scaled(column.cast(pa.int32()).cast(pa.int64()), 1 / 86_400_000), np.ones(len(column), dtype=bool)
    if pa.types.is_date64(kind):
        return _scaled(column.cast(pa.int64()), 1), np.ones(len(column), dtype=bool)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _text_ms(column)
    return np.zeros(len(column), dtype=np.int64), np.zeros(len(column), dtype=bool)


def _numbers(column: pa.Array) -> np.ndarray:
    """The values, nulls as 0 (without a copy when there are none)."""
    return (pc.fill_null(column, 0) if column.null_count else column).to_numpy()


def _float_ms(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ms = np.where(np.abs(values) < SECONDS_BELOW, values * 1000, values)
    readable = np.isfinite(ms) & (ms >= EARLIEST) & (ms <= LATEST)
    return np.floor(np.where(readable, ms, 0)).astype(np.int64), readable


def _scaled(ticks: pa.Array, per_ms: float) -> np.ndarray:
    """``ticks`` (int64, units of 1/per_ms ms) as whole ms, rounded down."""
    values = _numbers(ticks)
    if per_ms >= 1:
        return values // int(per_ms)
    return values * int(round(1 / per_ms))


def _text_ms(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 text: one vectorised cast when the column is uniform (all naive or
    all with a zone), else each value on its own."""
    for target in _TEXT_TARGETS:
        try:
            ticks = pc.cast(column, target).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return _scaled(ticks, _PER_MS[target.unit]), np.ones(len(column), dtype=bool)
    parsed = [_parse_iso(text) for text in column.to_pylist()]
    readable = np.array([ms is not None for ms in parsed], dtype=bool)
    return np.array([ms or 0 for ms in parsed], dtype=np.int64), readable


def _parse_iso(text: str | None) -> int | None:
    if text is None:
        return 0
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _reasons(column: pa.Array, field: str, present: np.ndarray, valid: np.ndarray) -> list[tuple[int, str]]:
    rows = np.nonzero(~valid)[0]
    if not len(rows):
        return []
    values = column.take(pa.array(rows)).to_pylist()
    return [(int(i), f"{field}: missing" if not present[i] else f"{field}: cannot read {value!r} as a time")
            for i, value in zip(rows, values)]
