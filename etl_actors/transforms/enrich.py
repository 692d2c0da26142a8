"""``type: enrich``: add fields looked up by each record's key, from an HTTP API or a
database table (the seed's "Enrich with third-party data").

    - id: enrich
      type: enrich
      key: account_id                          # a column, or a dotted path into a struct column
      endpoint: https://crm/accounts/{key}     # or https://crm/accounts?id={key}
      apiKey: ${CRM_TOKEN}                     # also auth, headers, timeout, maxRetries, rateLimitDelay (ms),
                                               # requestsPerSecond, maxResponseBytes, verifyTls (as the api source)
      recordPath: data                         # where the record sits in each answer (default: the body)
      # bulk: {endpoint: https://crm/accounts, param: ids, maxKeys: 100, recordsPath: data, keyPath: id}
      #       GET ...?ids=a,b,c; with method: POST the body is {"ids": [...]} (a bare list without param)
      # connection: crm-database               # or a database table instead of an API
      # table: accounts
      # lookupField: id                        # default: the last part of key
      select: {segment: profile.segment}       # new column: dotted path in the record; or [segment, tier]
      onMissing: keep                          # keep | null | reject
      concurrency: 8                           # requests in flight at once
      cacheTtl: 5m                             # how long an answer is reused (0: not cached)

Keys are deduplicated per batch and compared as text (``7`` and ``"7"`` are one
key). Null keys are not looked up and count as missing. Requests run concurrently
(at most ``concurrency``), through :class:`~etl_actors.http.HttpClient`: rate
limited, and 408/429/5xx/timeouts retried with backoff. A database lookup runs one
``SELECT ... WHERE lookupField IN (...)`` per batch, in chunks of 500 keys; when
several rows share a key, the first the database returns is used; a database that
cannot be reached raises TransientError (the runtime retries the batch).

Answers, found or not found, are cached in this process for ``cacheTtl`` (default
300 s), across batches, runs and step instances with the same id and lookup; the
cache holds at most 100,000 keys (least recently used first out).

Missing keys (HTTP 404, no row, a null key): ``keep`` (default) keeps the record as
it was (new columns null, a selected column that already exists keeps its value);
``null`` sets the step's columns to null for it, existing ones included; ``reject``
makes it a dead letter whose reason names the step and the key. Any other failure
(a 500 that persists after the retries, a malformed answer) raises TerminalError
naming the step, the key and the status: a lookup never silently yields nulls.

Columns: with ``select``, exactly the selected columns (a selected column replaces an
existing one of that name). Without it, every top-level field of the found records,
unprefixed, except names the record already has (never overwritten). Types are
inferred by pyarrow from the values (objects become structs; values of mixed types
become JSON text); a column with no value in a batch is all nulls.
``StepResult.enriched`` counts the rows that got at least one field from a lookup.
The API key never appears in ``repr``, :meth:`EnrichStep.describe` or any error.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import StepResult, rows_as_dead_letters
from ..columns import as_array
from ..errors import SpecError, TerminalError, TransientError, describe
from ..redaction import ConnectionUrl, redact_text, redact_url
from ..spec import Section, parse_seconds, substitute_env
from .base import Transform, common_step_fields

ON_MISSING = ("keep", "null", "reject")
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
        return _one_record(_at_path(body, self.record_path)[1], step, key)

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
        records = _at_path(body, self.records_path)[1]
        if not isinstance(records, list):
            where = ".".join(self.records_path) or "the body"
            raise TerminalError(f"step {step!r}: expected a list of records at {where} of the bulk answer from "
                                f"{redact_url(self.endpoint)}, got {describe(records)}", step=step)
        found: dict[str, dict] = {}
        for record in records:
            if isinstance(record, dict):
                key = key_text(_at_path(record, self.key_path)[1])
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


# --- the step ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnrichStep(Transform):
    """Adds the fields a lookup finds for each row's ``key``; see the module docstring."""

    id: str
    key: str
    lookup: HttpLookup | BulkLookup | TableLookup
    select: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    on_missing: str = "keep"
    cache_ttl: float = 300.0
    required: bool = True

    type: ClassVar[str] = "enrich"

    @classmethod
    def from_spec(cls, section, ctx) -> "EnrichStep":
        common = common_step_fields(section)
        key = section.get("key", types=str, check=_path_problem)
        select = _select(section)
        lookup = _lookup(section, ctx, key, select)
        on_missing = section.get("on_missing", "keep", types=str, choices=ON_MISSING)
        ttl = section.get("cache_ttl", 300.0, types=(int, float, str), check=_duration_problem)
        section.done()
        return cls(key=key, lookup=lookup, select=select, on_missing=on_missing, cache_ttl=parse_seconds(ttl),
                   **common)

    @property
    def opaque(self) -> bool:
        """Whether the columns it adds are unknown before a lookup answers (no ``select``):
        a dry run on an empty table cannot tell what later steps will see."""
        return self.select is None

    def describe(self) -> dict:
        select = None if self.select is None else {name: ".".join(path) for name, path in self.select}
        return {"type": self.type, "id": self.id, "key": self.key, **self.lookup.describe(), "select": select,
                "onMissing": self.on_missing, "cacheTtl": self.cache_ttl}

    def apply(self, table: pa.Table) -> StepResult:
        values = self._keys(table).to_pylist()
        keys = [key_text(v) for v in values]
        answers = self._answers({k: v for k, v in zip(keys, values) if k is not None})
        records = [answers.get(k) if k is not None else None for k in keys]
        out, enriched = self._with_columns(table, records)
        if self.on_missing != "reject":
            return StepResult(out, enriched=enriched)
        missing = np.array([r is None for r in records], dtype=bool)
        reasons = [self._not_found(k) for k, r in zip(keys, records) if r is None]
        rejects = rows_as_dead_letters(table.filter(pa.array(missing)), reasons)
        return StepResult(out.filter(pa.array(~missing)), rejects, enriched=enriched)

    # --- looking up ---------------------------------------------------------------------------

    def _keys(self, table: pa.Table) -> pa.Array:
        values = _column_at(table, self.key)
        if values is None:
            raise TerminalError(f"step {self.id!r}: key {self.key!r} not found (columns: "
                                f"{', '.join(table.column_names)})", step=self.id, column=self.key)
        return values

    def _answers(self, wanted: dict[str, Any]) -> dict[str, dict | None]:
        """Key text -> record (None: not found), from the cache or the lookup; ``wanted``
        maps each key text to the key's own value (a database compares that one)."""
        if not wanted:
            return {}
        now = time.monotonic()
        answers = CACHE.get_many(self._namespace, wanted, now) if self.cache_ttl > 0 else {}
        todo = {k: v for k, v in wanted.items() if k not in answers}
        if todo:
            fetched = self.lookup.fetch(todo, self.id)
            if self.cache_ttl > 0:
                CACHE.put_many(self._namespace, fetched, now + self.cache_ttl)
            answers.update(fetched)
        return answers

    @property
    def _namespace(self) -> str:
        """Which answers this step may share: same id, same lookup (secrets hashed, never shown)."""
        text = json.dumps([self.id, self.lookup.identity()], default=str, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def _not_found(self, key: str | None) -> str:
        shown = "null" if key is None else repr(key if len(key) <= 60 else key[:57] + "...")
        return f"step {self.id!r}: key {shown} ({self.key}) not found"

    # --- adding columns --------------------------------------------------------------------------

    def _with_columns(self, table: pa.Table, records: list[dict | None]) -> tuple[pa.Table, int]:
        """``table`` with the looked-up columns, and how many rows got a field."""
        got = np.zeros(table.num_rows, dtype=bool)
        for name, path in self._targets(table, records):
            found = [_at_path(r, path) if r is not None else (False, None) for r in records]
            present = np.array([f[0] for f in found], dtype=bool)
            got |= present
            table = self._put(table, name, [f[1] for f in found], present)
        return table, int(got.sum())

    def _targets(self, table: pa.Table, records: list[dict | None]) -> list[tuple[str, tuple[str, ...]]]:
        if self.select is not None:
            return list(self.select)
        names = dict.fromkeys(name for r in records if r is not None for name in r)
        return [(name, (name,)) for name in names if name not in table.column_names]

    def _put(self, table: pa.Table, name: str, values: list, present: np.ndarray) -> pa.Table:
        if name not in table.column_names:
            return table.append_column(name, _inferred(values))
        index = table.column_names.index(name)
        old = table.column(name)
        if self.on_missing != "null":
            if not present.any():
                return table
            values = [v if p else o for v, p, o in zip(values, present, old.to_pylist())]
        return table.set_column(index, name, _inferred(values, old.type))


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


def _at_path(value: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """(whether ``path`` exists in ``value``, the value there)."""
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _column_at(table: pa.Table, path: str) -> pa.Array | None:
    """The values at a column name or a dotted path into struct columns, else None."""
    if path in table.column_names:
        return as_array(table.column(path))
    parts = path.split(".")
    head = next((k for k in range(len(parts) - 1, 0, -1) if ".".join(parts[:k]) in table.column_names), None)
    if head is None:
        return None
    values = as_array(table.column(".".join(parts[:head])))
    for part in parts[head:]:
        if not pa.types.is_struct(values.type) or values.type.get_field_index(part) < 0:
            return None
        values = pc.struct_field(values, part)
    return values


def _inferred(values: list, prefer: pa.DataType | None = None) -> pa.Array:
    """An Arrow array of ``values``: of type ``prefer`` when they fit it, else as
    pyarrow infers them, else (mixed types) as JSON text."""
    if prefer is not None:
        try:
            return pa.array(values, type=prefer)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values],
                        pa.string())


# --- the spec ---------------------------------------------------------------------------------

def _path_problem(value: str) -> str | None:
    if value and all(value.split(".")):
        return None
    return f"expected a field name or a dotted path like 'account.id', got {value!r}"


def _duration_problem(value: Any) -> str | None:
    try:
        parse_seconds(value)
    except ValueError as exc:
        return str(exc)
    return None


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


def _select(section: Section) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    value = section.get("select", None, types=(dict, list))
    if value is None:
        return None
    path = section.at("select")
    items = value.items() if isinstance(value, dict) else ((v, v) for v in value)
    select = []
    for i, (name, source) in enumerate(items):
        where = f"{path}.{name}" if isinstance(value, dict) else f"{path}[{i}]"
        if not isinstance(source, str) or _path_problem(source) or not isinstance(name, str) or not name:
            raise SpecError(where, f"expected a field name or a dotted path like 'profile.segment', "
                                   f"got {describe(source)}")
        select.append((name, _dotted(source)))
    if not select:
        raise SpecError(path, "expected at least one field, got none")
    return tuple(select)


def _lookup(section: Section, ctx, key: str, select) -> HttpLookup | BulkLookup | TableLookup:
    has_http = section.has("endpoint") or section.has("bulk")
    if has_http and section.has("connection"):
        raise SpecError(section.at("connection"), "give either an HTTP endpoint (endpoint or bulk) or a "
                                                  "database table (connection), not both")
    if section.has("connection"):
        return _table_lookup(section, ctx, key, select)
    if not has_http:
        raise SpecError(section.path, "give an 'endpoint' (with {key}), a 'bulk' endpoint or a 'connection'")
    concurrency = section.positive_int("concurrency", 8)
    if section.has("bulk"):
        return _bulk_lookup(section, ctx, concurrency)
    endpoint = _url(section, "endpoint")
    if "{key}" not in endpoint:
        raise SpecError(section.at("endpoint"), f"expected {{key}} in the path or a query parameter "
                                                f"(e.g. https://crm/accounts/{{key}}) or a 'bulk' endpoint, "
                                                f"got {redact_url(endpoint)!r}")
    from ..http import HttpOptions

    record_path = _dotted(section.get("record_path", "", types=str))
    return HttpLookup(endpoint, HttpOptions.from_spec(section, ctx), record_path, concurrency)


def _bulk_lookup(section: Section, ctx, concurrency: int) -> BulkLookup:
    from ..http import HttpOptions

    bulk = section.section("bulk")
    if bulk.has("endpoint") and section.has("endpoint"):
        raise SpecError(bulk.at("endpoint"), "give the bulk endpoint here or at the step's 'endpoint', not both")
    endpoint = _url(bulk if bulk.has("endpoint") else section, "endpoint")
    method = bulk.get("method", "GET", types=str, check=lambda v: None if v.upper() in ("GET", "POST") else
                      f"{v!r} is not one of GET, POST").upper()
    param = bulk.get("param", "ids", types=str)
    if method == "GET" and not param:
        raise SpecError(bulk.at("param"), "a GET bulk endpoint needs the query parameter that takes the keys")
    lookup = BulkLookup(endpoint, HttpOptions.from_spec(section, ctx), method, param,
                        bulk.positive_int("max_keys", 100), _dotted(bulk.get("records_path", "", types=str)),
                        _dotted(bulk.get("key_path", "id", types=str, check=_path_problem)), concurrency)
    bulk.done()
    return lookup


def _table_lookup(section: Section, ctx, key: str, select) -> TableLookup:
    url = ctx.connection(section)
    table = section.get("table", types=str, check=lambda v: None if v.strip() else "expected a table name, got ''")
    lookup_field = section.get("lookup_field", key.split(".")[-1], types=str)
    columns = None if select is None else tuple(dict.fromkeys([lookup_field, *(path[0] for _, path in select)]))
    return TableLookup(url, table, lookup_field, columns)


def _url(section: Section, name: str) -> str:
    text = substitute_env(section.get(name, types=str), section.at(name))
    if not text.startswith(("http://", "https://")):
        raise SpecError(section.at(name), f"expected an http:// or https:// URL, got {redact_url(text)!r}")
    return ConnectionUrl(text)
