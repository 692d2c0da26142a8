"""Column-at-a-time helpers shared by sources and transforms.

:func:`convert_each` applies a vectorised conversion to a whole column and, only when
it fails, bisects the column to find the values at fault, so the cost of bad values
grows with their number, not with the column's length.
"""
from __future__ import annotations

from typing import Callable

import pyarrow as pa

VALUE_ERRORS = (pa.ArrowInvalid, ValueError)


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


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
