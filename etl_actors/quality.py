"""Data-quality reports: the per-batch results of validation steps folded into a run's.

A report is ``{"total", "passed", "failed", "warnings", "rules": {rule id: {"violations",
"severity", "action", "examples"}}}`` (see :class:`etl_actors.batch.StepResult`). Folding
sums the counts and keeps the first :data:`EXAMPLES` examples of each rule, so a run's
report is the same whichever order its batches were folded in, up to which examples
are shown. Two validation steps in one chain are reported together; a rule id they
share is reported as ``<step id>.<rule id>``.
"""
from __future__ import annotations

from typing import Any, Mapping

EXAMPLES = 5
COUNTS = ("total", "passed", "failed", "warnings")


def empty() -> dict:
    return {"total": 0, "passed": 0, "failed": 0, "warnings": 0, "rules": {}}


def merge(into: Mapping[str, Any] | None, batch: Mapping[str, Any] | None) -> dict:
    """``into`` with ``batch`` folded in (a new dict; neither argument changes)."""
    result = {k: (into or {}).get(k, 0) for k in COUNTS}
    result["rules"] = {rule: dict(stats, examples=list(stats.get("examples", ())))
                       for rule, stats in ((into or {}).get("rules") or {}).items()}
    if not batch:
        return result
    for key in COUNTS:
        result[key] += int(batch.get(key, 0) or 0)
    for rule, stats in (batch.get("rules") or {}).items():
        held = result["rules"].setdefault(rule, {"violations": 0, "severity": stats.get("severity"),
                                                 "action": stats.get("action"), "examples": []})
        held["violations"] += int(stats.get("violations", 0) or 0)
        room = EXAMPLES - len(held["examples"])
        if room > 0:
            held["examples"].extend(list(stats.get("examples") or ())[:room])
    return result


def of_steps(reports: Mapping[str, Mapping[str, Any]]) -> dict | None:
    """One batch's report from ``{step id: that step's report}``: counts from the first
    validation step (the records it saw are the batch's), rules from all, a rule id
    two steps share named ``<step>.<rule>``."""
    if not reports:
        return None
    steps = list(reports.items())
    first = steps[0][1]
    result = {k: int(first.get(k, 0) or 0) for k in COUNTS}
    rules: dict = {}
    shared = _shared_ids(reports)
    for step, report in steps:
        for rule, stats in (report.get("rules") or {}).items():
            rules[f"{step}.{rule}" if rule in shared else rule] = stats
    if len(steps) > 1:   # a record failing in a later step failed the batch too
        result["failed"] = max(int(r.get("failed", 0) or 0) for _, r in steps)
        result["passed"] = result["total"] - result["failed"]
        result["warnings"] = max(int(r.get("warnings", 0) or 0) for _, r in steps)
    result["rules"] = rules
    return result


def _shared_ids(reports: Mapping[str, Mapping[str, Any]]) -> set[str]:
    seen: dict[str, int] = {}
    for report in reports.values():
        for rule in report.get("rules") or {}:
            seen[rule] = seen.get(rule, 0) + 1
    return {rule for rule, n in seen.items() if n > 1}
