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
key). Null keys are not looked up and count as missing. How each lookup asks (its
concurrency, rate limit and retries, the database's chunks) is described in
:mod:`etl_actors.transforms.lookups`.

Answers, found or not found, are cached in this process for ``cacheTtl`` (default
300 s), across batches, runs and step instances with the same id and lookup.

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

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import StepResult, rows_as_dead_letters
from ..columns import as_array
from ..errors import SpecError, TerminalError, describe
from ..redaction import ConnectionUrl, redact_url
from ..spec import Section, parse_seconds, substitute_env
from .base import Transform, common_step_fields
from .lookups import CACHE, BulkLookup, HttpLookup, TableLookup, at_path, key_text
from .lookups import LookupCache  # noqa: F401 - re-exported: imported from here

__all__ = ["EnrichStep", "LookupCache", "CACHE"]

ON_MISSING = ("keep", "null", "reject")


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
            found = [at_path(r, path) if r is not None else (False, None) for r in records]
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
