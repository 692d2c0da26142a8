"""The rules of ``type: validate``, and how they read a batch's values.

What counts as a violation: ``required-fields``: a null, or text that is empty after
trimming (0 and false are values, not missing). Every other rule passes nulls:
``regex`` (RE2, matched anywhere unless anchored; non-text values as their text),
``numeric-range`` (``min`` and/or ``max``, inclusive; a value that is not a number,
NaN and booleans included, violates), ``unique`` (over the whole run, see below),
``foreign-key`` (the value is not in ``reference.field`` of ``reference.table``, read
through ``reference.connection``, by default the destination's; one query per batch),
``allowed-values``, ``max-length`` (characters of text, items of lists) and ``type``
(values of that type, or text that parses as it).

``unique``: the first record to offer a value owns it for the run; any other record
with it is a duplicate. Owners live in the event log's database (shared by every
transformer process), so a batch transformed again gets the same answers. Without a
:class:`~etl_actors.transforms.base.StepContext` uniqueness is per batch.

A rule is a frozen description built ``from_spec(section, ctx, common)``; ``find(table)``
only reads the batch and says which rows break the rule (:class:`Found`), never
changes it. A field may be a dotted path into struct columns; a field the batch lacks
reads as nulls. Values a rule cannot compare or read as text raise TerminalError
naming the rule: a rule never passes what it could not check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import jsonable
from ..columns import as_array, as_text, convert_each, is_text, to_date, to_float, to_int, to_timestamp
from ..errors import SpecError, TerminalError, describe
from ..quality_store import Reference, claim_values, value_hash
from ..spec import Section
from .base import StepContext

DATA_TYPES = ("string", "integer", "number", "boolean", "timestamp", "date")
_WORDS = ("true", "t", "yes", "y", "1", "on", "false", "f", "no", "n", "0", "off")


@dataclass(frozen=True)
class Found:
    """The rows of a batch that break a rule (``mask``), why (``why(i)``), and what an
    example shows of row ``i``."""

    mask: np.ndarray
    why: Callable[[int], str]
    example: Callable[[int], Any]

    @classmethod
    def nothing(cls, rows: int) -> "Found":
        return cls(np.zeros(rows, dtype=bool), str, str)


@dataclass(frozen=True)
class Rule:
    """One quality rule; ``action`` is its severity's action in the step."""

    id: str
    severity: str
    action: str
    message: str | None

    kind: ClassVar[str]

    def open(self) -> None:
        """Prepare in the worker process (reflect a reference table)."""

    def find(self, table: pa.Table) -> Found:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"id": self.id, "type": self.kind, "severity": self.severity, "action": self.action}


@dataclass(frozen=True)
class RequiredFields(Rule):
    fields: tuple[str, ...]

    kind: ClassVar[str] = "required-fields"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "RequiredFields":
        fields = section.str_list("fields")
        if not fields or not all(fields):
            raise SpecError(section.at("fields"), f"expected one or more field names, got {list(fields)}")
        return cls(fields=fields, **common)

    def find(self, table: pa.Table) -> Found:
        missing = [_missing(table, name) for name in self.fields]
        mask = np.logical_or.reduce(missing) if missing else np.zeros(table.num_rows, dtype=bool)

        def why(i: int) -> str:
            names = [name for name, m in zip(self.fields, missing) if m[i]]
            return f"missing required field{'s' if len(names) > 1 else ''} {', '.join(names)}"

        def example(i: int) -> dict:
            return {name: _value_at(table, name, i) for name in self.fields}
        return Found(mask, why, example)


@dataclass(frozen=True)
class FieldRule(Rule):
    """A rule over the values of one ``field``."""

    field: str

    def find(self, table: pa.Table) -> Found:
        values = _values(table, self.field)
        if values is None or table.num_rows == 0:
            return Found.nothing(table.num_rows)
        present = ~_absent(values)
        if not present.any():
            return Found.nothing(table.num_rows)
        mask, why = self.check(values)
        mask = (mask if isinstance(mask, np.ndarray) else _numpy(mask)) & present
        return Found(mask, lambda i: f"{self.field} {why(i, values[i].as_py())}",
                     lambda i: jsonable(values[i].as_py()))

    def check(self, values: pa.Array) -> tuple[Any, Callable[[int, Any], str]]:
        """Which values break the rule, and why one does (after the field's name);
        missing values (null, blank text) are passed whatever this says."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {**super().describe(), "field": self.field}


@dataclass(frozen=True)
class Regex(FieldRule):
    pattern: str

    kind: ClassVar[str] = "regex"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "Regex":
        return cls(field=_field(section), pattern=section.get("pattern", types=str, check=_regex_problem), **common)

    def check(self, values):
        matches = pc.match_substring_regex(_text_or_raise(values, self), self.pattern)
        return pc.invert(matches), lambda i, v: f"{_shown(v)} does not match {self.pattern}"


@dataclass(frozen=True)
class NumericRange(FieldRule):
    minimum: float | None = None
    maximum: float | None = None

    kind: ClassVar[str] = "numeric-range"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "NumericRange":
        low, high = (section.get(k, None, types=(int, float)) for k in ("min", "max"))
        if low is None and high is None:
            raise SpecError(section.path, "give 'min', 'max' or both")
        if low is not None and high is not None and low > high:
            raise SpecError(section.at("max"), f"expected at least min ({low}), got {high}")
        return cls(field=_field(section), minimum=low, maximum=high, **common)

    def check(self, values):
        numbers, not_number = _numbers(values)
        below = numbers < self.minimum if self.minimum is not None else np.zeros(len(numbers), dtype=bool)
        above = numbers > self.maximum if self.maximum is not None else np.zeros(len(numbers), dtype=bool)

        def why(i: int, v: Any) -> str:
            if not_number[i]:
                return f"{_shown(v)} is not a number"
            return f"{_shown(v)} is {'below the minimum' if below[i] else 'above the maximum'} " \
                   f"{self.minimum if below[i] else self.maximum}"
        return not_number | below | above, why


@dataclass(frozen=True)
class Unique(FieldRule):
    kind: ClassVar[str] = "unique"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "Unique":
        return cls(field=_field(section), **common)

    def find(self, table: pa.Table) -> Found:
        return self.find_unique(table, np.ones(table.num_rows, dtype=bool), None, "")

    def find_unique(self, table: pa.Table, claimants: np.ndarray, ctx: StepContext | None, step: str) -> Found:
        """Rows whose value another record owns; the first of ``claimants`` to hold a
        value claims it (for the run with ``ctx``, else for the batch)."""
        values = _values(table, self.field)
        if values is None or table.num_rows == 0:
            return Found.nothing(table.num_rows)
        distinct = _distinct(values, self)
        codes = np.where(_absent(values), -1, _numpy(pc.index_in(values, value_set=distinct), fill=-1))
        first = _first_claims(codes, claimants, len(distinct))
        owners = first if ctx is None else self._owners(distinct, first, ctx, step)
        owner = owners[codes] if len(owners) else np.full(len(codes), -1)
        mask = (codes >= 0) & (owner != -1) & (owner != np.arange(len(codes)))
        scope = "this batch" if ctx is None else "this run"
        return Found(mask, lambda i: f"{self.field} {_shown(values[i].as_py())} is not unique: another record "
                                     f"in {scope} has it", lambda i: jsonable(values[i].as_py()))

    def _owners(self, distinct: pa.Array, first: np.ndarray, ctx: StepContext, step: str) -> np.ndarray:
        """Per distinct value: the owning row of this batch, -2 for another batch's
        record, -1 for none."""
        hashes = [value_hash(v) for v in distinct.to_pylist()]
        claims = {hashes[c]: int(first[c]) for c in np.flatnonzero(first >= 0)}
        found = claim_values(ctx.log_url, ctx.pipeline, ctx.run_id, f"{step}/{self.id}", ctx.batch_id, claims, hashes)
        return np.array([-1 if h not in found else found[h][1] if found[h][0] == ctx.batch_id else -2
                         for h in hashes], dtype=np.int64)


@dataclass(frozen=True)
class ForeignKey(FieldRule):
    reference: Reference

    kind: ClassVar[str] = "foreign-key"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "ForeignKey":
        ref = section.section("reference")
        url = ctx.connection(ref) if ref.has("connection") else getattr(ctx, "destination_url", None)
        if url is None:
            raise SpecError(ref.at("connection"), "is required: the destination is not a database to default to")
        reference = Reference(url, ref.get("table", types=str), ref.get("field", types=str))
        ref.done()
        return cls(field=_field(section), reference=reference, **common)

    def open(self) -> None:
        self.reference.open()

    def check(self, values):
        distinct = _distinct(values, self)
        keys, found = self.reference.existing(distinct.to_pylist())
        absent = np.array([k is None or k not in found for k in keys], dtype=bool)
        codes = _numpy(pc.index_in(values, value_set=distinct), fill=-1)
        mask = (codes >= 0) & absent[codes] if len(absent) else np.zeros(len(codes), dtype=bool)
        ref = self.reference
        return mask, lambda i, v: f"{_shown(v)} not found in {ref.table}.{ref.field}"

    def describe(self) -> dict:
        return {**super().describe(), "reference": self.reference.describe()}


@dataclass(frozen=True)
class AllowedValues(FieldRule):
    values: tuple

    kind: ClassVar[str] = "allowed-values"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "AllowedValues":
        allowed = section.get("values", types=list, check=_scalars_problem)
        return cls(field=_field(section), values=tuple(allowed), **common)

    def check(self, values):
        shown = ", ".join(map(str, self.values))
        return pc.invert(self._is_in(values)), lambda i, v: f"{_shown(v)} is not one of {shown}"

    def _is_in(self, values: pa.Array) -> pa.Array:
        if not is_text(values.type):
            try:
                return pc.is_in(values, value_set=pa.array(self.values).cast(values.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                pass
        words = pa.array([v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
                          for v in self.values], pa.string())
        return pc.is_in(_text_or_raise(values, self), value_set=words)


@dataclass(frozen=True)
class MaxLength(FieldRule):
    maximum: int

    kind: ClassVar[str] = "max-length"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "MaxLength":
        return cls(field=_field(section), maximum=section.positive_int("max"), **common)

    def check(self, values):
        kind = values.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            lengths, unit = pc.list_value_length(values), "items"
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            lengths, unit = pc.binary_length(values), "bytes"
        else:
            lengths, unit = pc.utf8_length(_text_or_raise(values, self)), "characters"
        return pc.greater(lengths, self.maximum), \
            lambda i, v: f"has {lengths[i].as_py()} {unit}, more than {self.maximum}"


@dataclass(frozen=True)
class DataType(FieldRule):
    data_type: str

    kind: ClassVar[str] = "type"

    @classmethod
    def from_spec(cls, section: Section, ctx, common: dict) -> "DataType":
        return cls(field=_field(section), data_type=section.get("data_type", types=str, choices=DATA_TYPES), **common)

    def check(self, values):
        article = "an" if self.data_type[0] in "aeiou" else "a"
        return _not_of_type(values, self.data_type), lambda i, v: f"{_shown(v)} is not {article} {self.data_type}"

    def describe(self) -> dict:
        return {**super().describe(), "dataType": self.data_type}


RULES: dict[str, type[Rule]] = {rule.kind: rule for rule in
                                (RequiredFields, Regex, NumericRange, Unique, ForeignKey, AllowedValues, MaxLength,
                                 DataType)}


# --- reading a rule's keys ---------------------------------------------------------------

def _field(section: Section) -> str:
    return section.get("field", types=str, check=lambda v: None if v and all(v.split(".")) else
                       f"expected a field name or a dotted path like 'contact.email', got {v!r}")


def _regex_problem(pattern: str) -> str | None:
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return f"{pattern!r} is not a regular expression RE2 accepts: {str(exc).split(': ', 1)[-1]}"
    return None


def _scalars_problem(values: list) -> str | None:
    if not values:
        return "expected at least one allowed value, got none"
    odd = [v for v in values if not isinstance(v, (str, int, float, bool))]
    return f"expected strings, numbers or booleans, got {describe(odd[0])} among them" if odd else None


# --- reading values -------------------------------------------------------------------------

def _values(table: pa.Table, path: str) -> pa.Array | None:
    """The values at ``path`` (a column or fields of struct columns); None when the
    batch has no such field."""
    if path in table.column_names:
        return _decoded(as_array(table.column(path)))
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:k])
        if head in table.column_names:
            values = as_array(table.column(head))
            for part in parts[k:]:
                if not pa.types.is_struct(values.type) or values.type.get_field_index(part) < 0:
                    return None
                values = pc.struct_field(values, part)
            return _decoded(values)
    return None


def _decoded(values: pa.Array) -> pa.Array:
    return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values


def _value_at(table: pa.Table, path: str, i: int) -> Any:
    values = _values(table, path)
    return None if values is None else jsonable(values[i].as_py())


def _missing(table: pa.Table, path: str) -> np.ndarray:
    values = _values(table, path)
    return np.ones(table.num_rows, dtype=bool) if values is None else _absent(values)


def _absent(values: pa.Array) -> np.ndarray:
    """Where a value is missing: null, or text that is empty once trimmed."""
    missing = pc.is_null(values)
    if is_text(values.type):
        missing = pc.or_kleene(missing, pc.equal(pc.utf8_trim_whitespace(values), ""))
    return _numpy(missing)


def _distinct(values: pa.Array, rule: FieldRule) -> pa.Array:
    try:
        return pc.unique(values).drop_null()
    except pa.ArrowNotImplementedError:
        raise TerminalError(f"rule {rule.id!r}: cannot compare the {values.type} values of {rule.field!r}",
                            rule=rule.id) from None


def _numbers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The values as floats (NaN where null or not a number), and where a non-null
    value is not a number."""
    valid = _numpy(pc.is_valid(values))
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        numbers = _numpy(pc.cast(values, pa.float64()), fill=np.nan)
    elif is_text(kind):
        numbers = _numpy(convert_each(values, to_float)[0], fill=np.nan)   # null where not a number
    else:
        numbers = np.full(len(values), np.nan)
    return numbers, valid & np.isnan(numbers)


def _not_of_type(values: pa.Array, data_type: str) -> np.ndarray:
    kind, valid = values.type, _numpy(pc.is_valid(values))
    if _is_of(kind, data_type):
        return np.zeros(len(values), dtype=bool)
    if data_type == "string":
        return valid if pa.types.is_nested(kind) else np.zeros(len(values), dtype=bool)
    if is_text(kind) and data_type == "boolean":
        return valid & ~_numpy(pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(values)), value_set=pa.array(_WORDS)))
    parse = _PARSERS.get(data_type) if is_text(kind) else None
    if data_type == "integer" and (pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        parse = lambda v: pc.cast(v, pa.int64())  # noqa: E731 - castable only when whole
    if parse is None:
        return valid
    bad = np.zeros(len(values), dtype=bool)
    bad[convert_each(values, parse)[1]] = True
    return bad & valid


def _is_of(kind: pa.DataType, data_type: str) -> bool:
    t = pa.types
    return {"string": is_text(kind), "integer": t.is_integer(kind),
            "number": t.is_integer(kind) or t.is_floating(kind) or t.is_decimal(kind),
            "boolean": t.is_boolean(kind), "timestamp": t.is_timestamp(kind) or t.is_date(kind),
            "date": t.is_date(kind) or t.is_timestamp(kind)}[data_type]


_PARSERS: dict[str, Callable[[pa.Array], pa.Array]] = {
    "integer": to_int, "number": to_float, "timestamp": to_timestamp, "date": to_date}


def _text_or_raise(values: pa.Array, rule: FieldRule) -> pa.Array:
    try:
        return as_text(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TerminalError(f"rule {rule.id!r}: field {rule.field!r} holds {values.type} values, which have no "
                            "text form", rule=rule.id) from None


def _first_claims(codes: np.ndarray, claimants: np.ndarray, distinct: int) -> np.ndarray:
    """Per distinct value code: the first claimant row holding it, or -1."""
    rows = np.flatnonzero(claimants & (codes >= 0))
    first = np.full(distinct, -1, dtype=np.int64)
    held, position = np.unique(codes[rows], return_index=True)
    first[held] = rows[position]
    return first


def _numpy(values: pa.Array | pa.ChunkedArray, fill: Any = False) -> np.ndarray:
    values = as_array(values)
    if values.null_count:
        values = pc.fill_null(values, fill)
    return values.to_numpy(zero_copy_only=False)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
