"""A SQL query or table as a source, full or incremental by a cursor column.

One partition, ``"query"``. An incremental source reads the rows whose ``cursorField``
is greater than the committed position, ordered by it, streamed through a server-side
cursor in batches of ``batchSize`` rows. The position after a batch is
``{"cursor": <value>}`` (datetimes as ISO strings), chosen so that resuming never skips
a row: when the row after a batch has the same cursor value as the batch's last row,
the position stays at the previous distinct value (rows sharing it may then be read
twice after a crash, never lost). A non-incremental source reads everything each run
(position ``None``).

Before there is a position the query runs with the watermark bound to
``initialWatermark`` if given, else to a value below any the cursor column can hold:
``-inf`` on SQLite (numbers sort before text there, so this also covers timestamps
stored as text); on PostgreSQL one chosen by the column's type (``-infinity`` for
timestamps and dates, the smallest integer, ``-inf`` for floats and numerics, ``''``
for text; a cursor holding the empty string is then not read).

``lookback`` re-reads that far behind the position, for rows committed late: a number
for numeric cursors, a duration (``30s``, ``10m``, ``2h``, ``1d``, ``1w``) for
timestamp cursors.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Iterator, Mapping

import pyarrow as pa
import sqlalchemy as sa

from ..batch import SourceBatch, jsonable, table_digest
from ..db import db_reason, engine_for, redact
from ..errors import SpecError, TerminalError, TransientError
from .base import Source

PARTITION = "query"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PARAM = re.compile(r"(?<![:\w]):watermark\b")
# PostgreSQL type OIDs -> Arrow types, so every batch has the same schema.
_PG_TYPES = {16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 700: pa.float32(),
             701: pa.float64(), 25: pa.string(), 1043: pa.string(), 1042: pa.string(), 19: pa.string(),
             1082: pa.date32(), 1114: pa.timestamp("us"), 1184: pa.timestamp("us", "UTC"), 17: pa.binary(),
             2950: pa.string(), 114: pa.string(), 3802: pa.string()}
_PG_MINIMUM = {20: -2**63, 21: -2**63, 23: -2**63, 700: float("-inf"), 701: float("-inf"),
               1700: float("-inf"), 1082: "-infinity", 1114: "-infinity", 1184: "-infinity",
               25: "", 1043: "", 1042: "", 19: ""}


def bind_placeholders(sql: str) -> str:
    """``?`` outside quoted strings and identifiers becomes ``:watermark``."""
    out, quote = [], None
    for char in sql:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            char = ":watermark"
        out.append(char)
    return "".join(out)


def _unquoted(sql: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "''", sql)


def has_watermark(sql: str) -> bool:
    return bool(_PARAM.search(_unquoted(sql)))


def parse_lookback(value: Any) -> float | timedelta | None:
    """A number, or a duration such as ``10m`` as a timedelta; raises ValueError."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
        return value
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a number or a duration such as '10m', '2h', '1d', got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


@dataclass(frozen=True)
class DatabaseSource(Source):
    """Rows of ``query`` (or ``table``) from the database at ``url``."""

    type: ClassVar[str] = "database"

    url: str = field(repr=False)
    query: str | None = None
    table: str | None = None
    incremental: bool = False
    cursor_field: str = "updated_at"
    initial_watermark: Any = None
    lookback: float | str | None = None
    batch_size: int = 50_000

    def __post_init__(self):
        if (self.query is None) == (self.table is None):
            raise SpecError("query", "expected one of query or table" + (", got both" if self.query else ""))
        try:
            parse_lookback(self.lookback)
        except ValueError as exc:
            raise SpecError("lookback", str(exc)) from None
        if self.query and not self.incremental and has_watermark(bind_placeholders(self.query)) \
                and self.initial_watermark is None:
            raise SpecError("query", "has a watermark placeholder but incremental is false; "
                                     "set incremental: true or initialWatermark")

    @classmethod
    def from_spec(cls, section, ctx) -> "DatabaseSource":
        url = ctx.connection(section)
        query, table = section.get("query", None, types=str), section.get("table", None, types=str)
        if (query is None) == (table is None):
            raise SpecError(section.at("query"), "expected one of query or table, got both" if query
                            else "is required (or table)")
        section.get("lookback", None, types=(int, float, str), check=_lookback_problem)
        try:
            source = cls(url=url, query=query, table=table,
                         incremental=section.get("incremental", False, types=bool),
                         cursor_field=section.get("cursor_field", "updated_at", types=str),
                         initial_watermark=section.get("initial_watermark", None, types=(str, int, float)),
                         lookback=section.get("lookback", None),
                         batch_size=section.positive_int("batch_size", 50_000))
        except SpecError as exc:
            raise SpecError(section.at(exc.path), exc.reason) from None
        section.done()
        return source

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        return [PARTITION]

    def view_watermark(self, watermark: Mapping[str, Any]) -> Any:
        """The committed cursor value as users read it (timestamps in ISO form), or None."""
        position = watermark.get(PARTITION)
        value = position.get("cursor") if isinstance(position, Mapping) else None
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).isoformat()
            except ValueError:
                return value
        return value

    def describe(self) -> dict:
        return {"type": self.type, "connection": redact(self.url), "table": self.table,
                "query": self.query, "incremental": self.incremental,
                "cursorField": self.cursor_field if self.incremental else None, "batchSize": self.batch_size}

    # --- reading -----------------------------------------------------------------

    def read(self, partition: str, position: Any | None) -> Iterator[SourceBatch]:
        """Stream the rows after ``position`` in batches of ``batch_size``."""
        stored = position.get("cursor") if isinstance(position, Mapping) else None
        incoming = position if self.incremental and stored is not None else None
        try:
            with engine_for(self.url).connect() as conn:
                sql = self.sql(conn.dialect)
                params = {"watermark": self._watermark(conn, sql, stored)} if has_watermark(sql) else {}
                streaming = conn.execution_options(stream_results=True, yield_per=self.batch_size)
                result = streaming.execute(sa.text(sql), params)
                yield from _Batches(self, list(result.keys()), _hinted_types(conn, result)).run(result, incoming)
        except sa.exc.OperationalError as exc:
            raise TransientError(f"database source: {db_reason(exc)}", partition=partition) from None
        except sa.exc.DBAPIError as exc:
            raise TerminalError(f"database source: {db_reason(exc)}", partition=partition) from None

    def sql(self, dialect) -> str:
        """The statement this source runs, with ``:watermark`` when incremental."""
        quote = dialect.identifier_preparer.quote
        cursor = quote(self.cursor_field)
        if self.table is not None:
            name = ".".join(quote(part) for part in self.table.split("."))
            where = f" WHERE {cursor} > :watermark ORDER BY {cursor}" if self.incremental else ""
            return f"SELECT * FROM {name}{where}"
        query = bind_placeholders(self.query.strip().rstrip(";"))
        if not self.incremental:
            return query
        if not has_watermark(query):
            query = f"SELECT * FROM ({query}) AS etl_w WHERE {cursor} > :watermark"
        return f"SELECT * FROM ({query}) AS etl_q ORDER BY {cursor}"

    def _watermark(self, conn, sql: str, stored: Any) -> Any:
        if not self.incremental:
            return self.initial_watermark
        if stored is None:
            return self.initial_watermark if self.initial_watermark is not None else self._minimum(conn, sql)
        return shift(stored, parse_lookback(self.lookback))

    def _minimum(self, conn, sql: str) -> Any:
        if conn.dialect.name != "postgresql":
            return float("-inf")
        probe = conn.execute(sa.text(f"SELECT * FROM ({sql}) AS etl_probe LIMIT 0"), {"watermark": None})
        oids = {c.name: c.type_code for c in probe.cursor.description}
        probe.close()
        if oids.get(self.cursor_field) not in _PG_MINIMUM:
            raise TerminalError(f"cannot choose a starting value for cursor {self.cursor_field!r} "
                                f"(type oid {oids.get(self.cursor_field)}); set initialWatermark")
        return _PG_MINIMUM[oids[self.cursor_field]]


def _lookback_problem(value: Any) -> str | None:
    try:
        parse_lookback(value)
    except ValueError as exc:
        return str(exc)
    return None


def shift(value: Any, lookback: float | timedelta | None) -> Any:
    """``value`` moved back by ``lookback``, in the same representation."""
    if not lookback:
        return value
    if isinstance(lookback, timedelta) and isinstance(value, str):
        try:
            moved = datetime.fromisoformat(value) - lookback
        except ValueError:
            raise TerminalError(f"lookback needs a timestamp cursor, got {value!r}") from None
        sep = "T" if "T" in value else " "
        timespec = "microseconds" if "." in value else "seconds"
        return moved.isoformat(sep=sep, timespec=timespec)
    if isinstance(lookback, (int, float)) and isinstance(value, (int, float)):
        return value - lookback
    raise TerminalError(f"lookback {lookback!r} does not apply to cursor value {value!r}")


def _hinted_types(conn, result) -> dict[str, pa.DataType]:
    """Arrow types known from the result's description before any row is seen."""
    if conn.dialect.name != "postgresql" or result.cursor is None:
        return {}
    hints = {}
    for column in result.cursor.description:
        if column.type_code == 1700:
            precision, scale = column.precision, column.scale
            hints[column.name] = pa.decimal128(precision, scale) if precision else pa.decimal128(38, 18)
        elif column.type_code in _PG_TYPES:
            hints[column.name] = _PG_TYPES[column.type_code]
    return hints


class _Batches:
    """Turns row partitions into SourceBatches with one schema and safe positions."""

    def __init__(self, source: DatabaseSource, columns: list[str], hints: dict[str, pa.DataType]):
        self.source, self.columns, self.hints = source, columns, hints
        self.schema: pa.Schema | None = None
        self.cursor = None
        if source.incremental:
            if source.cursor_field not in columns:
                raise TerminalError(f"cursor field {source.cursor_field!r} is not a column of the result "
                                    f"(columns: {', '.join(columns)})")
            self.cursor = columns.index(source.cursor_field)

    def run(self, result, incoming: Any) -> Iterator[SourceBatch]:
        pending, start = None, 0
        for rows in result.partitions(self.source.batch_size):
            if pending is not None:
                batch = self.batch(pending, rows[0], incoming, start)
                incoming, start = batch.position, start + len(pending)
                yield batch
            pending = rows
        if pending:
            yield self.batch(pending, None, incoming, start)

    def batch(self, rows, following, incoming: Any, start: int) -> SourceBatch:
        table = self.table(rows)
        digest = table_digest(table, "sha1", 12)   # as ids were made before: a replay keeps its ids
        if self.cursor is None:
            return SourceBatch(table, f"{PARTITION}#{start}+{len(rows)}:{digest}", PARTITION, None)
        first, last = jsonable(rows[0][self.cursor]), jsonable(rows[-1][self.cursor])
        position = {"cursor": last}
        if following is not None and following[self.cursor] == rows[-1][self.cursor]:
            position = self.before_tie(rows, incoming)
        return SourceBatch(table, f"{first}..{last}#{len(rows)}:{digest}", PARTITION, position)

    def before_tie(self, rows, incoming: Any) -> Any:
        """The last cursor value in ``rows`` before the trailing run of equal values."""
        last = rows[-1][self.cursor]
        for row in reversed(rows):
            if row[self.cursor] != last:
                return _not_behind({"cursor": jsonable(row[self.cursor])}, incoming)
        return incoming

    def table(self, rows) -> pa.Table:
        values = list(zip(*rows)) if rows else [()] * len(self.columns)
        if self.schema is None:
            arrays = [_array(v, self.hints.get(name)) for name, v in zip(self.columns, values)]
            arrays = [a.cast(pa.string()) if pa.types.is_null(a.type) else a for a in arrays]
            self.schema = pa.schema([(name, a.type) for name, a in zip(self.columns, arrays)])
        else:
            arrays = [_array(v, f.type) for v, f in zip(values, self.schema)]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _array(values, type_: pa.DataType | None) -> pa.Array:
    """One column as Arrow, of ``type_`` when given; values Arrow cannot take as they
    are (UUIDs, dicts of JSON) are converted to strings."""
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    try:
        return pa.array(values).cast(type_) if type_ is not None else pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        strings = pa.array([_text(v) for v in values], pa.string())
        return strings.cast(type_) if type_ is not None else strings


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _not_behind(position: dict, floor: Any) -> dict:
    if not isinstance(floor, Mapping):
        return position
    try:
        return position if position["cursor"] >= floor["cursor"] else dict(floor)
    except TypeError:
        return position

