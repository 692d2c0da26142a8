"""Column-at-a-time helpers shared by sources and transforms.

:func:`convert_each` applies a vectorised conversion to a whole column and, only when
it fails, bisects the column to find the values at fault, so the cost of bad values
grows with their number, not with the column's length.
"""
from __future__ import annotations

from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

VALUE_ERRORS = (pa.ArrowInvalid, ValueError)


# Change rows (a postgres-cdc stream, see etl_actors.sinks.mirror) are marked by these
# columns; deletes and truncates carry no values but their key (a truncate: not even that).
CHANGE_MARK = ("_op", "_table", "_lsn")
KEY_ONLY_OPS = ("d", "t")


def is_change_rows(table: pa.Table) -> bool:
    return set(CHANGE_MARK) <= set(table.column_names)


def key_only(table: pa.Table) -> pa.ChunkedArray:
    """Per change row: whether it is a delete or a truncate."""
    return pc.is_in(table.column("_op"), pa.array(KEY_ONLY_OPS))


def empty_table(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()`` without a Python-to-Arrow conversion (which makes
    pyarrow import pandas, 0.2 s of a process's start)."""
    return pa.table([pa.nulls(0, f.type) for f in schema], schema=schema)


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array: a chunked array's only chunk as it is, its chunks joined."""
    if not isinstance(values, pa.ChunkedArray):
        return values
    if values.num_chunks == 1:
        return values.chunk(0)
    return values.combine_chunks() if values.num_chunks else pa.nulls(0, values.type)


def convert_each(values: pa.Array, fn: Callable[[pa.Array], pa.Array],
                 errors: tuple[type, ...] = VALUE_ERRORS) -> tuple[pa.Array, list[int]]:
    """``fn(values)``, with null where a value cannot be converted, and the indices of
    those values. ``errors`` are the exceptions that mean "a value is bad"; any other
    exception propagates (a conversion that cannot apply to the type at all)."""
    pieces: list[pa.Array | int] = []
    bad: list[int] = []
    _bisect(values, fn, 0, pieces, bad, errors)
    if not bad:
        return pieces[0], bad
    kind = next((p.type for p in pieces if not isinstance(p, int)), pa.null())
    return pa.concat_arrays([pa.nulls(p, kind) if isinstance(p, int) else p.cast(kind) for p in pieces]), bad


def failing_values(values: pa.Array, fn: Callable[[pa.Array], pa.Array],
                   errors: tuple[type, ...] = VALUE_ERRORS) -> list[int]:
    """The indices of the values ``fn`` cannot convert."""
    return convert_each(values, fn, errors)[1]


def _bisect(values: pa.Array, fn: Callable, offset: int, pieces: list, bad: list[int], errors: tuple) -> None:
    try:
        pieces.append(as_array(fn(values)))
        return
    except errors:
        if len(values) == 1:
            pieces.append(1)
            bad.append(offset)
            return
    half = len(values) // 2
    _bisect(values.slice(0, half), fn, offset, pieces, bad, errors)
    _bisect(values.slice(half), fn, offset + half, pieces, bad, errors)


# --- conversions shared by the map step's converters and the expression language -----

def is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def as_text(values):
    """The values as text (unchanged when they are text already)."""
    return values if is_text(values.type) else pc.cast(values, pa.string())


def to_int(values):
    """Integers: numbers truncated toward zero, text trimmed then read as an integer."""
    if pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
        values = pc.trunc(values)
    return pc.cast(pc.utf8_trim_whitespace(values) if is_text(values.type) else values, pa.int64())


def to_float(values):
    """Floats: text trimmed then read as a number."""
    return pc.cast(pc.utf8_trim_whitespace(values) if is_text(values.type) else values, pa.float64())


def to_timestamp(values, fmt: str | None = None):
    """Timestamps (microseconds): text by ``fmt`` (strptime) or as ISO 8601, where
    values with a zone (``Z``, ``+02:00``) become UTC and values without one stay
    naive, unless the column mixes both (then all are UTC, the naive ones read as UTC);
    integers as seconds since the epoch; other temporal values cast."""
    if fmt is not None:
        return pc.strptime(as_text(values), format=fmt, unit="us")
    if pa.types.is_integer(values.type):
        return pc.cast(pc.cast(values, pa.timestamp("s")), pa.timestamp("us"))
    if not is_text(values.type):
        return values if pa.types.is_timestamp(values.type) else pc.cast(values, pa.timestamp("us"))
    text = pc.utf8_trim_whitespace(values)
    zoned = pc.match_substring_regex(text, r"(Z|[+-]\d\d:?\d\d)$")
    if not pc.any(zoned).as_py():
        return pc.cast(text, pa.timestamp("us"))
    none = pa.scalar(None, pa.string())
    local = pc.cast(pc.if_else(zoned, none, text), pa.timestamp("us"))
    return pc.coalesce(pc.cast(pc.if_else(zoned, text, none), pa.timestamp("us", "UTC")),
                       pc.assume_timezone(local, timezone="UTC"))


def to_date(values, fmt: str | None = None):
    """Dates: what :func:`to_timestamp` reads, without the time of day."""
    if pa.types.is_date32(values.type):
        return values
    if pa.types.is_date64(values.type):
        return pc.cast(values, pa.date32())
    return pc.cast(to_timestamp(values, fmt), pa.date32())
