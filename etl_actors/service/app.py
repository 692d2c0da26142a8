"""The service API over HTTP (aiohttp): services, requests run on Ray, charges, invoices.

Every route but ``GET /`` (the status page) and ``/static/*`` needs
``Authorization: Bearer <key>`` (``etl-actors keys create``): 401 without a live key.
An admin key manages services and sees everything; a customer key sees only its
customer's requests, charges and invoices (another customer's are answered 404, as if
they did not exist), may list services and send requests. Every answer is JSON, errors
as ``{"error": text}`` (or ``{"errors": [{"path", "message"}]}`` for an invalid spec
or body), never a traceback; bodies are limited to :data:`MAX_BODY` bytes.

========================================  ======================================================
``POST /services`` (admin)                201 ``{"id"}``
``GET /services``, ``/services/{id}``     ``{"services": [...]}``, the service
``POST /services/{id}/requests``          202 ``{"requestId"}``; the run starts on Ray
``GET /requests?status=&limit=``          ``{"requests": [view, ...]}``, newest first
``GET /requests/{id}``                    the request's view (see :func:`.model.request_view`)
``GET /requests/{id}/events``             the view as server-sent events, each time it changes
``POST /requests/{id}/stop``              202: a stream service's run stops (commits, ends)
``GET /customers/{id}/charges``           ``{"charges": [...]}`` (``?period=YYYY-MM``)
``GET /customers/{id}/invoice?period=``   ``{"customerId", "period", "currency", "lines", "total"}``
``GET /pipelines/{name}/runs``            ``{"pipeline", "runs": [summary, ...]}``, newest first
``GET /pipelines/{name}/dlq``             ``{"pipeline", "deadLetters": [...]}`` (``?all=true``)
``GET /alerts``                           ``{"alerts": [...]}``, open and recent, newest first
``GET /status``                           what the status page shows (see :func:`.status.status`)
========================================  ======================================================
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
from datetime import datetime, timezone

from aiohttp import web

from ..batch import jsonable
from ..errors import EtlError, SpecError, UsageError, first_line
from ..eventlog import EventLog
from ..redaction import redact_url
from . import runner as runner_module
from . import status as status_module
from .answers import (MAX_BODY, authenticated, bad_request, customer_of, error, is_admin, json_errors, json_response,
                      read_body, spec_errors)
from .model import STATUSES, Service, service_view
from .runner import Runner
from .store import Store

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
HEARTBEAT_S = 15.0
SSE_POLL_S = 0.2
CHARGE_WAIT_S = 5.0        # a finished request's last event waits this long for its charge
ORPHAN_AFTER_S = 30.0      # a request no process claimed within this long is run here
ORPHAN_CHECK_S = 5.0
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_REQUEST_KEYS = ("customerId", "inputs")

STORE = web.AppKey("store", Store)
RUNNER = web.AppKey("runner", Runner)
LOG = web.AppKey("log", EventLog)
ADOPTING = web.AppKey("adopting", asyncio.Task)


def make_app(log_url: str, *, runner: Runner | None = None, runtime: str = "ray") -> web.Application:
    """The API over the event log at ``log_url``; requests run with ``runtime``
    (``ray`` or ``local``) by ``runner`` (a new :class:`Runner` when not given). The
    store follows the log and unfinished requests are queued again when it starts."""
    auth = authenticated(lambda request, key: request.app[STORE].principal(key), _public)
    app = web.Application(middlewares=[json_errors, auth], client_max_size=MAX_BODY)
    app[LOG] = EventLog(log_url)
    app[STORE] = Store(log_url)
    app[RUNNER] = runner or Runner(log_url, runtime)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    app.on_response_prepare.append(_headers)
    _routes(app)
    return app


def _routes(app: web.Application) -> None:
    add = app.router.add_route
    add("GET", "/", _page)
    if os.path.isdir(STATIC):
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
    for method, path, handler in (
            ("POST", "/services", _create_service), ("GET", "/services", _services),
            ("GET", "/services/{id}", _service), ("POST", "/services/{id}/requests", _create_request),
            ("GET", "/requests", _requests), ("GET", "/requests/{id}", _request),
            ("GET", "/requests/{id}/events", _request_events), ("POST", "/requests/{id}/stop", _stop_request),
            ("GET", "/customers/{id}/charges", _charges), ("GET", "/customers/{id}/invoice", _invoice),
            ("GET", "/pipelines/{name}/runs", _runs), ("GET", "/pipelines/{name}/dlq", _dead_letters),
            ("GET", "/alerts", _alerts), ("GET", "/status", _status)):
        add(method, path, handler)


def _public(path: str) -> bool:
    """The status page asks for a key itself."""
    return path == "/" or path.startswith("/static/")


async def _start(app: web.Application) -> None:
    store, runner = app[STORE], app[RUNNER]
    await asyncio.to_thread(store.start)
    await asyncio.to_thread(runner.recover, store.unfinished())
    app[ADOPTING] = asyncio.create_task(_adopt_orphans(store, runner))


async def _adopt_orphans(store: Store, runner: Runner) -> None:
    """Every ``ORPHAN_CHECK_S``: run the requests that their maker never claimed."""
    while True:
        await asyncio.sleep(ORPHAN_CHECK_S)
        try:
            await asyncio.to_thread(runner.adopt, store.unclaimed(ORPHAN_AFTER_S))
        except Exception:  # noqa: BLE001 - the log out of reach for a while: next time
            logger.warning("cannot look for unclaimed requests; retrying", exc_info=True)


async def _stop(app: web.Application) -> None:
    app[ADOPTING].cancel()
    await asyncio.to_thread(app[RUNNER].close)
    await asyncio.to_thread(app[STORE].stop)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")


# --- pages -------------------------------------------------------------------------------

async def _page(request: web.Request) -> web.StreamResponse:
    index = os.path.join(STATIC, "index.html")
    if not os.path.isfile(index):
        return error(404, "the status page is not installed")
    return web.FileResponse(index, headers={"Content-Type": "text/html; charset=utf-8"})


# --- services ------------------------------------------------------------------------------

async def _create_service(request: web.Request) -> web.Response:
    if not is_admin(request):
        return error(403, "only an admin key creates services")
    body = await read_body(request)
    try:
        service_id = await asyncio.to_thread(runner_module.create_service, request.app[LOG], body)
    except SpecError as exc:
        return spec_errors(exc)
    await asyncio.to_thread(request.app[STORE].sync)
    return json_response({"id": service_id}, 201)


async def _services(request: web.Request) -> web.Response:
    admin = is_admin(request)
    return json_response({"services": [service_view(s, admin) for s in request.app[STORE].service_list()]})


async def _service(request: web.Request) -> web.Response:
    service = request.app[STORE].service(request.match_info["id"])
    if service is None:
        return error(404, "no such service")
    return json_response(service_view(service, is_admin(request)))


async def _create_request(request: web.Request) -> web.Response:
    store = request.app[STORE]
    service = store.service(request.match_info["id"])
    if service is None:
        return error(404, "no such service")
    body = await read_body(request, _REQUEST_KEYS)
    given = body.get("customerId")
    if given is not None and not isinstance(given, str):
        return json_response({"errors": [{"path": "customerId", "message": "expected a string"}]}, 400)
    own = customer_of(request)
    if own is not None and given not in (None, own):
        return error(403, "a customer key sends requests for its own customer only")
    try:
        request_id = await asyncio.to_thread(request.app[RUNNER].accept, service.service_id, own or given or "",
                                             body.get("inputs"))
    except SpecError as exc:
        return spec_errors(exc)
    await asyncio.to_thread(store.sync)
    return json_response({"requestId": request_id}, 202)


# --- requests ----------------------------------------------------------------------------

def _visible_view(request: web.Request) -> dict:
    """The view of the request named in the path, if the caller may see it; else 404.
    A request not folded yet (another process, such as the scheduler, has just made it)
    is looked for once more after reading the log up to now."""
    store, request_id = request.app[STORE], request.match_info["id"]
    view = store.view(request_id)
    if view is None:
        store.sync()
        view = store.view(request_id)
    own = customer_of(request)
    if view is None or (own is not None and view["customerId"] != own):
        raise web.HTTPNotFound()
    return view


async def _request(request: web.Request) -> web.Response:
    return json_response(_visible_view(request))


async def _requests(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        return error(400, f"status {status!r} is not one of {', '.join(STATUSES)}")
    limit = _limit(request, 50, 1000)
    return json_response({"requests": request.app[STORE].views(customer_of(request), status, limit)})


def _limit(request: web.Request, default: int, most: int) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise bad_request(f"limit must be a whole number from 1 to {most}")
    return int(text)


async def _request_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``data: <view>`` each time the view changes, a comment every
    ``HEARTBEAT_S``; the stream ends after the final view (finished, and charged when
    the service has a price, or ``CHARGE_WAIT_S`` after it finished)."""
    view = _visible_view(request)
    store, request_id = request.app[STORE], view["requestId"]
    service = store.service(view["serviceId"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    sent, beat, finished_at = None, loop.time(), None
    try:
        while True:
            view = store.view(request_id)
            if view != sent:
                await response.write(f"data: {json.dumps(jsonable(view), default=str)}\n\n".encode())
                sent, beat = view, loop.time()
            if view["status"] in ("success", "failed"):
                finished_at = finished_at or loop.time()
                if view["charge"] is not None or not _priced(service) or loop.time() - finished_at > CHARGE_WAIT_S:
                    break
            if loop.time() - beat >= HEARTBEAT_S:
                await response.write(b": heartbeat\n\n")
                beat = loop.time()
            await asyncio.sleep(SSE_POLL_S)
    except ConnectionResetError:
        return response
    await response.write_eof()
    return response


def _priced(service: Service | None) -> bool:
    return service is not None and service.priced


async def _stop_request(request: web.Request) -> web.Response:
    view = _visible_view(request)
    service = request.app[STORE].service(view["serviceId"])
    if service is None or service.kind != "stream":
        return error(409, "only a stream service's request runs until stopped")
    if view["status"] != "running":
        return error(409, f"the request is {view['status']}, not running")
    try:
        await asyncio.to_thread(request.app[RUNNER].stop, service.pipeline)
    except UsageError as exc:
        return error(409, str(exc))
    return json_response({"requestId": view["requestId"], "status": "stopping"}, 202)


# --- customers -----------------------------------------------------------------------------

def _visible_customer(request: web.Request) -> str:
    customer = request.match_info["id"]
    own = customer_of(request)
    if own is not None and customer != own:
        raise web.HTTPNotFound()
    return customer


def _period(request: web.Request, default: str | None) -> str | None:
    period = request.query.get("period") or default
    if period is not None and not _PERIOD.match(period):
        raise bad_request(f"period {period!r} is not a month written YYYY-MM")
    return period


async def _charges(request: web.Request) -> web.Response:
    customer = _visible_customer(request)
    return json_response({"charges": request.app[STORE].charges(customer, _period(request, None))})


async def _invoice(request: web.Request) -> web.Response:
    customer = _visible_customer(request)
    period = _period(request, datetime.now(timezone.utc).strftime("%Y-%m"))
    try:
        return json_response(request.app[STORE].invoice(customer, period))
    except EtlError as exc:   # charges in two currencies cannot make one total
        return error(409, first_line(exc))


# --- pipelines, alerts, status -------------------------------------------------------------

def _runs_seen(request: web.Request, pipeline: str) -> set | None:
    """The runs of ``pipeline`` the caller may see (None: all, for an admin); 404 when none."""
    own = customer_of(request)
    if own is None:
        if not request.app[LOG].version(f"pipeline:{pipeline}"):
            raise web.HTTPNotFound()
        return None
    runs = request.app[STORE].runs_of(own).get(pipeline)
    if not runs:
        raise web.HTTPNotFound()
    return runs


async def _runs(request: web.Request) -> web.Response:
    pipeline = request.match_info["name"]
    seen = _runs_seen(request, pipeline)
    runs = await asyncio.to_thread(status_module.runs, request.app[LOG], pipeline, seen, _limit(request, 100, 1000))
    return json_response({"pipeline": pipeline, "runs": runs})


async def _dead_letters(request: web.Request) -> web.Response:
    pipeline = request.match_info["name"]
    seen = _runs_seen(request, pipeline)
    every = request.query.get("all", "").lower() in ("1", "true", "yes")
    letters = await asyncio.to_thread(status_module.dead_letters, request.app[LOG], pipeline, seen,
                                      _limit(request, 100, 10000), not every)
    return json_response({"pipeline": pipeline, "deadLetters": letters})


async def _alerts(request: web.Request) -> web.Response:
    store, own = request.app[STORE], customer_of(request)
    return json_response({"alerts": status_module.alerts(store, own)})


async def _status(request: web.Request) -> web.Response:
    store, own = request.app[STORE], customer_of(request)
    admin = is_admin(request)
    return json_response(await asyncio.to_thread(status_module.status, request.app[LOG], store, own, admin))


# --- the command -----------------------------------------------------------------------------

def serve_command(args) -> int:
    """``etl-actors serve [--host H] [--port P] [--log URL]``: serve until SIGTERM or
    Ctrl-C, runs on Ray; services with a schedule are fired by the scheduler actor."""
    from ..eventlog import check_durable
    from ..pipeline import ensure_ray, resolve_log_url

    log_url = resolve_log_url(args.log)
    check_durable(log_url)
    EventLog(log_url)
    _check_port(args.host, args.port)    # said in one line before Ray takes seconds to start
    ensure_ray()
    asyncio.run(_serve(log_url, args.host, args.port))
    return 0


async def _serve(log_url: str, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(log_url, runtime="ray"), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        _start_scheduler(log_url)
        bound = runner.addresses[0][1] if runner.addresses else port
        print(f"etl-actors: serving on http://{host}:{bound} (log {redact_url(log_url)})", file=sys.stderr,
              flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        print("etl-actors: stopping: the runs in flight stop after their batches in flight", file=sys.stderr,
              flush=True)
    finally:
        await runner.cleanup()


def _check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address this process cannot listen on."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise EtlError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def _start_scheduler(log_url: str) -> None:
    """Services with a schedule are fired by the scheduler actor of this log."""
    from ..scheduler_actor import ensure_scheduler

    ensure_scheduler(log_url)
