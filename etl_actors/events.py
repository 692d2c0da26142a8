"""Event types, their codec and upcasting.

An event is a frozen dataclass named as a past-tense fact. Its payload is encoded with
msgpack (plain types only, never pickle) together with its ``type`` name and ``schema``
number. When an event's shape changes, bump ``schema`` and register an upcaster that
turns the old payload dict into the new one; old rows are upcast as they are read.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import msgpack

from .redaction import redact_values

MAX_PAYLOAD_BYTES = 4 * 2**20

EVENT_TYPES: dict[str, type["Event"]] = {}
_UPCASTERS: dict[tuple[str, int], Callable[[dict], dict]] = {}


def now() -> float:
    return time.time()


def pipeline_stream(pipeline: str) -> str:
    """The event stream a pipeline's supervisor writes."""
    return f"pipeline:{pipeline}"


@dataclass(frozen=True)
class Event:
    """Base of every event. ``at`` is when the fact happened (epoch seconds), so
    projections are pure functions of the log."""

    schema: ClassVar[int] = 1
    texts: ClassVar[tuple[str, ...]] = ()     # fields of free text (messages): redacted before appending
    at: float = field(default_factory=now, kw_only=True)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        EVENT_TYPES[cls.__name__] = cls

    @property
    def type(self) -> str:
        return type(self).__name__


def redacted(event: Event) -> Event:
    """``event`` with every secret form hidden in its free-text fields (error messages
    can quote a URL or a driver's words)."""
    if not event.texts:
        return event
    return dataclasses.replace(event, **{name: redact_values(getattr(event, name)) for name in event.texts})


def upcaster(type_name: str, from_schema: int):
    """Register ``fn(payload) -> payload`` lifting ``type_name`` from ``from_schema`` by one."""
    def register(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _UPCASTERS[(type_name, from_schema)] = fn
        return fn
    return register


def encode(event: Event) -> tuple[str, int, bytes]:
    """``(type, schema, msgpack payload)`` of ``event``; tuples come back as lists."""
    payload = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    data = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{event.type} payload is {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    return event.type, event.schema, data


def decode(type_name: str, schema: int, data: bytes) -> Event:
    """The event stored as ``(type_name, schema, data)``, upcast to its class's current
    schema. A type this version does not know becomes an :class:`UnknownEvent`; fields
    the class no longer has are dropped."""
    payload = msgpack.unpackb(data, raw=False, strict_map_key=False,
                              max_bin_len=MAX_PAYLOAD_BYTES, max_str_len=MAX_PAYLOAD_BYTES)
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        return _unknown(type_name, payload)
    payload = _upcast(type_name, schema, cls.schema, payload)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in payload.items() if k in names})


def _unknown(type_name: str, payload: dict) -> "UnknownEvent":
    """Keep an event of a type this version does not know, with when it happened."""
    at = payload.get("at")
    if isinstance(at, (int, float)):
        return UnknownEvent(name=type_name, payload=payload, at=at)
    return UnknownEvent(name=type_name, payload=payload)


def _upcast(type_name: str, schema: int, target: int, payload: dict) -> dict:
    """Lift ``payload`` one schema at a time up to ``target``."""
    while schema < target:
        step = _UPCASTERS.get((type_name, schema))
        if step is None:
            raise LookupError(f"no upcaster registered for {type_name} from schema {schema} to {schema + 1}")
        payload = step(payload)
        schema += 1
    return payload


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: its global ``position`` and its ``version`` in ``stream``."""

    position: int
    stream: str
    version: int
    event: Event
    recorded_at: float

    @property
    def type(self) -> str:
        return self.event.type


# --- the events ---------------------------------------------------------------------

@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event of a type this version does not know; kept, not dropped."""
    name: str = ""
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineDefined(Event):
    """A spec (by digest) was registered for the pipeline; no secrets (URLs redacted)."""
    texts: ClassVar[tuple[str, ...]] = ("source", "destination", "steps", "sinks")
    pipeline: str
    digest: str
    source: dict
    destination: dict
    steps: list
    plan: list = field(default_factory=list)      # the stages a run starts (runtime.graph.plan)
    sinks: list = field(default_factory=list)     # every destination


@dataclass(frozen=True)
class LeaseAcquired(Event):
    """A run became the single writer of the pipeline's stream with ``epoch``;
    ``previous`` held the lease before and ``reason`` says why it could be taken over
    (both empty when the lease was free)."""
    pipeline: str
    epoch: int
    owner: str
    run_id: str = ""
    previous: str = ""
    reason: str = ""


@dataclass(frozen=True)
class RunRequested(Event):
    pipeline: str
    run_id: str
    trigger: str = "manual"
    spec: str = ""          # the spec file the run was made from, when it came from one


@dataclass(frozen=True)
class RunStarted(Event):
    """A run began; ``watermark`` is the committed position it resumes from."""
    pipeline: str
    run_id: str
    epoch: int
    watermark: dict
    partitions: list
    total_bytes: int | None = None
    trigger: str = "manual"


@dataclass(frozen=True)
class PhaseStarted(Event):
    run_id: str
    phase: str


@dataclass(frozen=True)
class BatchExtracted(Event):
    run_id: str
    batch_id: str
    partition: str
    rows: int
    bytes: int
    rejected: int = 0


@dataclass(frozen=True)
class BatchTransformed(Event):
    """``steps`` holds one ``{id, recordsIn, recordsOut, durationMs, success, error?}``
    per step."""
    texts: ClassVar[tuple[str, ...]] = ("steps", "quality")
    run_id: str
    batch_id: str
    rows_in: int
    rows_out: int
    rejected: int
    filtered: int
    steps: list
    flagged: int = 0             # rows kept and loaded with the quality rules they broke
    enriched: int = 0            # rows a lookup gave fields to
    quality: dict = field(default_factory=dict)   # the validation steps' report of this batch (see QualityReported)


@dataclass(frozen=True)
class RecordsRejected(Event):
    """Rows went to the dead-letter store; the rows are there, the count is here."""
    texts: ClassVar[tuple[str, ...]] = ("reason",)
    run_id: str
    batch_id: str
    stage: str
    count: int
    reason: str


@dataclass(frozen=True)
class BatchLoaded(Event):
    run_id: str
    batch_id: str
    partition: str
    position: Any
    rows: int
    failed: int = 0
    bytes: int = 0
    duplicate: bool = False


@dataclass(frozen=True)
class WatermarkCommitted(Event):
    """Every batch of ``partition`` up to ``position`` is in the sink: resume after it.
    ``done`` marks a partition finished for good (a file read to its end)."""
    run_id: str
    partition: str
    position: Any
    done: bool = False


@dataclass(frozen=True)
class WatermarkReset(Event):
    """Every committed position was dropped: the next run reads the source from the
    start (sinks stay idempotent by batch id)."""
    texts: ClassVar[tuple[str, ...]] = ("reason",)
    pipeline: str
    reason: str = ""


@dataclass(frozen=True)
class ChildRestarted(Event):
    texts: ClassVar[tuple[str, ...]] = ("reason",)
    run_id: str
    child: str
    reason: str
    attempt: int


@dataclass(frozen=True)
class StepSkipped(Event):
    """A ``required: false`` step failed on a batch; the batch went on without it."""
    texts: ClassVar[tuple[str, ...]] = ("error",)
    run_id: str
    batch_id: str
    step: str
    error: str


@dataclass(frozen=True)
class PartitionFailed(Event):
    """The source could not read ``partition`` (a file that is not what it says): its
    position stays where it was. ``skipped``: it went to the dead-letter store and the
    run went on (``errorHandling: continue``); else the run fails at its end."""
    texts: ClassVar[tuple[str, ...]] = ("error",)
    run_id: str
    partition: str
    error: str
    skipped: bool = False


@dataclass(frozen=True)
class RunSucceeded(Event):
    run_id: str
    metrics: dict


@dataclass(frozen=True)
class RunFailed(Event):
    texts: ClassVar[tuple[str, ...]] = ("error", "metrics")
    run_id: str
    error: str
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointCommitted(Event):
    """A stream's consistent cut: every effect of the source up to ``positions``
    (``{"topic:partition": next offset}``) is in every sink, and the open windows at
    that cut are stored as snapshot ``seq`` (``shards`` parts, beside the log).

    ``max_seen`` holds each partition's greatest event time (ms) up to its position,
    ``watermark`` the stream's watermark and ``emitted`` the one up to which windows
    were emitted (events for windows before it are late). The counts are those since
    the previous checkpoint of the run; ``idle_s`` is a final ``--until-idle`` wait,
    which the run's duration leaves out."""
    run_id: str
    seq: int
    positions: dict
    max_seen: dict = field(default_factory=dict)
    watermark: int | None = None
    emitted: int | None = None
    windows_open: int = 0
    shards: int = 0
    extracted: int = 0
    transformed: int = 0
    filtered: int = 0
    rejected: int = 0
    loaded: int = 0
    late: int = 0
    windows: int = 0
    bytes: int = 0
    lag: dict = field(default_factory=dict)
    rate: float = 0.0
    idle_s: float = 0.0


@dataclass(frozen=True)
class RetryScheduled(Event):
    """A transient error (a broker or database that went away, a busy service): the
    work is tried again after ``delay`` seconds, attempt ``attempt`` of ``limit``."""
    texts: ClassVar[tuple[str, ...]] = ("error",)
    run_id: str
    stage: str
    error: str
    attempt: int
    limit: int
    delay: float


@dataclass(frozen=True)
class QualityReported(Event):
    """A run's data-quality report, folded from its batches' validation results:
    ``total`` records validated, ``passed`` (breaking no error-severity rule),
    ``failed`` (breaking at least one), ``warnings`` (records breaking a
    warning-severity rule), and per rule ``{violations, severity, action, examples}``
    (at most 5 examples)."""
    texts: ClassVar[tuple[str, ...]] = ("rules",)
    run_id: str
    total: int
    passed: int
    failed: int
    warnings: int
    rules: dict


@dataclass(frozen=True)
class LettersRedriven(Event):
    """Dead letters ``letter_ids`` were sent through the pipeline again by run
    ``run_id`` (trigger ``redrive``) in batch ``batch_id`` and were loaded, filtered,
    or failed again (then a new letter holds the new reason): they left the store."""
    run_id: str
    batch_id: str
    stage: str
    letter_ids: list


@dataclass(frozen=True)
class AlertRaised(Event):
    """More than ``threshold`` failures (rejected records, failed pages, failed runs,
    poison messages) in the last ``window_s`` seconds: once per episode."""
    texts: ClassVar[tuple[str, ...]] = ("message",)
    pipeline: str
    alert_id: str
    count: int
    threshold: int
    window_s: float
    message: str
    severity: str = "high"


@dataclass(frozen=True)
class AlertResolved(Event):
    """The failures of the window fell below the threshold: the episode is over."""
    pipeline: str
    alert_id: str
    count: int


@dataclass(frozen=True)
class AlertDelivered(Event):
    """What the alert webhook answered (``status`` None when it was not reached)."""
    texts: ClassVar[tuple[str, ...]] = ("error", "webhook")
    alert_id: str
    kind: str
    webhook: str
    status: int | None
    attempts: int
    error: str = ""


# --- usage, billing and projections (issue 8) -----------------------------------------

@dataclass(frozen=True)
class UsageRecorded(Event):
    """What a run used, for billing, in the pipeline's stream: ``bytes`` read from the
    source, ``records`` processed (loaded into the sinks), ``enriched`` records (rows a
    lookup gave fields to) since the run's previous ``UsageRecorded``; for a stream also
    ``hours``: ``[{"start": epoch s of the clock hour (UTC), "seconds", "events"}]``
    covering the same span. A batch run appends one, just before its end event
    (``final``); a stream appends one at least every clock hour and one at its end."""
    pipeline: str
    run_id: str
    bytes: int = 0
    records: int = 0
    enriched: int = 0
    hours: list = field(default_factory=list)
    final: bool = True


@dataclass(frozen=True)
class ProjectionSnapshot(Event):
    """The state of projection ``name`` folded from its stream up to ``version`` (or,
    for a projection of the whole log, up to global ``position``): a reader resumes
    from the newest snapshot instead of replaying everything before it."""
    name: str
    version: int = 0
    position: int = 0
    state: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceCreated(Event):
    """A service (stream ``service:<service_id>``): a pipeline spec sold with a pricing
    model. ``spec`` is the spec as given (secrets only as ``${ENV}`` references), its
    ``name`` the service's pipeline name; ``title`` the seed's display name.
    ``customer_id`` is who the service's scheduled runs are charged to ('' = nobody)."""
    service_id: str
    title: str
    spec: dict
    kind: str = "pipeline"           # pipeline | stream | batch | validation
    customer_id: str = ""


@dataclass(frozen=True)
class ServiceRequested(Event):
    """A request for one run of a service (stream ``request:<request_id>``, version 1)."""
    request_id: str
    service_id: str
    customer_id: str = ""
    inputs: dict = field(default_factory=dict)
    trigger: str = "api"             # api | schedule


@dataclass(frozen=True)
class RequestStarted(Event):
    """The request's run began (as ``run_id`` of pipeline ``pipeline``)."""
    request_id: str
    run_id: str
    pipeline: str


@dataclass(frozen=True)
class RequestFinished(Event):
    """The request's result as the seed delivers it: ``status`` success | failed and
    ``outputs`` ``{success, recordsProcessed, bytesProcessed, duration, steps}``."""
    texts: ClassVar[tuple[str, ...]] = ("error",)
    request_id: str
    run_id: str
    status: str
    outputs: dict = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class PaymentCharged(Event):
    """One charge (stream ``charge:<charge_id>``, version 1, so a charge is recorded
    once however often the billing projection replays): ``charge_id`` is the request id,
    or ``<request id>@<clock hour ISO>`` for a stream's hour. ``amount`` is the exact
    Decimal as text; invoices round lines half-up to cents."""
    charge_id: str
    request_id: str
    service_id: str
    customer_id: str
    amount: str
    currency: str = "USD"
    description: str = ""
    usage: dict = field(default_factory=dict)
    period: str = ""                 # YYYY-MM (UTC) the charge is invoiced in


@dataclass(frozen=True)
class ApiKeyCreated(Event):
    """An API key (stream ``key:<key_id>``): only its SHA-256 ``digest`` is kept;
    ``key_id`` is its public prefix. ``role`` admin | customer."""
    key_id: str
    digest: str
    role: str
    customer_id: str = ""


@dataclass(frozen=True)
class ApiKeyRevoked(Event):
    key_id: str


@dataclass(frozen=True)
class ScheduleFired(Event):
    """A schedule's fire time came (stream ``schedule:<pipeline>``): ``run_id`` of the
    pipeline's run it started, or ``request_id`` of a service's request."""
    pipeline: str
    fire_time: float
    run_id: str = ""
    request_id: str = ""
    catch_up: bool = False           # fired late, after downtime


@dataclass(frozen=True)
class ScheduleSkipped(Event):
    """A fire time that started nothing: ``reason`` says why (a run in progress,
    missed during downtime and not caught up)."""
    texts: ClassVar[tuple[str, ...]] = ("reason",)
    pipeline: str
    fire_time: float
    reason: str


@dataclass(frozen=True)
class ScheduleArmed(Event):
    """The scheduler took the schedule on at ``at`` (its first ``last_fired``), from
    ``spec`` (a file) or a service; ``ScheduleDisarmed`` when it is stopped."""
    pipeline: str
    expression: str
    timezone: str = "UTC"
    spec: str = ""
    service_id: str = ""
    catch_up: str = "latest"         # none | latest | all: which fire times missed while down run


@dataclass(frozen=True)
class ScheduleDisarmed(Event):
    pipeline: str
