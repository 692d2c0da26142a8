"""What the change-data-capture scenarios share: a source schema and a destination
schema in the test PostgreSQL, the ``items`` table and its churn, the spec of a
mirror, the comparison of destination with source, and the clean-up of the slot and
the publication a pipeline made.

    def test_x(cdc, ray_local):                 # cdc: a fresh Cdc, cleaned up afterwards
        cdc.create_items(1_000)                 # src_<uniq>.items, ids 1..1000
        spec = cdc.spec(["items"])              # mirrors into dst_<uniq>.items
        ...
        cdc.assert_mirrored("items")            # same keys, same values in every column

The ``items`` table: ``id int`` primary key, ``name text``, ``amount numeric(12,2)``,
``seen_at timestamptz``, ``active bool`` and ``version int``, which every update the
churn makes increments (so ``(id, version)`` names one change of one row: a change
applied twice shows up as a repeated pair in an audit table, see :meth:`Cdc.audit`).
"""
from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.sources.postgres_cdc import slot_name

ITEMS = ("id int PRIMARY KEY, name text NOT NULL, amount numeric(12,2), seen_at timestamptz, active bool, "
         "version int NOT NULL DEFAULT 0")
ITEM_COLUMNS = ("id", "name", "amount", "seen_at", "active", "version")
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class Cdc:
    """One test's names and databases: source schema ``src_<uniq>``, destination schema
    ``dst_<uniq>`` (same server), pipeline ``cdc-<uniq>`` (slot and publication
    ``etl_cdc_<uniq>``), event log in ``tmp_path``."""

    def __init__(self, pg_url: str, uniq: str, tmp_path: Path):
        self.url, self.uniq, self.tmp = pg_url, uniq, tmp_path
        self.src, self.dst = f"src_{uniq}", f"dst_{uniq}"
        self.name = f"cdc-{uniq}"
        self.slot = slot_name(self.name)
        self.log = f"sqlite:///{tmp_path}/events.db"
        with self.connect() as conn:
            for schema in (self.src, self.dst):
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=autocommit)

    def execute(self, statement: str, params=None) -> list[tuple]:
        """One statement in its own transaction; its rows (none for a command). The
        statement may name ``{src}`` and ``{dst}``, the schemas."""
        with self.connect() as conn:
            cur = conn.execute(statement.format(src=self.src, dst=self.dst), params)
            return cur.fetchall() if cur.description else []

    # --- tables ---------------------------------------------------------------------

    def create_items(self, rows: int, table: str = "items") -> None:
        """``src.<table>`` with ``rows`` rows, ids 1..rows, version 0; every 97th amount
        and every 89th ``seen_at`` NULL, some names non-ASCII."""
        self.execute(f"CREATE TABLE {{src}}.{table} ({ITEMS})")
        self.execute(
            f"INSERT INTO {{src}}.{table} SELECT g, CASE WHEN g %% 7 = 0 THEN 'naïve ' || g ELSE 'item ' || g END, "
            "CASE WHEN g %% 97 = 0 THEN NULL ELSE (g %% 100000) * 1.25 END, "
            "CASE WHEN g %% 89 = 0 THEN NULL "
            "ELSE timestamptz '2024-01-01 00:00:00+00' + g * interval '1.5 second' END, "
            "g %% 3 = 0, 0 FROM generate_series(1, %s) g", (rows,))

    def create_audited_destination(self, table: str = "items") -> None:
        """``dst.<table>`` made beforehand (the mirror uses it), with a trigger that adds
        ``(id, version)`` to ``dst.<table>_audit`` on every row inserted or updated."""
        self.execute(f"CREATE TABLE {{dst}}.{table} ({ITEMS})")
        self.execute(f"CREATE TABLE {{dst}}.{table}_audit (id int NOT NULL, version int NOT NULL, "
                     "op text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        self.execute(f"CREATE FUNCTION {{dst}}.{table}_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     f"INSERT INTO {self.dst}.{table}_audit (id, version, op) VALUES (NEW.id, NEW.version, TG_OP); "
                     "RETURN NULL; END $$")
        self.execute(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {{dst}}.{table} FOR EACH ROW "
                     f"EXECUTE FUNCTION {{dst}}.{table}_audit()")

    def audit_duplicates(self, table: str = "items") -> list[tuple]:
        """``(id, version, times, ops)`` of every change the destination applied more
        than once (none when nothing was applied twice)."""
        return self.execute(f"SELECT id, version, count(*), string_agg(op, ',' ORDER BY at) "
                            f"FROM {{dst}}.{table}_audit GROUP BY id, version HAVING count(*) > 1 "
                            "ORDER BY id, version LIMIT 20")

    def audit_count(self, table: str = "items", changed: bool = False) -> int:
        """Rows the destination's trigger saw (only those of a changed row, version > 0,
        with ``changed``)."""
        where = " WHERE version > 0" if changed else ""
        return self.execute(f"SELECT count(*) FROM {{dst}}.{table}_audit{where}")[0][0]

    def count(self, schema: str, table: str) -> int | None:
        """Rows in ``schema.table``; None when it does not exist (yet)."""
        try:
            return self.execute(f'SELECT count(*) FROM "{schema}"."{table}"')[0][0]
        except psycopg.errors.UndefinedTable:
            return None

    def columns(self, schema: str, table: str) -> list[str]:
        return [r[0] for r in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position", (schema, table))]

    # --- the spec -------------------------------------------------------------------

    def spec(self, tables: list[str], sink: dict | None = None, processors: list | None = None,
             checkpoint: float = 0.5, batch_size: int = 5_000, chunk_size: int = 50_000, **source) -> dict:
        """A stream mirroring ``src.<table>`` for each of ``tables`` into ``dst`` (or
        into ``sink``), keyed on ``id``."""
        return {"name": self.name,
                "stream": {"source": {"type": "postgres-cdc", "connection": self.url,
                                      "tables": [f"{self.src}.{t}" for t in tables],
                                      "batchSize": batch_size, "chunkSize": chunk_size, **source},
                           "processors": list(processors or []),
                           "sinks": [sink or {"type": "database", "connection": self.url, "schema": self.dst,
                                              "mode": "mirror", "keyFields": ["id"]}],
                           "checkpointInterval": checkpoint}}

    def write_spec(self, spec: dict) -> Path:
        path = self.tmp / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    # --- the run, as the log tells it ---------------------------------------------------

    @property
    def partition(self) -> str:
        return f"postgres-cdc:{self.slot}"

    def checkpoints(self) -> list[ev.CheckpointCommitted]:
        try:
            return [r.event for r in EventLog(self.log).read(f"pipeline:{self.name}")
                    if isinstance(r.event, ev.CheckpointCommitted)]
        except Exception:  # noqa: BLE001 - the log may not exist yet (another process makes it)
            return []

    def streaming(self) -> bool:
        """Whether a committed checkpoint has the snapshot done (its position streams)."""
        for checkpoint in reversed(self.checkpoints()):
            position = checkpoint.positions.get(self.partition)
            if isinstance(position, dict):
                return not position.get("snapshot")
        return False

    def events(self, kind: type) -> list:
        return [r.event for r in EventLog(self.log).read(f"pipeline:{self.name}") if isinstance(r.event, kind)]

    # --- comparing ------------------------------------------------------------------

    def rows(self, schema: str, table: str, columns=ITEM_COLUMNS) -> dict:
        """``{id: (values...)}`` of ``schema.table``, values made comparable."""
        listed = ", ".join(f'"{c}"' for c in columns)
        return {r[0]: tuple(comparable(v) for v in r) for r in self.execute(
            f'SELECT {listed} FROM "{schema}"."{table}"')}

    def assert_mirrored(self, table: str = "items", columns=ITEM_COLUMNS, dst_table: str | None = None) -> int:
        """The destination table equals the source table (same keys, same values in
        every one of ``columns``); the number of rows."""
        source = self.rows(self.src, table, columns)
        assert_same_rows(source, self.rows(self.dst, dst_table or table, columns))
        return len(source)

    def wait_for_rows(self, table: str, n: int, timeout: float = 60) -> None:
        wait_for(lambda: self.count(self.dst, table) == n, timeout, f"{n} rows in {self.dst}.{table}")

    # --- hygiene --------------------------------------------------------------------

    def slots(self) -> list[tuple]:
        """``(slot_name, active)`` of this test's slots (the pipeline's and its temporary
        snapshot slots)."""
        return self.execute("SELECT slot_name, active FROM pg_replication_slots WHERE slot_name LIKE %s",
                            (self.slot[:40] + "%",))

    def publications(self) -> list[str]:
        return [r[0] for r in self.execute("SELECT pubname FROM pg_publication WHERE pubname = %s", (self.slot,))]

    def cleanup(self) -> None:
        """Drop the pipeline's slot (once no process uses it), its publication and both
        schemas."""
        deadline = time.monotonic() + 20
        while any(active for _, active in self.slots()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name, active in self.slots():
            if active:      # still held (a killed run's walsender): end that backend, it is this test's
                self.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                             "WHERE slot_name = %s AND active_pid IS NOT NULL", (name,))
                time.sleep(0.5)
            try:
                self.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            except psycopg.Error:
                pass        # a temporary slot gone with its session
        self.execute(f'DROP PUBLICATION IF EXISTS "{self.slot}"')
        for schema in (self.src, self.dst):
            self.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def cdc(pg_url, uniq, tmp_path):
    world = Cdc(pg_url, uniq, tmp_path)
    try:
        yield world
    finally:
        world.cleanup()


def comparable(value):
    """A value as both sides compare it: numbers as Decimal, booleans as 0/1, times as
    UTC datetimes (naive ones taken as UTC)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


def assert_same_rows(source: dict, destination: dict) -> None:
    missing = sorted(set(source) - set(destination))
    extra = sorted(set(destination) - set(source))
    differ = sorted(k for k in set(source) & set(destination) if source[k] != destination[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing in the destination, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} keys in the destination only, e.g. {extra[:5]}")
    if differ:
        problems.append(f"{len(differ)} rows differ, e.g. " + "; ".join(
            f"source {source[k]} != destination {destination[k]}" for k in differ[:3]))
    assert not problems, "destination != source: " + " | ".join(problems)


def sqlite_rows(path: Path, table: str, columns) -> dict:
    listed = ", ".join(f'"{c}"' for c in columns)
    with sqlite3.connect(path) as conn:
        try:
            return {r[0]: tuple(comparable(v) for v in r) for r in conn.execute(f'SELECT {listed} FROM "{table}"')}
        except sqlite3.OperationalError:
            return {}


class Churn(threading.Thread):
    """Random inserts, updates and deletes of ``src.<table>`` (an ``items`` table with
    ids 1..``first_rows``), ``changes`` in all, in transactions of 1 to ``max_tx`` rows,
    ``pause`` seconds apart. An insert takes a fresh id (never one used before), an
    update increments ``version``, a delete removes a live row. ``done`` counts the
    committed changes; ``error`` holds what stopped it, if anything."""

    def __init__(self, world: Cdc, first_rows: int, changes: int, seed: int, table: str = "items",
                 max_tx: int = 50, pause: float = 0.0):
        super().__init__(daemon=True)
        self.world, self.table, self.changes, self.max_tx, self.pause = world, table, changes, max_tx, pause
        self.rng = random.Random(seed)
        self.live = list(range(1, first_rows + 1))
        self.index = {k: i for i, k in enumerate(self.live)}
        self.next_id = first_rows + 1
        self.done = self.transactions = 0
        self.counts = {"insert": 0, "update": 0, "delete": 0}
        self.error: BaseException | None = None

    def _remove(self, key: int) -> None:
        i = self.index.pop(key)
        last = self.live.pop()
        if last != key:
            self.live[i], self.index[last] = last, i

    def run(self) -> None:
        target = sql.Identifier(self.world.src, self.table)
        insert = sql.SQL("INSERT INTO {} (id, name, amount, seen_at, active, version) "
                         "VALUES (%s, %s, %s, %s, %s, 0)").format(target)
        update = sql.SQL("UPDATE {} SET version = version + 1, name = %s, amount = %s, seen_at = %s, "
                         "active = NOT coalesce(active, false) WHERE id = %s").format(target)
        delete = sql.SQL("DELETE FROM {} WHERE id = %s").format(target)
        rng = self.rng
        try:
            with self.world.connect(autocommit=False) as conn:
                while self.done < self.changes:
                    size = min(rng.randint(1, self.max_tx), self.changes - self.done)
                    counts = dict.fromkeys(self.counts, 0)
                    with conn.transaction():
                        for _ in range(size):
                            op = rng.choices(("insert", "update", "delete"), (3, 5, 2))[0]
                            if op != "insert" and not self.live:
                                op = "insert"
                            amount = None if rng.random() < 0.05 else Decimal(rng.randint(-10**9, 10**9)) / 100
                            when = T0 + timedelta(microseconds=rng.randint(0, 10**14))
                            if op == "insert":
                                key, self.next_id = self.next_id, self.next_id + 1
                                conn.execute(insert, (key, f"new {key} ü", amount, when, rng.random() < 0.5))
                                self.index[key] = len(self.live)
                                self.live.append(key)
                            else:
                                key = self.live[rng.randrange(len(self.live))]
                                if op == "update":
                                    conn.execute(update, (f"upd {key} {rng.random():.6f}", amount, when, key))
                                else:
                                    conn.execute(delete, (key,))
                                    self._remove(key)
                            counts[op] += 1
                    self.done += size
                    self.transactions += 1
                    for op, n in counts.items():
                        self.counts[op] += n
                    if self.pause:
                        time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def finish(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"the churn did not end within {timeout} s ({self.done} changes)"
        assert self.error is None, f"the churn failed: {self.error!r}"


def summary_of(stdout: str) -> dict:
    """The run summary a ``--json`` run printed last."""
    return json.loads(stdout.strip().splitlines()[-1])


def wait_for(condition, timeout: float = 60.0, what: str = "the condition", every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(every)
