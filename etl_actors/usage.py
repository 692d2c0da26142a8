"""Usage: what a run used, recorded as ``UsageRecorded`` in its pipeline's stream for
billing (:mod:`etl_actors.billing`): a batch run once, just before its end
(:func:`run_usage`); a stream at the first checkpoint of each UTC clock hour and at its
end (:class:`UsageMeter`), its running seconds and events cut at clock hours
(:func:`split_hours`).

>>> split_hours(7190.0, 7210.0, [(7195.0, 3), (7205.0, 4)])
[{'start': 3600, 'seconds': 10.0, 'events': 3}, {'start': 7200, 'seconds': 10.0, 'events': 4}]
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable

from . import events as ev
from .projections import runs as runs_projection

HOUR = 3600


def run_usage(run: runs_projection.Run) -> ev.UsageRecorded:
    """A batch run's usage, the figures its summary reports (``bytesProcessed``,
    ``recordsLoaded``, ``recordsEnriched``); appended just before its end event."""
    summary = runs_projection.summary(run)
    return ev.UsageRecorded(pipeline=run.pipeline, run_id=run.run_id, bytes=summary["bytesProcessed"],
                            records=summary["recordsLoaded"], enriched=summary.get("recordsEnriched", 0),
                            final=True)


def split_hours(start: float, end: float, events_at: Iterable[tuple[float, int]] = ()) -> list[dict]:
    """The span from ``start`` to ``end`` (epoch seconds) cut at UTC clock hours: one
    ``{"start": the hour's start (int), "seconds": running seconds in it (to the ms),
    "events": the events of events_at taken in it}`` per hour touched, oldest first.

    The seconds add up to ``end - start`` (to the ms); ``events_at`` holds ``(time,
    count)``, a time outside the span counting in its first or last hour. An hour with
    neither seconds nor events (the span ends on its first instant) is left out."""
    if end < start:
        raise ValueError(f"a span ends at or after its start, got {start} to {end}")
    events: dict[int, int] = defaultdict(int)
    for at, count in events_at:
        events[hour_of(min(max(at, start), end))] += count
    hours = []
    for hour in range(hour_of(start), hour_of(end) + 1, HOUR):
        seconds = round(round(min(end, hour + HOUR), 3) - round(max(start, hour), 3), 3)
        if seconds > 0 or events.get(hour):
            hours.append({"start": hour, "seconds": seconds, "events": events.get(hour, 0)})
    return hours


@dataclass(frozen=True)
class UsageMeter:
    """What a stream run used since its previous ``UsageRecorded`` (or since it
    started, ``since``): the bytes, loaded records and extracted events of the
    checkpoints committed since, the events per clock hour of the checkpoint that
    counted them. Frozen: :meth:`add` gives the meter with one more checkpoint, kept
    only once that checkpoint is in the log."""

    pipeline: str
    run_id: str
    since: float
    bytes: int = 0
    records: int = 0
    events: tuple = ()            # ((clock hour start, events), ...), oldest first

    def add(self, at: float, events: int, bytes: int, records: int) -> "UsageMeter":
        """The meter with a checkpoint taken at ``at`` counted."""
        counted, hour = self.events, hour_of(at)
        if counted and counted[-1][0] == hour:
            counted = counted[:-1] + ((hour, counted[-1][1] + events),)
        elif events:
            counted = counted + ((hour, events),)
        return replace(self, bytes=self.bytes + bytes, records=self.records + records, events=counted)

    def hour_passed(self, now: float) -> bool:
        """Whether a UTC clock hour began since the meter started: time to record."""
        return hour_of(now) > hour_of(self.since)

    def recorded(self, now: float, final: bool = False) -> ev.UsageRecorded:
        """The usage from ``since`` to ``now``; its ``at`` is ``now``, the end of the
        span it covers."""
        return ev.UsageRecorded(pipeline=self.pipeline, run_id=self.run_id, bytes=self.bytes, records=self.records,
                                hours=split_hours(self.since, max(now, self.since), self.events), final=final,
                                at=now)

    def restarted(self, now: float) -> "UsageMeter":
        """A meter counting from ``now``, once the usage up to it is recorded."""
        return UsageMeter(self.pipeline, self.run_id, since=now)



def hour_of(at: float) -> int:
    """The start of the UTC clock hour holding ``at`` (epoch seconds)."""
    return int(at // HOUR) * HOUR
