"""``type: map``: rename, reshape, convert and compute columns.

    - id: normalize
      type: map
      keep: false                      # true: every input column plus the mapped ones
      drop: [internal_id]              # removed after mapping
      mappings:
        id: customer_id                # target: source path
        email: {source: contact.email, converter: [trim, lowercase]}
        email_hash: {source: contact.email, converter: [lowercase, sha256]}
        address.city: {source: city}   # a dotted target builds a struct column
        signup: {source: signup, converter: timestamp, format: "%d/%m/%Y"}
        revenue: {expression: "l_extendedprice * (1 - l_discount)", digits: 2}
        country: {source: country, default: unknown}

A source path reads nested struct fields (``contact.email``) and, on a slower path,
JSON objects held in string columns. A path missing from the input is a
TerminalError, unless the mapping has a ``default``, which also fills nulls (after
the converters; it is not converted).

Converters (lowercase, uppercase, trim, int, float, string, bool, timestamp, date,
round, sha256, json) work on whole columns. ``format`` is the strptime format of
timestamp/date when reading text (ISO when absent), and the strftime format of string
when writing a date/time. ``digits`` rounds (it adds ``round`` if not listed). A value one cannot convert (``'abc'`` to int) does
not fail the batch: its row is removed and returned as a dead letter (the input row)
with a reason such as ``amount: cannot convert 'abc' to int``. The bad rows are found
only when the vectorised conversion fails, by bisecting that column. Expressions, in
contrast, are all-or-nothing: a value they cannot handle fails the batch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import StepResult, rows_as_dead_letters
from ..columns import as_array as _array
from ..columns import as_text, convert_each, is_text, to_date, to_float, to_int, to_timestamp
from ..errors import SpecError, TerminalError
from ..expressions import Expression, compile_expression
from ..spec import Section
from .base import Transform, common_step_fields

_TRUE = ("true", "t", "yes", "y", "1", "on")
_FALSE = ("false", "f", "no", "n", "0", "off")


@dataclass(frozen=True)
class FieldMapping:
    """How one target column is made: from a ``source`` path or an ``expression``,
    then ``converters`` in order, then ``default`` for what is still null."""

    target: str
    source: str | None = None
    expression: Expression | None = None
    converters: tuple[str, ...] = ()
    format: str | None = None
    digits: int | None = None
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class MapStep(Transform):
    """Builds a table of mapped columns (plus the input's when ``keep``)."""

    id: str
    mappings: tuple[FieldMapping, ...]
    keep: bool = False
    drop: tuple[str, ...] = ()
    required: bool = True

    type: ClassVar[str] = "map"

    @classmethod
    def from_spec(cls, section, ctx) -> "MapStep":
        common = common_step_fields(section)
        raw = section.get("mappings", types=dict,
                          check=lambda v: None if v else "expected at least one mapping, got none")
        mappings = tuple(_field_mapping(str(target), spec, f"{section.at('mappings')}.{target}")
                         for target, spec in raw.items())
        _check_targets(mappings, section.at("mappings"))
        keep = section.get("keep", False, types=bool)
        drop = section.str_list("drop", ())
        section.done()
        return cls(mappings=mappings, keep=keep, drop=drop, **common)

    def apply(self, table: pa.Table) -> StepResult:
        failures = _Failures()
        columns = [(m.target, _mapped(m, table, failures)) for m in self.mappings]
        out = _assemble(table, columns, self.keep)
        out = out.drop_columns([name for name in self.drop if name in out.column_names])
        if not failures.rows:
            return StepResult(out)
        bad = np.zeros(table.num_rows, dtype=bool)
        bad[sorted(failures.rows)] = True
        rejects = rows_as_dead_letters(table.filter(pa.array(bad)), failures.reasons())
        return StepResult(out.filter(pa.array(~bad)), rejects)


# --- the spec ----------------------------------------------------------------------

def _field_mapping(target: str, spec: Any, path: str) -> FieldMapping:
    if not target or any(not part for part in target.split(".")):
        raise SpecError(path, f"expected a column name or a dotted path like 'address.city', got {target!r}")
    if spec is None or isinstance(spec, str):
        return FieldMapping(target=target, source=spec or target)
    section = Section(spec, path)
    source = section.get("source", None, types=str)
    text = section.get("expression", None, types=str)
    if source is not None and text is not None:
        raise SpecError(path, "give either 'source' or 'expression', not both")
    expression = compile_expression(text, section.at("expression")) if text is not None else None
    converters = section.str_list("converter", ())
    for i, name in enumerate(converters):
        if name not in CONVERTERS:
            where = section.at("converter") + (f"[{i}]" if isinstance(spec.get("converter"), list) else "")
            raise SpecError(where, f"{name!r} is not one of {', '.join(CONVERTERS)}")
    digits = section.get("digits", None, types=int)
    if digits is not None and "round" not in converters:
        converters = (*converters, "round")
    mapping = FieldMapping(
        target=target, source=None if expression is not None else (source or target), expression=expression,
        converters=converters, format=section.get("format", None, types=str, check=_format_problem), digits=digits,
        default=section.get("default", None, types=(str, int, float, bool)), has_default=section.has("default"))
    section.done()
    return mapping


def _format_problem(value: str) -> str | None:
    return None if value.strip() else "expected a strptime/strftime format such as '%d/%m/%Y', got ''"


def _check_targets(mappings: tuple[FieldMapping, ...], path: str) -> None:
    targets = {m.target for m in mappings}
    for m in mappings:
        parts = m.target.split(".")
        for k in range(1, len(parts)):
            if ".".join(parts[:k]) in targets:
                raise SpecError(f"{path}.{m.target}", f"conflicts with target {'.'.join(parts[:k])!r}, "
                                                      "which is not a struct")


# --- reading sources -----------------------------------------------------------------

class _Failures:
    """Reasons per input row index, gathered across mappings."""

    def __init__(self):
        self.rows: dict[int, list[str]] = {}

    def add(self, indices: list[int], reason: Callable[[int], str]) -> None:
        for i in indices:
            self.rows.setdefault(i, []).append(reason(i))

    def reasons(self) -> list[str]:
        return ["; ".join(self.rows[i]) for i in sorted(self.rows)]


def _mapped(m: FieldMapping, table: pa.Table, failures: _Failures) -> pa.Array:
    if m.expression is not None:
        values = _array(m.expression.evaluate(table))
    else:
        values = _read_path(table, m.source, m, failures)
    for name in m.converters:
        original = values
        values, bad = _convert(values, name, m)
        failures.add(bad, lambda i: f"{m.target}: cannot convert {_shown(original[i].as_py())} to {name}")
    return _with_default(values, m) if m.has_default else values


def _read_path(table: pa.Table, path: str, m: FieldMapping, failures: _Failures) -> pa.Array:
    """The values at ``path``: a column, fields of struct columns, keys of JSON strings."""
    if path in table.column_names:
        return _array(table.column(path))
    parts = path.split(".")
    head = next((k for k in range(len(parts) - 1, 0, -1) if ".".join(parts[:k]) in table.column_names), None)
    if head is None:
        return _missing(table, m, f"no column {parts[0]!r} (columns: {', '.join(table.column_names)})")
    values, rest, where = _array(table.column(".".join(parts[:head]))), parts[head:], ".".join(parts[:head])
    while rest:
        if pa.types.is_struct(values.type):
            if values.type.get_field_index(rest[0]) < 0:
                return _missing(table, m, f"{where!r} has no field {rest[0]!r} ({values.type})")
            values, where, rest = pc.struct_field(values, rest[0]), f"{where}.{rest[0]}", rest[1:]
        elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            return _json_path(values, rest, where, m, failures)
        else:
            return _missing(table, m, f"{where!r} is {values.type}, not a struct or JSON text")
    return values


def _missing(table: pa.Table, m: FieldMapping, why: str) -> pa.Array:
    if m.has_default:
        return pa.nulls(table.num_rows)
    raise TerminalError(f"mapping {m.target!r}: source {m.source!r} not found: {why}", column=m.source)


def _json_path(values: pa.Array, keys: list[str], where: str, m: FieldMapping, failures: _Failures) -> pa.Array:
    """The slow path: parse each JSON text and walk ``keys``; bad JSON rejects the row."""
    found, bad = [], []
    for i, text in enumerate(values.to_pylist()):
        try:
            node = json.loads(text) if text is not None else None
        except ValueError:
            node = None
            bad.append(i)
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        found.append(node)
    failures.add(bad, lambda i: f"{m.target}: {where} is not valid JSON: {_shown(values[i].as_py())}")
    return _infer(found)


def _infer(items: list) -> pa.Array:
    try:
        return pa.array(items)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in items])


def _with_default(values: pa.Array, m: FieldMapping) -> pa.Array:
    default = pa.scalar(m.default)
    if pa.types.is_null(values.type):
        return pa.repeat(default, len(values))
    try:
        return pc.fill_null(values, default.cast(values.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TerminalError(f"mapping {m.target!r}: default {m.default!r} does not fit its {values.type} "
                            f"values: {exc}", column=m.target) from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- converters ------------------------------------------------------------------------

def _strings(v: pa.Array) -> pa.Array:
    return as_text(v)


def _is_text(v: pa.Array) -> bool:
    return is_text(v.type)


def _to_int(v: pa.Array, m: FieldMapping) -> pa.Array:
    return to_int(v)


def _to_float(v: pa.Array, m: FieldMapping) -> pa.Array:
    return to_float(v)


def _to_bool(v: pa.Array, m: FieldMapping) -> pa.Array:
    if not _is_text(v):
        return pc.not_equal(v, pa.scalar(0).cast(v.type)) if not pa.types.is_boolean(v.type) else v
    words = pc.utf8_lower(pc.utf8_trim_whitespace(v))
    yes, no = pc.is_in(words, value_set=pa.array(_TRUE)), pc.is_in(words, value_set=pa.array(_FALSE))
    if pc.any(pc.and_(pc.is_valid(words), pc.invert(pc.or_(yes, no)))).as_py():
        raise pa.ArrowInvalid("not a boolean word")
    return pc.if_else(pc.is_null(words), pa.scalar(None, pa.bool_()), yes)


def _to_timestamp(v: pa.Array, m: FieldMapping) -> pa.Array:
    return to_timestamp(v, m.format)


def _to_date(v: pa.Array, m: FieldMapping) -> pa.Array:
    return to_date(v, m.format)


def _to_string(v: pa.Array, m: FieldMapping) -> pa.Array:
    if m.format is not None and pa.types.is_temporal(v.type):
        return pc.strftime(v, format=m.format)
    return _strings(v)


def _round(v: pa.Array, m: FieldMapping) -> pa.Array:
    return pc.round(_to_float(v, m) if _is_text(v) else v, ndigits=m.digits or 0)


def _sha256(v: pa.Array, m: FieldMapping) -> pa.Array:
    """Hex SHA-256 of each value's text (UTF-8), hashing each distinct value once."""
    text = _strings(v)
    distinct = pc.unique(text).drop_null()
    digests = pa.array([hashlib.sha256(s.encode()).hexdigest() for s in distinct.to_pylist()], pa.string())
    return pc.take(digests, pc.index_in(text, value_set=distinct))


def _parse_json(v: pa.Array, m: FieldMapping) -> pa.Array:
    return _infer([json.loads(s) if s is not None else None for s in _strings(v).to_pylist()])


CONVERTERS: dict[str, Callable[[pa.Array, FieldMapping], pa.Array]] = {
    "lowercase": lambda v, m: pc.utf8_lower(_strings(v)),
    "uppercase": lambda v, m: pc.utf8_upper(_strings(v)),
    "trim": lambda v, m: pc.utf8_trim_whitespace(_strings(v)),
    "int": _to_int,
    "float": _to_float,
    "string": _to_string,
    "bool": _to_bool,
    "timestamp": _to_timestamp,
    "date": _to_date,
    "round": _round,
    "sha256": _sha256,
    "json": _parse_json,
}

def _convert(values: pa.Array, name: str, m: FieldMapping) -> tuple[pa.Array, list[int]]:
    """``values`` converted, and the indices of those that cannot be (left null).

    The whole column is converted at once; only when that fails is it bisected to
    find the values at fault, so the cost of bad rows grows with their number.
    """
    fn = CONVERTERS[name]
    try:
        return convert_each(values, lambda v: fn(v, m))
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise TerminalError(f"mapping {m.target!r}: cannot apply {name} to {values.type} values: {exc}",
                            column=m.target) from None


# --- assembling the output ---------------------------------------------------------------

def _assemble(table: pa.Table, columns: list[tuple[str, pa.Array]], keep: bool) -> pa.Table:
    """The output table; dotted targets become (nested) struct columns."""
    tree: dict[str, Any] = {}
    for target, values in columns:
        *parents, leaf = target.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = values
    built = {name: _build(sub, table.column(name) if keep and name in table.column_names else None)
             for name, sub in tree.items()}
    names = [*table.column_names, *[n for n in built if n not in table.column_names]] if keep else list(built)
    # kept columns go as they are: joining their chunks would copy the whole batch
    arrays = [built[n] if n in built else table.column(n) for n in names]
    return pa.Table.from_arrays(arrays, names=names)


def _build(node: pa.Array | dict, base: pa.ChunkedArray | pa.Array | None) -> pa.Array:
    if not isinstance(node, dict):
        return node
    fields: dict[str, Any] = {}
    mask = None
    if base is not None and pa.types.is_struct(base.type):
        base = _array(base)
        fields = {f.name: pc.struct_field(base, f.name) for f in base.type}
        mask = pc.is_null(base) if base.null_count else None
    for name, sub in node.items():
        fields[name] = _build(sub, fields.get(name))
    return pa.StructArray.from_arrays(list(fields.values()), names=list(fields), mask=mask)
