"""The lookups behind ``type: enrich`` (key texts -> records) and the cache of their answers.

- :class:`HttpLookup`: one GET per key, ``{key}`` in the endpoint replaced by the key
- :class:`BulkLookup`: many keys per GET (comma-joined in a query parameter) or POST
- :class:`TableLookup`: one ``SELECT ... WHERE lookupField IN (...)`` per batch, in
  chunks of 500 keys; when several rows share a key, the first the database returns
  is used

A lookup is a frozen description that pickles to a worker; ``fetch(keys, step)``
opens its client or connection inside the call and maps every key text to its
record, or to None when not found. Requests run concurrently (at most
``concurrency``), through :class:`~etl_actors.http.HttpClient`: rate limited, and
408/429/5xx/timeouts retried with backoff.

Guarantee: a lookup never silently yields nulls. Only "not found" (HTTP 404, an
empty list or null at the record path, a key absent from a bulk answer, no row) is
None; any other failure raises :class:`LookupFailed` (a TerminalError naming the
step, the key and the status), or TransientError when a database cannot be reached.
No error shows the API key.

:data:`CACHE` holds the answers, found or not found, of every lookup in this process,
each until its expiry; at most 100,000 keys, least recently used first out.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote

from ..errors import TerminalError, TransientError, describe
from ..redaction import redact_text, redact_url

CACHE_ENTRIES = 100_000
SQL_CHUNK = 500
_MISSING = None  # a cached "not found"


# --- the process-wide cache -------------------------------------------------------------

class LookupCache:
    """Answers by (lookup identity, key text), each until its expiry; least recently
    used entries go first beyond ``max_entries``. Thread-safe."""

    def __init__(self, max_entries: int = CACHE_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, dict | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, namespace: str, keys, now: float) -> dict[str, dict | None]:
        found = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get((namespace, key))
                if entry is None:
                    continue
                if entry[0] <= now:
                    del self._entries[(namespace, key)]
                    continue
                self._entries.move_to_end((namespace, key))
                found[key] = entry[1]
        return found

    def put_many(self, namespace: str, answers: Mapping[str, dict | None], expires: float) -> None:
        with self._lock:
            for key, record in answers.items():
                self._entries[(namespace, key)] = (expires, record)
                self._entries.move_to_end((namespace, key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


CACHE = LookupCache()


# --- lookups: key texts -> records -----------------------------------------------------------

class LookupFailed(TerminalError):
    """A lookup failed for another reason than "not found"; ``key`` and ``status`` say which."""


@dataclass(frozen=True)
class HttpLookup:
    """One GET per key: ``{key}`` in ``endpoint`` is replaced by the key, URL-encoded.
    A 404 (or an empty list, or null at ``record_path``) means not found."""

    endpoint: str
    http: Any                                  # etl_actors.http.HttpOptions
    record_path: tuple[str, ...] = ()
    concurrency: int = 8

    def fetch(self, keys: Mapping[str, Any], step: str) -> dict[str, dict | None]:
        texts = list(keys)
        answers = _requests(self.http, lambda client, key: self._one(client, key, step), texts, self.concurrency)
        return dict(zip(texts, answers))

    async def _one(self, client, key: str, step: str) -> dict | None:
        from ..http import HttpError

        try:
            body = (await client.request("GET", self.endpoint.replace("{key}", quote(key, safe="")))).json()
        except HttpError as exc:
            if exc.status == 404:
                return _MISSING
            raise _failed(step, key, exc) from None
        except TerminalError as exc:
            raise _failed(step, key, exc) from None
        return _one_record(at_path(body, self.record_path)[1], step, key)

    def identity(self) -> Any:
        return ["http", str(self.endpoint), self.record_path, dataclasses.astuple(self.http)]

    def describe(self) -> dict:
        return {"endpoint": redact_url(self.endpoint), "concurrency": self.concurrency, **self.http.describe()}


@dataclass(frozen=True)
class BulkLookup:
    """Many keys per request (at most ``max_keys``): GET with the keys comma-joined in
    query parameter ``param``, or POST with a JSON body ``{param: [keys]}`` (a bare
    list when ``param`` is empty). The answer holds a list of records at
    ``records_path``; each names its key at ``key_path``; keys absent are not found."""

    endpoint: str
    http: Any
    method: str = "GET"
    param: str = "ids"
    max_keys: int = 100
    records_path: tuple[str, ...] = ()
    key_path: tuple[str, ...] = ("id",)
    concurrency: int = 8

    def fetch(self, keys: Mapping[str, Any], step: str) -> dict[str, dict | None]:
        texts = list(keys)
        chunks = [texts[i:i + self.max_keys] for i in range(0, len(texts), self.max_keys)]
        answers = dict.fromkeys(texts, _MISSING)
        for found in _requests(self.http, lambda client, chunk: self._chunk(client, chunk, step), chunks,
                               self.concurrency):
            answers.update((k, v) for k, v in found.items() if k in answers and answers[k] is None)
        return answers

    async def _chunk(self, client, keys: list[str], step: str) -> dict[str, dict]:
        if self.method == "GET":
            call = {"params": {self.param: ",".join(keys)}}
        else:
            call = {"json": {self.param: keys} if self.param else keys}
        try:
            body = (await client.request(self.method, self.endpoint, **call)).json()
        except TerminalError as exc:
            raise _failed(step, keys[0] if len(keys) == 1 else f"{keys[0]}, ... ({len(keys)} keys)", exc) from None
        return self._by_key(body, step)

    def _by_key(self, body: Any, step: str) -> dict[str, dict]:
        records = at_path(body, self.records_path)[1]
        if not isinstance(records, list):
            where = ".".join(self.records_path) or "the body"
            raise TerminalError(f"step {step!r}: expected a list of records at {where} of the bulk answer from "
                                f"{redact_url(self.endpoint)}, got {describe(records)}", step=step)
        found: dict[str, dict] = {}
        for record in records:
            if isinstance(record, dict):
                key = key_text(at_path(record, self.key_path)[1])
                if key is not None:
                    found.setdefault(key, record)
        return found

    def identity(self) -> Any:
        return ["bulk", str(self.endpoint), self.method, self.param, self.records_path, self.key_path,
                dataclasses.astuple(self.http)]

    def describe(self) -> dict:
        return {"bulk": {"endpoint": redact_url(self.endpoint), "method": self.method, "param": self.param,
                         "maxKeys": self.max_keys}, "concurrency": self.concurrency, **self.http.describe()}


@dataclass(frozen=True)
class TableLookup:
    """Rows of ``table`` whose ``lookup_field`` is one of the keys: one query per batch,
    ``SQL_CHUNK`` keys per statement. ``columns`` limits what is read (None: all)."""

    url: str = field(repr=False)
    table: str
    lookup_field: str
    columns: tuple[str, ...] | None = None

    def fetch(self, keys: Mapping[str, Any], step: str) -> dict[str, dict | None]:
        import sqlalchemy as sa

        from ..db import db_reason, engine_for, redact

        values = list(keys.values())
        answers = dict.fromkeys(keys, _MISSING)
        try:
            with engine_for(self.url).connect() as conn:
                for i in range(0, len(values), SQL_CHUNK):
                    for row in conn.execute(self._select(values[i:i + SQL_CHUNK])).mappings():
                        key = key_text(row[self.lookup_field])
                        if key in answers and answers[key] is None:
                            answers[key] = dict(row)
        except sa.exc.SQLAlchemyError as exc:
            error = TransientError if isinstance(exc, sa.exc.OperationalError) else TerminalError
            raise error(f"step {step!r}: cannot look up keys in table {self.table!r} of {redact(self.url)}: "
                        f"{db_reason(exc)}", step=step) from None
        return answers

    def _select(self, values: list):
        import sqlalchemy as sa

        schema, _, name = self.table.rpartition(".")
        wanted = [sa.column(c) for c in self.columns] if self.columns is not None else [sa.text("*")]
        return (sa.select(*wanted).select_from(sa.table(name, schema=schema or None))
                .where(sa.column(self.lookup_field).in_(values)))

    def identity(self) -> Any:
        return ["table", str(self.url), self.table, self.lookup_field, self.columns]

    def describe(self) -> dict:
        from ..db import redact

        return {"connection": redact(self.url), "table": self.table, "lookupField": self.lookup_field}


def _requests(http, work, items: list, concurrency: int) -> list:
    """``await work(client, item)`` for every item, at most ``concurrency`` at once on
    one :class:`~etl_actors.http.HttpClient` (whose rate limit they share), results in
    order; the first failure cancels the rest and is raised."""
    from ..http import HttpClient, run_sync

    async def run() -> list:
        client, results, queue = HttpClient(http), [None] * len(items), iter(enumerate(items))

        async def worker() -> None:
            for i, item in queue:
                results[i] = await work(client, item)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(items)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            await client.close()
        return results

    return run_sync(run())


def _failed(step: str, key: str, exc: BaseException) -> LookupFailed:
    status = getattr(exc, "status", None)
    why = f"HTTP {status}" if status is not None else "no answer"
    return LookupFailed(redact_text(f"step {step!r}: looking up key {key!r} failed ({why}): {exc}"),
                        step=step, key=key, status=status)


def _one_record(value: Any, step: str, key: str) -> dict | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or isinstance(value, dict):
        return value
    raise LookupFailed(f"step {step!r}: looking up key {key!r}: expected a JSON object, got {describe(value)}",
                       step=step, key=key, status=None)


# --- values ------------------------------------------------------------------------------------

def key_text(value: Any) -> str | None:
    """A key as text, so ``7``, ``7.0`` and ``"7"`` are one key; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def at_path(value: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """(whether ``path`` exists in ``value``, the value there)."""
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value
