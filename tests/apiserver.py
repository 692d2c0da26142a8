"""A real HTTP API for tests: an aiohttp app on 127.0.0.1:<free port> in a background thread.

    from apiserver import ApiServer          # tests/ is on sys.path (see conftest.py)

    with ApiServer(records=[{"id": 1, "updated_at": "2024-01-01T00:00:00+00:00"}], token="s3cret") as api:
        api.url                              # "http://127.0.0.1:<port>"
        api.url_for("/page")                 # the full URL of a route
        ...                                  # point the code under test at it
        api.requests_to("/page")[0].query    # {"page": "1", "per_page": "100"}

Records (``server.records``, a list of dicts the test may replace at any time) are served
in list order by four GET routes, one per pagination style. Each filters out records
whose ``updated_at`` is not after ``?updated_since=`` (ISO 8601) when it is given:

=============  ==========================================  =====================================================
route          query                                       answer
=============  ==========================================  =====================================================
``/page``      ``page`` (from 1), ``per_page`` (100)       ``{"results": [...], "has_more": bool, "page": n}``
``/offset``    ``offset`` (0), ``limit`` (100)             ``{"data": {"items": [...]}, "total": n}``
``/cursor``    ``cursor`` (absent: start), ``limit``       ``{"items": [...], "next_cursor": str|null,
                                                           "meta": {"next": str|null}}`` (opaque cursors)
``/link``      ``page`` (from 1), ``per_page`` (100)       a bare JSON array; ``Link: <url>; rel="first",
                                                           <url>; rel="next"`` while more pages follow
=============  ==========================================  =====================================================

Other routes:

- ``POST /receive`` (and ``/receive/<anything>``): a sink or webhook target. The body is
  JSON (an array, or one object) or NDJSON (``Content-Type: application/x-ndjson``).
  Accepted bodies are stored in ``server.received`` (:class:`Received`: path, headers,
  records, raw body, idempotency key); ``server.received_records()`` flattens them. A
  repeated ``Idempotency-Key`` that was accepted before is answered 200 again and not
  stored twice (set ``server.honour_idempotency = False`` to store every copy).
  ``server.refuse("email", "bad@x.org")``: a body holding a record whose ``email`` is
  one of those values is refused whole with 422 and ``{"error": ..., "refused": [...]}``.
- ``GET /accounts/{key}``: ``server.accounts[key]`` as JSON, or 404; after
  ``server.lookup_delay`` seconds (default 0.02).
- ``GET /accounts?ids=a,b,c`` and ``POST /accounts/bulk`` with ``{"keys": [...]}``:
  ``{"results": [account, ...]}`` for the keys that exist (each account as stored; give
  it its key in a field, e.g. ``{"id": "a1", ...}``), after ``lookup_delay``.

Every request is logged in ``server.requests`` (:class:`Request`: method, path, query,
headers, body, time), in arrival order, before any fault or auth check.

Auth: with ``token`` set, every request must carry ``<token_header>: <token_prefix><token>``
(default ``Authorization: Bearer <token>``); otherwise 401 with a body that echoes the
credentials it got (``{"error": "invalid token", "received": "<header value>"}``), to
test that clients redact them.

Fault injection, per route (``path``; None for every route) and optionally per request
(``when={"page": 3}`` matches query values as strings); ``times`` answers (None: forever).
Faults are consumed in the order they were scripted; a matching fault answers instead of
the route:

- ``server.throttle(path, times=1, retry_after="1")``: 429 with ``Retry-After`` (seconds,
  or an HTTP date: ``retry_after=ApiServer.http_date(seconds_from_now)``)
- ``server.fail(path, status=500, times=1, body=...)``: that status (any status)
- ``server.slow(path, seconds, times=1)``: the normal answer after a delay
- ``server.malformed(path, times=1)``: 200 with a truncated JSON body
- ``server.die(path, times=1)``: the connection is closed without an answer
- ``server.respond(path, status, body=b"...", headers=None, times=1)``: any canned answer
- ``server.page_delay = 0.05``: every GET data page is answered after that delay

``server.stop()`` (or leaving the ``with`` block) shuts it down; a stopped server refuses
connections.
"""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from threaded import ThreadedServer

DATA_ROUTES = ("/page", "/offset", "/cursor", "/link")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    time: float = 0.0


@dataclass(frozen=True)
class Received:
    """One body the POST receiver accepted."""

    path: str
    headers: dict[str, str]
    records: list[Any]
    body: bytes
    idempotency_key: str | None


@dataclass
class Fault:
    """A scripted answer; see the module docstring."""

    path: str | None
    kind: str                         # status | slow | malformed | die
    status: int = 500
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    times: int | None = 1
    when: dict[str, str] = field(default_factory=dict)

    def matches(self, request: web.Request) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.path is not None and request.path != self.path:
            return False
        return all(request.query.get(k) == v for k, v in self.when.items())


class ApiServer(ThreadedServer):
    """A scriptable HTTP API on 127.0.0.1; see the module docstring."""

    name = "apiserver"

    def __init__(self, records: list[dict] | None = None, *, token: str | None = None,
                 token_header: str = "Authorization", token_prefix: str = "Bearer ",
                 accounts: dict[str, dict] | None = None, lookup_delay: float = 0.02):
        self.records = list(records or [])
        self.token, self.token_header, self.token_prefix = token, token_header, token_prefix
        self.accounts = dict(accounts or {})
        self.lookup_delay = lookup_delay
        self.page_delay = 0.0
        self.honour_idempotency = True
        self.requests: list[Request] = []
        self.received: list[Received] = []
        self.faults: list[Fault] = []
        self._refused: dict[str, set] = {}
        self._answered_keys: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    # --- scripting --------------------------------------------------------------------

    def script(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def throttle(self, path: str | None, times: int | None = 1, retry_after: str | float = "1",
                 when: dict | None = None) -> Fault:
        return self.script(Fault(path, "status", 429, b'{"error": "slow down"}', {"Retry-After": str(retry_after)},
                                 times=times, when=_strings(when)))

    def fail(self, path: str | None, status: int = 500, times: int | None = 1, body: bytes | str = b"",
             when: dict | None = None) -> Fault:
        body = body.encode() if isinstance(body, str) else body
        return self.script(Fault(path, "status", status, body or f'{{"error": "HTTP {status}"}}'.encode(),
                                 times=times, when=_strings(when)))

    def respond(self, path: str | None, status: int = 200, body: bytes | str = b"", headers: dict | None = None,
                times: int | None = 1, when: dict | None = None) -> Fault:
        body = body.encode() if isinstance(body, str) else body
        return self.script(Fault(path, "status", status, body, dict(headers or {}), times=times, when=_strings(when)))

    def slow(self, path: str | None, seconds: float, times: int | None = 1, when: dict | None = None) -> Fault:
        return self.script(Fault(path, "slow", seconds=seconds, times=times, when=_strings(when)))

    def malformed(self, path: str | None, times: int | None = 1, when: dict | None = None) -> Fault:
        return self.script(Fault(path, "malformed", times=times, when=_strings(when)))

    def die(self, path: str | None, times: int | None = 1, when: dict | None = None) -> Fault:
        return self.script(Fault(path, "die", times=times, when=_strings(when)))

    def refuse(self, field_name: str, *values: Any) -> None:
        """Refuse (422) a POSTed body holding a record whose ``field_name`` is one of ``values``."""
        self._refused.setdefault(field_name, set()).update(values)

    def clear(self) -> None:
        """Forget the request log, received bodies, faults and refusals."""
        with self._lock:
            self.requests.clear()
            self.received.clear()
            self.faults.clear()
            self._refused.clear()
            self._answered_keys.clear()

    @staticmethod
    def http_date(seconds_from_now: float) -> str:
        """An HTTP date ``seconds_from_now`` ahead, for ``Retry-After``."""
        return format_datetime(datetime.fromtimestamp(time.time() + seconds_from_now, timezone.utc), usegmt=True)

    # --- what happened ------------------------------------------------------------------

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in list(self.requests) if r.path == path]

    def received_records(self) -> list[Any]:
        return [record for body in list(self.received) for record in body.records]

    # --- the app --------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/page", self._page)
        app.router.add_get("/offset", self._offset)
        app.router.add_get("/cursor", self._cursor)
        app.router.add_get("/link", self._link)
        app.router.add_post("/receive", self._receive)
        app.router.add_post("/receive/{name:.*}", self._receive)
        app.router.add_get("/accounts", self._bulk_get)
        app.router.add_post("/accounts/bulk", self._bulk_post)
        app.router.add_get("/accounts/{key}", self._account)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        body = await request.read()
        self.requests.append(Request(request.method, request.path, dict(request.query), dict(request.headers),
                                     body, time.time()))
        if self.token is not None:
            got = request.headers.get(self.token_header, "")
            if got != f"{self.token_prefix}{self.token}":
                return web.json_response({"error": "invalid token", "received": got}, status=401)
        fault = self._take_fault(request)
        if fault is not None:
            answer = await self._fault(fault, request)
            if answer is not None:
                return answer
        if self.page_delay and request.path in DATA_ROUTES:
            await asyncio.sleep(self.page_delay)
        return await handler(request)

    def _take_fault(self, request: web.Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(request):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    async def _fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "malformed":
            return web.Response(body=b'{"results": [{"id": 1, "email": ', content_type="application/json")
        if fault.kind == "die":
            request.transport.close()
            raise asyncio.CancelledError()
        return web.Response(status=fault.status, body=fault.body, headers=fault.headers,
                            content_type="application/json")

    # --- data routes ------------------------------------------------------------------------

    def _visible(self, request: web.Request) -> list[dict]:
        since = request.query.get("updated_since")
        records = list(self.records)
        if not since:
            return records
        floor = _instant(since)
        return [r for r in records if _instant(r["updated_at"]) > floor]

    async def _page(self, request: web.Request) -> web.Response:
        records = self._visible(request)
        page, size = int(request.query.get("page", 1)), int(request.query.get("per_page", 100))
        chunk = records[(page - 1) * size: page * size]
        return web.json_response({"results": chunk, "has_more": page * size < len(records), "page": page})

    async def _offset(self, request: web.Request) -> web.Response:
        records = self._visible(request)
        offset, limit = int(request.query.get("offset", 0)), int(request.query.get("limit", 100))
        return web.json_response({"data": {"items": records[offset: offset + limit]}, "total": len(records)})

    async def _cursor(self, request: web.Request) -> web.Response:
        records = self._visible(request)
        start = _uncursor(request.query["cursor"]) if request.query.get("cursor") else 0
        limit = int(request.query.get("limit", 100))
        end = start + limit
        following = _cursor(end) if end < len(records) else None
        return web.json_response({"items": records[start:end], "next_cursor": following, "meta": {"next": following}})

    async def _link(self, request: web.Request) -> web.Response:
        records = self._visible(request)
        page, size = int(request.query.get("page", 1)), int(request.query.get("per_page", 100))
        links = [f'<{_with_query(request, page=1)}>; rel="first"']
        if page * size < len(records):
            links.append(f'<{_with_query(request, page=page + 1)}>; rel="next"')
        return web.json_response(records[(page - 1) * size: page * size], headers={"Link": ", ".join(links)})

    # --- receiver and lookups ---------------------------------------------------------------

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers.get("Idempotency-Key")
        if self.honour_idempotency and key is not None and key in self._answered_keys:
            return web.json_response({"accepted": 0, "replayed": True})
        try:
            records = _records_of(body, request.content_type)
        except ValueError as exc:
            return web.json_response({"error": f"bad body: {exc}"}, status=400)
        refused = [r for r in records if isinstance(r, dict) and self._is_refused(r)]
        if refused:
            return web.json_response({"error": "unprocessable record", "refused": refused}, status=422)
        with self._lock:
            self.received.append(Received(request.path, dict(request.headers), records, body, key))
            if key is not None:
                self._answered_keys.add(key)
        return web.json_response({"accepted": len(records)})

    def _is_refused(self, record: dict) -> bool:
        return any(record.get(name) in values for name, values in self._refused.items())

    async def _account(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.lookup_delay)
        account = self.accounts.get(request.match_info["key"])
        if account is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(account)

    async def _bulk_get(self, request: web.Request) -> web.Response:
        keys = [k for k in request.query.get("ids", "").split(",") if k]
        return await self._bulk(keys)

    async def _bulk_post(self, request: web.Request) -> web.Response:
        payload = json.loads(await request.read() or b"{}")
        return await self._bulk([str(k) for k in payload.get("keys", [])])

    async def _bulk(self, keys: list[str]) -> web.Response:
        await asyncio.sleep(self.lookup_delay)
        return web.json_response({"results": [self.accounts[k] for k in keys if k in self.accounts]})


def _strings(when: dict | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (when or {}).items()}


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def _uncursor(cursor: str) -> int:
    return int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["o"])


def _with_query(request: web.Request, **changes: Any) -> str:
    query = {**request.query, **{k: str(v) for k, v in changes.items()}}
    return str(request.url.with_query(query))


def _records_of(body: bytes, content_type: str) -> list[Any]:
    if "ndjson" in content_type or "jsonl" in content_type:
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    payload = json.loads(body or b"null")
    return payload if isinstance(payload, list) else [payload]


def make_records(n: int, start: str = "2024-01-01T00:00:00+00:00", step_seconds: int = 60) -> list[dict]:
    """``n`` records with ``id`` 1..n, ``updated_at`` ``step_seconds`` apart from
    ``start``, an ``email`` and a nested ``profile``."""
    base = _instant(start).timestamp()
    return [{"id": i, "updated_at": datetime.fromtimestamp(base + (i - 1) * step_seconds, timezone.utc).isoformat(),
             "email": f"user{i}@example.com", "profile": {"tier": "gold" if i % 2 else "basic", "score": i * 10}}
            for i in range(1, n + 1)]
