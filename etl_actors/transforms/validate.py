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

What counts as a violation of each rule type is described in
:mod:`etl_actors.transforms.quality_rules`.

Actions per severity: ``reject`` makes the record one dead letter whose reason lists
every rule it broke (``format: email 'x' does not match ...; range: ...``); ``flag``
loads it with the ids of its flag-action rules in ``_quality_flags`` (a list of
strings, null when none; the column is always there); ``log`` only counts. A record
that breaks a reject rule is rejected, never flagged. ``StepResult.quality`` counts
rows and per-rule violations, with up to 5 examples each (``record``: the field's
value for single-field rules, ``{field: value}`` of its fields for required-fields).

``unique`` values are owned for the run (see the rules module); records rejected by
the step's other rules do not claim values (they are not loaded). Without a
:class:`~etl_actors.transforms.base.StepContext` (``apply``) uniqueness is per batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from ..batch import DeadLetter, StepResult, jsonable
from ..errors import SpecError
from ..spec import Section
from .base import StepContext, Transform, common_step_fields
from .quality_rules import RULES, Found, Rule, Unique

SEVERITIES = ("error", "warning", "info")
ACTIONS = ("reject", "flag", "log")
DEFAULT_ACTIONS = {"error": "reject", "warning": "flag", "info": "log"}
FLAGS = "_quality_flags"
EXAMPLES = 5


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


def _any(rows: int, masks) -> np.ndarray:
    result = np.zeros(rows, dtype=bool)
    for mask in masks:
        result |= mask
    return result


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
