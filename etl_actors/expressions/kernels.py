"""What expressions compute with: type rules, operators and functions over Arrow
values (whole columns or scalars), all with :mod:`pyarrow.compute`."""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from ..columns import as_text, to_date, to_int, to_timestamp

Value = pa.Array | pa.ChunkedArray | pa.Scalar
Check = Callable[[Any], "str | None"]

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
ROUND_DIGITS = 18   # the widest rounding that overflows neither int64 nor float64


# --- type helpers ------------------------------------------------------------------

def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_temporal(t)


def _is_stringy(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def cast_literal(value: pa.Scalar, target: pa.DataType) -> pa.Scalar:
    """A string literal read as ``target`` (a date or timestamp, naive or zoned)."""
    if pa.types.is_timestamp(target) and target.tz is not None:
        try:
            return value.cast(target)
        except pa.ArrowInvalid:
            naive = pa.array([value.as_py()]).cast(pa.timestamp(target.unit))
            return pc.assume_timezone(naive, timezone=target.tz)[0]
    return value.cast(target)


def coerce_literals(values: list[Value]) -> list[Value]:
    """Cast string literals to the type of a temporal column among ``values``."""
    temporal = next((v.type for v in values if not isinstance(v, pa.Scalar) and _is_temporal(v.type)), None)
    if temporal is None:
        return values
    return [cast_literal(v, temporal) if isinstance(v, pa.Scalar) and _is_stringy(v.type) else v
            for v in values]


class Mismatch(TypeError):
    """Two values that the language refuses to compare."""


def _check_comparable(left: pa.DataType, right: pa.DataType, what: str) -> None:
    if (_is_stringy(left) and _is_numeric(right)) or (_is_numeric(left) and _is_stringy(right)):
        raise Mismatch(f"cannot compare a string with a number in {what!r} ({left} vs {right}); "
                       f"convert one side with int(...), float(...) or str(...)")


def literal_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a literal of the language, or None."""
    if value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else \
            f"the integer {value} does not fit in 64 bits (from {INT64_MIN} to {INT64_MAX})"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"the number {value} is not finite"
    return f"{type(value).__name__} literals are not allowed"


# --- operators -----------------------------------------------------------------------

_COMPARE = {ast.Eq: pc.equal, ast.NotEq: pc.not_equal, ast.Lt: pc.less, ast.LtE: pc.less_equal,
            ast.Gt: pc.greater, ast.GtE: pc.greater_equal}


def compare(op: type, left: Value, right: Value, what: str) -> Value:
    left, right = coerce_literals([left, right])
    _check_comparable(left.type, right.type, what)
    return _COMPARE[op](left, right)


def is_in(value: Value, choices: pa.Array, what: str) -> Value:
    if _is_temporal(value.type) and _is_stringy(choices.type):
        choices = pa.array([cast_literal(pa.scalar(c), value.type).as_py() for c in choices.to_pylist()],
                           type=value.type)
    _check_comparable(value.type, choices.type, what)
    found = pc.is_in(value, value_set=choices)
    if not isinstance(value, pa.Scalar) and not value.null_count:
        return found              # no null, whose answer is unknown rather than false: no second pass
    return pc.if_else(pc.is_valid(value), found, pa.nulls(1, pa.bool_())[0])


def _as_float(*values: Value) -> list[Value]:
    return [pc.cast(v, pa.float64()) if pa.types.is_integer(v.type) else v for v in values]


def _both_int(a: Value, b: Value) -> bool:
    return pa.types.is_integer(a.type) and pa.types.is_integer(b.type)


def _add(a: Value, b: Value) -> Value:
    if _is_stringy(a.type) and _is_stringy(b.type):
        return pc.binary_join_element_wise(a, b, "")
    return pc.add_checked(a, b)


def _true_divide(a: Value, b: Value) -> Value:
    if _both_int(a, b):
        a, b = _as_float(a, b)
    return pc.divide(a, b)


def _floor_divide(a: Value, b: Value) -> Value:
    result = pc.floor(pc.divide(*_as_float(a, b)))
    return pc.cast(result, pa.int64()) if _both_int(a, b) else result


def _modulo(a: Value, b: Value) -> Value:
    fa, fb = _as_float(a, b)
    result = pc.subtract(fa, pc.multiply(fb, pc.floor(pc.divide(fa, fb))))
    return pc.cast(result, pa.int64()) if _both_int(a, b) else result


BINARY = {ast.Add: _add, ast.Sub: pc.subtract_checked, ast.Mult: pc.multiply_checked,
          ast.Div: _true_divide, ast.FloorDiv: _floor_divide, ast.Mod: _modulo}
UNARY = {ast.Not: pc.invert, ast.USub: pc.negate_checked, ast.UAdd: lambda v: v}


# --- functions -------------------------------------------------------------------------

_strings, _to_int, _to_timestamp, _to_date = as_text, to_int, to_timestamp, to_date   # shared with map's converters


def _date_part(kernel: Callable) -> Callable[[Value], Value]:
    return lambda v: kernel(_to_timestamp(v) if _is_stringy(v.type) else v)


def _length(v: Value) -> Value:
    return pc.list_value_length(v) if pa.types.is_list(v.type) else pc.utf8_length(_strings(v))


def _substr(v: Value, start: int, length: int | None = None) -> Value:
    begin = start - 1
    stop = None if length is None else min(begin + length, INT64_MAX)
    return pc.utf8_slice_codeunits(_strings(v), start=begin, stop=stop)


def _concat(*values: Value) -> Value:
    return pc.binary_join_element_wise(*[_strings(v) for v in values], "",
                                       null_handling="replace", null_replacement="")


def _coalesce(*values: Value) -> Value:
    return pc.coalesce(*coerce_literals(list(values)))


def _if_else(cond: Value, yes: Value, no: Value) -> Value:
    yes, no = coerce_literals([yes, no])
    return pc.if_else(cond, yes, no)


def _got(value: Any) -> str:
    return f"{repr(value)[:60]} ({type(value).__name__})"


def _integer(low: int, high: int) -> Check:
    """A check: an integer from ``low`` to ``high``."""
    def check(value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return None
        return f"expected an integer from {low} to {high}, got {_got(value)}"
    return check


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {_got(value)}"


def _format(value: Any) -> str | None:
    """A strptime format: non-empty text (Arrow's strptime crashes on an empty one)."""
    return _text(value) or (None if value else "expected a strptime format such as '%d/%m/%Y', got ''")


@dataclass(frozen=True)
class Function:
    """``fn`` takes the evaluated arguments. ``literals`` maps the positions that must
    be constants in the text (passed as Python values) to a check of the value, which
    returns what is wrong with it or None; a bad one is a spec error, not a run-time one."""

    fn: Callable[..., Value]
    min_args: int
    max_args: int | None
    literals: Mapping[int, Check] = field(default_factory=dict)


_PATTERN = {1: _text}

FUNCTIONS: dict[str, Function] = {
    "lower": Function(lambda v: pc.utf8_lower(_strings(v)), 1, 1),
    "upper": Function(lambda v: pc.utf8_upper(_strings(v)), 1, 1),
    "trim": Function(lambda v: pc.utf8_trim_whitespace(_strings(v)), 1, 1),
    "length": Function(_length, 1, 1),
    "abs": Function(pc.abs_checked, 1, 1),
    "round": Function(lambda v, digits=0: pc.round(v, ndigits=digits), 1, 2,
                      {1: _integer(-ROUND_DIGITS, ROUND_DIGITS)}),
    "coalesce": Function(_coalesce, 1, None),
    "concat": Function(_concat, 1, None),
    "substr": Function(_substr, 2, 3, {1: _integer(1, INT64_MAX), 2: _integer(0, INT64_MAX)}),
    "starts_with": Function(lambda v, p: pc.starts_with(_strings(v), pattern=p), 2, 2, _PATTERN),
    "startswith": Function(lambda v, p: pc.starts_with(_strings(v), pattern=p), 2, 2, _PATTERN),
    "ends_with": Function(lambda v, p: pc.ends_with(_strings(v), pattern=p), 2, 2, _PATTERN),
    "contains": Function(lambda v, p: pc.match_substring(_strings(v), pattern=p), 2, 2, _PATTERN),
    "year": Function(_date_part(pc.year), 1, 1),
    "month": Function(_date_part(pc.month), 1, 1),
    "day": Function(_date_part(pc.day), 1, 1),
    "date": Function(_to_date, 1, 1),
    "timestamp": Function(_to_timestamp, 1, 2, {1: _format}),
    "int": Function(_to_int, 1, 1),
    "float": Function(lambda v: pc.cast(v, pa.float64()), 1, 1),
    "str": Function(_strings, 1, 1),
    "if_else": Function(_if_else, 3, 3),
}
