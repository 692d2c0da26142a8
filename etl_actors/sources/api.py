"""A paginated REST API as a source, full or incremental by a cursor field.

The seed's shape needs no more than ``{type: api, endpoint, apiKey}``: bearer auth,
``?page=&per_page=100``, records under ``results``, ``has_more`` to go on, and with
``incremental: true`` ``?updated_since=`` set to the committed watermark: the greatest
``cursorField`` value (default ``updated_at``) among the records read so far.

One partition, ``"api"``. Pages are the resume unit: one page is one batch, and its
position resumes at the *next* page with the same ``since``::

    {"since": "2024-03-01T00:00:00+00:00", "page": 41, "next": 42, "max": "2024-03-09T...", "complete": false}

``page`` counts the pages read in this sync, ``next`` is the next page number, offset,
cursor or link, ``max`` the greatest cursor value seen in the sync. A run killed after
page 40 of 90 resumes at page 41. After the last page ``complete`` is true: the next
run starts a new sync at the first page, with ``since`` = ``max`` when incremental
(a full refresh otherwise). A position is never ``done``: the partition is read on
every run.

Pagination (``pagination: {type: ...}``, default ``page``; also ``offset``, ``cursor``,
``link``) is described in :mod:`etl_actors.sources.pagination`.

Records are the list at ``recordsPath`` (dotted, default ``results``); a body that is a
JSON array is the list itself, and an item that is not an object is read as
``{"value": item}``. A path that is not in the answer fails the page (a typo must not
read as "no records"); a null there is an empty page. Every sync stops at an empty page;
an empty page that ends a sync already under way is still a batch (no rows; the
previous page's columns when this read saw one, else none), so that its position
completes the sync.

Records become Arrow columns by name (keys missing from a record are nulls); nested
objects stay structs. A column whose values Arrow cannot hold in one type (an ``id``
that is a number in one record and text in another) becomes text for that page:
strings as they are, other values as JSON.

Failures: 408, 429, 5xx, timeouts and dropped connections are retried by the HTTP
client (``maxRetries``, honouring ``Retry-After``). Retries run out, a refused request
(401: "authentication refused"), malformed JSON or a missing records list stop the
partition with a TerminalError naming the page (``page 41 of https://host/path: HTTP
500 after 5 retries``); with ``errorHandling: continue`` the run records it as a dead
letter of stage ``extract`` instead, and the committed position stays before that page.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar, Iterator, Mapping

import pyarrow as pa
from yarl import URL

from ..batch import SourceBatch, table_digest
from ..errors import SpecError, TerminalError, describe as describe_value
from ..http import HttpClient, HttpError, HttpOptions, run_sync
from ..redaction import is_secret_name, redact_headers, redact_url, remember, remember_url
from ..spec import substitute_env
from .base import Source
from .pagination import LinkPagination, PagePagination, describe_pagination, dig, links, pagination_from_spec

PARTITION = "api"


@dataclass(frozen=True)
class ApiSource(Source):
    """Pages of records from ``endpoint``; see the module docstring."""

    type: ClassVar[str] = "api"

    endpoint: str = field(repr=False)
    http: HttpOptions = HttpOptions()
    pagination: Any = PagePagination()
    records_path: str = "results"
    params: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    incremental: bool = False
    cursor_field: str = "updated_at"
    since_param: str = "updated_since"
    initial_watermark: str | None = None
    error_handling: str = "fail"

    def __post_init__(self):
        if not str(self.endpoint).startswith(("http://", "https://")):
            raise SpecError("endpoint", f"expected an http:// or https:// URL, got {redact_url(self.endpoint)!r}")
        remember_url(self.endpoint)
        if self.error_handling not in ("fail", "continue"):
            raise SpecError("errorHandling", f"{self.error_handling!r} is not one of fail, continue")
        remember(*(value for name, value in self.params if is_secret_name(name)))

    def __reduce__(self):      # built again where it is unpickled, so its secrets are remembered there
        return _rebuild, (type(self), {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_spec(cls, section, ctx) -> "ApiSource":
        section.get("type", types=str)
        endpoint = substitute_env(section.get("endpoint", types=str), section.at("endpoint"))
        http = HttpOptions.from_spec(section, ctx, rate_limit_delay_ms=100.0)
        initial = section.get("initial_watermark", None, types=(str, int, float))
        try:
            source = cls(endpoint=endpoint, http=http, pagination=pagination_from_spec(section),
                         records_path=section.get("records_path", "results", types=str),
                         params=_params(section),
                         incremental=section.get("incremental", False, types=bool),
                         cursor_field=section.get("cursor_field", "updated_at", types=str),
                         since_param=section.get("since_param", "updated_since", types=str),
                         initial_watermark=None if initial is None else str(initial),
                         error_handling=section.get("error_handling", "fail", types=str,
                                                    choices=("fail", "continue")))
        except SpecError as exc:
            raise SpecError(section.at(exc.path) if not exc.path.startswith(section.path) else exc.path,
                            exc.reason) from None
        section.done()
        return source

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        return [PARTITION]

    def read(self, partition: str, position: Any | None) -> Iterator[SourceBatch]:
        """The pages after ``position``, one batch each (see the module docstring)."""
        sync = _Sync.resume(self, position)
        client = HttpClient(self.http)
        try:
            while sync is not None:
                batch, sync = run_sync(self._page(client, partition, sync))
                if batch is not None:
                    yield batch
        finally:
            _close_quietly(client)

    async def _page(self, client: HttpClient, partition: str, sync: "_Sync") -> tuple:
        """Fetch the page ``sync`` points at: ``(batch or None, the sync after it or None)``."""
        url, query = self._request(sync)
        number = sync.page + 1
        try:
            response = await client.request("GET", url, params=query)
        except HttpError as exc:
            detail = f": {exc.excerpt}" if exc.excerpt and exc.status not in (401, 403) \
                and not exc.retryable_status else ""
            raise TerminalError(f"page {number} of {self.where}: {exc.reason}{detail}", partition=partition,
                                status=exc.status) from None
        try:
            body = json.loads(response.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TerminalError(f"page {number} of {self.where}: malformed JSON ({exc})", partition=partition) \
                from None
        records = self._records(body, number, partition)
        following = self.pagination.following(sync.next, body, records, links(response, url))
        if isinstance(self.pagination, LinkPagination) and following is not None and self.params:
            following = str(URL(following).without_query_params(*dict(self.params)))   # re-added per request
        return sync.after(self, records, following, partition)

    def _request(self, sync: "_Sync") -> tuple[str, dict]:
        own = dict(self.params)
        if isinstance(self.pagination, LinkPagination) and sync.next is not None:
            return str(URL(sync.next).update_query(own)), {}
        since = {self.since_param: sync.since} if self.incremental and sync.since is not None else {}
        return self.endpoint, {**own, **since, **self.pagination.params(sync.next)}

    def _records(self, body: Any, number: int, partition: str) -> list:
        records = body if isinstance(body, list) else dig(body, self.records_path)
        if records is None and isinstance(body, Mapping) and _has_path(body, self.records_path):
            return []
        if not isinstance(records, list):
            got = f"keys {', '.join(map(str, body))}" if isinstance(body, Mapping) else describe_value(body)
            raise TerminalError(f"page {number} of {self.where}: expected a list of records at "
                                f"{self.records_path!r}, got {describe_value(records) if records is not None else got}",
                                partition=partition)
        return [r if isinstance(r, Mapping) else {"value": r} for r in records]

    @property
    def where(self) -> str:
        return redact_url(self.endpoint)

    def view_watermark(self, watermark: Mapping[str, Any]) -> Any:
        """``{"updatedSince", "nextPage", "next"}``: what the next run sends, and the page
        (counted from 1 in this sync) and page key (number, offset, cursor or link) it
        starts at."""
        sync = _Sync.resume(self, watermark.get(PARTITION))
        return {"updatedSince": sync.since if self.incremental else None, "nextPage": sync.page + 1,
                "next": sync.next}

    def describe(self) -> dict:
        return {"type": self.type, "endpoint": self.where, "pagination": describe_pagination(self.pagination),
                "recordsPath": self.records_path, "params": redact_headers(self.params),
                "incremental": self.incremental, "cursorField": self.cursor_field if self.incremental else None,
                "sinceParam": self.since_param if self.incremental else None,
                "errorHandling": self.error_handling, "http": self.http.describe()}


REPEATS = 5     # identical pages in a row (after the first) that end a sync as an API that does not move on


@dataclass(frozen=True)
class _Sync:
    """Where a sync stands: its ``since``, pages read, the next page's key, the
    greatest cursor value seen (``max``), and (not kept in the position) the schema of
    the page before, for an empty last page."""

    since: str | None
    page: int
    next: Any
    max: Any
    schema: pa.Schema | None = None
    digest: str | None = None           # the page before's rows (not kept): an API that repeats a page
    repeats: int = 0                    # ... REPEATS times in a row, saying more follow, stops the sync

    @classmethod
    def resume(cls, source: ApiSource, position: Any) -> "_Sync":
        """The sync a position continues, or the new one after a complete (or no) position."""
        if not isinstance(position, Mapping):
            return cls(source.initial_watermark, 0, source.pagination.first(), None)
        if position.get("complete"):
            since = (position.get("max") or position.get("since")) if source.incremental else None
            return cls(None if since is None else str(since), 0, source.pagination.first(), None)
        return cls(position.get("since"), int(position.get("page", 0)), position.get("next"), position.get("max"))

    def after(self, source: ApiSource, records: list, following: Any, partition: str) -> tuple:
        """The batch of this page's ``records`` and the sync that goes on after it."""
        greatest = _greatest(self.max, (r.get(source.cursor_field) for r in records)) if source.incremental \
            else None
        last = following is None or not records
        position = {"since": self.since, "page": self.page + 1, "next": None if last else following,
                    "max": greatest, "complete": last}
        if not records and self.page == 0:
            return None, None                    # nothing new: the committed position stands
        table = to_table(records) if records or self.schema is None else self.schema.empty_table()
        digest = table_digest(table, "sha1", 12)
        repeats = self.repeats + 1 if records and digest == self.digest else 0
        if repeats >= REPEATS and not last:
            raise TerminalError(f"pages {self.page + 1 - repeats} to {self.page + 1} of {source.where} hold the same "
                                "records and say more follow: the API does not move on (check the pagination "
                                "settings)", partition=partition)
        batch = SourceBatch(table, f"{PARTITION}:{self.since or '-'}:{self.page + 1}:{digest}", partition, position)
        return batch, (None if last else _Sync(self.since, self.page + 1, following, greatest, table.schema, digest,
                                               repeats))


def _rebuild(cls: type, values: dict) -> Any:
    return cls(**values)


# --- records -> Arrow ----------------------------------------------------------------------

def to_table(records: list[Mapping]) -> pa.Table:
    """Records as a table, one column per key in first-seen order. A column whose
    values have no common Arrow type becomes text (strings kept, others as JSON)."""
    names = list(dict.fromkeys(key for record in records for key in record))
    if not names:                        # records without fields still count as rows
        return pa.table({"_": pa.nulls(len(records))}).drop_columns(["_"])
    columns = [_column([record.get(name) for record in records]) for name in names]
    return pa.Table.from_arrays(columns, names=[str(n) for n in names])


def _column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError):
        return pa.array([_text(v) for v in values], pa.string())


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


# --- helpers --------------------------------------------------------------------------------

def _has_path(body: Mapping, path: str) -> bool:
    head, _, rest = path.rpartition(".")
    parent = dig(body, head) if head else body
    return isinstance(parent, Mapping) and rest in parent


def _greatest(current: Any, values) -> Any:
    best = current
    for value in values:
        if value is not None and (best is None or _order(value) > _order(best)):
            best = value
    return best


def _order(value: Any) -> tuple:
    """Sort key of a cursor value: numbers, then timestamps, then other text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    text = str(value)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return (2, 0, text)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return (1, moment.timestamp(), text)


def _params(section) -> tuple[tuple[str, str], ...]:
    params = section.section("params", None)
    if params is None:
        return ()
    items = []
    for name, value in params.data.items():
        path = f"{params.path}.{name}"
        if not isinstance(value, (str, int, float, bool)):
            raise SpecError(path, f"expected a string or number, got {describe_value(value)}")
        text = substitute_env(value if isinstance(value, str) else json.dumps(value), path)
        if is_secret_name(str(name)):
            remember(text)
        items.append((str(name), text))
    return tuple(items)


def _close_quietly(client: HttpClient) -> None:
    try:
        run_sync(client.close())
    except Exception:  # noqa: BLE001 - closing a session that is being discarded
        pass

