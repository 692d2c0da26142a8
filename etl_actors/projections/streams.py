"""Where a stream stands: its last checkpoint (positions, watermark, open windows,
lag, events per second), as ``status`` shows it and a restarted run resumes from it.

State: the last :class:`~etl_actors.events.CheckpointCommitted` of the pipeline (or
None); ``WatermarkReset`` forgets it.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Iterable

from ..events import CheckpointCommitted, Event, RecordedEvent, WatermarkReset


def evolve(state: CheckpointCommitted | None, event: Event | RecordedEvent) -> CheckpointCommitted | None:
    event = getattr(event, "event", event)
    if isinstance(event, CheckpointCommitted):
        return event
    if isinstance(event, WatermarkReset):
        return None
    return state


def project(events: Iterable[Event | RecordedEvent]) -> CheckpointCommitted | None:
    state = None
    for event in events:
        state = evolve(state, event)
    return state


def to_dict(state: CheckpointCommitted | None) -> dict | None:
    """The state as plain types (the checkpoint's fields), for a snapshot."""
    return None if state is None else {f.name: getattr(state, f.name) for f in fields(state)}


def from_dict(data: dict | None) -> CheckpointCommitted | None:
    """The state :func:`to_dict` wrote."""
    if data is None:
        return None
    names = {f.name for f in fields(CheckpointCommitted)}
    return CheckpointCommitted(**{k: v for k, v in data.items() if k in names})


def view(state: CheckpointCommitted | None) -> dict | None:
    """The stream's position as users read it in ``status``."""
    if state is None:
        return None
    return {"watermark": state.watermark, "emittedUpTo": state.emitted, "openWindows": state.windows_open,
            "eventsPerSecond": round(state.rate, 1), "lag": dict(state.lag), "positions": dict(state.positions),
            "checkpoint": state.seq, "at": state.at}
