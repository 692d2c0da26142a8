"""The database side of quality rules: run-wide seen values and reference lookups.

:func:`claim_values` keeps the values a ``unique`` rule has seen in one run, in the
event log's database (SQLite or PostgreSQL), so transformers in several processes
share them. Per batch it runs one bulk ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``
(each value claimed by the record that first offered it) and one ``SELECT`` of the
owners, each with the batch's values as one array parameter (PostgreSQL ``unnest`` /
``= ANY``, SQLite ``json_each``), however many there are. The owner of a
value never changes during a run, so a batch transformed again (same ``batch_id``)
gets the same answers. The first claim a process makes for a run deletes the
pipeline's rows of all but its :data:`KEEP_RUNS` latest other runs, which keeps the
table bounded and lets a redrive judge its letters against the run they came from.

:class:`Reference` answers which values a ``foreign-key`` rule's reference column
holds, in one ``SELECT ... WHERE field IN (...)`` per batch (one per :data:`CHUNK`
distinct values), never one query per record.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .batch import jsonable
from .db import db_reason, engine_for, redact
from .errors import EtlError, TerminalError, TransientError
from .eventlog import EventLog, _write_transaction, quality_seen_table

CHUNK = 5000    # values per IN list / bulk insert, well below SQLite's and PostgreSQL's parameter limits

seen_table = quality_seen_table
KEEP_RUNS = 10

_swept: set[tuple[str, str, str]] = set()


def value_hash(value: Any) -> str:
    """A stable digest of a value, the same in every process: equal numbers are equal
    (``1`` and ``1.0``), text and numbers are not (``"1"`` and ``1``)."""
    if isinstance(value, str):
        key = "s" + value
    elif isinstance(value, bool):
        key = "b" + str(int(value))
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        key = "i" + str(int(value))
    elif isinstance(value, float):
        key = "f" + repr(value)
    else:
        key = "j" + json.dumps(jsonable(value), sort_keys=True)
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def claim_values(url: str, pipeline: str, run_id: str, rule: str, batch_id: str,
                 claims: Mapping[str, int], wanted: Iterable[str]) -> dict[str, tuple[str, int]]:
    """Claim each ``value_hash -> idx`` of ``claims`` for the record ``(batch_id, idx)``
    unless another record owns it already; return the owner ``(batch_id, idx)`` of every
    hash in ``wanted`` that has one. Two statements, whatever the number of values."""
    key = (pipeline, run_id, rule)
    engine = _ready_engine(url)
    try:
        with _claiming(engine) as conn:
            _sweep_other_runs(conn, url, pipeline, run_id)
            if claims:
                conn.execute(_claim(conn.dialect.name, key, batch_id, dict(sorted(claims.items()))))
            owners = conn.execute(_owners(conn.dialect.name, key, list(dict.fromkeys(wanted)))).all()
            return {h: (b, i) for h, b, i in owners}
    except sa.exc.DBAPIError as exc:
        raise _store_error(url, exc) from None


def _claim(dialect: str, key: tuple[str, str, str], batch_id: str, claims: dict[str, int]):
    """``INSERT ... SELECT`` from one array parameter (PostgreSQL ``unnest``, SQLite
    ``json_each``), in hash order: concurrent claimers lock rows in one order."""
    if dialect == "postgresql":
        rows = sa.func.unnest(_array(list(claims), sa.Text), _array(list(claims.values()), sa.Integer)) \
            .table_valued("h", "i").render_derived("claims")
        hashes, idx, insert = rows.c.h, rows.c.i, postgresql.insert(seen_table)
    else:
        rows = sa.func.json_each(sa.literal(json.dumps(claims))).table_valued("key", "value")
        hashes, idx, insert = rows.c.key, rows.c.value, sqlite.insert(seen_table)
    # SQLite reads "SELECT ... FROM f(...) ON CONFLICT" as a join unless a WHERE comes between
    source = sa.select(*map(sa.literal, key), hashes, sa.literal(batch_id), idx,
                       sa.literal(time.time(), sa.Float)).where(sa.true())
    return insert.from_select(["pipeline", "run_id", "rule", "value_hash", "batch_id", "idx", "claimed_at"],
                              source).on_conflict_do_nothing()


def _owners(dialect: str, key: tuple[str, str, str], hashes: list[str]):
    t = seen_table
    if dialect == "postgresql":
        among = t.c.value_hash == sa.any_(_array(hashes, sa.Text))
    else:
        listed = sa.func.json_each(sa.literal(json.dumps(hashes))).table_valued("value")
        among = t.c.value_hash.in_(sa.select(listed.c.value))
    pipeline, run_id, rule = key
    return sa.select(t.c.value_hash, t.c.batch_id, t.c.idx).where(
        t.c.pipeline == pipeline, t.c.run_id == run_id, t.c.rule == rule, among)


def _array(values: list, item: sa.types.TypeEngine):
    return sa.literal(values, postgresql.ARRAY(item))


def _sweep_other_runs(conn: sa.Connection, url: str, pipeline: str, run_id: str) -> None:
    """Once per process and run: forget the values of the pipeline's other runs but
    the :data:`KEEP_RUNS` latest (a redrive checks its letters against their run's)."""
    key = (str(url), pipeline, run_id)
    if key in _swept:
        return
    t = seen_table
    latest = sa.func.max(t.c.claimed_at)
    runs = [r for r, in conn.execute(sa.select(t.c.run_id).where(t.c.pipeline == pipeline, t.c.run_id != run_id)
                                     .group_by(t.c.run_id).order_by(latest.desc().nulls_last()))]
    if len(runs) > KEEP_RUNS:
        conn.execute(t.delete().where(t.c.pipeline == pipeline, t.c.run_id.in_(runs[KEEP_RUNS:])))
    _swept.add(key)


def _claiming(engine: sa.Engine):
    """A transaction that writes first: SQLite takes its write lock at ``BEGIN
    IMMEDIATE`` (waiting within the busy timeout), PostgreSQL row locks as it inserts."""
    return _write_transaction(engine, None)


def _ready_engine(url: str) -> sa.Engine:
    """The engine of the event log at ``url``; opening the log creates ``etl_quality_seen``
    (once per URL and process), and says so when the log cannot be reached."""
    EventLog(url)
    return engine_for(url)


def _store_error(url: str, exc: BaseException) -> EtlError:
    reason = db_reason(exc)
    if isinstance(exc, sa.exc.OperationalError):
        return TransientError(f"quality store {redact(url)} is unavailable: {reason}")
    return TerminalError(f"quality store {redact(url)} failed: {reason}")


def _chunks(items: Sequence) -> Iterator[Sequence]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


# --- foreign keys ---------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """The column ``field`` of ``table`` (``schema.table`` allowed) in the database at
    ``url``: the values a foreign key may take."""

    url: str = field(repr=False)
    table: str
    field: str

    def open(self) -> None:
        """Learn the reference column's type (once per process and reference), so
        values are compared as that type: ``'42'`` finds ``42`` in an integer column."""
        _column_types.pop(self._key(), None)
        self._converter()

    def existing(self, values: Sequence[Any]) -> tuple[list[Any], set]:
        """``values`` as the column's type (None where one cannot be: it matches
        nothing), and the set of those the column holds."""
        convert = self._converter()
        keys = [convert(v) for v in values]
        wanted = sorted({k for k in keys if k is not None}, key=repr)
        found: set = set()
        try:
            with engine_for(self.url).connect() as conn:
                for chunk in _chunks(wanted):
                    found.update(conn.execute(self._select(chunk)).scalars())
        except sa.exc.DBAPIError as exc:
            raise self._error(exc) from None
        return keys, found

    def describe(self) -> dict:
        return {"connection": redact(self.url), "table": self.table, "field": self.field}

    def _select(self, values: Sequence[Any]):
        schema, _, name = self.table.rpartition(".")
        column = sa.column(self.field)
        return (sa.select(column).distinct()
                .select_from(sa.table(name, column, schema=schema or None)).where(column.in_(values)))

    def _key(self) -> tuple[str, str, str]:
        return (str(self.url), self.table, self.field)

    def _converter(self) -> Callable[[Any], Any]:
        convert = _column_types.get(self._key())
        if convert is None:
            convert = _column_types[self._key()] = _converter_for(self._reflect())
        return convert

    def _reflect(self) -> sa.types.TypeEngine:
        schema, _, name = self.table.rpartition(".")
        try:
            columns = sa.inspect(engine_for(self.url)).get_columns(name, schema=schema or None)
        except sa.exc.NoSuchTableError:
            raise TerminalError(f"reference table {self.table!r} not found in {redact(self.url)}") from None
        except sa.exc.DBAPIError as exc:
            raise self._error(exc) from None
        for column in columns:
            if column["name"] == self.field:
                return column["type"]
        names = ", ".join(c["name"] for c in columns)
        raise TerminalError(f"reference table {self.table!r} has no column {self.field!r} (columns: {names})")

    def _error(self, exc: BaseException) -> EtlError:
        error = TransientError if isinstance(exc, sa.exc.OperationalError) else TerminalError
        return error(f"cannot read reference {self.table}.{self.field} from {redact(self.url)}: {db_reason(exc)}")


_INTEGER = re.compile(r"[+-]?[0-9]+")
_column_types: dict[tuple[str, str, str], Callable[[Any], Any]] = {}


def _converter_for(kind: sa.types.TypeEngine) -> Callable[[Any], Any]:
    if isinstance(kind, sa.Integer):
        return _as_int
    if isinstance(kind, (sa.Float, sa.Numeric)):
        return _as_float
    if isinstance(kind, (sa.String, sa.Text)):
        return lambda v: v if isinstance(v, str) else str(jsonable(v))
    return lambda v: v


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
