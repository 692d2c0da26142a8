"""The warehouse destination (``type: data-warehouse``): every batch merged into a
table on its key fields, with its ledger row, in one transaction.

Guarantee: effectively-once. A batch is written in one transaction with the row
``(pipeline, target, batch_id, rows, loaded_at)`` of the ledger ``etl_batches`` (see
:mod:`etl_actors.sinks.ledger`); a batch id already there changes nothing, not even
``_etl_loaded_at`` (``LoadResult.duplicate``). A batch that fails leaves the table and
the ledger as they were.

On PostgreSQL (15+) one batch is::

    CREATE TEMP TABLE etl_stage_<random> (LIKE target) ON COMMIT DROP
    COPY etl_stage_<random> (...) FROM STDIN (FORMAT binary)   -- csv where the types do not allow
                                                             -- it (etl_actors.sinks.pgcopy)
    MERGE INTO target USING etl_stage_<random> ON <keyFields>
        WHEN MATCHED THEN UPDATE SET ... WHEN NOT MATCHED THEN INSERT ...
    DROP TABLE etl_stage_<random>
    INSERT INTO etl_batches ...

``mode: insert`` appends with ``INSERT ... SELECT`` instead of the MERGE, and so does an
upsert whose keys all lie above the table's greatest key (an append: the MERGE would
only insert, after probing the key index once per row). The MERGE joins by the key index
(hash and merge joins are off for that transaction: a batch is small next to its table).
COPY chunks hold ``batchSize`` rows. Other databases (SQLite), and PostgreSQL batches
with binary columns, take ``INSERT ... ON CONFLICT (<keyFields>) DO UPDATE`` in chunks of
``batchSize`` rows, over a unique index on the key fields.

Rows: within one batch, rows of the same key are merged first: the row with the
greatest ``cursorField`` wins (a null cursor is the least), the last in batch order
among equals or without a ``cursorField``. A row with a null key field cannot be
merged: with ``errorHandling: continue`` it becomes a dead letter (reason ``<table>:
key field(s) [...] null ...``), with ``fail`` the batch fails naming the key fields.
Every row written carries ``_etl_run_id`` (the writer's ``run_id``, set by the loader
before each write) and ``_etl_loaded_at`` (the transaction's time, timestamp with time
zone); batch columns of those names are replaced. A column the batch lacks keeps its
value in an existing row.

Schema: as :class:`~etl_actors.sinks.database.DatabaseSink` (whose writer this one
extends): the table is created from the first batch with the key fields as primary
key, a later batch's new column is added nullable, a type change fails the batch with
a TerminalError naming the column and both types (:mod:`etl_actors.sinks.schema`).
With ``errorHandling: continue`` a batch the database refuses is written row by row
and the refused rows come back as dead letters with the database's reason.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ..batch import DeadLetter, LoadResult, jsonable
from ..db import redact
from ..errors import SpecError, TerminalError
from .base import Sink
from ..spec import REQUIRED
from .database import ERROR_HANDLING, DatabaseWriter, _chunks, _copyable, _last_per_key, mirror_describe, mirror_fields

MODES = ("upsert", "insert", "mirror")
RUN_ID = "_etl_run_id"
LOADED_AT = "_etl_loaded_at"
# The MERGE joins a batch to the whole table: probing the key index once per staged row
# beats hashing (or sorting) the table for every batch, which the planner picks without
# statistics on the staging table or with them (100k rows into 1M: 170 ms vs 640 ms).
NESTED_LOOP = ("enable_hashjoin = off", "enable_mergejoin = off")
STAMPS = pa.schema([pa.field(RUN_ID, pa.string()), pa.field(LOADED_AT, pa.timestamp("us", "UTC"))])


@dataclass(frozen=True)
class WarehouseSink(Sink):
    """Rows merged on ``key_fields`` into ``table`` (in ``schema``) of the database at ``url``.

    >>> WarehouseSink(url="sqlite:///wh.db", table="customers", key_fields=("id",),
    ...               cursor_field="updated_at").mode
    'upsert'
    """

    type: ClassVar[str] = "data-warehouse"

    url: str = field(repr=False)
    table: str = ""
    schema: str | None = None
    key_fields: tuple[str, ...] = ()
    mode: str = "upsert"
    cursor_field: str | None = None
    batch_size: int = 10_000
    error_handling: str = "fail"
    create_table: bool = True
    table_mapping: tuple = ()       # mode mirror, as the database sink's
    table_keys: tuple = ()

    def __post_init__(self):
        if not self.table and self.mode != "mirror":
            raise SpecError("table", "is required")
        if not (self.key_fields or self.table_keys):
            raise SpecError("keyFields", "is required: the columns that identify a row")
        for path, names in (("keyFields", self.key_fields), ("cursorField", (self.cursor_field,))):
            if reserved := [n for n in names if n in STAMPS.names]:
                raise SpecError(path, f"{reserved[0]!r} is a column the sink writes itself")
        if self.mode not in MODES:
            raise SpecError("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.error_handling not in ERROR_HANDLING:
            raise SpecError("errorHandling", f"{self.error_handling!r} is not one of {', '.join(ERROR_HANDLING)}")
        if self.batch_size < 1:
            raise SpecError("batchSize", f"expected a positive integer, got {self.batch_size}")

    @classmethod
    def from_spec(cls, section, ctx) -> "WarehouseSink":
        url = ctx.connection(section)
        mode = section.get("mode", "upsert", types=str, choices=MODES)
        keys, table_keys, mapping = mirror_fields(section) if mode == "mirror" else \
            (section.str_list("key_fields"), (), ())
        if not (keys or table_keys):
            raise SpecError(section.at("key_fields"), "is required: the columns that identify a row")
        sink = cls(url=url, table=section.get("table", "" if mode == "mirror" else REQUIRED, types=str),
                   schema=section.get("schema", None, types=str), table_mapping=mapping, table_keys=table_keys,
                   key_fields=tuple(keys), mode=mode,
                   cursor_field=section.get("cursor_field", None, types=str),
                   batch_size=section.positive_int("batch_size", 10_000),
                   error_handling=section.get("error_handling", "fail", types=str, choices=ERROR_HANDLING),
                   create_table=section.get("create_table", True, types=bool))
        section.get("type", None)
        section.done()
        return sink

    def open(self, pipeline: str) -> "WarehouseWriter":
        if self.mode == "mirror":
            from .mirror import MirrorWriter

            return MirrorWriter(self, pipeline)
        return WarehouseWriter(self, pipeline)

    def describe(self) -> dict:
        return {"type": self.type, "connection": redact(self.url), "table": self.table, "schema": self.schema,
                "mode": self.mode, "keyFields": list(self.key_fields), "cursorField": self.cursor_field,
                "errorHandling": self.error_handling, **mirror_describe(self)}


class WarehouseWriter(DatabaseWriter):
    """An open :class:`WarehouseSink`. ``run_id`` is stamped on every row written;
    ``copies`` counts the COPY statements; ``merges`` and ``appends`` the staging tables
    merged, and inserted (``mode: insert``, or an upsert whose keys are all new)."""

    def __init__(self, sink: WarehouseSink, pipeline: str):
        super().__init__(sink, pipeline)
        self.run_id = ""
        self.merges = self.appends = 0

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Merge one batch (see the module's docstring); a batch id already in the
        ledger writes nothing."""
        if table.num_columns == 0:
            return LoadResult(loaded=0)
        table = table.drop_columns([c for c in STAMPS.names if c in table.column_names])
        self._check_columns(table, batch_id)
        keyed, letters = self._split_null_keys(table)
        if letters and self.sink.error_handling == "fail":
            if (recorded := self._recorded_now(batch_id)) is not None:
                return LoadResult(loaded=recorded, duplicate=True)
            raise TerminalError(f"cannot write batch {batch_id!r} to table {self.sink.table!r}: {len(letters)} "
                                f"row(s) {_null_key_reason(self.sink.key_fields)}",
                                table=self.sink.table, batch_id=batch_id)
        result = super().write(self._deduplicated(keyed), batch_id)
        if result.duplicate or not letters:
            return result
        return LoadResult(loaded=result.loaded, failed=result.failed + len(letters),
                          dead_letters=result.dead_letters + letters)

    # --- before the transaction ---------------------------------------------------------

    def _check_columns(self, table: pa.Table, batch_id: str) -> None:
        wanted = (*self.sink.key_fields, *([self.sink.cursor_field] if self.sink.cursor_field else []))
        if missing := [c for c in wanted if c not in table.column_names]:
            raise TerminalError(f"key field or cursorField {missing[0]!r} is not a column of batch {batch_id!r} "
                                f"(columns: {table.column_names})", table=self.sink.table, batch_id=batch_id,
                                column=missing[0])

    def _split_null_keys(self, table: pa.Table) -> tuple[pa.Table, tuple[DeadLetter, ...]]:
        """The rows whose key fields all have values, and the others as dead letters."""
        nulls = pc.is_null(table.column(self.sink.key_fields[0]))
        for key in self.sink.key_fields[1:]:
            nulls = pc.or_(nulls, pc.is_null(table.column(key)))
        if not pc.any(nulls).as_py():
            return table, ()
        reason = f"{self.sink.table}: {_null_key_reason(self.sink.key_fields)}"
        letters = tuple(DeadLetter(reason, jsonable(row)) for row in table.filter(nulls).to_pylist())
        return table.filter(pc.invert(nulls)), letters

    def _deduplicated(self, table: pa.Table) -> pa.Table:
        if self.sink.mode != "upsert":
            return table
        return last_per_key(table, self.sink.key_fields, self.sink.cursor_field)

    # --- the table: the batch's columns and the two stamps ---------------------------------

    def _target(self, batch: pa.Schema, batch_id: str) -> sa.Table | None:
        if any(not pa.types.is_null(t) for t in batch.types):
            batch = pa.schema([*batch, *STAMPS])
        return super()._target(batch, batch_id)

    # --- one batch, inside its transaction --------------------------------------------------

    def _bulk(self, conn, target: sa.Table, rows: pa.Table) -> LoadResult:
        if self.postgres and _copyable(rows):
            self._merge(conn, target, rows)
        else:
            statement = self._row_statement(target, rows.column_names)
            for chunk in _chunks(rows, self.sink.batch_size):
                conn.execute(statement, chunk.to_pylist())
        return LoadResult(loaded=rows.num_rows)

    def _row_statement(self, target: sa.Table, columns: list[str]):
        """The parent's insert / upsert, which also writes (and on conflict updates) the stamps."""
        now = sa.func.now() if self.postgres else sa.literal(datetime.now(timezone.utc), sa.DateTime(timezone=True))
        statement = super()._row_statement(target, [*columns, *STAMPS.names])
        return statement.values({RUN_ID: sa.literal(self.run_id, sa.Text()), LOADED_AT: now})

    def _merge(self, conn, target: sa.Table, rows: pa.Table) -> None:
        """PostgreSQL: COPY into a temporary staging table, MERGE (or INSERT) from it, drop it."""
        stage, table = self._prep.quote(f"etl_stage_{uuid.uuid4().hex[:12]}"), self._quoted(target.name)
        with conn.connection.driver_connection.cursor() as cursor:
            cursor.execute(f"CREATE TEMP TABLE {stage} (LIKE {table}) ON COMMIT DROP", {})
            self._copy(conn, stage, rows)
            merging = self.sink.mode == "upsert" and not self._appends(cursor, table, stage, rows)
            for setting in NESTED_LOOP if merging else ():
                cursor.execute(f"SET LOCAL {setting}", {})
            statement = merge_sql if merging else insert_sql
            cursor.execute(statement(self._prep.quote, table, stage, rows.column_names, self.sink.key_fields),
                           {"run_id": self.run_id})
            cursor.execute(f"DROP TABLE {stage}", {})
        self.merges += merging
        self.appends += not merging

    def _appends(self, cursor, table: str, stage: str, rows: pa.Table) -> bool:
        """Whether every staged key lies above the table's keys (an append, the common
        case of an incremental load), so the MERGE would only insert: an INSERT does the
        same without probing the key index once per row. Decided by the first key
        field, in the database's own order; a concurrent insert of a staged key fails
        the INSERT as it would the MERGE."""
        first = self._prep.quote(self.sink.key_fields[0])
        low = _integer_min(rows.column(self.sink.key_fields[0]))  # else the database's min, in its order
        bound = "%(low)s" if low is not None else f"(SELECT min({first}) FROM {stage})"
        cursor.execute(f"SELECT coalesce((SELECT max({first}) FROM {table}) < {bound}, true)", {"low": low})
        return cursor.fetchone()[0]  # max() reads one entry of the key index


# --- SQL text (identifiers come quoted by SQLAlchemy's identifier preparer) -------------------

def merge_sql(quote, target: str, stage: str, columns: list[str], keys: tuple[str, ...]) -> str:
    """``MERGE`` of ``stage`` into ``target`` on ``keys``: matched rows take the staged
    values of the non-key ``columns`` and new stamps, the others are inserted. The run
    id is the parameter ``%(run_id)s``; the load time is ``now()``, the transaction's."""
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    updates = [f"{quote(c)} = s.{quote(c)}" for c in columns if c not in keys]
    updates += [f"{quote(RUN_ID)} = %(run_id)s", f"{quote(LOADED_AT)} = now()"]
    names = ", ".join(quote(c) for c in (*columns, RUN_ID, LOADED_AT))
    values = ", ".join([*(f"s.{quote(c)}" for c in columns), "%(run_id)s", "now()"])
    return (f"MERGE INTO {target} AS t USING {stage} AS s ON {on} "
            f"WHEN MATCHED THEN UPDATE SET {', '.join(updates)} "
            f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})")


def insert_sql(quote, target: str, stage: str, columns: list[str], keys: tuple[str, ...]) -> str:
    """``INSERT ... SELECT`` of every staged row, with the stamps (as :func:`merge_sql`)."""
    names = ", ".join(quote(c) for c in (*columns, RUN_ID, LOADED_AT))
    values = ", ".join([*(quote(c) for c in columns), "%(run_id)s", "now()"])
    return f"INSERT INTO {target} ({names}) SELECT {values} FROM {stage}"


# --- rows ------------------------------------------------------------------------------------------

def last_per_key(table: pa.Table, keys: tuple[str, ...], cursor: str | None = None) -> pa.Table:
    """One row per key: the greatest ``cursor`` wins (a null cursor is the least), the
    last in batch order among equals or without a cursor. The table itself when its
    keys are unique."""
    if table.select(list(keys)).group_by(list(keys), use_threads=False).aggregate([]).num_rows == table.num_rows:
        return table  # the common case, checked 7x faster than _last_per_key finds it
    if cursor is None:
        return _last_per_key(table, keys)
    valued = pa.table({"valued": pc.is_valid(table.column(cursor)), "cursor": table.column(cursor)})
    ordered = table.take(pc.sort_indices(valued, [("valued", "ascending"), ("cursor", "ascending")]))  # stable
    return _last_per_key(ordered, keys)


def _integer_min(column: pa.ChunkedArray) -> int | None:
    """The least value of an integer column (Arrow orders integers as databases do)."""
    return pc.min(column).as_py() if pa.types.is_integer(column.type) else None


def _null_key_reason(keys: tuple[str, ...]) -> str:
    return f"key field(s) {list(keys)} null; a row without its key cannot be merged"
