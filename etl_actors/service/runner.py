"""Services and requests: create them, and run a request as a run of its pipeline.

A request is *claimed* for a run by appending ``RequestStarted(run_id)`` at the
version its stream had when the runner decided to run it: of two processes deciding
at once (the server and the scheduler, or a restarted server) exactly one claims it,
and the other leaves it alone. The claimed run starts as soon as the pipeline is free
(a live run of it elsewhere, :class:`~etl_actors.errors.LeaseHeld`, is waited for; the
request stays ``queued``), then ``RequestFinished`` records its outputs as the seed
delivers them and the billing projection settles the charge.

Guarantees: a request is run by one process at a time, and its pipeline never runs
twice at once (the pipeline's lease); a request whose server died before it finished
is claimed again when a server starts on the log, as a new run that resumes from the
pipeline's committed watermark (both runs stay in its stream); a run that had
succeeded is not run again, its result is recorded.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from .. import events as ev
from ..errors import ConcurrencyError, LeaseHeld, SpecError, SpecErrors, UsageError, first_line
from ..eventlog import EventLog
from ..pipeline import Pipeline
from ..projections import runs as runs_projection
from ..spec import PipelineSpec, parse
from .model import Request, Service, project_request, request_stream, request_view, run_progress, service_stream
from .specs import apply_inputs, check_inputs, placeholder_paths, service_spec

logger = logging.getLogger(__name__)

POLL_S = 0.5            # between tries of a pipeline another run holds
IDLE_CLOSE_S = 10.0     # a service's supervisor is kept warm this long after its last request


# --- services and requests --------------------------------------------------------------

def create_service(log: EventLog, body: dict, customer_id: str = "") -> str:
    """Validate a ``$.Service.create`` body (see :mod:`.specs`) as a spec, relative
    paths read from this process's folder, and record the service; return its id.
    Values holding ``${inputs.NAME}`` are checked again with each request's inputs.
    ``customer_id`` is who its scheduled runs are charged to, unless the body says."""
    service_id = f"svc_{uuid.uuid4().hex[:12]}"
    title, spec, kind, customer = service_spec(body, service_id, os.getcwd())
    _check_spec(spec)
    event = ev.ServiceCreated(service_id, title, spec, kind, customer or customer_id)
    log.append(service_stream(service_id), [event], 0)
    return service_id


def _check_spec(spec: dict) -> None:
    """Parse ``spec``; errors at (or above) a value that waits for a request's inputs
    are left for the request."""
    try:
        parse(spec, base_dir=spec["metadata"]["baseDir"])
    except SpecError as exc:
        waiting = placeholder_paths(spec)
        errors = [e for e in getattr(exc, "errors", [exc])
                  if not any(p == e.path or p.startswith(f"{e.path}.") or p.startswith(f"{e.path}[")
                             for p in waiting)]
        if errors:
            raise errors[0] if len(errors) == 1 else SpecErrors(errors) from None


def load_service(log: EventLog, service_id: str) -> Service:
    recorded = log.read(service_stream(service_id))
    if not recorded or not isinstance(recorded[0].event, ev.ServiceCreated):
        raise UsageError(f"no service {service_id!r}")
    return Service.of(recorded[0].event)


def load_request(log: EventLog, request_id: str) -> Request:
    request = project_request(log.read(request_stream(request_id)))
    if request is None:
        raise UsageError(f"no request {request_id!r}")
    return request


def build_spec(service: Service, inputs: dict) -> PipelineSpec:
    """The service's pipeline with a request's inputs filled in."""
    spec = apply_inputs(service.spec, inputs)
    return parse(spec, base_dir=(spec.get("metadata") or {}).get("baseDir") or os.getcwd())


def create_request(log: EventLog, service_id: str, customer_id: str = "", inputs: dict | None = None,
                   trigger: str = "api") -> str:
    """Record a request for one run of the service and return its id. It is charged to
    ``customer_id`` (default: the service's customer). Its inputs must fill exactly the
    ``${inputs.NAME}`` of the service's spec, and the spec they make must be valid:
    SpecError (naming ``inputs.NAME`` or the spec's path) otherwise, and nothing is
    recorded."""
    service = load_service(log, service_id)
    inputs = check_inputs(service.spec, inputs or {})
    build_spec(service, inputs)
    request_id = f"req_{uuid.uuid4().hex[:16]}"
    event = ev.ServiceRequested(request_id, service_id, customer_id or service.customer_id, inputs, trigger)
    log.append(request_stream(request_id), [event], 0)
    return request_id


# --- running one request ----------------------------------------------------------------

def execute(log_url: str, request_id: str, runtime: str = "ray") -> dict:
    """Run the request now, in this process, and return its view once it finished. A
    request already finished, or claimed by another process, is left as it is: its
    current view is returned."""
    log = EventLog(log_url)
    request = load_request(log, request_id)
    if not request.finished:
        service = load_service(log, request.service_id)
        with _RequestPipeline(log, request, service) as pipeline:
            if pipeline is not None:
                run_request(log, request, pipeline, runtime)
    return view_from_log(log, request_id)


class _RequestPipeline:
    """The request's Pipeline (closed on exit), or None when its spec is no longer
    valid (an environment variable gone): the request is then recorded as failed."""

    def __init__(self, log: EventLog, request: Request, service: Service):
        self.log, self.request, self.service, self.pipeline = log, request, service, None

    def __enter__(self) -> Pipeline | None:
        try:
            self.pipeline = Pipeline(build_spec(self.service, self.request.inputs))
        except SpecError as exc:
            fail_unstarted(self.log, self.request, exc)
        return self.pipeline

    def __exit__(self, *exc) -> None:
        if self.pipeline is not None:
            self.pipeline.close()


def run_request(log: EventLog, request: Request, pipeline: Pipeline, runtime: str,
                closing: Callable[[], bool] = lambda: False) -> bool:
    """Claim ``request`` (at the version it was read at) for a new run of ``pipeline``,
    run it once the pipeline is free, record the result and settle billing. Returns
    False when another process claimed it first. While ``closing()`` (the server
    stops), a run that did not succeed, or a stream's run, is left unfinished, for the
    next server."""
    run_id = uuid.uuid4().hex[:12]
    stream = request_stream(request.request_id)
    try:
        claimed = log.append(stream, [ev.RequestStarted(request.request_id, run_id, pipeline.name)], request.version)
    except ConcurrencyError:
        return False
    since = log.last_position()
    while True:
        if log.version(stream) != claimed:     # finished, or given another run, elsewhere
            return True
        try:
            summary = pipeline.run(log.url, runtime=runtime, trigger=request.trigger, run_id=run_id)
            break
        except LeaseHeld:
            if closing():
                return True
            time.sleep(POLL_S)
        except Exception as exc:  # noqa: BLE001 - the request fails with the reason, in one line
            if not closing():
                finish(log, request.request_id, run_id, "failed", {}, first_line(exc))
            return True
    if closing() and (summary["status"] != "success" or pipeline.spec.is_stream):
        return True   # the next server gives it a new run (a stream goes on from its checkpoint)
    finish(log, request.request_id, run_id, summary["status"], outputs(summary, log, pipeline.name, since),
           summary.get("error", ""))
    return True


def fail_unstarted(log: EventLog, request: Request, exc: BaseException) -> None:
    """A request whose run cannot even be built (its spec no longer valid) fails."""
    finish(log, request.request_id, "", "failed", {}, first_line(exc))


def finish(log: EventLog, request_id: str, run_id: str, status: str, outputs_: dict, error: str) -> None:
    """Record the request's result (after whatever its stream holds), then settle."""
    stream = request_stream(request_id)
    event = ev.redacted(ev.RequestFinished(request_id, run_id, status, outputs_, error or ""))
    while True:
        try:
            log.append(stream, [event], log.version(stream))
            break
        except ConcurrencyError:
            continue
    settle(log)


def settle(log: EventLog) -> None:
    """Record the charges owed (idempotent); a failure is logged, the result stands."""
    try:
        from .. import billing

        billing.settle(log)
    except Exception:  # noqa: BLE001 - billing catches up at the next settle
        logger.exception("billing could not settle; it will at the next request")


def outputs(summary: dict, log: EventLog, pipeline: str, since: int) -> dict:
    """The seed's ``outputs`` from a run summary: ``recordsProcessed`` is what was
    loaded, ``bytesProcessed`` what was extracted, ``duration`` in ms, and one step per
    phase (load ``errors``: rows a sink refused, read from the run's events after
    global position ``since``)."""
    failed = sum(r.event.failed for r in log.read_all(since, stream=ev.pipeline_stream(pipeline))
                 if isinstance(r.event, ev.BatchLoaded) and r.event.run_id == summary["runId"])
    return {"success": summary["status"] == "success", "recordsProcessed": summary["recordsLoaded"],
            "bytesProcessed": summary["bytesProcessed"], "duration": round(summary["durationMs"]),
            "steps": [{"phase": "extract", "success": not summary.get("partitionsFailed"),
                       "recordCount": summary["recordsExtracted"]},
                      {"phase": "transform", "success": all(s["success"] for s in summary["steps"]),
                       "recordCount": summary["recordsTransformed"]},
                      {"phase": "load", "success": summary["status"] == "success",
                       "loaded": summary["recordsLoaded"], "errors": failed}]}


def view_from_log(log: EventLog, request_id: str) -> dict:
    """The request's view read from the log (outside a server's store)."""
    from .. import billing

    request = load_request(log, request_id)
    return request_view(request, run_progress(log, request), billing.project(log).charge_of(request_id))


def succeeded_run(log: EventLog, request: Request) -> dict | None:
    """The summary of the request's last run when it succeeded (its server died before
    recording the result), else None."""
    if request.pipeline is None:
        return None
    runs = runs_projection.project(log.read(ev.pipeline_stream(request.pipeline)))
    run = runs.by_id.get(request.run_id)
    return runs_projection.summary(run) if run is not None and run.status == "success" else None


# --- the server's runner ----------------------------------------------------------------

class Runner:
    """Runs the requests a server accepts: one worker thread per service, so the
    requests of a service run one at a time in arrival order and different services
    in parallel. Each worker keeps its service's Pipeline (and on Ray its supervisor
    and children) warm between requests, and closes it after ``idle_s`` without one,
    so other processes may run that pipeline."""

    def __init__(self, log_url: str, runtime: str = "ray", idle_s: float = IDLE_CLOSE_S):
        self.log = EventLog(log_url)
        self.runtime = runtime
        self.idle_s = idle_s
        self._queues: dict[str, queue.Queue] = {}
        self._threads: list[threading.Thread] = []
        self._pipelines: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        self._accepting = threading.Lock()
        self._closing = threading.Event()
        self._submitted: set[str] = set()                # request ids this runner has queued

    def accept(self, service_id: str, customer_id: str = "", inputs: dict | None = None) -> str:
        """:func:`create_request` and queue it: requests are queued in the order they
        are recorded, however many arrive at once."""
        with self._accepting:
            request_id = create_request(self.log, service_id, customer_id, inputs)
            self.submit(load_request(self.log, request_id))
        return request_id

    def submit(self, request: Request) -> None:
        """Queue ``request`` (as read, at its version) behind its service's others."""
        with self._lock:
            if self._closing.is_set():
                return
            self._submitted.add(request.request_id)
            work = self._queues.get(request.service_id)
            if work is None:
                work = self._queues[request.service_id] = queue.Queue()
                thread = threading.Thread(target=self._work, args=(request.service_id, work), daemon=True,
                                          name=f"etl-service-{request.service_id}")
                self._threads.append(thread)
                thread.start()
        work.put(request)

    def recover(self, unfinished: Iterable[Request]) -> None:
        """After a start: record the result of batch requests whose run had succeeded,
        and queue the others again (a stream's goes on from its checkpoint), in the
        order they were made."""
        for request in unfinished:
            try:
                self._recover(request)
            except Exception:  # noqa: BLE001 - one request (its service gone?) must not stop the server
                logger.exception("request %s could not be recovered", request.request_id)

    def adopt(self, orphans: Iterable[Request]) -> None:
        """Queue requests another process made and never claimed (a scheduler that
        died between recording a request and running it). Claiming stays exclusive: if
        their maker claims one after all, this runner's claim fails and it is left be."""
        for request in orphans:
            with self._lock:
                known = request.request_id in self._submitted
            if not known:
                logger.warning("request %s was never started by the process that made it; running it here",
                               request.request_id)
                self.submit(request)

    def _recover(self, request: Request) -> None:
        summary = succeeded_run(self.log, request)
        if summary is None or load_service(self.log, request.service_id).kind == "stream":
            self.submit(request)
        else:
            finish(self.log, request.request_id, request.run_id, "success",
                   outputs(summary, self.log, request.pipeline, 0), "")

    def stop(self, pipeline: str) -> None:
        """Ask the pipeline's running supervisor to stop (a stream commits and ends)."""
        if self.runtime != "ray":
            raise UsageError("stopping a run needs the Ray runtime")
        import ray

        from ..runtime.actors import NAMESPACE, supervisor_name

        try:
            actor = ray.get_actor(supervisor_name(pipeline), namespace=NAMESPACE)
        except ValueError:
            raise UsageError(f"no run of {pipeline!r} is live on this Ray cluster") from None
        ray.get(actor.stop.remote("stopped on request"), timeout=30)

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking requests, stop the runs in flight after their batches in flight
        (they are claimed again by the next server), and end the workers."""
        with self._lock:
            self._closing.set()
            queues, pipelines = list(self._queues.values()), list(self._pipelines.values())
        for work in queues:
            work.put(None)
        for pipeline in pipelines:
            # only a supervisor of its own: a pipeline waiting for another's run holds none,
            # and Pipeline.stop() would then stop that other run
            if getattr(pipeline, "_supervisor", None) is not None:
                _quietly(pipeline.stop, 30)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, service_id: str, work: queue.Queue) -> None:
        while not self._closing.is_set():
            try:
                request = work.get(timeout=self.idle_s)
            except queue.Empty:
                self._cool(service_id)
                continue
            if request is None:
                break
            try:
                self._run(request)
            except Exception:  # noqa: BLE001 - one request's failure must not end the worker
                logger.exception("request %s could not be run", request.request_id)
        self._cool(service_id)

    def _run(self, request: Request) -> None:
        current = load_request(self.log, request.request_id)
        if current.finished or current.version != request.version:
            return   # finished or claimed elsewhere since it was queued
        service = load_service(self.log, request.service_id)
        try:
            pipeline = self._pipeline(service, build_spec(service, request.inputs))
        except SpecError as exc:
            fail_unstarted(self.log, request, exc)
            return
        run_request(self.log, request, pipeline, self.runtime, self._closing.is_set)

    def _pipeline(self, service: Service, spec: PipelineSpec) -> Pipeline:
        """The service's warm Pipeline, made again when the inputs change its spec."""
        with self._lock:
            pipeline = self._pipelines.get(service.service_id)
        if pipeline is not None and pipeline.spec.digest == spec.digest:
            return pipeline
        if pipeline is not None:
            pipeline.close()
        pipeline = Pipeline(spec)
        with self._lock:
            self._pipelines[service.service_id] = pipeline
        return pipeline

    def _cool(self, service_id: str) -> None:
        with self._lock:
            pipeline = self._pipelines.pop(service_id, None)
        if pipeline is not None:
            _quietly(pipeline.close)


def _quietly(fn: Callable[..., Any], *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - best effort while stopping
        logger.debug("ignored while stopping", exc_info=True)
