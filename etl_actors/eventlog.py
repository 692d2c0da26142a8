"""The event log store: append-only events and the dead letters beside them.

One table of events in global ``position`` order, each with a gapless ``version`` in
its ``stream``, and one table of dead letters (one row per failed record). SQLite is
the embedded default, PostgreSQL serves clusters; both through SQLAlchemy Core.

Guarantees:

- ``append`` is atomic and fenced: it writes every event or none, and only when the
  stream is still at ``expected_version``; of two racing writers exactly one wins and
  the other gets :class:`~etl_actors.errors.ConcurrencyError`.
- Appends are serialised (SQLite ``BEGIN IMMEDIATE``; one PostgreSQL advisory lock),
  so positions become visible in order: a follower reading ``position > N`` never
  skips a row committed later with a smaller position.
- ``put_dead_letters`` is idempotent per ``(pipeline, batch_id, stage)``: a retried
  batch writes no duplicate rows.

>>> log = EventLog("sqlite:///.etl_actors/events.db")          # doctest: +SKIP
>>> log.append("pipeline:orders", [RunRequested("orders", "r1")], expected_version=0)  # doctest: +SKIP
1
"""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .batch import DeadLetter, jsonable
from .db import db_reason, engine_for, is_postgres, redact
from .errors import ConcurrencyError, EtlError, LeaseLost, TerminalError, TransientError, UsageError
from .events import Event, RecordedEvent, decode, encode
from .redaction import redact_text, remember_url

if TYPE_CHECKING:
    import pyarrow as pa

# pg_advisory_xact_lock keys: one for every append, one for creating the tables.
APPEND_LOCK_KEY = 0x45544C_01
CREATE_LOCK_KEY = 0x45544C_02
FOLLOW_PAGE = 1000

metadata = sa.MetaData()

# The unique (stream, version) index is also the index that serves reads by stream.
events_table = sa.Table(
    "etl_events", metadata,
    sa.Column("position", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("schema", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("stream", "version", name="uq_etl_events_stream_version"),
    sqlite_autoincrement=True,
)

dead_letters_table = sa.Table(
    "etl_dead_letters", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    # added by issue 7 (added to older logs when opened): the Arrow schema of the rows
    # the letter came from (base64 IPC), so a redrive gives steps and sinks the types
    # they had; and the redrive that sent the letter through again (null: pending)
    sa.Column("arrow_schema", sa.Text, nullable=True),
    sa.Column("redriven_by", sa.Text, nullable=True),
    sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("pipeline", "batch_id", "stage", "idx", name="uq_etl_dead_letters_batch"),
    sa.Index("ix_etl_dead_letters_pipeline_run", "pipeline", "run_id"),
    sqlite_autoincrement=True,
)

# A ``unique`` validation rule's seen values, shared by the transformers of a run (see
# quality_store): each value's hash owned by the first record (batch id, index) claiming it.
quality_seen_table = sa.Table(
    "etl_quality_seen", metadata,
    sa.Column("pipeline", sa.Text, primary_key=True),
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("rule", sa.Text, primary_key=True),
    sa.Column("value_hash", sa.Text, primary_key=True),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=True),
)

# One row per pipeline: who may write its stream (the epoch is the fencing token) and
# until when (``expires_at``, by the database's clock, moved on by each heartbeat).
leases_table = sa.Table(
    "etl_leases", metadata,
    sa.Column("pipeline", sa.Text, primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("owner_host", sa.Text, nullable=False),
    sa.Column("owner_pid", sa.Integer, nullable=False),
    sa.Column("owner_started", sa.Float, nullable=True),     # the process's start, to tell a reused pid
    sa.Column("owner_actor", sa.Text, nullable=True),        # the Ray supervisor actor, when on Ray
    sa.Column("owner_cluster", sa.Text, nullable=True),      # and its Ray cluster (session)
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("released", sa.Boolean, nullable=False, default=False),
)

# A stream's window state at a checkpoint, in parts (one per window actor); written in
# the same transaction as the CheckpointCommitted event naming it (``seq``, its version
# in the pipeline's stream). Only the last two checkpoints of a pipeline are kept.
snapshots_table = sa.Table(
    "etl_snapshots", metadata,
    sa.Column("pipeline", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("shard", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

_READ_COLUMNS = [events_table.c[name] for name in
                 ("position", "stream", "version", "type", "schema", "payload", "recorded_at")]

_tables_ready: set[str] = set()
_tables_lock = threading.Lock()


class EventLog:
    """The event log and dead-letter store at ``url``; usable from many threads.

    Construction is cheap after the first time per URL and process (engines and the
    table check are cached), so workers may build one per call.
    """

    def __init__(self, url: str):
        check_log_url(url)
        remember_url(url)
        self.url = url
        self._engine = engine_for(url)
        try:
            _ensure_tables(url, self._engine)
        except sa.exc.DBAPIError as exc:
            raise log_error(url, exc) from None

    def __repr__(self) -> str:
        return f"EventLog({redact(self.url)!r})"

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- events ---------------------------------------------------------------------

    def append(self, stream: str, events: Sequence[Event], expected_version: int,
               fence: tuple[str, int] | None = None, snapshot: tuple[str, int, Sequence[bytes]] | None = None,
               letters: tuple[str, str, Sequence[tuple[str, int, str, DeadLetter]]] | None = None,
               redriven: tuple[str, Sequence[int], str] | None = None) -> int:
        """Append ``events`` to ``stream`` in one transaction; return the new version.

        ``expected_version`` is the version the caller last saw (0: a new stream).
        Raises ConcurrencyError when the stream is elsewhere; nothing is written then.
        With ``fence=(pipeline, epoch)`` the append also requires that the pipeline's
        lease is still at ``epoch`` (checked in the same transaction), else raises
        :class:`~etl_actors.errors.LeaseLost`. Appending no events only checks.
        ``snapshot=(pipeline, seq, parts)`` stores window state in the same transaction
        and drops the pipeline's snapshots older than the previous one;
        ``letters=(pipeline, run_id, [(batch_id, idx, stage, letter)])`` stores dead
        letters in it too (a stream's, with its checkpoint: written once it commits);
        ``redriven=(pipeline, letter_ids, run_id)`` marks letters a redrive loaded, in
        it too (the event saying so and the mark are one fact).
        """
        if expected_version < 0:
            raise ValueError(f"expected_version must be 0 or more, got {expected_version}")
        rows = [{"stream": stream, "version": expected_version + i, "type": type_name,
                 "schema": schema, "payload": payload}
                for i, (type_name, schema, payload) in enumerate(map(encode, events), start=1)]
        try:
            with self.write_transaction() as conn:
                actual = _fenced_version(conn, stream, *fence) if fence is not None else _stream_version(conn, stream)
                if actual != expected_version:
                    raise ConcurrencyError(stream, expected_version, actual)
                if rows:
                    now = _utcnow()      # taken holding the write lock: positions and times agree
                    conn.execute(_INSERT_EVENTS, [{**row, "recorded_at": now} for row in rows])
                if snapshot is not None:
                    _put_snapshot(conn, *snapshot)
                if letters is not None and letters[2]:
                    _insert_letters(conn, *letters)
                if redriven is not None and redriven[1]:
                    _mark_redriven(conn, *redriven)
        except sa.exc.IntegrityError:
            raise ConcurrencyError(stream, expected_version, self.version(stream)) from None
        return expected_version + len(rows)

    @contextmanager
    def write_transaction(self) -> Iterator[sa.Connection]:
        """A transaction holding the log's write lock; a database that cannot be
        written (read-only, full, gone) is one line naming the log, never a traceback."""
        try:
            with _write_transaction(self._engine, APPEND_LOCK_KEY) as conn:
                yield conn
        except sa.exc.IntegrityError:
            raise
        except sa.exc.DBAPIError as exc:
            raise log_error(self.url, exc) from None

    def version(self, stream: str) -> int:
        """The stream's current version; 0 for a stream with no events."""
        with self._engine.connect() as conn:
            return _stream_version(conn, stream)

    def read(self, stream: str, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        """The events of ``stream`` from ``from_version`` on, in version order (at most
        ``limit`` when given)."""
        query = (sa.select(*_READ_COLUMNS)
                 .where(events_table.c.stream == stream, events_table.c.version >= from_version)
                 .order_by(events_table.c.version).limit(limit))
        return self._fetch(query)

    def last_of_type(self, stream: str, type_name: str, before_version: int | None = None) -> RecordedEvent | None:
        """The newest event of type ``type_name`` in ``stream`` (older than
        ``before_version`` when given), or None. It walks the ``(stream, version)``
        index back from the newest event and stops at the first match, so its cost is
        the number of events after that match, not the stream's length."""
        t = events_table
        query = sa.select(*_READ_COLUMNS).where(t.c.stream == stream, t.c.type == type_name)
        if before_version is not None:
            query = query.where(t.c.version < before_version)
        found = self._fetch(query.order_by(t.c.version.desc()).limit(1))
        return found[0] if found else None

    def read_all(self, from_position: int = 0, limit: int | None = None,
                 stream_prefix: str | None = None, stream: str | None = None) -> list[RecordedEvent]:
        """Events with ``position > from_position`` in global order, at most ``limit``,
        only of streams starting with ``stream_prefix``, or only of ``stream``, when given."""
        query = (sa.select(*_READ_COLUMNS)
                 .where(events_table.c.position > from_position)
                 .order_by(events_table.c.position).limit(limit))
        if stream_prefix:
            query = query.where(events_table.c.stream.startswith(stream_prefix, autoescape=True))
        if stream:
            query = query.where(events_table.c.stream == stream)
        return self._fetch(query)

    def follow(self, from_position: int = 0, poll_interval: float = 0.2,
               stop: threading.Event | None = None, stream_prefix: str | None = None,
               stream: str | None = None) -> Iterator[RecordedEvent]:
        """Yield events after ``from_position`` as they are appended, polling every
        ``poll_interval`` seconds when caught up; return once ``stop`` is set."""
        stop = stop or threading.Event()
        position = from_position
        while not stop.is_set():
            page = self.read_all(position, limit=FOLLOW_PAGE, stream_prefix=stream_prefix, stream=stream)
            for recorded in page:
                yield recorded
                position = recorded.position
            if len(page) < FOLLOW_PAGE:
                stop.wait(poll_interval)

    def last_position(self) -> int:
        """The global position of the newest event; 0 for an empty log."""
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(events_table.c.position))).scalar() or 0)

    def streams(self, prefix: str = "") -> list[str]:
        """The names of the streams starting with ``prefix``, sorted."""
        query = sa.select(events_table.c.stream).distinct().order_by(events_table.c.stream)
        if prefix:
            query = query.where(events_table.c.stream.startswith(prefix, autoescape=True))
        with self._engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def snapshot(self, pipeline: str, seq: int) -> list[bytes] | None:
        """The parts of snapshot ``seq`` in shard order, or None when it is not kept."""
        t = snapshots_table
        query = sa.select(t.c.data).where(t.c.pipeline == pipeline, t.c.seq == seq).order_by(t.c.shard)
        with self._engine.connect() as conn:
            parts = [bytes(row) for row in conn.execute(query).scalars()]
        return parts or None

    # --- dead letters ---------------------------------------------------------------

    def put_dead_letters(self, pipeline: str, run_id: str, batch_id: str, stage: str,
                         letters: Sequence[DeadLetter], schema: pa.Schema | None = None) -> int:
        """Store one row per letter; return how many rows were new.

        A letter is identified by ``(pipeline, batch_id, stage, its index in letters)``,
        so putting a retried batch's letters again writes nothing. ``schema`` is the
        Arrow schema of the rows the letters came from (a redrive restores it).
        """
        if not letters:
            return 0
        keyed = [(batch_id, idx, stage, letter) for idx, letter in enumerate(letters)]
        try:
            with self._engine.begin() as conn:
                return _insert_letters(conn, pipeline, run_id, keyed, encode_schema(schema))
        except sa.exc.DBAPIError as exc:
            raise log_error(self.url, exc) from None

    def dead_letters(self, pipeline: str, run_id: str | None = None, limit: int | None = None,
                     pending: bool = False, stage: str | None = None, after_id: int = 0,
                     batch_id: str | None = None) -> list[dict]:
        """The pipeline's dead letters (of one run, one stage, only those still
        ``pending`` when asked) in insertion order, as ``{id, pipeline, runId, batchId,
        stage, reason, record, recordedAt, redrivenBy, redrivenAt}`` (and ``schema``,
        the encoded Arrow schema, for a redrive)."""
        t = dead_letters_table
        conditions = _dead_letter_filter(pipeline, run_id, pending, stage)
        if batch_id is not None:
            conditions.append(t.c.batch_id == batch_id)
        query = (sa.select(t.c.id, t.c.pipeline, t.c.run_id, t.c.batch_id, t.c.idx, t.c.stage, t.c.reason,
                           t.c.record, t.c.recorded_at, t.c.arrow_schema, t.c.redriven_by, t.c.redriven_at)
                 .where(*conditions, t.c.id > after_id).order_by(t.c.id).limit(limit))
        with self._engine.connect() as conn:
            return [_dead_letter_view(row) for row in conn.execute(query)]

    def dead_letter_count(self, pipeline: str, run_id: str | None = None, pending: bool = False) -> int:
        """How many dead letters the pipeline (or one of its runs) has."""
        query = sa.select(sa.func.count()).select_from(dead_letters_table).where(
            *_dead_letter_filter(pipeline, run_id, pending))
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def dead_letter_stages(self, pipeline: str, run_id: str | None = None, pending: bool = True) -> dict[str, int]:
        """``{stage: count}`` of the pipeline's (pending) letters."""
        t = dead_letters_table
        query = (sa.select(t.c.stage, sa.func.count()).where(*_dead_letter_filter(pipeline, run_id, pending))
                 .group_by(t.c.stage))
        with self._engine.connect() as conn:
            return {stage: int(n) for stage, n in conn.execute(query)}

    def last_dead_letter_id(self, pipeline: str) -> int:
        t = dead_letters_table
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(t.c.id)).where(t.c.pipeline == pipeline)).scalar() or 0)

    def dead_letter_groups(self, pipeline: str, stage: str, run_id: str | None = None,
                           until_id: int | None = None) -> list[tuple[int, str, str]]:
        """``(first id, run id, batch id)`` of each batch of ``stage`` letters that has
        one pending, in the order the batches were written; ``first id`` counts every
        letter of the batch, pending or not, so it does not move as they are redriven."""
        t = dead_letters_table
        conditions = _dead_letter_filter(pipeline, run_id, False, stage)
        if until_id is not None:
            conditions.append(t.c.id <= until_id)
        pending = sa.func.sum(sa.case((t.c.redriven_by.is_(None), 1), else_=0))
        first = sa.func.min(t.c.id)
        query = (sa.select(first, t.c.run_id, t.c.batch_id).where(*conditions)
                 .group_by(t.c.run_id, t.c.batch_id).having(pending > 0).order_by(first))
        with self._engine.connect() as conn:
            return [(int(f), r, b) for f, r, b in conn.execute(query)]

    def close(self) -> None:
        """Release the pooled connections to ``url``; a later call reconnects."""
        self._engine.dispose()

    # --- helpers --------------------------------------------------------------------

    def _fetch(self, query) -> list[RecordedEvent]:
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [RecordedEvent(row.position, row.stream, row.version,
                              decode(row.type, row.schema, row.payload), _epoch(row.recorded_at))
                for row in rows]


LOG_BACKENDS = ("sqlite", "postgresql")


def check_log_url(url: str) -> None:
    """Raise :class:`UsageError` unless ``url`` is a SQLite or PostgreSQL URL."""
    try:
        backend = sa.engine.make_url(url).get_backend_name()
    except Exception:  # noqa: BLE001 - any parse failure is the same usage error
        raise UsageError("event log URL cannot be parsed: expected sqlite:///path/events.db "
                         "or postgresql://user:password@host/db") from None
    if backend not in LOG_BACKENDS:
        raise UsageError(f"event log {redact(url)}: {backend!r} is not supported; "
                         f"expected sqlite:///path/events.db or postgresql://user:password@host/db")


def check_durable(url: str) -> None:
    """Raise :class:`UsageError` for a log that keeps no history (in-memory SQLite):
    a run's log must outlive it, or nothing could resume."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and (parsed.database in (None, "", ":memory:")
                                                 or parsed.query.get("mode") == "memory"):
        raise UsageError(f"event log {redact(url)} is in memory and would keep no history (nothing could "
                         "resume, no run could be seen); give a file, e.g. sqlite:///.etl_actors/events.db")


def log_error(url: str, exc: BaseException) -> EtlError:
    """One line for a log that cannot be reached or written: which log, and why."""
    reason = db_reason(exc)
    lowered = reason.lower()
    if any(word in lowered for word in ("readonly", "read-only", "read only", "disk", "full", "permission")):
        return TerminalError(f"event log {redact(url)} cannot be written: {reason}")
    if "locked" in lowered or "busy" in lowered:
        return TransientError(f"event log {redact(url)} is busy: {reason}")
    return TransientError(f"event log {redact(url)} is unreachable: {reason}")


def _fenced_version(conn: sa.Connection, stream: str, pipeline: str, epoch: int) -> int:
    """Inside a write transaction: the stream's version, after checking that
    ``pipeline``'s lease is at ``epoch`` (else LeaseLost), in one round trip."""
    row = conn.execute(_FENCED_VERSION, {"pipeline": pipeline, "stream": stream}).first()
    if row is None or row.epoch != epoch:
        holder = f"run {row.run_id} on {row.owner_host}:{row.owner_pid}" if row is not None else ""
        raise LeaseLost(pipeline, epoch, holder)
    return row.version or 0


@contextmanager
def _write_transaction(engine: sa.Engine, lock_key: int | None) -> Iterator[sa.Connection]:
    """A transaction that holds the log's write lock from its first statement:
    ``BEGIN IMMEDIATE`` on SQLite, ``pg_advisory_xact_lock(lock_key)`` on PostgreSQL
    (without ``lock_key``: PostgreSQL's row locks alone)."""
    with engine.connect() as conn:
        if is_postgres(engine):
            if lock_key is not None:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _ensure_tables(url: str, engine: sa.Engine) -> None:
    """Create the tables once per URL and process; safe against other processes."""
    if url in _tables_ready:
        return
    with _tables_lock:
        if url not in _tables_ready:
            create_tables(engine)
            _tables_ready.add(url)


def create_tables(engine: sa.Engine) -> None:
    """Create the log's tables if missing, under the write lock so two processes
    doing it at once do not collide."""
    with _write_transaction(engine, CREATE_LOCK_KEY) as conn:
        metadata.create_all(conn, checkfirst=True)
        _add_missing_columns(conn, dead_letters_table)


def _add_missing_columns(conn: sa.Connection, table: sa.Table) -> None:
    """A log written by an older version gains the nullable columns added since."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    quote = conn.dialect.identifier_preparer.quote
    for column in table.columns:
        if column.name not in have and column.nullable:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")


def encode_schema(schema: pa.Schema | None) -> str | None:
    """An Arrow schema as text for the letters table (base64 of its IPC form)."""
    if schema is None:
        return None
    import base64

    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str | None) -> pa.Schema | None:
    if not text:
        return None
    import base64

    import pyarrow as pa

    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    except Exception:  # noqa: BLE001 - a schema this pyarrow cannot read: go by the values
        return None


def _insert_letters(conn: sa.Connection, pipeline: str, run_id: str,
                    letters: Sequence[tuple[str, int, str, DeadLetter]], schema: str | None = None) -> int:
    """Insert dead letters keyed ``(batch_id, stage, idx)``; one already there is kept.
    Returns how many were new."""
    recorded_at = _utcnow()
    rows = [{"pipeline": pipeline, "run_id": run_id, "batch_id": batch_id, "stage": stage, "idx": idx,
             "reason": redact_text(letter.reason), "record": json.dumps(jsonable(letter.record)),
             "recorded_at": recorded_at, "arrow_schema": schema}
            for batch_id, idx, stage, letter in letters]
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(dead_letters_table)
    return len(conn.execute(insert.on_conflict_do_nothing().returning(dead_letters_table.c.id), rows).all())


def _mark_redriven(conn: sa.Connection, pipeline: str, letter_ids: Sequence[int], run_id: str) -> int:
    """Letters a redrive sent through again leave the pending store (kept as history,
    ``redriven_by`` the run); a letter already marked keeps its first mark."""
    t = dead_letters_table
    return conn.execute(t.update().where(t.c.pipeline == pipeline, t.c.id.in_(list(letter_ids)),
                                         t.c.redriven_by.is_(None))
                        .values(redriven_by=run_id, redriven_at=_utcnow())).rowcount


def _put_snapshot(conn: sa.Connection, pipeline: str, seq: int, parts: Sequence[bytes]) -> None:
    t = snapshots_table
    previous = conn.execute(sa.select(sa.func.max(t.c.seq)).where(t.c.pipeline == pipeline, t.c.seq < seq)).scalar()
    conn.execute(t.delete().where(t.c.pipeline == pipeline,
                                  t.c.seq < (previous if previous is not None else seq)))
    conn.execute(t.delete().where(t.c.pipeline == pipeline, t.c.seq == seq))
    if parts:
        conn.execute(t.insert(), [{"pipeline": pipeline, "seq": seq, "shard": i, "data": data}
                                  for i, data in enumerate(parts)])


def _stream_version(conn: sa.Connection, stream: str) -> int:
    return conn.execute(_STREAM_VERSION, {"stream": stream}).scalar() or 0


_INSERT_EVENTS = events_table.insert()
_STREAM_VERSION = sa.select(sa.func.max(events_table.c.version)).where(
    events_table.c.stream == sa.bindparam("stream"))
_FENCED_VERSION = sa.select(leases_table.c.epoch, leases_table.c.owner_host, leases_table.c.owner_pid,
                            leases_table.c.run_id, _STREAM_VERSION.scalar_subquery().label("version")).where(
    leases_table.c.pipeline == sa.bindparam("pipeline"))


def _dead_letter_filter(pipeline: str, run_id: str | None, pending: bool = False,
                        stage: str | None = None) -> list:
    t = dead_letters_table
    conditions = [t.c.pipeline == pipeline]
    if run_id is not None:
        conditions.append(t.c.run_id == run_id)
    if pending:
        conditions.append(t.c.redriven_by.is_(None))
    if stage is not None:
        conditions.append(t.c.stage == stage)
    return conditions


def _dead_letter_view(row) -> dict:
    return {"id": row.id, "pipeline": row.pipeline, "runId": row.run_id, "batchId": row.batch_id,
            "idx": row.idx, "stage": row.stage, "reason": row.reason, "record": json.loads(row.record),
            "recordedAt": _as_utc(row.recorded_at).isoformat(), "redrivenBy": row.redriven_by,
            "redrivenAt": _as_utc(row.redriven_at).isoformat() if row.redriven_at is not None else None,
            "schema": row.arrow_schema}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were stored as UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _epoch(value: datetime) -> float:
    return _as_utc(value).timestamp()
