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
``INSERT ... SELECT ... ON CONFLICT``), in binary built from the Arrow buffers where the
column types allow, else as CSV (:mod:`etl_actors.sinks.pgcopy`); other databases use
``executemany`` in chunks of ``batchSize`` rows.

With ``errorHandling: continue`` a batch the database refuses is retried row by row
(one savepoint per row): the refused rows come back as dead letters with the database's
reason, the rest load. With ``fail`` the batch fails with a TerminalError (a
TransientError for connection problems) naming the table and the batch.

Schema: the table's columns do not depend on which batch lands first. The table is
created from the first batch's columns, then gains each later batch's new columns
(nullable, ``ALTER TABLE ... ADD COLUMN``); a column the batch lacks gets NULL (or its
default; an upsert leaves it unchanged); a column whose type changes fails the batch
with a TerminalError naming the column, the batch and both types, with
``errorHandling: continue`` too. In replace mode the rule applies to the staging
table, which starts empty each run. The rule is stated in :mod:`etl_actors.sinks.schema`.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..batch import DeadLetter, LoadResult, jsonable
from ..db import db_reason, engine_for, is_postgres, redact
from ..errors import EtlError, SpecError, TerminalError, TransientError
from ..spec import REQUIRED
from . import pgcopy
from .base import Sink, SinkWriter
from .ledger import Ledger
from .schema import Column, columns_to_add
from .sql_table import add_column, batch_columns, ensure_unique, new_table, quoted, reflect, table_columns

MODES = ("insert", "upsert", "replace", "mirror")
ERROR_HANDLING = ("fail", "continue")
STAGING_SUFFIX = "__etl_staging"


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
    table_mapping: tuple = ()       # mode mirror: ((source table, destination table), ...)
    table_keys: tuple = ()          # mode mirror: ((source table, key fields), ...)

    def __post_init__(self):
        if not self.table and self.mode != "mirror":
            raise SpecError("table", "is required")
        if self.mode not in MODES:
            raise SpecError("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.error_handling not in ERROR_HANDLING:
            raise SpecError("errorHandling", f"{self.error_handling!r} is not one of {', '.join(ERROR_HANDLING)}")
        if self.mode in ("upsert", "mirror") and not (self.key_fields or self.table_keys):
            raise SpecError("keyFields", f"is required for mode {self.mode}: the columns that identify a row")

    @classmethod
    def from_spec(cls, section, ctx) -> "DatabaseSink":
        url = ctx.connection(section)
        mode = section.get("mode", "insert", types=str, choices=MODES)
        keys, table_keys, mapping = mirror_fields(section) if mode == "mirror" else \
            (section.str_list("key_fields", ()), (), ())
        if mode == "upsert" and not keys:
            raise SpecError(section.at("key_fields"), "is required for mode upsert: the columns that identify a row")
        sink = cls(url=url, table=section.get("table", "" if mode == "mirror" else REQUIRED, types=str),
                   schema=section.get("schema", None, types=str),
                   mode=mode, key_fields=tuple(keys), batch_size=section.positive_int("batch_size", 10_000),
                   error_handling=section.get("error_handling", "fail", types=str, choices=ERROR_HANDLING),
                   create_table=section.get("create_table", True, types=bool), table_mapping=mapping,
                   table_keys=table_keys)
        section.get("type", None)
        section.done()
        return sink

    @property
    def commits_at_finish(self) -> bool:
        return self.mode == "replace"

    def open(self, pipeline: str) -> "DatabaseWriter":
        if self.mode == "mirror":
            from .mirror import MirrorWriter

            return MirrorWriter(self, pipeline)
        return DatabaseWriter(self, pipeline)

    def describe(self) -> dict:
        return {"type": self.type, "connection": redact(self.url), "table": self.table, "schema": self.schema,
                "mode": self.mode, "keyFields": list(self.key_fields), "errorHandling": self.error_handling,
                **mirror_describe(self)}


def mirror_fields(section) -> tuple[tuple, tuple, tuple]:
    """Mode mirror's ``keyFields`` (a list, or a mapping per source table) and
    ``tableMapping``: ``(key fields, ((table, keys), ...), ((source, destination), ...))``."""
    raw = section.get("key_fields", None, types=(list, dict, str))
    keys, table_keys = (), ()
    if isinstance(raw, dict):
        for table, names in raw.items():
            if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
                raise SpecError(f"{section.at('key_fields')}.{table}", f"expected a list of column names, got "
                                f"{names!r}")
        table_keys = tuple((str(t), tuple(n)) for t, n in raw.items())
    elif raw is not None:
        keys = section.str_list("key_fields", ())
    if not (keys or table_keys):
        raise SpecError(section.at("key_fields"), "is required for mode mirror: the columns that identify a row")
    mapping = section.get("table_mapping", None, types=dict)
    for source, target in (mapping or {}).items():
        if not (isinstance(target, str) and target):
            raise SpecError(f"{section.at('table_mapping')}.{source}", f"expected a table name, got {target!r}")
    return keys, table_keys, tuple((str(s), t) for s, t in (mapping or {}).items())


def mirror_describe(sink) -> dict:
    if sink.mode != "mirror":
        return {}
    return {"tableMapping": dict(sink.table_mapping), "tableKeys": {t: list(k) for t, k in sink.table_keys}}


class DatabaseWriter(SinkWriter):
    """An open :class:`DatabaseSink`. ``copies`` counts the COPY statements it ran,
    ``binary_copies`` those in binary format."""

    def __init__(self, sink: DatabaseSink, pipeline: str):
        self.sink, self.pipeline = sink, pipeline
        self.engine = engine_for(sink.url)
        self.postgres = is_postgres(self.engine)
        self.ledger = Ledger(pipeline, f"{sink.schema}.{sink.table}" if sink.schema else sink.table, sink.schema)
        self.name = sink.table + STAGING_SUFFIX if sink.mode == "replace" else sink.table
        self.upserting = sink.mode == "upsert" or (sink.mode == "replace" and bool(sink.key_fields))
        self.target: sa.Table | None = None
        self.held: tuple[Column, ...] = ()
        self.staged: dict[str, int] = {}
        self.copies = self.binary_copies = 0
        self._ddl(self.ledger.create)
        if sink.mode == "replace":
            self._ddl(lambda conn: conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._quoted(self.name)}", {}))

    # --- the contract ----------------------------------------------------------------

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Write one batch in one transaction with its ledger row; a batch id already
        in the ledger writes nothing. The table first gains the batch's new columns
        (see :mod:`etl_actors.sinks.schema`); a type change raises TerminalError."""
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
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._quoted(self.sink.table)}", {})
            conn.exec_driver_sql(f"ALTER TABLE {self._quoted(self.name)} "
                                 f"RENAME TO {self._prep.quote(self.sink.table)}", {})
            if self.postgres:
                conn.exec_driver_sql(f"ALTER INDEX IF EXISTS {self._quoted(self.name + '_pkey')} "
                                     f"RENAME TO {self._prep.quote(self.sink.table + '_pkey')}", {})
            self.ledger.forget(conn, self.staged)
            for batch_id, rows in self.staged.items():
                self.ledger.record(conn, batch_id, rows)
        self.target, self.held, self.staged = None, (), {}

    # --- one batch ---------------------------------------------------------------------

    def _write(self, table: pa.Table, batch_id: str, how) -> LoadResult:
        """One transaction: check the ledger, write the rows ``how`` says, record."""
        target = self._target(table.schema, batch_id)
        rows = _prepare(table, target) if target is not None else None
        if rows is None or rows.num_columns == 0:
            return LoadResult(loaded=0)  # only columns without values, none of them in the table
        with self.engine.begin() as conn:
            recorded = self._recorded(conn, batch_id)
            if recorded is not None:
                return LoadResult(loaded=recorded, duplicate=True)
            result = how(conn, target, rows)
            if self.sink.mode != "replace":
                self.ledger.record(conn, batch_id, result.loaded)
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
        statement, dead = self._row_statement(target, rows.column_names), []
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
            statement = self._row_statement(target, rows.column_names)
            for chunk in _chunks(rows, self.sink.batch_size):
                conn.execute(statement, chunk.to_pylist())
            return
        temp = self._prep.quote(f"etl_tmp_{uuid.uuid4().hex[:12]}")
        conn.exec_driver_sql(f"CREATE TEMP TABLE {temp} (LIKE {self._quoted(target.name)} INCLUDING DEFAULTS) "
                             "ON COMMIT DROP", {})
        self._copy(conn, temp, rows)
        quote = self._prep.quote
        columns = ", ".join(quote(c) for c in rows.column_names)
        keys = ", ".join(quote(k) for k in self.sink.key_fields)
        updates = [c for c in rows.column_names if c not in self.sink.key_fields]
        action = ("DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in updates)
                  if updates else "DO NOTHING")
        conn.exec_driver_sql(f"INSERT INTO {self._quoted(target.name)} ({columns}) SELECT {columns} FROM {temp} "
                             f"ON CONFLICT ({keys}) {action}", {})

    def _copy(self, conn, quoted_table: str, rows: pa.Table) -> None:
        """COPY the rows on the raw connection of ``conn``'s transaction, in binary where
        the column types allow, else as CSV (see :mod:`etl_actors.sinks.pgcopy`), in
        chunks of ``batchSize`` rows. Statements are sent without parameters, so the
        ``%%`` SQLAlchemy writes for a ``%`` in an identifier (for psycopg's parameter
        syntax) is undone here."""
        columns = ", ".join(self._prep.quote(c) for c in rows.column_names)
        if self.engine.dialect.paramstyle in ("format", "pyformat"):
            quoted_table, columns = quoted_table.replace("%%", "%"), columns.replace("%%", "%")
        with conn.connection.driver_connection.cursor() as cursor:
            wire = pgcopy.wire_table(rows, pgcopy.column_types(cursor, quoted_table, columns))
            data = (pgcopy.binary_chunks(wire, self.sink.batch_size) if wire is not None
                    else pgcopy.csv_chunks(rows, self.sink.batch_size))
            with cursor.copy(f"COPY {quoted_table} ({columns}) FROM STDIN "
                             f"WITH (FORMAT {'csv' if wire is None else 'binary'})") as copy:
                for chunk in data:
                    copy.write(chunk)
        self.copies += 1
        self.binary_copies += wire is not None

    def _row_statement(self, target: sa.Table, columns: list[str]):
        """Insert, or upsert updating the batch's own columns (a column the batch lacks
        keeps its value in an existing row, as in the COPY path)."""
        if not self.upserting:
            return target.insert()
        statement = (postgresql if self.postgres else sqlite).insert(target)
        keys = list(self.sink.key_fields)
        updates = {c: statement.excluded[c] for c in columns if c not in keys}
        if not updates:
            return statement.on_conflict_do_nothing(index_elements=keys)
        return statement.on_conflict_do_update(index_elements=keys, set_=updates)

    # --- the table -----------------------------------------------------------------------

    def _target(self, batch: pa.Schema, batch_id: str) -> sa.Table | None:
        """The table written to, holding every column of the batch that has values:
        created from the batch or evolved by the rule. None while no batch had a
        column with values."""
        if self.target is None or self._columns_to_add(batch, batch_id):
            self._ddl_steps(lambda: self._evolve(batch, batch_id))
        return self.target

    def _evolve(self, batch: pa.Schema, batch_id: str) -> None:
        """Reflect the table (or create it), add the batch's new columns, reflect again."""
        with self.engine.begin() as conn:
            target = reflect(conn, self.name, self.sink.schema)
            self._use(self._create(conn, batch, batch_id) if target is None else target)
        if self.target is None:
            return
        for column in self._columns_to_add(batch, batch_id):
            add_column(self.engine, self.name, self.sink.schema, batch.field(column.name))
        with self.engine.begin() as conn:
            self._use(reflect(conn, self.name, self.sink.schema))
            if self.upserting:
                ensure_unique(conn, self.name, self.sink.schema, self.sink.key_fields)
        self._columns_to_add(batch, batch_id)  # a concurrent writer's column may hold another type

    def _create(self, conn, batch: pa.Schema, batch_id: str) -> sa.Table | None:
        if not (self.sink.create_table or self.sink.mode == "replace"):
            raise TerminalError(f"table {self.sink.table!r} does not exist and createTable is false",
                                table=self.sink.table)
        fields = [batch.field(c.name) for c in columns_to_add((), batch_columns(batch, self.postgres), batch_id,
                                                               self._where)]
        if not fields:
            return None
        if missing := [k for k in self.sink.key_fields if k not in [f.name for f in fields]]:
            raise TerminalError(f"key fields {missing} are not columns of the batch with values "
                                f"(columns: {batch.names})", table=self.sink.table)
        table = new_table(self.name, self.sink.schema, fields, self.sink.key_fields)
        table.create(conn)
        return table

    def _columns_to_add(self, batch: pa.Schema, batch_id: str) -> tuple[Column, ...]:
        """The rule applied to the table as last reflected; raises on a type change."""
        return columns_to_add(self.held, batch_columns(batch, self.postgres), batch_id, self._where,
                              self.sink.key_fields)

    def _use(self, target: sa.Table | None) -> None:
        self.target = target
        self.held = () if target is None else table_columns(target, self.engine.dialect, self.postgres)

    @property
    def _where(self) -> str:
        return f"table {self.sink.table!r}"

    # --- the ledger ------------------------------------------------------------------------

    def _recorded(self, conn, batch_id: str) -> int | None:
        """Rows of ``batch_id`` written before: staged in this run (replace) or in the ledger."""
        return self.staged.get(batch_id) if self.sink.mode == "replace" else self.ledger.recorded(conn, batch_id)

    def _recorded_now(self, batch_id: str) -> int | None:
        if self.sink.mode == "replace":
            return None
        try:
            with self.engine.connect() as conn:
                return self.ledger.recorded(conn, batch_id)
        except sa.exc.DBAPIError:
            return None

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
        """Run ``action(conn)`` in a transaction of its own."""
        def run():
            with self.engine.begin() as conn:
                action(conn)
        self._ddl_steps(run)

    def _ddl_steps(self, steps) -> None:
        """Run ``steps()`` (which opens its own transactions); database errors become
        ours, naming the table."""
        try:
            steps()
        except sa.exc.DBAPIError as exc:
            raise self._error(exc, "", self._classify(exc)) from None

    @property
    def _prep(self):
        return self.engine.dialect.identifier_preparer

    def _quoted(self, name: str) -> str:
        return quoted(self.engine.dialect, name, self.sink.schema)


def _prepare(table: pa.Table, target: sa.Table) -> pa.Table:
    """The batch as the target takes it: the columns the table has (a new column
    without values is left out), dictionaries decoded, nested values as JSON text."""
    names = [n for n in table.column_names if n in target.c]
    columns = []
    for name in names:
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        columns.append(_json_text(column) if pa.types.is_nested(column.type) else column)
    return pa.table(columns, names=names)


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
    """One row per key, the last one, so an upsert never touches a row twice. The table
    itself when its keys are unique (the common case, checked first: 7x faster)."""
    if table.select(list(keys)).group_by(list(keys), use_threads=False).aggregate([]).num_rows == table.num_rows:
        return table
    numbered = table.append_column("__etl_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    last = numbered.group_by(list(keys), use_threads=False).aggregate([("__etl_row", "max")])
    rows = last["__etl_row_max"]
    return table.take(rows.take(pc.sort_indices(rows)))
