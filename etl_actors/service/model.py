"""Services and requests as folds of their streams, and the views the API answers with.

A service is one :class:`~etl_actors.events.ServiceCreated` (stream
``service:<id>``). A request is the stream ``request:<id>``: ``ServiceRequested``
(version 1), then one ``RequestStarted`` per run it was given (a claim: the run it
names starts when the pipeline is free; a request whose server died mid-run is given a
new run), then ``RequestFinished``. Its status:

- ``queued`` until the run it was last given has started (``RunStarted``),
- ``running`` from then until ``RequestFinished``,
- ``success`` | ``failed`` as ``RequestFinished`` says.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Iterable

from .. import events as ev
from ..projections.progress import Progress
from ..projections.progress import evolve as evolve_progress
from .specs import input_names

SERVICE_PREFIX = "service:"
REQUEST_PREFIX = "request:"
STATUSES = ("queued", "running", "success", "failed")


def service_stream(service_id: str) -> str:
    return f"{SERVICE_PREFIX}{service_id}"


def request_stream(request_id: str) -> str:
    return f"{REQUEST_PREFIX}{request_id}"


@dataclass(frozen=True)
class Service:
    service_id: str
    title: str
    spec: dict
    kind: str
    customer_id: str
    created_at: float

    @property
    def pipeline(self) -> str:
        return self.spec["name"]

    @property
    def priced(self) -> bool:
        return bool(self.spec.get("pricing"))

    @classmethod
    def of(cls, event: ev.ServiceCreated) -> "Service":
        return cls(event.service_id, event.title, event.spec, event.kind, event.customer_id, event.at)


@dataclass(frozen=True)
class Request:
    request_id: str
    service_id: str
    customer_id: str
    inputs: dict
    trigger: str
    created_at: float
    version: int = 1                 # of its stream, as folded
    run_id: str | None = None        # the run it was last given
    pipeline: str | None = None
    runs: tuple = ()                 # every run it was given, in order
    status: str | None = None        # success | failed once finished
    outputs: dict | None = None
    error: str | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None


def evolve_request(state: Request | None, recorded: ev.RecordedEvent) -> Request | None:
    """The request after one event of its stream."""
    event = recorded.event
    if isinstance(event, ev.ServiceRequested):
        return Request(event.request_id, event.service_id, event.customer_id, dict(event.inputs), event.trigger,
                       event.at, version=recorded.version)
    if state is None:
        return None
    state = replace(state, version=recorded.version)
    if isinstance(event, ev.RequestStarted):
        return replace(state, run_id=event.run_id, pipeline=event.pipeline, runs=state.runs + (event.run_id,))
    if isinstance(event, ev.RequestFinished):
        return replace(state, status=event.status, outputs=dict(event.outputs), error=event.error or None,
                       finished_at=event.at)
    return state


def project_request(recorded: Iterable[ev.RecordedEvent]) -> Request | None:
    state = None
    for item in recorded:
        state = evolve_request(state, item)
    return state


def run_progress(log, request: Request) -> Progress | None:
    """The progress of the request's (last) run, read from its pipeline's stream; None
    before it was given one."""
    if request.pipeline is None:
        return None
    progress = Progress()
    for recorded in log.read(ev.pipeline_stream(request.pipeline)):
        if getattr(recorded.event, "run_id", None) == request.run_id:
            progress = evolve_progress(progress, recorded)
    return progress


def status_of(request: Request, progress: Progress | None) -> str:
    if request.finished:
        return request.status
    started = progress is not None and request.run_id is not None and progress.run_id == request.run_id
    return "running" if started else "queued"


def request_view(request: Request, progress: Progress | None, charge: dict | None) -> dict:
    """``GET /requests/{id}``: the request as its customer follows it."""
    status = status_of(request, progress)
    live = progress if status != "queued" else None
    return {"requestId": request.request_id, "serviceId": request.service_id, "customerId": request.customer_id,
            "status": status, "progress": _progress_view(live, status),
            "outputs": request.outputs if request.finished else None,
            "error": request.error, "charge": charge, "createdAt": iso(request.created_at),
            "startedAt": iso(live.started_at) if live is not None else None,
            "finishedAt": iso(request.finished_at), "trigger": request.trigger}


def _progress_view(progress: Progress | None, status: str) -> dict:
    if progress is None:
        return {"phase": status if status != "running" else "starting", "records": 0, "bytes": 0,
                "percent": 0.0 if status == "queued" else None}
    percent = progress.percent
    return {"phase": progress.phase, "records": progress.records_out, "bytes": progress.bytes_in,
            "percent": round(percent, 1) if percent is not None else None}


def service_view(service: Service, admin: bool) -> dict:
    """``GET /services/{id}``; the spec itself (connections, paths) only for admins."""
    metadata = service.spec.get("metadata") or {}
    view = {"id": service.service_id, "name": service.title, "type": metadata.get("type"),
            "subtype": metadata.get("subtype"), "kind": service.kind, "pipeline": service.pipeline,
            "customerId": service.customer_id, "schedule": service.spec.get("schedule"),
            "pricing": service.spec.get("pricing"), "inputs": input_names(service.spec),
            "createdAt": iso(service.created_at)}
    if admin:
        view["spec"] = service.spec
    return view


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (None stays None)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")

