"""A database table as a sink: insert, upsert on key fields, or replace.

Guarantee: effectively-once in every mode. Each batch is written in one transaction
together with a row ``(pipeline, target, batch_id, rows, loaded_at)`` in the ledger
table ``etl_batches`` of the same database (``target`` is the table, so two sinks of one
pipeline in one database keep separate ledgers); a batch id already in the ledger is not written
again (``LoadResult.duplicate``). ``replace`` writes to ``<table>__etl_staging``
(dropped when the sink opens) and swaps it in, with the ledger rows, in one transaction
at :meth:`DatabaseWriter.finish`; a batch replayed within the run is recognised by the
writer, and a finish replayed after the swap finds no staging table and does nothing.

PostgreSQL appends through ``COPY`` (upserts ``COPY`` into a temporary table, then
``INSERT ... SELECT ... ON CONFLICT``); other databases use ``executemany`` in chunks
of ``batchSize`` rows.

With ``errorHandling: continue`` a batch the database refuses is retried row by row
(one savepoint per row): the refused rows come back as dead letters with the database's
reason, the rest load. With ``fail`` the batch fails with a TerminalError (a
TransientError for connection problems) naming the table and the batch.
"""
from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..batch import DeadLetter, LoadResult, jsonable
from ..db import db_reason, engine_for, is_postgres, redact
from ..errors import EtlError, SpecError, TerminalError, TransientError
from .base import Sink, SinkWriter

MODES = ("insert", "upsert", "replace")
ERROR_HANDLING = ("fail", "continue")
LEDGER = "etl_batches"
STAGING_SUFFIX = "__etl_staging"


def ledger_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(LEDGER, metadata,
                    sa.Column("pipeline", sa.String(200), primary_key=True),
                    sa.Column("target", sa.String(200), primary_key=True),
                    sa.Column("batch_id", sa.Text, primary_key=True),
                    sa.Column("rows", sa.BigInteger, nullable=False),
                    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
                    extend_existing=True)


def column_type(type_: pa.DataType) -> sa.types.TypeEngine:
    """The SQL type an Arrow type is stored as; nested values are stored as JSON text."""
    if pa.types.is_dictionary(type_):
        return column_type(type_.value_type)
    if pa.types.is_boolean(type_):
        return sa.Boolean()
    if pa.types.is_integer(type_):
        wide = type_.bit_width > 32 or (type_.bit_width == 32 and pa.types.is_unsigned_integer(type_))
        return sa.BigInteger() if wide else sa.Integer()
    if pa.types.is_floating(type_):
        return sa.Float(precision=53)
    if pa.types.is_decimal(type_):
        return sa.Numeric(type_.precision, type_.scale)
    if pa.types.is_timestamp(type_):
        return sa.DateTime(timezone=type_.tz is not None)
    if pa.types.is_date(type_):
        return sa.Date()
    if pa.types.is_time(type_):
        return sa.Time()
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return sa.LargeBinary()
    return sa.Text()


@dataclass(frozen=True)
class DatabaseSink(Sink):
    """Rows into ``table`` (in ``schema``) of the database at ``url``."""

    type: ClassVar[str] = "database"

    url: str = field(repr=False)
    table: str = ""
    schema: str | None = None
    mode: str = "insert"
    key_fields: tuple[str, ...] = ()
    batch_size: int = 10_000
    error_handling: str = "fail"
    create_table: bool = True

    def __post_init__(self):
        if not self.table:
            raise SpecError("table", "is required")
        if self.mode not in MODES:
            raise SpecError("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.error_handling not in ERROR_HANDLING:
            raise SpecError("errorHandling", f"{self.error_handling!r} is not one of {', '.join(ERROR_HANDLING)}")
        if self.mode == "upsert" and not self.key_fields:
            raise SpecError("keyFields", "is required for mode upsert: the columns that identify a row")

    @classmethod
    def from_spec(cls, section, ctx) -> "DatabaseSink":
        url = ctx.connection(section)
        mode = section.get("mode", "insert", types=str, choices=MODES)
        keys = section.str_list("key_fields", ())
        if mode == "upsert" and not keys:
            raise SpecError(section.at("key_fields"), "is required for mode upsert: the columns that identify a row")
        sink = cls(url=url, table=section.get("table", types=str), schema=section.get("schema", None, types=str),
                   mode=mode, key_fields=tuple(keys), batch_size=section.positive_int("batch_size", 10_000),
                   error_handling=section.get("error_handling", "fail", types=str, choices=ERROR_HANDLING),
                   create_table=section.get("create_table", True, types=bool))
        section.get("type", None)
        section.done()
        return sink

    @property
    def commits_at_finish(self) -> bool:
        return self.mode == "replace"

    def open(self, pipeline: str) -> "DatabaseWriter":
        return DatabaseWriter(self, pipeline)

    def describe(self) -> dict:
        return {"type": self.type, "connection": redact(self.url), "table": self.table, "schema": self.schema,
                "mode": self.mode, "keyFields": list(self.key_fields), "errorHandling": self.error_handling}


class DatabaseWriter(SinkWriter):
    """An open :class:`DatabaseSink`. ``copies`` counts the COPY statements it ran."""

    def __init__(self, sink: DatabaseSink, pipeline: str):
        self.sink, self.pipeline = sink, pipeline
        self.engine = engine_for(sink.url)
        self.postgres = is_postgres(self.engine)
        self.ledger = ledger_table(sa.MetaData(schema=sink.schema))
        self.name = sink.table + STAGING_SUFFIX if sink.mode == "replace" else sink.table
        self.upserting = sink.mode == "upsert" or (sink.mode == "replace" and bool(sink.key_fields))
        self.key = {"pipeline": pipeline, "target": f"{sink.schema}.{sink.table}" if sink.schema else sink.table}
        self.target: sa.Table | None = None
        self.staged: dict[str, int] = {}
        self.copies = 0
        self._ddl(self._create_ledger)
        if sink.mode == "replace":
            self._ddl(lambda conn: conn.execute(sa.text(f"DROP TABLE IF EXISTS {self._quoted(self.name)}")))

    # --- the contract ----------------------------------------------------------------

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Write one batch in one transaction with its ledger row; a batch id already
        in the ledger writes nothing."""
        if table.num_columns == 0:
            return LoadResult(loaded=0)
        try:
            return self._write(table, batch_id, self._bulk)
        except Exception as exc:  # noqa: BLE001 - classified, re-raised unless the data was refused
            problem = self._classify(exc)
            if problem == "rows" and (recorded := self._recorded_now(batch_id)) is not None:
                return LoadResult(loaded=recorded, duplicate=True)  # a concurrent writer got there first
            if problem == "rows" and self.sink.error_handling == "continue":
                return self._write(table, batch_id, self._row_by_row)
            raise self._error(exc, batch_id, problem) from None

    def finish(self) -> None:
        """Replace mode: swap the staging table in, with its ledger rows, atomically.
        A run that wrote no batch leaves the table as it was."""
        if self.sink.mode != "replace" or self.target is None:
            return
        with self.engine.begin() as conn:
            if not sa.inspect(conn).has_table(self.name, schema=self.sink.schema):
                return
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {self._quoted(self.sink.table)}"))
            conn.execute(sa.text(f"ALTER TABLE {self._quoted(self.name)} RENAME TO {self._prep.quote(self.sink.table)}"))
            if self.postgres:
                conn.execute(sa.text(f"ALTER INDEX IF EXISTS {self._quoted(self.name + '_pkey')} "
                                     f"RENAME TO {self._prep.quote(self.sink.table + '_pkey')}"))
            conn.execute(self.ledger.delete().where(*self._ledger_key(), self.ledger.c.batch_id.in_(list(self.staged))))
            for batch_id, rows in self.staged.items():
                self._record(conn, batch_id, rows)
        self.target, self.staged = None, {}

    # --- one batch ---------------------------------------------------------------------

    def _write(self, table: pa.Table, batch_id: str, how) -> LoadResult:
        """One transaction: check the ledger, write the rows ``how`` says, record."""
        target = self._target(table.schema)
        rows = self._prepare(table, target)
        with self.engine.begin() as conn:
            recorded = self.staged.get(batch_id) if self.sink.mode == "replace" else self._recorded(conn, batch_id)
            if recorded is not None:
                return LoadResult(loaded=recorded, duplicate=True)
            result = how(conn, target, rows)
            if self.sink.mode != "replace":
                self._record(conn, batch_id, result.loaded)
        if self.sink.mode == "replace":
            self.staged[batch_id] = result.loaded
        return result

    def _bulk(self, conn, target: sa.Table, rows: pa.Table) -> LoadResult:
        if self.upserting:
            self._upsert(conn, target, rows)
        elif self.postgres and _copyable(rows):
            self._copy(conn, self._quoted(target.name), rows)
        else:
            for chunk in _chunks(rows, self.sink.batch_size):
                conn.execute(target.insert(), chunk.to_pylist())
        return LoadResult(loaded=rows.num_rows)

    def _row_by_row(self, conn, target: sa.Table, rows: pa.Table) -> LoadResult:
        """Each row in its own savepoint; the refused ones become dead letters."""
        statement, dead = self._row_statement(target), []
        for row in rows.to_pylist():
            try:
                with conn.begin_nested():
                    conn.execute(statement, [row])
            except sa.exc.DBAPIError as exc:
                if self._classify(exc) != "rows":
                    raise
                dead.append(DeadLetter(f"{self.sink.table}: {db_reason(exc)}", jsonable(row)))
        return LoadResult(loaded=rows.num_rows - len(dead), failed=len(dead), dead_letters=tuple(dead))

    def _upsert(self, conn, target: sa.Table, rows: pa.Table) -> None:
        rows = _last_per_key(rows, self.sink.key_fields)
        if not (self.postgres and _copyable(rows)):
            statement = self._row_statement(target)
            for chunk in _chunks(rows, self.sink.batch_size):
                conn.execute(statement, chunk.to_pylist())
            return
        temp = self._prep.quote(f"etl_tmp_{uuid.uuid4().hex[:12]}")
        conn.execute(sa.text(f"CREATE TEMP TABLE {temp} (LIKE {self._quoted(target.name)} INCLUDING DEFAULTS) "
                             "ON COMMIT DROP"))
        self._copy(conn, temp, rows)
        quote = self._prep.quote
        columns = ", ".join(quote(c) for c in rows.column_names)
        keys = ", ".join(quote(k) for k in self.sink.key_fields)
        updates = [c for c in rows.column_names if c not in self.sink.key_fields]
        action = ("DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in updates)
                  if updates else "DO NOTHING")
        conn.execute(sa.text(f"INSERT INTO {self._quoted(target.name)} ({columns}) SELECT {columns} FROM {temp} "
                             f"ON CONFLICT ({keys}) {action}"))

    def _copy(self, conn, quoted_table: str, rows: pa.Table) -> None:
        """COPY the rows as CSV on the raw connection of ``conn``'s transaction."""
        columns = ", ".join(self._prep.quote(c) for c in rows.column_names)
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor:
            with cursor.copy(f"COPY {quoted_table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
                for chunk in _chunks(rows, self.sink.batch_size):
                    buffer = io.BytesIO()
                    pcsv.write_csv(chunk, buffer, pcsv.WriteOptions(include_header=False))
                    copy.write(buffer.getvalue())
        self.copies += 1

    def _row_statement(self, target: sa.Table):
        if not self.upserting:
            return target.insert()
        statement = (postgresql if self.postgres else sqlite).insert(target)
        keys = list(self.sink.key_fields)
        updates = {c.name: statement.excluded[c.name] for c in target.columns if c.name not in keys}
        if not updates:
            return statement.on_conflict_do_nothing(index_elements=keys)
        return statement.on_conflict_do_update(index_elements=keys, set_=updates)

    # --- the table -----------------------------------------------------------------------

    def _target(self, schema: pa.Schema) -> sa.Table:
        """The table written to: reflected, or created from ``schema`` when missing."""
        if self.target is not None:
            return self.target
        try:
            with self.engine.begin() as conn:
                self.target = self._reflect_or_create(conn, schema)
        except sa.exc.DBAPIError as exc:
            raise self._error(exc, "", self._classify(exc)) from None
        return self.target

    def _reflect_or_create(self, conn, schema: pa.Schema) -> sa.Table:
        if sa.inspect(conn).has_table(self.name, schema=self.sink.schema):
            target = sa.Table(self.name, sa.MetaData(schema=self.sink.schema), autoload_with=conn)
            if self.upserting:
                self._ensure_unique(conn)
            return target
        if not (self.sink.create_table or self.sink.mode == "replace"):
            raise TerminalError(f"table {self.sink.table!r} does not exist and createTable is false",
                                table=self.sink.table)
        target = self._table_for(schema)
        target.create(conn)
        return target

    def _table_for(self, schema: pa.Schema) -> sa.Table:
        keys = self.sink.key_fields
        missing = [k for k in keys if k not in schema.names]
        if missing:
            raise TerminalError(f"key fields {missing} are not columns of the batch (columns: {schema.names})",
                                table=self.sink.table)
        columns = [sa.Column(f.name, column_type(f.type), primary_key=f.name in keys,
                             nullable=f.name not in keys, autoincrement=False) for f in schema]
        return sa.Table(self.name, sa.MetaData(schema=self.sink.schema), *columns)

    def _ensure_unique(self, conn) -> None:
        """Upserts need a unique index on the key fields; make one if the table has none."""
        keys, inspector, schema = set(self.sink.key_fields), sa.inspect(conn), self.sink.schema
        if set(inspector.get_pk_constraint(self.name, schema=schema)["constrained_columns"]) == keys:
            return
        uniques = inspector.get_unique_constraints(self.name, schema=schema)
        uniques += [i for i in inspector.get_indexes(self.name, schema=schema) if i["unique"]]
        if any(set(u["column_names"]) == keys for u in uniques):
            return
        columns = ", ".join(self._prep.quote(k) for k in self.sink.key_fields)
        conn.execute(sa.text(f"CREATE UNIQUE INDEX {self._prep.quote(self.name + '__etl_key')} "
                             f"ON {self._quoted(self.name)} ({columns})"))

    def _prepare(self, table: pa.Table, target: sa.Table) -> pa.Table:
        """The batch as the target takes it: known columns, nested values as JSON text."""
        extra = [c for c in table.column_names if c not in target.c.keys()]
        if extra:
            raise TerminalError(f"columns {extra} of the batch are not in table {self.sink.table!r}",
                                table=self.sink.table)
        columns = []
        for name, column in zip(table.column_names, table.columns):
            if pa.types.is_dictionary(column.type):
                column = pc.cast(column, column.type.value_type)
            columns.append(_json_text(column) if pa.types.is_nested(column.type) else column)
        return pa.table(columns, names=table.column_names)

    # --- the ledger ------------------------------------------------------------------------

    def _create_ledger(self, conn) -> None:
        try:
            with conn.begin_nested():
                self.ledger.create(conn, checkfirst=True)
        except sa.exc.DBAPIError:
            if not sa.inspect(conn).has_table(LEDGER, schema=self.sink.schema):
                raise  # not a race with another loader creating it

    def _recorded(self, conn, batch_id: str) -> int | None:
        query = sa.select(self.ledger.c.rows).where(*self._ledger_key(), self.ledger.c.batch_id == batch_id)
        return conn.execute(query).scalar()

    def _ledger_key(self) -> list:
        return [self.ledger.c[name] == value for name, value in self.key.items()]

    def _recorded_now(self, batch_id: str) -> int | None:
        if self.sink.mode == "replace":
            return None
        try:
            with self.engine.connect() as conn:
                return self._recorded(conn, batch_id)
        except sa.exc.DBAPIError:
            return None

    def _record(self, conn, batch_id: str, rows: int) -> None:
        conn.execute(self.ledger.insert().values(**self.key, batch_id=batch_id, rows=rows,
                                                 loaded_at=datetime.now(timezone.utc)))

    # --- errors and names ------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> str | None:
        """'rows' when the database refused the data, 'connection' when a retry may
        help, None otherwise."""
        if isinstance(exc, EtlError):
            return None
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        dbapi = self.engine.dialect.dbapi
        if isinstance(orig, (dbapi.IntegrityError, dbapi.DataError)):
            return "rows"
        if isinstance(orig, dbapi.OperationalError):
            transient = self.postgres or any(w in str(orig).lower() for w in ("locked", "busy", "unable to open"))
            return "connection" if transient else None
        return None

    def _error(self, exc: BaseException, batch_id: str, problem: str | None) -> BaseException:
        if isinstance(exc, EtlError):
            return exc
        if not isinstance(exc, (sa.exc.DBAPIError, self.engine.dialect.dbapi.Error)):
            return exc
        where = f"batch {batch_id!r} to table {self.sink.table!r}" if batch_id else f"table {self.sink.table!r}"
        message = f"cannot write {where}: {db_reason(exc)}"
        kind = TransientError if problem == "connection" else TerminalError
        return kind(message, table=self.sink.table, batch_id=batch_id)

    def _ddl(self, action) -> None:
        try:
            with self.engine.begin() as conn:
                action(conn)
        except sa.exc.DBAPIError as exc:
            raise self._error(exc, "", self._classify(exc)) from None

    @property
    def _prep(self):
        return self.engine.dialect.identifier_preparer

    def _quoted(self, name: str) -> str:
        quoted = self._prep.quote(name)
        return f"{self._prep.quote_schema(self.sink.schema)}.{quoted}" if self.sink.schema else quoted


def _chunks(table: pa.Table, size: int):
    for offset in range(0, table.num_rows, size):
        yield table.slice(offset, size)


def _copyable(table: pa.Table) -> bool:
    """COPY as CSV carries every type but binary."""
    return not any(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in table.schema.types)


def _json_text(column: pa.ChunkedArray) -> pa.Array:
    return pa.array([None if v is None else json.dumps(jsonable(v), sort_keys=True) for v in column.to_pylist()],
                    pa.string())


def _last_per_key(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """One row per key, the last one, so an upsert never touches a row twice."""
    numbered = table.append_column("__etl_row", pa.array(range(table.num_rows), pa.int64()))
    last = numbered.group_by(list(keys), use_threads=False).aggregate([("__etl_row", "max")])
    if last.num_rows == table.num_rows:
        return table
    rows = last["__etl_row_max"]
    return table.take(rows.take(pc.sort_indices(rows)))
