"""What the API reads from the log on demand (runs, dead letters, alerts), and the
status page's one JSON document, scoped to the caller: ``customer`` None is an admin,
who sees everything; a customer sees its own requests and charges, and the runs, dead
letters, alerts and loads of its own requests' runs."""
from __future__ import annotations

from .. import events as ev
from ..eventlog import EventLog
from ..projections import runs as runs_projection
from .model import service_view
from .store import Store, newest

RECENT = 50


def runs(log: EventLog, pipeline: str, seen: set | None, limit: int) -> list[dict]:
    """The pipeline's run summaries, newest first (only runs ``seen`` when given)."""
    history = runs_projection.project(log.read(ev.pipeline_stream(pipeline)))
    chosen = [run for run in reversed(history.of(pipeline)) if seen is None or run.run_id in seen]
    return [runs_projection.summary(run) for run in chosen[:limit]]


def dead_letters(log: EventLog, pipeline: str, seen: set | None, limit: int, pending: bool = True) -> list[dict]:
    """The pipeline's dead letters in the order they were written (only of runs
    ``seen`` when given), without their Arrow schema."""
    if seen is None:
        letters = log.dead_letters(pipeline, limit=limit, pending=pending)
    else:
        letters = sorted((letter for run in seen for letter in log.dead_letters(pipeline, run, limit, pending)),
                         key=lambda letter: letter["id"])[:limit]
    return [{k: v for k, v in letter.items() if k != "schema"} for letter in letters]


def alerts(store: Store, customer: str | None) -> list[dict]:
    """Open and recent alerts, newest first: of every pipeline for an admin, of the
    pipelines ``customer``'s requests ran for a customer."""
    return store.alerts(None if customer is None else store.runs_of(customer))


def pending_letters(log: EventLog, store: Store, customer: str | None) -> dict[str, int]:
    """``{pipeline: pending dead letters}`` of the services' pipelines that have any."""
    if customer is None:
        counts = {p: log.dead_letter_count(p, pending=True) for p in store.service_pipelines()}
    else:
        counts = {p: sum(log.dead_letter_count(p, run, pending=True) for run in runs & store.rejecting_runs(p))
                  for p, runs in store.runs_of(customer).items()}
    return {pipeline: n for pipeline, n in sorted(counts.items()) if n}


def status(log: EventLog, store: Store, customer: str | None, admin: bool) -> dict:
    """``GET /status``: services, requests (every queued or running one and the
    ``RECENT`` newest), open and recent alerts, pending dead letters per pipeline, the
    ``RECENT`` newest charges, and records loaded per minute over the last 30 minutes."""
    return {"services": [service_view(s, admin) for s in store.service_list()],
            "requests": store.active_and_recent(customer, RECENT),
            "alerts": alerts(store, customer)[:RECENT],
            "deadLetters": pending_letters(log, store, customer),
            "charges": newest(store.charges(customer), "createdAt", RECENT),
            "recordsPerMinute": store.records_per_minute(None if customer is None else store.runs_of(customer))}
