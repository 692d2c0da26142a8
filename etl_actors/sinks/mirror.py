"""``mode: mirror``: change rows applied to destination tables, a source transaction at
a time, so the destination stays equal to the source.

    sinks:
      - type: database               # or data-warehouse
        connection: ${DW_URL}
        mode: mirror
        keyFields: [id]              # or per source table: {public.customers: [id], ...}
        tableMapping: {public.customers: dim_customers}    # default: the table's own name

The rows are those of a change source (``postgres-cdc``): ``_op`` (``c``, ``u``, ``d``,
``r``), ``_table``, ``_lsn`` and the row's columns. One batch is one destination
transaction, with the batch's ledger row and the mirror's position:

- per destination table, the last change of each key wins (the batch holds whole
  source transactions in commit order, and the destination transaction is atomic, so
  no reader sees a state between two of them): a delete deletes the key, anything
  else upserts the row (through the database or warehouse sink's own upsert);
- change rows whose ``_lsn`` is at or before the mirror's position (the greatest
  commit LSN applied, kept in ``etl_mirror_positions`` beside the ledger) were applied
  already and are left out, so a replay after a crash applies nothing twice, however
  the replayed batches are cut;
- snapshot rows (``r``) carry their chunk's key range (``_chunk``): keys of the range
  that the chunk lacks are deleted, so rows a destination held from before (or from a
  chunk read again after a crash) do not outlive the source's;
- an update whose TOASTed column was not sent (unchanged; the source table's replica
  identity is not FULL) leaves that column as it is;
- a TRUNCATE (``_op`` ``t``) empties the destination table, in its place among the
  table's changes.

The change columns are not written. Tables are created and evolved by the sink's rule
(a column added in the source is added to the destination; a type change fails the
batch naming the column).
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ..batch import LoadResult
from ..columns import CHANGE_MARK, key_only
from ..db import engine_for, is_postgres
from ..errors import EtlError, TerminalError
from .base import SinkWriter
from .database import _prepare
from .ledger import Ledger, create_unless_exists
from .sql_table import reflect

CHANGE_COLUMNS = ("_op", "_table", "_lsn", "_commitTs", "_txId", "_unchanged", "_chunk", "_columns")
POSITIONS = "etl_mirror_positions"


def positions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(POSITIONS, metadata,
                    sa.Column("pipeline", sa.String(200), primary_key=True),
                    sa.Column("target", sa.String(200), primary_key=True),
                    sa.Column("lsn", sa.BigInteger, nullable=False),
                    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
                    extend_existing=True)


def destination(sink, source_table: str) -> tuple[str | None, str]:
    """``(schema, table)`` a source table is mirrored into."""
    mapping = dict(sink.table_mapping)
    bare = source_table.split(".", 1)[-1]
    name = mapping.get(source_table) or mapping.get(bare) or bare
    if "." in name:
        schema, _, name = name.partition(".")
        return schema, name
    return sink.schema, name


def keys_for(sink, source_table: str) -> tuple[str, ...]:
    per_table = dict(sink.table_keys)
    bare = source_table.split(".", 1)[-1]
    return tuple(per_table.get(source_table) or per_table.get(bare) or sink.key_fields)


class MirrorWriter(SinkWriter):
    """An open sink in ``mode: mirror``; see the module docstring. ``writers`` holds
    the sink's own writer (mode upsert) per destination table."""

    def __init__(self, sink, pipeline: str):
        self.sink, self.pipeline = sink, pipeline
        self.engine = engine_for(sink.url)
        self.postgres = is_postgres(self.engine)
        self.target = f"mirror:{sink.schema or ''}:{sink.table or '*'}"
        self.ledger = Ledger(pipeline, self.target, sink.schema)
        self.positions = positions_table(sa.MetaData(schema=sink.schema))
        self.writers: dict[tuple, object] = {}
        with self.engine.begin() as conn:
            self.ledger.create(conn)
            create_unless_exists(conn, self.positions)

    # --- one batch ----------------------------------------------------------------------

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        if missing := [c for c in CHANGE_MARK if c not in table.column_names]:
            raise TerminalError(f"mode mirror: batch {batch_id!r} lacks the change column(s) {missing} (a map "
                                "step without keep: true drops them)", batch_id=batch_id)
        if table.num_rows == 0:
            return LoadResult(loaded=0)
        shapes = _shapes(table)
        plans = [self._plan(source, _own(table.filter(pc.equal(table.column("_table"), source)), source, shapes),
                            batch_id) for source in _in_order(table.column("_table"))]
        writer = plans[0].writer         # the one an error is reported by: the table being written
        try:
            with self.engine.begin() as conn:
                recorded = self.ledger.recorded(conn, batch_id)
                if recorded is not None:
                    return LoadResult(loaded=recorded, duplicate=True)
                mark = self._mark(conn)
                applied, top = 0, mark
                for plan in plans:
                    writer = plan.writer
                    n, lsn = self._apply(conn, plan, mark)
                    applied, top = applied + n, max(top, lsn)
                writer = plans[0].writer
                if top > mark:
                    self._set_mark(conn, top)
                self.ledger.record(conn, batch_id, applied)
        except Exception as exc:  # noqa: BLE001 - classified by the writer of the table that refused it
            if isinstance(exc, EtlError):
                raise
            raise writer._error(exc, batch_id, writer._classify(exc)) from None
        return LoadResult(loaded=applied, duplicate=applied == 0 and table.num_rows > 0)

    def _plan(self, source: str, rows: pa.Table, batch_id: str) -> "_Plan":
        """What one source table's rows need before the transaction: the destination
        table created or evolved for their columns."""
        schema, name = destination(self.sink, source)
        keys = keys_for(self.sink, source)
        writer = self._writer(schema, name, keys)
        if missing := [k for k in keys if k not in rows.column_names]:
            raise TerminalError(f"mode mirror: key field {missing[0]!r} is not a column of table {source!r} "
                                f"(columns: {[c for c in rows.column_names if c not in CHANGE_COLUMNS]})",
                                table=source, batch_id=batch_id)
        data = _data(rows)
        if not pc.all(key_only(rows)).as_py():     # rows with values
            target = writer._target(data.schema, batch_id)
        else:
            target = writer.target if writer.target is not None else _reflected(writer)
        return _Plan(keys, writer, rows, target)

    def _apply(self, conn, plan: "_Plan", mark: int) -> tuple[int, int]:
        """One source table's rows, inside the batch's transaction; ``(rows applied,
        greatest commit LSN among them)``."""
        keys, writer, rows, target = plan
        ops = rows.column("_op")
        if mark:
            rows = rows.filter(pc.or_(pc.equal(ops, "r"), pc.greater(rows.column("_lsn"), mark)))
            ops = rows.column("_op")
        if rows.num_rows == 0 or target is None:
            return 0, 0
        applied = rows.num_rows
        changes = pc.not_equal(ops, "r")
        top = pc.max(rows.column("_lsn").filter(changes)).as_py() if pc.any(changes).as_py() else 0
        truncated = pc.equal(ops, "t")
        if pc.any(truncated).as_py():             # TRUNCATE: the table empties; only the changes after it count
            last = int(np.flatnonzero(truncated.to_numpy())[-1])
            conn.execute(sa.delete(target))
            rows = rows.slice(last + 1)
            if rows.num_rows == 0:
                return applied, top or 0
            ops = rows.column("_op")
        if "_unchanged" in rows.column_names and rows.column("_unchanged").null_count < rows.num_rows:
            rows = _fill_unchanged(rows, keys)
        if "_chunk" in rows.column_names:
            self._reconcile(conn, writer, target, keys, rows.filter(pc.equal(ops, "r")))
        last = _last_per_key(rows, keys)
        deleted = pc.equal(last.column("_op"), "d")
        deletes = last.filter(deleted).select(list(keys))
        upserts = last.filter(pc.invert(deleted))
        if deletes.num_rows:
            with _KeyTable(conn, self, writer, target, keys, deletes) as tmp:
                conn.execute(sa.delete(target).where(_exists(tmp, target, keys)))
        if "_unchanged" in upserts.column_names:
            partial = pc.is_valid(upserts.column("_unchanged"))
            for row in upserts.filter(partial).to_pylist():
                self._update_sent(conn, target, keys, row)
            upserts = upserts.filter(pc.invert(partial))
        if upserts.num_rows:
            writer._bulk(conn, target, _prepare(_data(upserts), target))
        return applied, top or 0

    def _reconcile(self, conn, writer, target: sa.Table, keys: tuple, snapshot: pa.Table) -> None:
        """Delete the keys of each snapshot chunk's range that the chunk lacks."""
        for chunk in _in_order(snapshot.column("_chunk")):
            rows = snapshot.filter(pc.equal(snapshot.column("_chunk"), chunk))
            info = json.loads(chunk)
            if list(info["keys"]) != list(keys):
                continue         # mirrored on other keys than the source's primary key: ranges do not apply
            where = []
            columns = [target.c[k] for k in keys]
            for bound, compare in ((info["after"], "gt"), (info["upto"], "le")):
                if bound is None:
                    continue
                values = [pa.array([v], pa.string()).cast(rows.column(k).type)[0].as_py() for k, v in zip(keys, bound)]
                left = sa.tuple_(*[self._ordered(c) for c in columns])
                right = sa.tuple_(*[sa.literal(v, c.type) if not isinstance(v, str) else self._ordered(sa.literal(v))
                                    for v, c in zip(values, columns)])
                where.append(left > right if compare == "gt" else left <= right)
            with _KeyTable(conn, self, writer, target, keys, rows.select(list(keys))) as tmp:
                conn.execute(sa.delete(target).where(*where, ~_exists(tmp, target, keys)))

    def _ordered(self, column):
        """Text compared byte-wise, as the snapshot ordered it (COLLATE "C")."""
        if self.postgres and isinstance(getattr(column, "type", None), sa.String):
            return sa.collate(column, "C")
        return column

    def _update_sent(self, conn, target: sa.Table, keys: tuple, row: dict) -> None:
        """An update whose unchanged TOASTed columns were not sent: the others only."""
        skip = set(row.pop("_unchanged") or ()) | set(keys)
        values = {k: v for k, v in row.items() if k in target.c and k not in skip and k not in CHANGE_COLUMNS}
        where = [target.c[k] == row[k] for k in keys]
        if values:
            conn.execute(sa.update(target).where(*where).values(values))

    # --- the mirror's position ------------------------------------------------------------

    def _mark(self, conn) -> int:
        query = sa.select(self.positions.c.lsn).where(self.positions.c.pipeline == self.pipeline,
                                                      self.positions.c.target == self.target)
        if self.postgres:
            query = query.with_for_update()
        return conn.execute(query).scalar() or 0

    def _set_mark(self, conn, lsn: int) -> None:
        now = datetime.now(timezone.utc)
        where = (self.positions.c.pipeline == self.pipeline, self.positions.c.target == self.target)
        if not conn.execute(sa.update(self.positions).where(*where).values(lsn=lsn, updated_at=now)).rowcount:
            conn.execute(self.positions.insert().values(pipeline=self.pipeline, target=self.target, lsn=lsn,
                                                        updated_at=now))

    # --- writers per destination table ----------------------------------------------------

    def _writer(self, schema: str | None, name: str, keys: tuple = ()):
        found = self.writers.get((schema, name))
        if found is None:
            sub = dataclasses.replace(self.sink, mode="upsert", table=name, schema=schema,
                                      key_fields=keys or self.sink.key_fields, table_mapping=(), table_keys=())
            found = self.writers[(schema, name)] = sub.open(self.pipeline)
        found.run_id = self.run_id
        return found

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class _Plan(NamedTuple):
    """One source table's rows of a batch, and where they go."""

    keys: tuple
    writer: object          # the sink's own writer (mode upsert) of the destination table
    rows: pa.Table
    target: sa.Table | None


class _KeyTable:
    """A temporary table of keys, for set-wise deletes (dropped at exit)."""

    def __init__(self, conn, mirror: MirrorWriter, writer, target: sa.Table, keys: tuple, rows: pa.Table):
        self.conn, self.mirror, self.writer, self.target, self.keys, self.rows = conn, mirror, writer, target, keys, rows
        self.name = f"etl_keys_{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> sa.Table:
        conn, quote = self.conn, self.writer._prep.quote
        columns = ", ".join(quote(k) for k in self.keys)
        conn.exec_driver_sql(f"CREATE TEMP TABLE {quote(self.name)} AS SELECT {columns} "
                             f"FROM {self.writer._quoted(self.target.name)} WHERE 1 = 0", {})
        table = sa.Table(self.name, sa.MetaData(), *[sa.Column(k, self.target.c[k].type) for k in self.keys])
        rows = _prepare(self.rows, self.target)
        if rows.num_rows:
            if self.mirror.postgres:
                self.writer._copy(conn, quote(self.name), rows)
            else:
                conn.execute(table.insert(), rows.to_pylist())
        self.table = table
        return table

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.conn.exec_driver_sql(f"DROP TABLE {self.writer._prep.quote(self.name)}", {})


def _exists(tmp: sa.Table, target: sa.Table, keys: tuple):
    return sa.exists().where(*[tmp.c[k] == target.c[k] for k in keys])


def _data(rows: pa.Table) -> pa.Table:
    """The row's own columns: the change columns left out."""
    return rows.drop_columns([c for c in CHANGE_COLUMNS if c in rows.column_names])


def _shapes(table: pa.Table) -> dict[str, list]:
    """For a batch of several tables (``_columns``): each table's ``[[column, PostgreSQL
    type oid, typmod], ...]`` (a table whose shape changed within the batch: every
    column it had)."""
    if "_columns" not in table.column_names:
        return {}
    shapes: dict[str, dict] = {}
    pairs = pa.table({"t": table.column("_table"), "c": table.column("_columns").cast(pa.string())})
    for row in pairs.group_by(["t", "c"], use_threads=False).aggregate([]).to_pylist():
        for name, oid, typmod in json.loads(row["c"]):
            shapes.setdefault(row["t"], {})[name] = [name, oid, typmod]
    return {t: list(columns.values()) for t, columns in shapes.items()}


def _own(rows: pa.Table, source: str, shapes: dict) -> pa.Table:
    """One table's rows of a batch of several: without the columns only the other
    tables have, and with a column the batch had to carry as text (two tables typing
    it differently) typed as its table has it."""
    if source not in shapes:
        return rows
    from ..sources.pgoutput import arrow_type

    own = {name: (oid, typmod) for name, oid, typmod in shapes[source]}
    others = {c[0] for t, columns in shapes.items() if t != source for c in columns} - set(own)
    rows = rows.drop_columns([c for c in rows.column_names if c in others])
    for name, (oid, typmod) in own.items():
        if name in rows.column_names and rows.column(name).type != arrow_type(oid, typmod) \
                and pa.types.is_string(rows.column(name).type):
            at = rows.schema.get_field_index(name)
            rows = rows.set_column(at, name, pc.cast(rows.column(name), arrow_type(oid, typmod)))   # Arrow's text
    return rows


def _fill_unchanged(rows: pa.Table, keys: tuple) -> pa.Table:
    """Updates whose TOASTed values were not sent take them from an earlier full image
    of their key in the batch (an insert or update the destination does not have yet)."""
    records = rows.to_pylist()
    latest: dict[tuple, dict] = {}
    for record in records:
        key = tuple(record[k] for k in keys)
        missing = record.get("_unchanged")
        earlier = latest.get(key)
        if missing and earlier is not None:
            for name in missing:
                record[name] = earlier.get(name)
            record["_unchanged"] = [n for n in missing if n in (earlier.get("_unchanged") or ())] or None
        latest[key] = record if record["_op"] != "d" else None
    return pa.Table.from_pylist(records, schema=rows.schema)


def _in_order(column: pa.ChunkedArray) -> list:
    """The distinct values of a column, in order of first appearance."""
    return pc.unique(column).to_pylist()


def _last_per_key(rows: pa.Table, keys: tuple) -> pa.Table:
    """Each key's last row, in the batch's order."""
    numbered = rows.append_column("__etl_row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    last = numbered.group_by(list(keys), use_threads=False).aggregate([("__etl_row", "max")])
    picked = last.column("__etl_row_max")
    return rows.take(picked.take(pc.sort_indices(picked)))


def _reflected(writer):
    with writer.engine.connect() as conn:
        return reflect(conn, writer.name, writer.sink.schema)
