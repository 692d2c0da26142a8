"""Projection snapshots: a projection's state recorded as an event
(:class:`~etl_actors.events.ProjectionSnapshot`), so a reader resumes from the newest
one and folds only the events after it; start-up time stays bounded as the log grows.

Two homes:

- a projection of the whole log (billing) keeps its snapshots in a stream of its own,
  ``projection:<name>``, each saying up to which global ``position`` it folded
  (:func:`save`, :func:`latest`);
- a pipeline's supervisor keeps its own (name ``supervisor``) in the pipeline's
  stream, each saying up to which ``version`` of that stream it folded, appended right
  after the events it covers once more than :data:`EVERY` were appended since the
  previous one (:class:`PipelineState`, :func:`save_in`, :func:`recover`).

Guarantee: :func:`recover` from the newest snapshot gives what a replay of the whole
stream gives for everything the supervisor and ``status`` read (version, lease epoch,
spec digest, watermarks, the last checkpoint, the alert state, the run count, every
unfinished run and the last :data:`KEEP_FINISHED` finished ones). Snapshots are a
cache: every projection fold ignores them, and a log without any (or with one this
version cannot read) is replayed from its start.

>>> save(log, "billing", position=1234, state={"charged": ["r1"]})       # doctest: +SKIP
>>> latest(log, "billing").position                                     # doctest: +SKIP
1234
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .. import alerts
from .. import events as ev
from ..errors import ConcurrencyError, EtlError
from . import runs as runs_projection
from . import streams as streams_projection
from . import watermarks as watermarks_projection

EVERY = 10_000             # events folded between snapshots
KEEP_FINISHED = 200        # finished runs a supervisor's snapshot keeps (beside every unfinished one)
SUPERVISOR = "supervisor"  # the name of a supervisor's snapshots in its pipeline's stream
FORMAT = 1                 # the shape of a supervisor's snapshot; one of another shape is not read
PAGE = 10_000              # events read at a time when folding a stream

_SNAPSHOT = ev.ProjectionSnapshot.__name__


# --- any projection -------------------------------------------------------------------

def stream_of(name: str) -> str:
    """The stream of the snapshots of ``name``, a projection of the whole log."""
    return f"projection:{name}"


def latest(log, name: str) -> ev.ProjectionSnapshot | None:
    """The newest snapshot of the whole-log projection ``name``, or None."""
    recorded = latest_in(log, stream_of(name), name)
    return recorded.event if recorded is not None else None


def save(log, name: str, position: int, state: dict) -> None:
    """Record ``state``, the projection ``name`` folded up to global ``position``
    (plain msgpack types, at most :data:`~etl_actors.events.MAX_PAYLOAD_BYTES`
    encoded). When another process saved one meanwhile, this one is dropped: readers
    take the newest, and either is right."""
    stream = stream_of(name)
    snapshot = ev.ProjectionSnapshot(name=name, position=position, state=state)
    try:
        log.append(stream, [snapshot], expected_version=log.version(stream))
    except ConcurrencyError:
        pass


def latest_in(log, stream: str, name: str) -> ev.RecordedEvent | None:
    """The newest snapshot named ``name`` in ``stream`` (as recorded: its version in
    the stream too), or None. An indexed walk back from the stream's end."""
    before = None
    while (recorded := log.last_of_type(stream, _SNAPSHOT, before)) is not None:
        if recorded.event.name == name:
            return recorded
        before = recorded.version
    return None


# --- a pipeline's supervisor ------------------------------------------------------------

@dataclass
class PipelineState:
    """What a supervisor folds from its pipeline's stream: the stream's ``version``,
    the newest lease ``epoch``, the ``digest`` of the spec last defined, the committed
    ``watermarks``, the ``runs``, a stream's last ``checkpoint`` and the ``alerts``;
    ``snapshot`` is the version of the newest snapshot in the stream (0: none yet)."""

    version: int = 0
    epoch: int = 0
    digest: str | None = None
    watermarks: dict = field(default_factory=dict)
    runs: runs_projection.Runs = field(default_factory=runs_projection.Runs)
    checkpoint: ev.CheckpointCommitted | None = None
    alerts: alerts.AlertState = field(default_factory=alerts.AlertState)
    snapshot: int = 0

    def to_dict(self) -> dict:
        """The state as plain types, its runs bounded (:data:`KEEP_FINISHED`), for a
        snapshot: well under the payload limit whatever the stream's age."""
        return {"format": FORMAT, "epoch": self.epoch, "digest": self.digest, "watermarks": self.watermarks,
                "runs": self.runs.to_dict(keep=KEEP_FINISHED),
                "checkpoint": streams_projection.to_dict(self.checkpoint), "alerts": self.alerts.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, version: int, snapshot: int) -> "PipelineState":
        """The state :meth:`to_dict` wrote for ``version``, read from the snapshot at
        version ``snapshot``; ValueError when it has another shape than this version
        writes."""
        if data.get("format") != FORMAT:
            raise ValueError(f"a supervisor snapshot of format {data.get('format')!r}, not {FORMAT}")
        return cls(version=version, epoch=data["epoch"], digest=data["digest"], watermarks=data["watermarks"],
                   runs=runs_projection.Runs.from_dict(data["runs"]),
                   checkpoint=streams_projection.from_dict(data["checkpoint"]),
                   alerts=alerts.AlertState.from_dict(data["alerts"]), snapshot=snapshot)


def evolve(state: PipelineState, recorded: ev.RecordedEvent,
           options: alerts.AlertOptions = alerts.AlertOptions()) -> PipelineState:
    """Fold one recorded event of the pipeline's stream into ``state`` (in place, as
    :func:`etl_actors.alerts.evolve` does), alerts with ``options``."""
    event = recorded.event
    state.version = recorded.version
    if isinstance(event, ev.LeaseAcquired):
        state.epoch = max(state.epoch, event.epoch)
    elif isinstance(event, ev.PipelineDefined):
        state.digest = event.digest
    elif isinstance(event, ev.ProjectionSnapshot):
        if event.name == SUPERVISOR and event.state.get("format") == FORMAT:
            state.snapshot = recorded.version
        return state
    state.watermarks = watermarks_projection.evolve(state.watermarks, event)
    state.runs = runs_projection.evolve(state.runs, event)
    state.checkpoint = streams_projection.evolve(state.checkpoint, event)
    state.alerts = alerts.evolve(state.alerts, event, options)
    return state


def recover(log, pipeline: str, options: alerts.AlertOptions = alerts.AlertOptions(),
            resume: bool = True) -> PipelineState:
    """The state of ``pipeline`` after every event of its stream: the newest
    supervisor snapshot and the events after it, or (``resume=False``, or no snapshot
    this version can read) a replay from the start. Alerts are folded with ``options``
    (their window); a caller that shows no alerts may leave the default."""
    stream = ev.pipeline_stream(pipeline)
    state = (_resumed(latest_in(log, stream, SUPERVISOR)) if resume else None) or PipelineState()
    for recorded in _after(log, stream, state.version):
        evolve(state, recorded, options)
    return state


def save_in(log, stream: str, state: PipelineState, fence: tuple[str, int] | None = None) -> int:
    """Append the supervisor's snapshot of ``state`` to ``stream`` right after the
    events it covers (at ``state.version``, fenced by ``fence`` like the supervisor's
    own appends) and return the stream's version. A snapshot that cannot be written
    (fenced out, too large, the log busy) is skipped and ``state.version`` returned:
    readers resume from the previous one."""
    snapshot = ev.ProjectionSnapshot(name=SUPERVISOR, version=state.version, state=state.to_dict())
    try:
        return log.append(stream, [snapshot], expected_version=state.version, fence=fence)
    except (EtlError, ValueError, TypeError):
        return state.version


def _resumed(recorded: ev.RecordedEvent | None) -> PipelineState | None:
    if recorded is None:
        return None
    try:
        return PipelineState.from_dict(recorded.event.state, recorded.event.version, recorded.version)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None     # written by another version: replay from the start


def _after(log, stream: str, version: int) -> Iterator[ev.RecordedEvent]:
    """The events of ``stream`` after ``version``, read a page at a time."""
    while True:
        page = log.read(stream, version + 1, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        version = page[-1].version
