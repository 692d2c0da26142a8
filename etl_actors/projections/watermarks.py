"""Where to resume: the committed position of every partition of one pipeline.

State: ``{partition: position}``. ``WatermarkCommitted`` (a stream's
``CheckpointCommitted``, for all its partitions at once) moves it, and a commit is
appended only after the sink holds every batch up to that position;
``WatermarkReset`` empties it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..events import CheckpointCommitted, Event, RecordedEvent, WatermarkCommitted, WatermarkReset


def evolve(state: Mapping[str, Any], event: Event | RecordedEvent) -> Mapping[str, Any]:
    event = getattr(event, "event", event)
    if isinstance(event, WatermarkCommitted):
        return {**state, event.partition: event.position}
    if isinstance(event, CheckpointCommitted):
        return {**state, **event.positions}
    if isinstance(event, WatermarkReset):
        return {}
    return state


def project(events: Iterable[Event | RecordedEvent]) -> dict[str, Any]:
    state: Mapping[str, Any] = {}
    for event in events:
        state = evolve(state, event)
    return dict(state)
