"""A REST API as a sink: records POSTed as JSON, in chunks or one by one.

``mode: batch`` (default) sends each batch in chunks of ``batchSize`` (100) records, as
a JSON array or, with ``format: ndjson``, one JSON object per line
(``Content-Type: application/x-ndjson``); ``mode: record`` sends one JSON object per
request. Values are JSON as :func:`~etl_actors.batch.jsonable` makes them (timestamps
and dates as ISO text, decimals as text, NaN as null). Auth, headers, rate limits,
timeouts and retries are the HTTP client's (see :mod:`etl_actors.http`).

Every request carries ``Idempotency-Key: <pipeline>:<batch id>:<chunk>`` (``mode:
record``: ``<pipeline>:<batch id>:<row>``; a record resent alone after its chunk was
refused: ``<pipeline>:<batch id>:<chunk>:<row>``). The keys are the same when a batch is
written again, so at an API that honours them a replayed batch is harmless; at one that
does not, delivery is at least once.

Outcomes:

- a record the API refuses (a 4xx other than 401, 403, 408 and 429) is a dead letter
  (stage ``load``) whose reason names the status and an excerpt of the answer; the rest
  of the batch goes on. In ``mode: batch`` a refused chunk is resent record by record to
  find the refused ones;
- 401 / 403 stop the run (TerminalError "authentication refused");
- 408, 429, 5xx, timeouts and dropped connections are retried by the client; when the
  retries run out, a TransientError naming the endpoint and the status: the runtime
  retries the batch (the chunks already accepted are resent with the same keys).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import pyarrow as pa

from ..batch import DeadLetter, LoadResult, jsonable
from ..errors import SpecError, TerminalError, TransientError
from ..http import HttpClient, HttpError, HttpOptions, run_sync
from ..redaction import redact_url, remember_url
from ..spec import substitute_env
from .base import Sink, SinkWriter

FORMATS = {"json": "application/json", "ndjson": "application/x-ndjson"}
MODES = ("batch", "record")
METHODS = ("POST", "PUT", "PATCH")


@dataclass(frozen=True)
class ApiSink(Sink):
    """Records of each batch sent to ``endpoint``; see the module docstring."""

    type: ClassVar[str] = "api"

    endpoint: str = field(repr=False)
    http: HttpOptions = HttpOptions()
    batch_size: int = 100
    format: str = "json"
    mode: str = "batch"
    method: str = "POST"

    def __post_init__(self):
        if not str(self.endpoint).startswith(("http://", "https://")):
            raise SpecError("endpoint", f"expected an http:// or https:// URL, got {redact_url(self.endpoint)!r}")
        remember_url(self.endpoint)
        for name, value, allowed in (("format", self.format, FORMATS), ("mode", self.mode, MODES),
                                     ("method", self.method, METHODS)):
            if value not in allowed:
                raise SpecError(name, f"{value!r} is not one of {', '.join(allowed)}")
        if self.batch_size < 1:
            raise SpecError("batchSize", f"expected a positive integer, got {self.batch_size}")

    def __reduce__(self):      # built again where it is unpickled, so its secrets are remembered there
        return ApiSink, tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_spec(cls, section, ctx) -> "ApiSink":
        section.get("type", types=str)
        endpoint = substitute_env(section.get("endpoint", types=str), section.at("endpoint"))
        try:
            sink = cls(endpoint=endpoint, http=HttpOptions.from_spec(section, ctx),
                       batch_size=section.positive_int("batch_size", 100),
                       format=section.get("format", "json", types=str, choices=FORMATS),
                       mode=section.get("mode", "batch", types=str, choices=MODES),
                       method=section.get("method", "POST", types=str, choices=METHODS))
        except SpecError as exc:
            raise SpecError(exc.path if exc.path.startswith(section.path) else section.at(exc.path),
                            exc.reason) from None
        section.done()
        return sink

    def open(self, pipeline: str) -> "ApiWriter":
        return ApiWriter(self, pipeline)

    @property
    def where(self) -> str:
        return redact_url(self.endpoint)

    def describe(self) -> dict:
        return {"type": self.type, "endpoint": self.where, "method": self.method, "mode": self.mode,
                "format": self.format, "batchSize": self.batch_size, "http": self.http.describe()}


class ApiWriter(SinkWriter):
    """An open HTTP client sending batches to :attr:`ApiSink.endpoint`."""

    def __init__(self, sink: ApiSink, pipeline: str):
        self.sink, self.pipeline = sink, pipeline
        self.client = HttpClient(sink.http)

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Send every row; refused rows come back as dead letters (see the module docstring)."""
        rows = [jsonable(row) for row in table.to_pylist()] if table.num_columns else []
        return run_sync(self._write(rows, f"{self.pipeline}:{batch_id}"))

    async def _write(self, rows: list[dict], prefix: str) -> LoadResult:
        dead: list[DeadLetter] = []
        if self.sink.mode == "record":
            for i, row in enumerate(rows):
                dead += await self._send_one(row, f"{prefix}:{i}")
            return LoadResult(loaded=len(rows) - len(dead), failed=len(dead), dead_letters=tuple(dead))
        size = self.sink.batch_size
        for chunk, start in enumerate(range(0, len(rows), size)):
            records = rows[start:start + size]
            try:
                await self._send(records, f"{prefix}:{chunk}")
            except HttpError as exc:
                self._raise_unless_refused(exc)
                for i, row in enumerate(records, start):
                    dead += await self._send_one(row, f"{prefix}:{chunk}:{i}", refused=exc if len(records) == 1
                                                 else None)
        return LoadResult(loaded=len(rows) - len(dead), failed=len(dead), dead_letters=tuple(dead))

    async def _send_one(self, row: dict, key: str, refused: HttpError | None = None) -> list[DeadLetter]:
        """``[]`` when the API takes ``row`` alone, else its dead letter."""
        if refused is None:
            try:
                await self._send([row], key, single=True)
                return []
            except HttpError as exc:
                self._raise_unless_refused(exc)
                refused = exc
        excerpt = f": {refused.excerpt}" if refused.excerpt else ""
        return [DeadLetter(f"refused by {self.sink.where}: HTTP {refused.status}{excerpt}", row)]

    async def _send(self, records: list[dict], key: str, single: bool = False) -> None:
        await self.client.request(self.sink.method, self.sink.endpoint, data=self._body(records, single),
                                  headers={"Content-Type": FORMATS[self.sink.format]}, idempotency_key=key)

    def _body(self, records: list[dict], single: bool) -> bytes:
        if self.sink.format == "ndjson":
            return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode()
        payload: Any = records[0] if single and self.sink.mode == "record" else records
        return json.dumps(payload, allow_nan=False).encode()

    def _raise_unless_refused(self, exc: HttpError) -> None:
        """Retries ran out (TransientError) or the credentials were refused
        (TerminalError): the batch cannot go on. Other refusals are the records' own."""
        if exc.retryable_status:
            raise TransientError(f"api sink: {self.sink.method} {self.sink.where}: {exc.reason}",
                                 status=exc.status) from None
        if exc.status in (401, 403):
            raise TerminalError(f"api sink: {self.sink.method} {self.sink.where}: {exc.reason}",
                                status=exc.status) from None

    def close(self) -> None:
        try:
            run_sync(self.client.close())
        except Exception:  # noqa: BLE001 - closing a session that is being discarded
            pass
