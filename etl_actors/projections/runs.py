"""Run history: one record per run with the metrics users read.

``summary(run)`` gives the shape ``etl-actors run --json`` prints::

    {"pipeline", "runId", "status", "recordsExtracted", "recordsTransformed",
     "recordsLoaded", "recordsRejected", "bytesProcessed", "errors", "durationMs",
     "throughput", "errorRate", "watermark", "steps": [...], "error"?}
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable

from .. import events as ev
from .. import quality


@dataclass(frozen=True)
class Run:
    pipeline: str
    run_id: str
    status: str = "running"                  # running | success | failed
    started_at: float = 0.0
    last_commit_at: float | None = None
    finished_at: float | None = None
    extracted: int = 0
    transformed: int = 0
    loaded: int = 0
    rejected: int = 0
    filtered: int = 0
    bytes: int = 0
    errors: int = 0
    batches: int = 0
    steps: tuple = ()                        # ((id, recordsIn, recordsOut, durationMs, success), ...)
    watermark: Any = None
    error: str | None = None
    failed_partitions: tuple = ()            # partitions the source could not read
    flagged: int = 0                         # loaded with the quality rules they broke
    enriched: int = 0                        # given fields by an enrichment lookup
    quality: dict | None = None              # the validation steps' report, folded over the batches
    trigger: str = "manual"                  # manual | schedule | redrive | ...


@dataclass(frozen=True)
class Runs:
    """All runs of the event stream(s) folded so far, in start order; a state read
    back from a snapshot holds only some of them (see :meth:`to_dict`), and counts
    the others in ``dropped``."""

    by_id: dict = field(default_factory=dict)
    order: tuple = ()
    watermarks: dict = field(default_factory=dict)   # pipeline -> {partition: position}
    dropped: dict = field(default_factory=dict)      # pipeline -> runs folded but no longer held

    def count(self, pipeline: str) -> int:
        """How many runs of ``pipeline`` were folded, held or not."""
        return len(self.of(pipeline)) + self.dropped.get(pipeline, 0)

    def to_dict(self, keep: int | None = None) -> dict:
        """Plain types (msgpack), for a snapshot; with ``keep`` (1 or more), only the
        runs a running supervisor needs: every unfinished run and the last ``keep``
        finished ones, the others counted in ``dropped`` (so :meth:`count` stays right;
        a run gets no event once it ended, so the folds after it lose nothing)."""
        finished = [r for r in self.order if self.by_id[r].status != "running"]
        held = set(finished if keep is None else finished[max(0, len(finished) - keep):])
        order = [r for r in self.order if r in held or self.by_id[r].status == "running"]
        dropped = dict(self.dropped)
        for run_id in self.order:
            if run_id not in held and self.by_id[run_id].status != "running":
                pipeline = self.by_id[run_id].pipeline
                dropped[pipeline] = dropped.get(pipeline, 0) + 1
        return {"order": order, "runs": {r: _run_dict(self.by_id[r]) for r in order},
                "watermarks": self.watermarks, "dropped": dropped}

    @classmethod
    def from_dict(cls, data: dict) -> "Runs":
        """The state :meth:`to_dict` wrote."""
        return cls(by_id={r: _run_of(d) for r, d in data["runs"].items()}, order=tuple(data["order"]),
                   watermarks=data["watermarks"], dropped=data["dropped"])

    def last(self, pipeline: str | None = None) -> Run | None:
        for run_id in reversed(self.order):
            run = self.by_id[run_id]
            if pipeline is None or run.pipeline == pipeline:
                return run
        return None

    def of(self, pipeline: str) -> list[Run]:
        return [self.by_id[r] for r in self.order if self.by_id[r].pipeline == pipeline]

    def unfinished(self, pipeline: str) -> list[Run]:
        return [r for r in self.of(pipeline) if r.status == "running"]


_RUN_FIELDS = tuple(f.name for f in fields(Run))


def _run_dict(run: Run) -> dict:
    return {name: getattr(run, name) for name in _RUN_FIELDS}


def _run_of(data: dict) -> Run:
    run = Run(**{k: v for k, v in data.items() if k in _RUN_FIELDS})
    return replace(run, steps=tuple(tuple(step) for step in run.steps),
                   failed_partitions=tuple(run.failed_partitions))


def _merge_steps(steps: tuple, reported: list) -> tuple:
    merged = {s[0]: list(s) for s in steps}
    for step in reported:
        if step.get("partial"):
            continue
        row = merged.setdefault(step["id"], [step["id"], 0, 0, 0.0, True])
        row[1] += step["recordsIn"]
        row[2] += step["recordsOut"]
        row[3] += step["durationMs"]
        row[4] = row[4] and step["success"]
    return tuple(tuple(row) for row in merged.values())


def _on_run(run: Run, event: ev.Event) -> Run:
    if isinstance(event, ev.BatchExtracted):
        return replace(run, extracted=run.extracted + event.rows + event.rejected,
                       rejected=run.rejected + event.rejected, bytes=run.bytes + event.bytes)
    if isinstance(event, ev.BatchTransformed):
        return replace(run, transformed=run.transformed + event.rows_out, rejected=run.rejected + event.rejected,
                       filtered=run.filtered + event.filtered, steps=_merge_steps(run.steps, event.steps),
                       flagged=run.flagged + event.flagged, enriched=run.enriched + event.enriched,
                       quality=quality.merge(run.quality, event.quality) if event.quality else run.quality)
    if isinstance(event, ev.BatchLoaded):
        return replace(run, loaded=run.loaded + event.rows, rejected=run.rejected + event.failed,
                       batches=run.batches + 1, last_commit_at=event.at)
    if isinstance(event, ev.WatermarkCommitted):
        return replace(run, last_commit_at=event.at)
    if isinstance(event, ev.CheckpointCommitted):
        return replace(run, extracted=run.extracted + event.extracted, transformed=run.transformed + event.transformed,
                       filtered=run.filtered + event.filtered, rejected=run.rejected + event.rejected + event.late,
                       loaded=run.loaded + event.loaded, bytes=run.bytes + event.bytes,
                       batches=run.batches + 1, last_commit_at=event.at - event.idle_s)
    if isinstance(event, ev.RetryScheduled):
        return replace(run, errors=run.errors + 1)
    if isinstance(event, (ev.ChildRestarted, ev.StepSkipped)):
        return replace(run, errors=run.errors + 1)
    if isinstance(event, ev.PartitionFailed):
        return replace(run, errors=run.errors + 1, failed_partitions=run.failed_partitions + (event.partition,))
    if isinstance(event, ev.RunSucceeded):
        return replace(run, status="success", finished_at=event.at,
                       last_commit_at=run.last_commit_at or event.at)
    if isinstance(event, ev.RunFailed):
        return replace(run, status="failed", finished_at=event.at, error=event.error, errors=run.errors + 1)
    return run


def evolve(state: Runs, event: ev.Event | ev.RecordedEvent) -> Runs:
    event = getattr(event, "event", event)
    if isinstance(event, ev.WatermarkReset):
        return replace(state, watermarks={**state.watermarks, event.pipeline: {}})
    if isinstance(event, ev.RunStarted):
        run = Run(pipeline=event.pipeline, run_id=event.run_id, started_at=event.at,
                  watermark=state.watermarks.get(event.pipeline, {}), trigger=event.trigger)
        return replace(state, by_id={**state.by_id, event.run_id: run}, order=state.order + (event.run_id,))
    run_id = getattr(event, "run_id", None)
    run = state.by_id.get(run_id)
    if run is None:
        return state
    run = _on_run(run, event)
    if isinstance(event, (ev.WatermarkCommitted, ev.CheckpointCommitted)):
        moved = event.positions if isinstance(event, ev.CheckpointCommitted) else {event.partition: event.position}
        marks = {**state.watermarks.get(run.pipeline, {}), **moved}
        run = replace(run, watermark=marks)
        return replace(state, by_id={**state.by_id, run_id: run},
                       watermarks={**state.watermarks, run.pipeline: marks})
    return replace(state, by_id={**state.by_id, run_id: run})


def project(events: Iterable[ev.Event | ev.RecordedEvent]) -> Runs:
    state = Runs()
    for event in events:
        state = evolve(state, event)
    return state


def summary(run: Run, watermark_view=None) -> dict:
    """The run as users read it (camelCase keys)."""
    end = run.last_commit_at or run.finished_at or run.started_at
    duration_ms = max(0.0, (end - run.started_at) * 1000) if run.started_at else 0.0
    seconds = duration_ms / 1000
    out = {
        "pipeline": run.pipeline, "runId": run.run_id, "status": run.status,
        "recordsExtracted": run.extracted, "recordsTransformed": run.transformed,
        "recordsLoaded": run.loaded, "recordsRejected": run.rejected, "recordsFiltered": run.filtered,
        "bytesProcessed": run.bytes, "errors": run.errors, "durationMs": round(duration_ms, 1),
        "throughput": round(run.extracted / seconds, 1) if seconds > 0 else 0.0,
        "errorRate": round(run.rejected / run.extracted, 6) if run.extracted else 0.0,
        "watermark": watermark_view(run.watermark) if watermark_view else run.watermark,
        "steps": [{"id": s[0], "recordsIn": s[1], "recordsOut": s[2], "durationMs": round(s[3], 1),
                   "success": s[4]} for s in run.steps],
    }
    if run.flagged:
        out["recordsFlagged"] = run.flagged
    if run.enriched:
        out["recordsEnriched"] = run.enriched
    if run.trigger != "manual":
        out["trigger"] = run.trigger
    if run.quality:
        out["quality"] = {**{k: run.quality[k] for k in quality.COUNTS},
                          "rules": {rule: stats["violations"] for rule, stats in run.quality["rules"].items()}}
    if run.failed_partitions:
        out["partitionsFailed"] = list(run.failed_partitions)
    if run.error:
        out["error"] = run.error
    return out
