"""HTTP for the plugins that talk to web APIs (the API source and sink, enrichment,
alert webhooks): one client with auth, rate limits, retries and redaction built in.

- :class:`Auth` and :class:`HttpOptions` are frozen descriptions read from a plugin's
  spec section (:meth:`HttpOptions.from_spec`); they pickle to an actor, where the
  secrets they hold are remembered again so they are redacted there too.
- :class:`HttpClient` sends requests on an aiohttp session it opens lazily on the loop
  that uses it. It waits for its rate limiter, retries 408, 429, 5xx, timeouts and
  connection errors with exponential backoff and full jitter (honouring
  ``Retry-After``), and raises :class:`HttpError` when the server refuses a request or
  the retries run out.
- :func:`run_sync` runs a coroutine from synchronous code (stage methods are sync) on
  one background event loop per process.

Guarantee: no token, password or API key appears in an error's message, its url or
its excerpt, even when the server echoes the credentials back in its body.

>>> client = HttpClient(HttpOptions(auth=Auth("bearer", token="s3cret-token")))
>>> run_sync(client.request("GET", "https://api.example.com/v1/items"))   # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import os
import ssl
import threading
import time
from dataclasses import dataclass, field, fields
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from .errors import SpecError, TerminalError, describe as describe_value, first_line
from .kafka_client import LoopThread
from .redaction import is_secret_name, redact_headers, redact_text, redact_url, remember
from .runtime.retry import delay
from .spec import parse_seconds, positive_duration_problem, substitute_env

AUTH_KINDS = ("none", "bearer", "header", "basic")
RETRY_STATUSES = frozenset({408, 429})
EXCERPT_CHARS = 200
_ERROR_BODY_BYTES = 64 * 1024      # read at most this much of a refused answer


@dataclass(frozen=True)
class Auth:
    """How requests prove who sends them: ``none``, ``bearer`` (``Authorization: Bearer
    <token>``), ``header`` (``<header>: <token>``, e.g. ``X-API-Key``) or ``basic``."""

    kind: str = "none"
    token: str = field(default="", repr=False)
    header: str = "Authorization"
    username: str = ""
    password: str = field(default="", repr=False)

    def __post_init__(self):
        if self.kind not in AUTH_KINDS:
            raise SpecError("auth.type", f"{self.kind!r} is not one of {', '.join(AUTH_KINDS)}")
        remember(self.token, self.password, *self._basic_forms())

    def __reduce__(self):
        return Auth, (self.kind, self.token, self.header, self.username, self.password)

    def _basic_forms(self) -> tuple[str, ...]:
        if self.kind != "basic":
            return ()
        return (base64.b64encode(f"{self.username}:{self.password}".encode()).decode(),)

    def headers(self) -> dict[str, str]:
        """The auth header(s) to send."""
        if self.kind == "bearer":
            return {self.header: f"Bearer {self.token}"}
        if self.kind == "header":
            return {self.header: self.token}
        if self.kind == "basic":
            return {"Authorization": f"Basic {self._basic_forms()[0]}"}
        return {}

    def describe(self) -> dict:
        return {"type": self.kind, **({"header": self.header} if self.kind in ("bearer", "header") else {})}


@dataclass(frozen=True)
class HttpOptions:
    """What every request of one client shares: headers, auth, limits and retries."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    auth: Auth = Auth()
    timeout: float = 30.0                       # seconds per request (each attempt)
    max_response_bytes: int = 64 * 2**20        # a larger body is an error
    rate_limit_delay: float = 0.0               # seconds between request starts
    requests_per_second: float | None = None
    max_retries: int = 5
    verify_tls: bool = True
    ca_bundle: str | None = None

    def __post_init__(self):
        remember(*(value for name, value in self.headers if is_secret_name(name)))

    def __reduce__(self):
        return HttpOptions, tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_spec(cls, section, ctx, *, rate_limit_delay_ms: float = 0.0) -> "HttpOptions":
        """From ``apiKey`` / ``auth``, ``headers``, ``timeout``, ``maxResponseBytes``,
        ``rateLimitDelay`` (milliseconds; default ``rate_limit_delay_ms``),
        ``requestsPerSecond``, ``maxRetries``, ``verifyTls`` and ``caBundle`` in
        ``section``. Leaves ``section.done()`` to the caller."""
        timeout = section.get("timeout", 30.0, types=(int, float, str), check=positive_duration_problem)
        delay = section.get("rate_limit_delay", rate_limit_delay_ms, types=(int, float), check=_non_negative)
        ca_bundle = section.get("ca_bundle", None, types=str)
        return cls(
            headers=_headers(section),
            auth=_auth(section),
            timeout=parse_seconds(timeout),
            max_response_bytes=section.positive_int("max_response_bytes", 64 * 2**20),
            rate_limit_delay=float(delay) / 1000.0,
            requests_per_second=_optional_float(section.get("requests_per_second", None, types=(int, float),
                                                            check=_positive)),
            max_retries=section.get("max_retries", 5, types=int, check=_non_negative),
            verify_tls=section.get("verify_tls", True, types=bool),
            ca_bundle=ctx.resolve_path(substitute_env(ca_bundle, section.at("ca_bundle"))) if ca_bundle else None,
        )

    @property
    def interval(self) -> float:
        """Seconds between the starts of two requests (the stricter of both limits)."""
        per_second = 1.0 / self.requests_per_second if self.requests_per_second else 0.0
        return max(self.rate_limit_delay, per_second)

    def describe(self) -> dict:
        """Secret-free: the auth kind and header name, header names, limits."""
        return {"auth": self.auth.describe(), "headers": redact_headers(self.headers),
                "timeout": self.timeout, "maxResponseBytes": self.max_response_bytes,
                "rateLimitDelay": self.rate_limit_delay * 1000.0, "requestsPerSecond": self.requests_per_second,
                "maxRetries": self.max_retries, "verifyTls": self.verify_tls}


def _auth(section) -> Auth:
    has_key, has_auth = section.has("api_key"), section.has("auth")
    if has_key and has_auth:
        raise SpecError(section.at("auth"), "expected one of apiKey or auth, got both")
    if has_key:
        return Auth("bearer", token=_secret(section, "api_key"))
    if not has_auth:
        return Auth()
    auth = section.section("auth")
    kind = auth.get("type", types=str, choices=AUTH_KINDS)
    needs = {"bearer": ("token",), "header": ("token", "header"), "basic": ("username", "password"), "none": ()}
    values = {name: _secret(auth, name) for name in needs[kind]}
    if kind == "bearer":
        values["header"] = auth.get("header", "Authorization", types=str)
    auth.done()
    return Auth(kind, **values)


def _secret(section, name: str) -> str:
    """A string value with ``${ENV}`` resolved, remembered as a secret."""
    value = substitute_env(section.get(name, types=str), section.at(name))
    if not value.strip():
        raise SpecError(section.at(name), "is empty")
    if name != "header":
        remember(value)
    return value


def _headers(section) -> tuple[tuple[str, str], ...]:
    headers = section.section("headers", None)
    if headers is None:
        return ()
    items = []
    for name, value in headers.data.items():
        path = f"{headers.path}.{name}"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SpecError(path, f"expected a string, got {describe_value(value)}")
        value = substitute_env(str(value), path)
        if is_secret_name(str(name)):
            remember(value)
        items.append((str(name), value))
    return tuple(items)


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"expected >= 0, got {value}"


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"expected > 0, got {value}"


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --- responses and errors -------------------------------------------------------------

@dataclass
class HttpResponse:
    """A successful (2xx/3xx) answer, its body read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    url: str
    attempts: int = 1                   # requests sent for it (1 + the retries)

    def json(self) -> Any:
        """The body as JSON; TerminalError when it is not JSON."""
        try:
            return jsonlib.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TerminalError(f"malformed JSON from {self.url}: {redact_text(exc)}", url=self.url) from None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class HttpError(TerminalError):
    """A request the server refused (4xx other than 408/429), an answer too large, or
    retries run out. ``status`` (None for a timeout or connection error), ``url``
    (redacted), ``excerpt`` (up to 200 characters of the body, redacted), ``attempts``
    and ``reason`` (the message without the method and url) say which."""

    def __init__(self, method: str, url: str, reason: str, *, status: int | None, excerpt: str = "",
                 attempts: int = 1, **context):
        url = redact_url(url)
        excerpt = excerpt_of(excerpt)
        reason = redact_text(reason)
        tail = f": {excerpt}" if excerpt else ""
        super().__init__(f"{method} {url}: {reason}{tail}", status=status, url=url, excerpt=excerpt,
                         attempts=attempts, reason=reason, **context)

    @property
    def retryable_status(self) -> bool:
        """Whether the server said to come back later (408, 429, 5xx) or did not answer."""
        return self.status is None or self.status in RETRY_STATUSES or self.status >= 500


def excerpt_of(body: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """The first ``limit`` characters of a body on one line, every secret hidden."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    text = redact_text(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds to wait: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- the client -------------------------------------------------------------------------

class _Retry(Exception):
    """An attempt that may be retried: its status (None: no answer), why, and when."""

    def __init__(self, status: int | None, reason: str, excerpt: str = "", retry_after: float | None = None):
        super().__init__(reason)
        self.status, self.reason, self.excerpt, self.retry_after = status, reason, excerpt, retry_after


class HttpClient:
    """Requests with auth, rate limit and retries, on a session opened lazily.

    The rate limiter is shared by every request of the client, also across
    concurrent coroutines and threads: request starts are spaced by
    ``options.interval`` seconds.
    """

    def __init__(self, options: HttpOptions):
        self.options = options
        self._session = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pace_lock = threading.Lock()
        self._next_start = 0.0

    async def request(self, method: str, url: str, *, params: Mapping | None = None, json: Any = None,
                      data: bytes | None = None, headers: Mapping[str, str] | None = None,
                      idempotency_key: str | None = None) -> HttpResponse:
        """The server's 2xx/3xx answer, after retrying 408, 429, 5xx, timeouts and
        connection errors up to ``max_retries`` times; HttpError otherwise."""
        sent = {**dict(self.options.headers), **self.options.auth.headers(), **dict(headers or {})}
        if idempotency_key is not None:
            sent["Idempotency-Key"] = idempotency_key
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            try:
                response = await self._attempt(method, url, params=params, json=json, data=data, headers=sent)
                response.attempts = attempt
                return response
            except HttpError as refused:
                refused.attempts = refused.context["attempts"] = attempt
                raise
            except _Retry as failure:
                if attempt > self.options.max_retries:
                    raise self._exhausted(method, url, failure, attempt) from None
                await asyncio.sleep(delay(attempt, failure.retry_after))

    def _exhausted(self, method: str, url: str, failure: _Retry, attempts: int) -> HttpError:
        retries = attempts - 1
        return HttpError(method, url, f"{failure.reason} after {retries} retr{'y' if retries == 1 else 'ies'}",
                         status=failure.status, excerpt=failure.excerpt, attempts=attempts)

    async def _attempt(self, method: str, url: str, **kwargs) -> HttpResponse:
        import aiohttp

        session = await self._session_here()
        try:
            async with session.request(method, url, **kwargs) as response:
                return await self._answer(method, response)
        except (asyncio.TimeoutError, TimeoutError):
            raise _Retry(None, f"no answer within {self.options.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retry(None, f"connection failed ({first_line(exc, with_type=True)})") from None

    async def _answer(self, method: str, response) -> HttpResponse:
        status, url = response.status, str(response.url)
        if status >= 500 or status in RETRY_STATUSES:
            body = await _read_some(response, _ERROR_BODY_BYTES)
            raise _Retry(status, f"HTTP {status}", excerpt_of(body),
                         retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 400:
            body = await _read_some(response, _ERROR_BODY_BYTES)
            reason = f"authentication refused (HTTP {status})" if status in (401, 403) else f"HTTP {status}"
            raise HttpError(method, url, reason, status=status, excerpt=body)
        limit = self.options.max_response_bytes
        body = await _read_some(response, limit + 1)
        if len(body) > limit:
            raise HttpError(method, url, f"response larger than maxResponseBytes ({limit} bytes)", status=status)
        return HttpResponse(status, response.headers, body, redact_url(url))

    async def _pace(self) -> None:
        """Wait for this request's turn: starts are ``interval`` seconds apart."""
        interval = self.options.interval
        if interval <= 0:
            return
        with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + interval
        if start > now:
            await asyncio.sleep(start - now)

    async def _session_here(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            timeout = aiohttp.ClientTimeout(total=self.options.timeout)
            connector = aiohttp.TCPConnector(ssl=self._ssl())
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
            self._loop = loop
        return self._session

    def _ssl(self) -> Any:
        if not self.options.verify_tls:
            return False
        if self.options.ca_bundle:
            return ssl.create_default_context(cafile=self.options.ca_bundle)
        return True

    async def close(self) -> None:
        """Close the session (a later request opens a new one)."""
        session, self._session = self._session, None
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()

    async def __aenter__(self) -> "HttpClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def _read_some(response, limit: int) -> bytes:
    """At most ``limit`` bytes of the body (never more is read from the socket)."""
    chunks, size = [], 0
    while size < limit:
        chunk = await response.content.read(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# --- synchronous callers ----------------------------------------------------------------

_loop_thread = None
_loop_pid = 0
_loop_lock = threading.Lock()


def run_sync(coro) -> Any:
    """Run ``coro`` to completion from synchronous code, on this process's background
    event loop (so it works from a thread that already runs a loop, e.g. a Ray async
    actor). Must not be called from that background loop itself."""
    loop = _background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop.loop:
        coro.close()
        raise RuntimeError("run_sync called from its own event loop; await the coroutine instead")
    return loop.run(coro)


def _background_loop():
    global _loop_thread, _loop_pid
    with _loop_lock:
        if _loop_thread is None or _loop_pid != os.getpid() or _loop_thread.loop.is_closed():
            _loop_thread, _loop_pid = LoopThread(name="etl-http"), os.getpid()
        return _loop_thread


__all__ = ["Auth", "HttpOptions", "HttpResponse", "HttpError", "HttpClient", "run_sync", "excerpt_of",
           "retry_after_seconds"]
