"""PostgreSQL change-data-capture: a stream source reading the write-ahead log.

    stream:
      source:
        type: postgres-cdc
        connection: ${CRM_DB_URL}
        tables: [public.customers, "crm.order_*"]    # schema-qualified names or globs
        slot: etl_customer_sync          # default etl_<pipeline>
        publication: etl_customer_sync   # default etl_<pipeline>; created when missing
        snapshot: initial                # or never

Changes come through logical replication with the built-in ``pgoutput`` plugin (no
server extension) over the replication protocol (psycopg2's replication connection),
decoded by :mod:`etl_actors.sources.pgoutput` into Arrow change rows: ``_op`` (``c``
insert, ``u`` update, ``d`` delete, ``t`` truncate, ``r`` snapshot read), ``_table``, ``_lsn`` (the
transaction's commit LSN), ``_commitTs``, ``_txId`` and the row's columns (after-image;
a delete has the key columns, or the whole old row under REPLICA IDENTITY FULL).

A stream has one partition, ``postgres-cdc:<slot>``. Its position (in the event log,
the truth) is a mapping:

    lsn        the end LSN of the last transaction handed on: replication restarts there,
               and once it is checkpointed the slot is told it may free the WAL before it
    commit     that transaction's commit LSN: transactions at or before it are not read again
    snapshot   while the initial snapshot runs: the tables left (the first one being read),
               the key the next chunk starts after, and the session's consistent point
    segments   per snapshotted table, ``[[after key, consistent point], ...]``: which key
               ranges the snapshot read at which point of the log

The snapshot reads each table in chunks of ``chunkSize`` rows by primary key, inside a
snapshot exported by a temporary replication slot: it holds exactly the transactions
that committed before that slot's consistent point. The pipeline's own slot was made
before, so the log from there on holds every change the snapshot does not; a change to
a snapshotted key that committed before the consistent point its range was read at is
left out (it is in the snapshot). A crash mid-table resumes after the last committed
chunk's key, in a new session with its own consistent point (a new segment), so no
change is missed or applied twice across the boundary.

Snapshot rows also carry ``_chunk``, their chunk's key range: a mirror deletes the
range's keys the chunk lacks, so a row of a chunk loaded but never checkpointed, and
deleted before the next session read the range again, does not linger. Snapshot and
stream both read values as the types' output functions print them, under pinned
session settings (UTC, ISO dates, exact floats), so one typing serves both.

Batches hold whole transactions (a transaction is never split over batches), so a
mirror sink applies each in one destination transaction. A batch of several tables is
their columns' union; each row then names its table's columns in ``_columns``.
"""
from __future__ import annotations

import fnmatch
import gc
import json
import os
import re
import select
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..db import normalize_url, redact
from ..errors import SpecError, TerminalError, TransientError, first_line
from ..redaction import redact_text
from . import pgoutput
from .base import Source

SNAPSHOT = ("initial", "never")
CHUNK = "_chunk"        # on snapshot rows: the chunk's key range, for a mirror to delete what the range lacks
COLUMNS = "_columns"    # in a batch of several tables: each row's table's columns (the batch has their union)
PARTITION_PREFIX = "postgres-cdc:"
CONNECT_TIMEOUT = 10
_TEXT_KEYS = {25, 1042, 1043, 19}          # text, bpchar, varchar, name: ordered byte-wise (COLLATE "C")
_INT_KEYS = {20, 21, 23, 26}
_NUM_KEYS = {700, 701, 1700}


def slot_name(pipeline: str) -> str:
    """``etl_<pipeline>`` as PostgreSQL takes a slot name (lower-case letters, digits
    and ``_``; 63 at most)."""
    return ("etl_" + re.sub(r"[^a-z0-9_]", "_", pipeline.lower()))[:63]


def libpq_url(url: str) -> str:
    return normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


SESSION = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3 -c IntervalStyle=postgres"


def session_options(url: str) -> str:
    """The connection's ``options`` with the settings the values are printed under
    (ISO dates, UTC, floats exact) added: decoding must not depend on the server's
    defaults. A URL's own ``options`` (a search_path) are kept."""
    own = normalize_url(url).query.get("options")
    own = " ".join(own) if isinstance(own, tuple) else (own or "")
    return f"{own} {SESSION}".strip()


@dataclass(frozen=True)
class PostgresCdcSource(Source):
    """The changes of ``tables`` of the database at ``url``; see the module docstring."""

    type: ClassVar[str] = "postgres-cdc"

    url: str
    tables: tuple[str, ...]
    slot: str
    publication: str
    snapshot: str = "initial"
    batch_size: int = 10_000
    chunk_size: int = 50_000
    poll_timeout_ms: int = 200
    parallelism: int | None = 1            # one replication stream: one extractor

    def __repr__(self) -> str:
        return f"PostgresCdcSource({redact(self.url)}, tables={list(self.tables)}, slot={self.slot!r})"

    @classmethod
    def from_spec(cls, section, ctx) -> "PostgresCdcSource":
        section.get("type", types=str)
        url = ctx.connection(section)
        if normalize_url(url).get_backend_name() != "postgresql":
            raise SpecError(section.at("connection"), f"expected a PostgreSQL URL, got {redact(url)}")
        tables = section.str_list("tables")
        if not tables:
            raise SpecError(section.at("tables"), "expected one or more schema-qualified table names or globs")
        for i, name in enumerate(tables):
            if "." not in name:
                raise SpecError(f"{section.at('tables')}[{i}]", f"expected a schema-qualified name or glob "
                                f"(public.{name}), got {name!r}")
        default = slot_name(getattr(ctx, "pipeline", "") or "pipeline")
        slot = section.get("slot", default, types=str)
        if not re.fullmatch(r"[a-z0-9_]{1,63}", slot):
            raise SpecError(section.at("slot"), f"{slot!r} is not a replication slot name (lower-case letters, "
                            "digits and '_'; 63 at most)")
        publication = section.get("publication", default, types=str)
        if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", publication):
            raise SpecError(section.at("publication"), f"{publication!r} is not a publication name (letters, "
                            "digits and '_'; 63 at most)")
        source = cls(url=url, tables=tuple(tables), slot=slot, publication=publication,
                     snapshot=section.get("snapshot", "initial", types=str, choices=SNAPSHOT),
                     batch_size=section.positive_int("batch_size", 10_000),
                     chunk_size=section.positive_int("chunk_size", 50_000),
                     poll_timeout_ms=section.positive_int("poll_timeout_ms", 200))
        parallelism = section.positive_int("parallelism", 1)
        if parallelism != 1:
            raise SpecError(section.at("parallelism"), "a replication slot is read by one extractor: expected 1")
        section.done()
        return source

    @property
    def partition(self) -> str:
        return PARTITION_PREFIX + self.slot

    # --- set-up, in the supervisor ------------------------------------------------------

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        """Check the server, create the publication and the slot when missing; the one
        partition. A slot gone while the log holds a position is a TerminalError: the
        changes since are lost, the stream must snapshot again (``--reset``)."""
        import psycopg

        try:
            return self._set_up(watermark)
        except psycopg.Error as exc:
            raise _error(exc, self, "set up change-data-capture") from None

    def _set_up(self, watermark: Mapping[str, Any]) -> list[str]:
        with self._connect() as conn:
            level = conn.execute("SHOW wal_level").fetchone()[0]
            if level != "logical":
                raise TerminalError(f"postgres at {redact(self.url)}: wal_level is {level!r}; change-data-capture "
                                    "needs wal_level = logical (set it in postgresql.conf, then restart the server)")
            tables = resolve_tables(conn, self.tables)
            self._publish(conn, tables)
            slot = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s",
                                (self.slot,)).fetchone()
            if slot is None and watermark.get(self.partition) is not None:
                raise TerminalError(f"replication slot {self.slot!r} is gone (dropped?): the changes since the last "
                                    "checkpoint cannot be read; run with --reset to snapshot the tables again",
                                    slot=self.slot)
            if slot is not None and slot[0] != "pgoutput":
                raise TerminalError(f"replication slot {self.slot!r} exists with plugin {slot[0]!r}, not pgoutput: "
                                    "choose another slot name")
            if slot is None:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
        return [self.partition]

    def _publish(self, conn, tables: list[str]) -> None:
        """The publication, made for ``tables`` when missing; tables it lacks added."""
        from psycopg import sql

        row = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (self.publication,)).fetchone()
        names = [sql.Identifier(*t.split(".", 1)) for t in tables]
        if row is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(self.publication), sql.SQL(", ").join(names)))
            return
        if row[0]:
            return
        published = {f"{s}.{t}" for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (self.publication,))}
        missing = [sql.Identifier(*t.split(".", 1)) for t in tables if t not in published]
        if missing:
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(self.publication), sql.SQL(", ").join(missing)))

    def _connect(self):
        return connect(self.url)

    def open_reader(self, assignments: Mapping[str, Any]) -> "CdcReader":
        return CdcReader(self, assignments.get(self.partition))

    def view_watermark(self, watermark: Mapping[str, Any]) -> dict:
        return {p: describe_position(v) for p, v in watermark.items()}

    def describe(self) -> dict:
        return {"type": self.type, "connection": redact(self.url), "tables": list(self.tables), "slot": self.slot,
                "publication": self.publication, "snapshot": self.snapshot}

    # --- hygiene --------------------------------------------------------------------------

    def slot_lag(self) -> dict | None:
        """The slot's lag: the WAL bytes it keeps that the sinks have not confirmed, and
        how far behind in time that is (while a run reads the slot: the server's flush
        lag; else: since the oldest change not yet applied committed; 0 when caught up).
        None when the slot does not exist."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active_pid "
                "FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()
            if row is None:
                return None
            confirmed, current, lag, pid = row
            seconds = 0.0
            if pid is not None:
                found = conn.execute("SELECT extract(epoch FROM flush_lag)::float8 FROM pg_stat_replication "
                                     "WHERE pid = %s", (pid,)).fetchone()
                seconds = float(found[0] or 0.0) if found else 0.0
            elif lag and conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                                      (self.publication,)).fetchone():
                try:        # decoding a long backlog to its first change may take long: 2 s at most
                    conn.execute("SET statement_timeout = 2000")
                    found = conn.execute(
                        "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, 1, 'proto_version', '1', "
                        "'publication_names', %s) LIMIT 1", (self.slot, self.publication)).fetchone()
                except Exception:  # noqa: BLE001 - unknown then (a run reports the cause of a failure)
                    found, seconds = None, None
                if found and bytes(found[0][:1]) == b"B":
                    begun = pgoutput.pg_time(int.from_bytes(bytes(found[0][9:17]), "big", signed=True))
                    seconds = max(0.0, (datetime.now(timezone.utc) - begun).total_seconds())
        return {"slot": self.slot, "publication": self.publication, "confirmedLsn": confirmed, "currentLsn": current,
                "lagBytes": int(lag or 0), "lagSeconds": None if seconds is None else round(seconds, 3),
                "active": pid is not None}

    def drop(self) -> dict:
        """Drop the slot and the publication (an abandoned slot keeps WAL forever);
        what was dropped."""
        import psycopg

        try:
            return self._drop()
        except psycopg.Error as exc:
            raise _error(exc, self, f"drop slot {self.slot!r} and publication {self.publication!r}") from None

    def _drop(self) -> dict:
        dropped = {"slot": False, "publication": False}
        with self._connect() as conn:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (self.slot,)).fetchone()
            if row is not None:
                if row[0] is not None:
                    raise TerminalError(f"replication slot {self.slot!r} is in use by process {row[0]} (a running "
                                        "pipeline?): stop it first")
                conn.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
                dropped["slot"] = True
            if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)).fetchone():
                from psycopg import sql

                conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(self.publication)))
                dropped["publication"] = True
        return dropped


def connect(url: str, autocommit: bool = True, session: bool = False):
    """A psycopg (3) connection (autocommit unless told; with ``session``, the settings
    values are read under); connection failures are TransientErrors naming the server
    (redacted)."""
    import psycopg

    extra = {"options": session_options(url)} if session else {}
    try:
        return psycopg.connect(libpq_url(url), autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT, **extra)
    except psycopg.OperationalError as exc:
        raise TransientError(f"postgres at {redact(url)}: cannot connect: {redact_text(first_line(exc))}") from None


def replication_connection(url: str):
    """A psycopg2 logical replication connection, under the session settings values
    are printed in (:func:`session_options`)."""
    import psycopg2
    from psycopg2.extras import LogicalReplicationConnection

    return psycopg2.connect(libpq_url(url), connection_factory=LogicalReplicationConnection,
                            connect_timeout=CONNECT_TIMEOUT, options=session_options(url))


def resolve_tables(conn, patterns) -> list[str]:
    """``schema.table`` names matching ``patterns`` (in the patterns' order), each with a
    primary key; a pattern matching nothing or a table without one is a TerminalError."""
    found = [f"{s}.{t}" for s, t in conn.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
        "ORDER BY 1, 2")]
    tables: list[str] = []
    for pattern in patterns:
        matched = [t for t in found if fnmatch.fnmatchcase(t, pattern)]
        if not matched:
            raise TerminalError(f"tables: {pattern!r} matches no table (found {len(found)} tables)")
        tables += [t for t in matched if t not in tables]
    for table in tables:
        if not primary_key(conn, table):
            raise TerminalError(f"table {table!r} has no primary key: change-data-capture mirrors rows by key "
                                "(add a primary key)", table=table)
    return tables


def primary_key(conn, table: str) -> list[tuple[str, int, int, str]]:
    """``[(column, type oid, typmod, SQL type)]`` of the table's primary key, in order."""
    return list(conn.execute(
        "SELECT a.attname, a.atttypid::int, a.atttypmod, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        (_regclass(table),)))


def columns_of(conn, table: str) -> list[pgoutput.Column]:
    keys = {name for name, *_ in primary_key(conn, table)}
    return [pgoutput.Column(name, oid, typmod, name in keys) for name, oid, typmod in conn.execute(
        "SELECT attname, atttypid::int, atttypmod FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (_regclass(table),))]


def _regclass(table: str) -> str:
    schema, _, name = table.partition(".")
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


def describe_position(position: Any) -> Any:
    """A position as users read it: LSNs as PostgreSQL writes them."""
    if not isinstance(position, Mapping):
        return position
    view = {"lsn": pgoutput.lsn_text(position.get("lsn")), "commit": pgoutput.lsn_text(position.get("commit"))}
    snapshot = position.get("snapshot")
    if snapshot:
        view["snapshot"] = {"tables": list(snapshot["tables"]), "after": snapshot.get("after")}
    return view


def key_value(text: str | None, type_oid: int):
    """A key's text as a value that orders as the snapshot's ORDER BY does."""
    if text is None:
        return None
    if type_oid in _INT_KEYS:
        return int(text)
    if type_oid in _NUM_KEYS:
        try:
            return Decimal(text)
        except InvalidOperation:
            return Decimal("Infinity")
    return text.encode()


class _Snapshot:
    """A snapshot session: a temporary slot (held by its replication connection) that
    exported a snapshot at its consistent point, and a transaction reading in it."""

    def __init__(self, source: PostgresCdcSource):
        import psycopg
        import psycopg2

        self.repl = self.conn = None
        try:
            self.repl = replication_connection(source.url)
            cursor = self.repl.cursor()
            name = f"{source.slot[:40]}_snap_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
            cursor.execute(f"CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
            _, consistent, exported, _ = cursor.fetchone()
            self.at = pgoutput.lsn_int(consistent)
            self.conn = connect(source.url, autocommit=False, session=True)
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self.conn.execute(f"SET TRANSACTION SNAPSHOT '{exported}'")
        except (psycopg2.Error, psycopg.Error) as exc:
            self.close()
            raise TransientError(f"postgres at {redact(source.url)}: cannot start the snapshot: "
                                 f"{first_line(exc)}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for conn in (self.conn, self.repl):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self.conn = self.repl = None


@dataclass
class Polled:
    """One batch as the stream extractor takes it (as a Kafka poll's, plus its id)."""

    table: pa.Table
    offsets: np.ndarray
    next_offset: Any
    count: int
    bytes: int
    rejects: list
    batch_id: str


class CdcReader:
    """Reads the snapshot, then the replication stream, from a position; see the
    module docstring. One per extractor (one per stream)."""

    def __init__(self, source: PostgresCdcSource, position: Mapping[str, Any] | None):
        self.source, self.partition = source, source.partition
        self.session: _Snapshot | None = None
        self.repl = self.cursor = None
        self.catch_up_to = 0
        gc.set_threshold(50_000, 20, 100)      # a change is a few small objects: the default GC spends 25% on them
        self.decoder = pgoutput.Decoder(key_columns=lambda table: [k[0] for k in self._key(table)])
        self.flush_lsn: int | None = None
        self.sent_lsn: int | None = None
        self.columns: dict[str, list[pgoutput.Column]] = {}
        self.keys: dict[str, list[tuple[str, int, int, str]]] = {}
        self.position = dict(position) if position is not None else self._fresh()
        self.raw_segments = {t: [list(s) for s in segs] for t, segs in self.position.get("segments", {}).items()}
        self.segments = {t: [(key_value_tuple(k, self._key_types(t)), at) for k, at in segs]
                         for t, segs in self.raw_segments.items()}

    def _fresh(self) -> dict:
        """The position of a first run: the slot's, with every table to snapshot."""
        with self.source._connect() as conn:
            row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                               (self.source.slot,)).fetchone()
            if row is None:
                raise TerminalError(f"replication slot {self.source.slot!r} does not exist")
            position: dict = {"lsn": pgoutput.lsn_int(row[0]), "commit": 0, "segments": {}}
            if self.source.snapshot == "initial":
                position["snapshot"] = {"tables": resolve_tables(conn, self.source.tables), "after": None,
                                        "at": None}
        return position

    def _key_types(self, table: str) -> list[int]:
        return [oid for _, oid, _, _ in self._key(table)]

    def _key(self, table: str) -> list[tuple[str, int, int, str]]:
        if table not in self.keys:
            with self.source._connect() as conn:
                self.keys[table] = primary_key(conn, table)
        return self.keys[table]

    # --- polling ------------------------------------------------------------------------

    def poll(self) -> dict[str, "Polled"]:
        """``{partition: batch}``: the next snapshot chunk, or the whole transactions
        that arrive within the poll timeout (``batchSize`` rows are waited for no
        longer); ``{}`` when there is nothing."""
        batch = self._chunk() if self.position.get("snapshot") else self._stream()
        return {} if batch is None else {self.partition: batch}

    def _chunk(self) -> Polled | None:
        from psycopg import sql
        from psycopg.types.string import TextLoader

        snapshot = dict(self.position["snapshot"])
        table = snapshot["tables"][0]
        if self.session is None or snapshot.get("at") != self.session.at:
            self._close_session()
            self.session = _Snapshot(self.source)
            snapshot["at"] = self.session.at
            self._segment(table, snapshot.get("after"), self.session.at)
        conn, key = self.session.conn, self._key(table)
        columns = self.columns.get(table) or self.columns.setdefault(table, columns_of(conn, table))
        schema, name = table.split(".", 1)
        order = sql.SQL(", ").join(_key_sql(schema, name, k) for k in key)
        for column in columns:      # every value as its type's output function prints it, as pgoutput sends it
            conn.adapters.register_loader(column.type_oid, TextLoader)
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in columns), sql.Identifier(schema, name))
        params: list = []
        if snapshot.get("after") is not None:
            query += sql.SQL(" WHERE ({}) > ({})").format(order, sql.SQL(", ").join(
                sql.SQL("%s::{}").format(sql.SQL(k[3])) + (sql.SQL(' COLLATE "C"') if k[1] in _TEXT_KEYS
                                                          else sql.SQL("")) for k in key))
            params = list(snapshot["after"])
        query += sql.SQL(" ORDER BY {} LIMIT {}").format(order, sql.Literal(self.source.chunk_size + 1))
        try:
            rows = conn.execute(query, params).fetchall()
        except Exception as exc:  # noqa: BLE001 - classified
            self._close_session()
            raise _error(exc, self.source, f"read a snapshot chunk of {table!r}") from None
        more = len(rows) > self.source.chunk_size
        rows = rows[:self.source.chunk_size]
        key_index = [next(i for i, c in enumerate(columns) if c.name == k[0]) for k in key]
        start, at = snapshot.get("after"), self.session.at
        upto = [rows[-1][i] for i in key_index] if more else None
        if more:
            snapshot["after"] = upto
        else:                                           # the table is done
            snapshot["tables"], snapshot["after"] = snapshot["tables"][1:], None
            if snapshot["tables"]:
                self._segment(snapshot["tables"][0], None, at)
        position = {**self.position, "segments": {t: [list(s) for s in segs] for t, segs in self.raw_segments.items()}}
        if snapshot["tables"]:
            position["snapshot"] = snapshot
        else:
            position.pop("snapshot", None)
            self._close_session()
        self.position = position
        if not rows:
            return None
        relation = pgoutput.Relation(0, schema, name, "d", columns)
        n = len(rows)
        changes = pgoutput.Changes(relation, ops=["r"] * n, lsns=[at] * n, times=[None] * n, xids=[None] * n,
                                   offsets=list(range(n)), rows=rows)
        chunk = json.dumps({"keys": [k[0] for k in key], "after": start, "upto": upto})
        changed = pgoutput.to_arrow(changes)
        changed = changed.append_column(CHUNK, pa.array([chunk] * n, pa.string()))
        return Polled(changed, np.arange(n, dtype=np.int64), position, n, sum(len(v or "") for r in rows for v in r),
                      [], f"snapshot:{table}:{pgoutput.lsn_text(at)}:{_key_text(start)}")

    def _segment(self, table: str, after, at: int) -> None:
        """Keys of ``table`` after ``after`` are (now) read at consistent point ``at``."""
        self.segments.setdefault(table, []).append((key_value_tuple(after, self._key_types(table)), at))
        self.raw_segments.setdefault(table, []).append([after, at])

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def _stream(self) -> Polled | None:
        if self.cursor is None:
            self._start_replication()
        decoder, cursor = self.decoder, self.cursor
        deadline = time.monotonic() + self.source.poll_timeout_ms / 1000
        size = 0
        try:
            self._feedback()
            while True:
                message = cursor.read_message()
                if message is not None:
                    payload = message.payload
                    size += len(payload)
                    decoder.feed(payload, message.data_start)
                    if decoder.txn is None and decoder.rows >= self.source.batch_size:
                        break
                    continue
                now = time.monotonic()
                if decoder.txn is None and (now >= deadline):
                    break
                select.select([self.repl], [], [], max(0.0, min(deadline - now, 0.5)) if now < deadline else 0.5)
        except Exception as exc:  # noqa: BLE001 - classified
            if isinstance(exc, (TerminalError, TransientError)):
                raise
            lost = self.repl is None or bool(self.repl.closed) or "no copy in progress" in str(exc).lower()
            raise _error(exc, self.source, "read the replication stream", lost=lost) from None
        pending = decoder.take()
        if decoder.last_commit is None or not pending:
            return None
        commit_lsn, end_lsn, _ = decoder.last_commit
        tables = [pgoutput.to_arrow(c) for c in pending.values()]
        offsets = np.concatenate([np.asarray(c.offsets, np.int64) for c in pending.values()])
        table = tables[0] if len(tables) == 1 else concat([
            t.append_column(COLUMNS, pa.array([declared(c.relation)] * t.num_rows, pa.string()).dictionary_encode())
            for t, c in zip(tables, pending.values())])
        first = pc.min(table.column("_lsn")).as_py()
        position = {**self.position, "lsn": end_lsn, "commit": commit_lsn}
        if self.segments and commit_lsn >= max(at for segs in self.segments.values() for _, at in segs):
            position["segments"] = {}          # the stream is past every snapshot session: no change is left out
            self.segments, self.raw_segments = {}, {}
            decoder.keep = None
        self.position = position
        return Polled(table, offsets, position, table.num_rows, size, [],
                      f"changes:{pgoutput.lsn_text(first)}-{pgoutput.lsn_text(commit_lsn)}")

    def _start_replication(self) -> None:
        import psycopg2

        try:
            self.repl = replication_connection(self.source.url)
            self.cursor = self.repl.cursor()
            self.cursor.start_replication(slot_name=self.source.slot, decode=False,
                                          start_lsn=int(self.position.get("lsn") or 0), status_interval=10,
                                          options={"proto_version": "1",
                                                   "publication_names": self.source.publication})
        except psycopg2.Error as exc:
            self._close_replication()
            raise _error(exc, self.source, f"start replication from slot {self.source.slot!r}") from None
        with self.source._connect() as conn:     # where the server was: until the stream is there, it is not idle
            self.catch_up_to = pgoutput.lsn_int(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        self.decoder.skip_until = int(self.position.get("commit") or 0)
        self.decoder.keep = self._keep if self.segments else None

    def _keep(self, relation: pgoutput.Relation, changes: pgoutput.Changes, index: int, commit_lsn: int) -> bool:
        """Whether a change is not already in the snapshot: it committed at or after the
        consistent point its key's range was read at."""
        segments = self.segments.get(relation.qualified)
        if not segments:
            return True
        if changes.ops[index] == "t":
            if len(segments) > 1 and segments[0][1] <= commit_lsn < segments[-1][1]:
                raise TerminalError(f"table {relation.qualified!r} was truncated while its snapshot was resumed "
                                    "after a crash: part of it was read before, part after; run with --reset to "
                                    "snapshot it again", table=relation.qualified)
            return commit_lsn >= segments[-1][1]
        at = segments[0][1]
        if len(segments) > 1:
            types = {c.name: c.type_oid for c in relation.columns}
            key = tuple(key_value(changes.value(index, n), types[n]) for n in relation.keys)
            for after, segment_at in segments:
                if after is None or key > after:
                    at = segment_at
        return commit_lsn >= at

    def _feedback(self) -> None:
        """Tell the slot what the sinks have (the last checkpoint), so the server frees
        the WAL before it."""
        if self.cursor is not None and self.flush_lsn is not None and self.flush_lsn != self.sent_lsn:
            self.cursor.send_feedback(flush_lsn=self.flush_lsn, force=True)
            self.sent_lsn = self.flush_lsn

    def commit_group(self, positions: Mapping[str, Any]) -> None:
        """After a checkpoint: the slot may free the WAL up to the position's ``lsn``."""
        position = positions.get(self.partition)
        if isinstance(position, Mapping) and position.get("lsn") and not position.get("snapshot"):
            self.flush_lsn = int(position["lsn"])
            try:
                self._feedback()
            except Exception:  # noqa: BLE001 - sent again with the next poll
                pass

    def highwater(self) -> dict:
        return {}

    @property
    def busy(self) -> bool:
        """Whether the server is still sending the WAL written before the stream began
        (it reads a backlog of other tables' changes too): a stream run waiting to be
        idle (``--until-idle``) waits for it."""
        if self.position.get("snapshot"):
            return True
        return self.cursor is not None and (self.cursor.wal_end or 0) < self.catch_up_to

    def _close_replication(self) -> None:
        if self.repl is not None:
            try:
                self.repl.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.repl = self.cursor = None

    def close(self) -> None:
        self._close_session()
        self._close_replication()


def key_value_tuple(after, types: list[int]):
    return None if after is None else tuple(key_value(v, t) for v, t in zip(after, types))


def _key_sql(schema: str, table: str, key):
    from psycopg import sql

    ident = sql.Identifier(schema, table, key[0])
    return ident + sql.SQL(' COLLATE "C"') if key[1] in _TEXT_KEYS else ident


def _key_text(after) -> str:
    return "start" if after is None else ",".join(str(v) for v in after)


def declared(relation: pgoutput.Relation) -> str:
    """A table's columns and their PostgreSQL types, for ``_columns``."""
    return json.dumps([[c.name, c.type_oid, c.typmod] for c in relation.columns])


def concat(tables: list[pa.Table]) -> pa.Table:
    """Change rows of several tables in one batch: their columns unioned (a column two
    tables type differently is carried as text)."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        types: dict[str, set] = {}
        for t in tables:
            for f in t.schema:
                types.setdefault(f.name, set()).add(f.type)
        clash = {n for n, ts in types.items() if len(ts) > 1}
        tables = [t.select(t.column_names) if not clash & set(t.column_names) else
                  pa.table([t.column(n).cast(pa.string()) if n in clash else t.column(n) for n in t.column_names],
                           names=t.column_names) for t in tables]
        return pa.concat_tables(tables, promote_options="permissive")


def _error(exc: BaseException, source: PostgresCdcSource, doing: str, lost: bool = False) -> Exception:
    """A driver error as ours: connection trouble (or ``lost``: the connection is
    gone, whatever the driver then said) is transient, the rest terminal."""
    import psycopg
    import psycopg2

    text = redact_text(first_line(exc))
    transient = lost or isinstance(exc, (psycopg.OperationalError, psycopg2.OperationalError)) or any(
        w in text.lower() for w in ("connection", "terminat", "server closed", "timeout", "could not connect",
                                    "is active for pid", "in use", "shutting down"))
    kind = TransientError if transient else TerminalError
    hint = ""
    if "publication" in text and "does not exist" in text:
        hint = (f" (the slot reads the catalog as it was at each change: publication {source.publication!r} was "
                "dropped, or made after the slot; `etl-actors cdc drop` the pipeline and run it again to snapshot "
                "anew)")
    return kind(f"postgres at {redact(source.url)}: cannot {doing}: {text}{hint}")
