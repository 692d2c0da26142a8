"""``type: validate``: data-quality rules, each with a severity, and what to do about it.

    - id: validate
      type: validate
      rules:
        - {id: completeness, type: required-fields, fields: [id, email, created_at], severity: error}
        - {id: format, type: regex, field: email, pattern: '^[^@]+@[^@]+\\.[^@]+$'}
        - {id: range, type: numeric-range, field: age, min: 0, max: 150, severity: warning}
        - {id: uniqueness, type: unique, field: email}
        - {id: referential, type: foreign-key, field: customer_id, reference: {table: customers, field: id}}
        - {type: allowed-values, field: status, values: [active, inactive], severity: info}
        - {type: max-length, field: name, max: 255}
        - {type: type, field: signup, dataType: date}     # string|integer|number|boolean|timestamp|date
      actions: {error: reject, warning: flag, info: log}  # the defaults

A rule's ``id`` defaults to its type and is unique in the step; ``severity`` is error
(default), warning or info; ``message`` replaces the rule's own explanation. A field
may be a dotted path into struct columns; a field the batch lacks reads as nulls.

What counts as a violation: ``required-fields``: a null, or text that is empty after
trimming (0 and false are values, not missing). Every other rule passes nulls:
``regex`` (RE2, matched anywhere unless anchored; non-text values as their text),
``numeric-range`` (``min`` and/or ``max``, inclusive; a value that is not a number,
NaN and booleans included, violates), ``unique`` (over the whole run, see below),
``foreign-key`` (the value is not in ``reference.field`` of ``reference.table``, read
through ``reference.connection``, by default the destination's; one query per batch),
``allowed-values``, ``max-length`` (characters of text, items of lists) and ``type``
(values of that type, or text that parses as it).

Actions per severity: ``reject`` makes the record one dead letter whose reason lists
every rule it broke (``format: email 'x' does not match ...; range: ...``); ``flag``
loads it with the ids of its flag-action rules in ``_quality_flags`` (a list of
strings, null when none; the column is always there); ``log`` only counts. A record
that breaks a reject rule is rejected, never flagged. ``StepResult.quality`` counts
rows and per-rule violations, with up to 5 examples each (``record``: the field's
value for single-field rules, ``{field: value}`` of its fields for required-fields).

``unique``: the first record to offer a value owns it for the run; any other record
with it is a duplicate. Owners live in the event log's database (shared by every
transformer process), so a batch transformed again gets the same answers. Records
rejected by the step's other rules do not claim values (they are not loaded). Without
a :class:`~etl_actors.transforms.base.StepContext` (``apply``) uniqueness is per batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import DeadLetter, StepResult, jsonable
from ..columns import as_array, as_text, convert_each, is_text, to_date, to_float, to_int, to_timestamp
from ..errors import SpecError, TerminalError, describe
from ..quality_store import Reference, claim_values, value_hash
from ..spec import Section
from .base import StepContext, Transform, common_step_fields

SEVERITIES = ("error", "warning", "info")
ACTIONS = ("reject", "flag", "log")
DEFAULT_ACTIONS = {"error": "reject", "warning": "flag", "info": "log"}
DATA_TYPES = ("string", "integer", "number", "boolean", "timestamp", "date")
FLAGS = "_quality_flags"
EXAMPLES = 5
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


# --- the step --------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidateStep(Transform):
    """Checks every row against ``rules``; rejects, flags or counts what breaks them."""

    id: str
    rules: tuple[Rule, ...]
    actions: tuple[tuple[str, str], ...] = tuple(DEFAULT_ACTIONS.items())
    required: bool = True

    type: ClassVar[str] = "validate"

    @classmethod
    def from_spec(cls, section, ctx) -> "ValidateStep":
        return cls._build(section, ctx, **common_step_fields(section))

    @classmethod
    def from_validation(cls, section: Section, ctx, step_id: str = "validation") -> "ValidateStep":
        """The step a top-level ``validation: {rules, actions}`` section declares."""
        return cls._build(section, ctx, id=step_id, required=True)

    @classmethod
    def _build(cls, section: Section, ctx, **common) -> "ValidateStep":
        actions = _actions(section)
        rules = _rules(section, ctx, actions)
        section.done()
        return cls(rules=rules, actions=tuple(actions.items()), **common)

    def open(self) -> None:
        for rule in self.rules:
            rule.open()

    def apply(self, table: pa.Table) -> StepResult:
        """Validate one table on its own: ``unique`` rules look within it only."""
        return self.apply_batch(table, None)

    def apply_batch(self, table: pa.Table, ctx: StepContext | None) -> StepResult:
        found = {rule.id: rule.find(table) for rule in self.rules if not isinstance(rule, Unique)}
        claimants = ~_any(table.num_rows, (found[r.id].mask for r in self.rules
                                           if r.action == "reject" and r.id in found))
        for rule in self.rules:
            if isinstance(rule, Unique):
                found[rule.id] = rule.find_unique(table, claimants, ctx, self.id)
        return _outcome(table, self.rules, found)

    def describe(self) -> dict:
        return {"type": self.type, "id": self.id, "rules": [rule.describe() for rule in self.rules],
                "actions": dict(self.actions)}


def _outcome(table: pa.Table, rules: tuple[Rule, ...], found: dict[str, Found]) -> StepResult:
    rows = table.num_rows
    rejected = _any(rows, (found[r.id].mask for r in rules if r.action == "reject"))
    kept = ~rejected
    flags = [r for r in rules if r.action == "flag"]
    matrix = np.column_stack([found[r.id].mask[kept] for r in flags]) if flags else np.zeros((int(kept.sum()), 0), bool)
    out, flagged = _with_flags(table.filter(pa.array(kept)), matrix, [r.id for r in flags])
    letters = tuple(DeadLetter(_reason(rules, found, int(i)), jsonable(row))
                    for i, row in zip(np.flatnonzero(rejected), table.filter(pa.array(rejected)).to_pylist()))
    return StepResult(out, letters, flagged=flagged, quality=_quality(rows, rules, found))


def _reason(rules: tuple[Rule, ...], found: dict[str, Found], i: int) -> str:
    return "; ".join(f"{r.id}: {r.message or found[r.id].why(i)}" for r in rules if found[r.id].mask[i])


def _with_flags(table: pa.Table, matrix: np.ndarray, ids: list[str]) -> tuple[pa.Table, int]:
    """``table`` with ``_quality_flags`` (row i: the ids whose column of ``matrix`` is
    true there), and how many of its rows that flags."""
    counts = matrix.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    names = pa.array(np.array(ids, dtype=object)[np.nonzero(matrix)[1]] if ids else [], pa.string())
    flags = pa.ListArray.from_arrays(offsets, names, mask=pa.array(counts == 0))
    if FLAGS in table.column_names:
        return table.set_column(table.column_names.index(FLAGS), FLAGS, _merged(table[FLAGS], flags)), \
            int((counts > 0).sum())
    return table.append_column(FLAGS, flags), int((counts > 0).sum())


def _merged(earlier: pa.ChunkedArray, flags: pa.Array) -> pa.Array:
    """An earlier validate step's flags, then this one's (a rule id once)."""
    rows = zip(earlier.to_pylist(), flags.to_pylist())
    return pa.array([list(dict.fromkeys([*(a or []), *(b or [])])) or None for a, b in rows], flags.type)


def _quality(rows: int, rules: tuple[Rule, ...], found: dict[str, Found]) -> dict:
    failed = _any(rows, (found[r.id].mask for r in rules if r.severity == "error"))
    warned = _any(rows, (found[r.id].mask for r in rules if r.severity == "warning"))
    return {"total": rows, "passed": int(rows - failed.sum()), "failed": int(failed.sum()),
            "warnings": int(warned.sum()), "rules": {r.id: _rule_report(r, found[r.id]) for r in rules}}


def _rule_report(rule: Rule, found: Found) -> dict:
    examples = [{"record": found.example(int(i)), "message": rule.message or found.why(int(i))}
                for i in np.flatnonzero(found.mask)[:EXAMPLES]]
    return {"violations": int(found.mask.sum()), "severity": rule.severity, "action": rule.action,
            "examples": examples}


# --- reading the spec ---------------------------------------------------------------------

def _actions(section: Section) -> dict[str, str]:
    given = section.section("actions", None)
    if given is None:
        return dict(DEFAULT_ACTIONS)
    actions = {severity: given.get(severity, default, types=str, choices=ACTIONS)
               for severity, default in DEFAULT_ACTIONS.items()}
    given.done()
    return actions


def _rules(section: Section, ctx, actions: dict[str, str]) -> tuple[Rule, ...]:
    sections = section.sections("rules")
    if not sections:
        raise SpecError(section.at("rules"), "expected at least one rule")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, rule_section in enumerate(sections):
        rule = _rule(rule_section, ctx, actions)
        if rule.id in seen:
            raise SpecError(rule_section.at("id"), f"duplicate rule id {rule.id!r} (also at [{seen[rule.id]}])")
        seen[rule.id] = i
        rules.append(rule)
    return tuple(rules)


def _rule(section: Section, ctx, actions: dict[str, str]) -> Rule:
    kind = section.get("type", types=str, choices=RULES)
    severity = section.get("severity", "error", types=str, choices=SEVERITIES)
    common = {"id": section.get("id", kind, types=str, check=lambda v: None if v.strip() else "expected a rule id, got ''"),
              "severity": severity, "action": actions[severity], "message": section.get("message", None, types=str)}
    rule = RULES[kind].from_spec(section, ctx, common)
    section.done()
    return rule


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


def _any(rows: int, masks) -> np.ndarray:
    result = np.zeros(rows, dtype=bool)
    for mask in masks:
        result |= mask
    return result


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
