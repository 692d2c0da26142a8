"""The server's picture of the log: keys, services, requests with their live progress,
and billing, folded from every event and kept up to date by following the log.

It is a cache of the log, so a server restarted on the same log answers as before; a
start resumes from the store's newest snapshot (``ProjectionSnapshot`` in stream
``projection:service-store``, saved every ``snapshots.EVERY`` events folded) and folds
only what follows. A snapshot keeps the unfinished requests and the ``KEEP_FINISHED``
newest finished ones; an older request is read from its own stream when asked for.

It follows the log every ``poll_s`` (0.2 s) on a thread of its own, so a key revoked
from the command line stops working within that; a handler that
has just appended calls :meth:`Store.sync` to read its own write. Alert states are
folded per pipeline as the log is followed (a status page asks every second: no
replay per answer); dead letters are read from their table when asked for.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict
from typing import Iterable, Iterator

from .. import alerts as alerts_module
from .. import events as ev
from ..eventlog import EventLog
from ..projections import progress as progress_projection
from ..projections import snapshots
from . import keys as keys_projection
from .keys import KeyRecord, Principal
from .model import (REQUEST_PREFIX, SERVICE_PREFIX, Request, Service, evolve_request, iso, project_request,
                    run_progress,
                    request_stream, request_view, status_of)

logger = logging.getLogger(__name__)

PAGE = 1000
SNAPSHOT = "service-store"     # the store's snapshots: stream projection:service-store
FORMAT = 1                     # the shape of the state a snapshot keeps; one of another shape is not read
KEEP_FINISHED = 1000           # finished requests a snapshot keeps (the newest)
LOADS_KEPT_S = 3600.0          # loads kept for the records-per-minute chart
PIPELINE_PREFIX = ev.pipeline_stream("")


class Store:
    """Everything the API answers from, behind one lock."""

    def __init__(self, log_url: str, poll_s: float = 0.2):
        from .. import billing

        self.log = EventLog(log_url)
        self.poll_s = poll_s
        self.lock = threading.RLock()
        self._syncing = threading.Lock()
        self.position = 0
        self.keys: dict = {}
        self.services: dict[str, Service] = {}
        self.requests: dict[str, Request] = {}
        self.billing = billing.Billing()
        self._by_pipeline: dict[str, str] = {}          # pipeline name -> service id
        self._order: list[str] = []                      # request ids, oldest first
        self._run_requests: dict[str, str] = {}          # run id -> request id
        self._progress: dict[str, progress_projection.Progress] = {}
        self._loads: deque = deque()                     # (at, pipeline, run id, records)
        self._rejecting: dict[str, set] = {}             # pipeline -> runs with dead letters
        self._alerts: dict[str, alerts_module.AlertState] = {}   # pipeline -> its alert state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsaved = 0                                # events folded since the last snapshot

    # --- following the log ---------------------------------------------------------------

    def start(self) -> None:
        """Resume from the newest snapshot and fold the log after it, then follow the
        log on a thread of its own."""
        self._resume()
        self.sync()
        self._thread = threading.Thread(target=self._follow, daemon=True, name="etl-service-store")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def sync(self) -> int:
        """Fold every event appended since the last call; return the log position. The
        log is read outside the lock, so answers wait only for the folding. An event a
        projection cannot fold is logged and passed over, never retried forever."""
        with self._syncing:
            while True:
                page = self.log.read_all(self.position, limit=PAGE)
                with self.lock:
                    for recorded in page:
                        try:
                            self._apply(recorded)
                        except Exception:  # noqa: BLE001 - one bad event must not freeze the server
                            logger.exception("event %s (%s) could not be folded", recorded.position, recorded.type)
                        self.position = recorded.position
                    self._unsaved += len(page)
                if self._unsaved > snapshots.EVERY:
                    self._save()
                if len(page) < PAGE:
                    return self.position

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a log briefly unreachable: try again at the next poll
                logger.warning("cannot read the event log; retrying", exc_info=True)

    def _apply(self, recorded: ev.RecordedEvent) -> None:
        stream, event = recorded.stream, recorded.event
        self.billing.apply(recorded)
        if stream.startswith(keys_projection.STREAM_PREFIX):
            self.keys = keys_projection.evolve(self.keys, recorded)
        elif stream.startswith(SERVICE_PREFIX) and isinstance(event, ev.ServiceCreated):
            service = Service.of(event)
            self.services[service.service_id] = service
            self._by_pipeline[service.pipeline] = service.service_id
        elif stream.startswith(REQUEST_PREFIX):
            self._apply_request(recorded)
        elif stream.startswith(PIPELINE_PREFIX):
            self._apply_run(stream[len(PIPELINE_PREFIX):], event)

    def _apply_request(self, recorded: ev.RecordedEvent) -> None:
        request_id = recorded.stream[len(REQUEST_PREFIX):]
        before = self.requests.get(request_id)
        request = evolve_request(before, recorded)
        if request is None:
            return
        if before is None:
            self._order.append(request_id)
        if isinstance(recorded.event, ev.RequestStarted):
            self._run_requests[recorded.event.run_id] = request_id
        self.requests[request_id] = request

    def _apply_run(self, pipeline: str, event: ev.Event) -> None:
        alerts_module.evolve(self._alerts.setdefault(pipeline, alerts_module.AlertState()), event)
        run_id = getattr(event, "run_id", None)
        request_id = self._run_requests.get(run_id)
        if request_id is not None:
            if isinstance(event, ev.RunStarted):
                self._progress[request_id] = progress_projection.evolve(progress_projection.Progress(), event)
            elif request_id in self._progress:
                self._progress[request_id] = progress_projection.evolve(self._progress[request_id], event)
        if pipeline not in self._by_pipeline:
            return
        if isinstance(event, (ev.BatchLoaded, ev.CheckpointCommitted)):
            rows = event.rows if isinstance(event, ev.BatchLoaded) else event.loaded
            self._loads.append((event.at, pipeline, run_id, rows))
            while self._loads and self._loads[0][0] < event.at - LOADS_KEPT_S:
                self._loads.popleft()
        elif isinstance(event, ev.RecordsRejected) or (isinstance(event, ev.BatchExtracted) and event.rejected):
            self._rejecting.setdefault(pipeline, set()).add(run_id)

    # --- answers ---------------------------------------------------------------------------

    def principal(self, bearer: str | None) -> Principal | None:
        with self.lock:
            return keys_projection.authenticate(self.keys, bearer)

    def service(self, service_id: str) -> Service | None:
        with self.lock:
            return self.services.get(service_id)

    def service_list(self) -> list[Service]:
        with self.lock:
            return sorted(self.services.values(), key=lambda s: (s.created_at, s.service_id))

    def view(self, request_id: str) -> dict | None:
        """The request's view; one left out of the snapshot the store resumed from is
        read from its stream (and its run's progress from the pipeline's)."""
        with self.lock:
            request = self.requests.get(request_id)
            if request is not None:
                return self._view(request)
        return self._view_from_log(request_id) if self._resumed_from else None

    def _view_from_log(self, request_id: str) -> dict | None:
        request = project_request(self.log.read(request_stream(request_id)))
        if request is None:
            return None
        progress = run_progress(self.log, request)
        with self.lock:
            return request_view(request, progress, self.billing.charge_of(request_id))

    def _view(self, request: Request) -> dict:
        return request_view(request, self._progress.get(request.request_id),
                            self.billing.charge_of(request.request_id))

    def views(self, customer: str | None = None, status: str | None = None, limit: int | None = None) -> list[dict]:
        """Request views, newest first: ``customer``'s only, with ``status`` only."""
        with self.lock:
            found = []
            for request in self._newest(customer):
                if status is not None and status_of(request, self._progress.get(request.request_id)) != status:
                    continue
                found.append(self._view(request))
                if limit is not None and len(found) >= limit:
                    break
            return found

    def active_and_recent(self, customer: str | None, recent: int) -> list[dict]:
        """Views of every queued or running request and of the ``recent`` newest (of
        ``customer`` when given), newest first."""
        with self.lock:
            return [self._view(request) for i, request in enumerate(self._newest(customer))
                    if i < recent or not request.finished]

    def _newest(self, customer: str | None) -> Iterator[Request]:
        """The requests (of ``customer`` when given), newest first; under the lock."""
        for request_id in reversed(self._order):
            request = self.requests[request_id]
            if customer is None or request.customer_id == customer:
                yield request

    def unfinished(self) -> list[Request]:
        """Requests with no result yet, oldest first."""
        with self.lock:
            return [self.requests[r] for r in self._order if not self.requests[r].finished]

    def unclaimed(self, older_than: float, now: float | None = None) -> list[Request]:
        """Requests never given a run, made more than ``older_than`` seconds ago,
        oldest first."""
        now = time.time() if now is None else now
        with self.lock:
            return [request for request in (self.requests[r] for r in self._order)
                    if request.run_id is None and not request.finished and request.created_at < now - older_than]

    def runs_of(self, customer: str) -> dict[str, set]:
        """``{pipeline: run ids}`` of the runs given to ``customer``'s requests."""
        with self.lock:
            runs: dict[str, set] = {}
            for request in self.requests.values():
                if request.customer_id == customer and request.pipeline is not None:
                    runs.setdefault(request.pipeline, set()).update(request.runs)
            return runs

    def alerts(self, pipelines: Iterable[str] | None = None) -> list[dict]:
        """Open and recent alerts of ``pipelines`` (of every pipeline when None), newest first."""
        with self.lock:
            states = self._alerts if pipelines is None else {
                p: self._alerts[p] for p in pipelines if p in self._alerts}
            return alerts_module.rows_of(states)

    def service_pipelines(self) -> list[str]:
        with self.lock:
            return sorted(self._by_pipeline)

    def rejecting_runs(self, pipeline: str) -> set:
        """Runs of ``pipeline`` that wrote dead letters."""
        with self.lock:
            return set(self._rejecting.get(pipeline, ()))

    def records_per_minute(self, runs: dict[str, set] | None = None, now: float | None = None,
                           minutes: int = 30) -> list[dict]:
        """Records loaded by the services' pipelines (only ``runs`` when given) in each of
        the last ``minutes`` minutes, oldest first."""
        now = time.time() if now is None else now
        last = int(now // 60) * 60
        first = last - (minutes - 1) * 60
        counts = dict.fromkeys(range(first, last + 60, 60), 0)
        with self.lock:
            for at, pipeline, run_id, rows in self._loads:
                minute = int(at // 60) * 60
                if minute in counts and (runs is None or run_id in runs.get(pipeline, ())):
                    counts[minute] += rows
        return [{"minute": iso(minute), "records": n} for minute, n in counts.items()]

    def charges(self, customer: str | None = None, period: str | None = None) -> list[dict]:
        with self.lock:
            return self.billing.charges(customer=customer, period=period)

    def invoice(self, customer: str, period: str) -> dict:
        with self.lock:
            return self.billing.invoice(customer, period)


    # --- snapshots ---------------------------------------------------------------------------

    _resumed_from = 0      # the position of the snapshot this store resumed from (0: none)

    def _resume(self) -> None:
        """Take the newest snapshot's state, if this version can read it."""
        snapshot = snapshots.latest(self.log, SNAPSHOT)
        if snapshot is None or snapshot.state.get("format") != FORMAT:
            return
        try:
            with self.lock:
                self._restore(snapshot.state)
                self.billing.recall(self.log)
                self.position = self._resumed_from = snapshot.position
        except Exception:  # noqa: BLE001 - an unreadable snapshot: fold the log from the start
            logger.warning("the store's snapshot at %s could not be read; folding the whole log",
                           snapshot.position, exc_info=True)
            self.__init__(self.log.url, self.poll_s)

    def _save(self) -> None:
        with self.lock:
            state, position, self._unsaved = self._state(), self.position, 0
        try:
            snapshots.save(self.log, SNAPSHOT, position, state)
        except Exception:  # noqa: BLE001 - too large, or the log busy: the next one, later
            logger.warning("the store's snapshot at %s could not be saved", position, exc_info=True)

    def _state(self) -> dict:
        """What a snapshot keeps, as plain msgpack types; under the lock."""
        finished = [r for r in reversed(self._order) if self.requests[r].finished][:KEEP_FINISHED]
        kept = set(finished) | {r for r in self._order if not self.requests[r].finished}
        order = [r for r in self._order if r in kept]
        return {"format": FORMAT, "keys": [asdict(k) for k in self.keys.values()],
                "services": [asdict(s) for s in self.services.values()],
                "requests": [asdict(self.requests[r]) for r in order],
                "progress": {r: asdict(p) for r, p in self._progress.items() if r in kept},
                "loads": [list(load) for load in self._loads],
                "rejecting": {p: sorted(runs) for p, runs in self._rejecting.items()},
                "alerts": {p: a.to_dict() for p, a in self._alerts.items()},
                "billing": self.billing.to_state()}

    def _restore(self, state: dict) -> None:
        from .. import billing

        self.keys = {k["key_id"]: KeyRecord(**k) for k in state["keys"]}
        self.services = {s["service_id"]: Service(**s) for s in state["services"]}
        self._by_pipeline = {s.pipeline: s.service_id for s in self.services.values()}
        requests = [Request(**{**r, "runs": tuple(r["runs"])}) for r in state["requests"]]
        self.requests = {r.request_id: r for r in requests}
        self._order = [r.request_id for r in requests]
        self._run_requests = {run: r.request_id for r in requests for run in r.runs}
        self._progress = {r: progress_projection.Progress(**p) for r, p in state["progress"].items()}
        self._loads = deque(tuple(load) for load in state["loads"])
        self._rejecting = {p: set(runs) for p, runs in state["rejecting"].items()}
        self._alerts = {p: alerts_module.AlertState.from_dict(a) for p, a in state["alerts"].items()}
        self.billing = billing.Billing.from_state(state["billing"])


def newest(items: Iterable[dict], key: str, limit: int) -> list[dict]:
    """The ``limit`` items with the greatest ``key``, greatest first."""
    return sorted(items, key=lambda item: item.get(key) or "", reverse=True)[:limit]
