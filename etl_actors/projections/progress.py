"""Progress of the current run: phase, records and bytes in and out, percent of the
known total, throughput. Fed to the CLI's progress bar from the live log."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .. import events as ev


@dataclass(frozen=True)
class Progress:
    run_id: str | None = None
    phase: str = "idle"
    started_at: float = 0.0
    updated_at: float = 0.0
    total_bytes: int | None = None
    bytes_in: int = 0
    records_in: int = 0
    records_out: int = 0
    batches: int = 0
    status: str = "idle"
    rate: float | None = None        # streams: events/s over the last checkpoint interval
    lag: int | None = None           # streams: messages behind the end of the topic(s)

    @property
    def percent(self) -> float | None:
        if self.status == "success":
            return 100.0
        if not self.total_bytes:
            return None
        return min(100.0, 100.0 * self.bytes_in / self.total_bytes)

    @property
    def throughput(self) -> float:
        seconds = self.updated_at - self.started_at
        return self.records_in / seconds if seconds > 0 else 0.0


def evolve(state: Progress, event: ev.Event | ev.RecordedEvent) -> Progress:
    event = getattr(event, "event", event)
    if isinstance(event, ev.RunStarted):
        return Progress(run_id=event.run_id, phase="extract", started_at=event.at, updated_at=event.at,
                        total_bytes=event.total_bytes, status="running")
    if getattr(event, "run_id", None) != state.run_id:
        return state
    if isinstance(event, ev.PhaseStarted):
        return replace(state, phase=event.phase, updated_at=event.at)
    if isinstance(event, ev.BatchExtracted):
        return replace(state, bytes_in=state.bytes_in + event.bytes, updated_at=event.at,
                       records_in=state.records_in + event.rows + event.rejected)
    if isinstance(event, ev.CheckpointCommitted):
        return replace(state, phase="stream", bytes_in=state.bytes_in + event.bytes, updated_at=event.at,
                       records_in=state.records_in + event.extracted, records_out=state.records_out + event.loaded,
                       batches=state.batches + 1, rate=event.rate, lag=sum(event.lag.values()))
    if isinstance(event, ev.BatchLoaded):
        return replace(state, records_out=state.records_out + event.rows, batches=state.batches + 1,
                       updated_at=event.at)
    if isinstance(event, ev.RunSucceeded):
        return replace(state, phase="done", status="success", updated_at=event.at)
    if isinstance(event, ev.RunFailed):
        return replace(state, phase="done", status="failed", updated_at=event.at)
    return state
