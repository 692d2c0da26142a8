"""PostgreSQL change-data-capture into PostgreSQL, side by side: the ``postgres-cdc``
source with a ``mode: mirror`` sink against a raw replication loop in this driver.

Each peer gets an identical fresh setup on the same server: a source table
``bench_cdc_<id>.items (id int primary key, value int, note text, updated_at
timestamptz)`` of ``--rows`` rows (default 100,000), a destination table of the same
shape holding the same rows in schema ``bench_cdc_<id>_dst``, a publication for the
source table and a ``pgoutput`` slot made before any change. Then ``--changes``
single-row updates (default 1,000,000; one ``UPDATE ... WHERE id = ?`` each, run by a
PL/pgSQL function, ids spread over the table so no transaction touches a row twice)
commit on the source in transactions of ``--txn-rows`` (default 10,000). The log then
holds the backlog; the consumer starts afterwards, and is timed from its start until
the destination has the last update:

* **raw loop**: psycopg2's ``LogicalReplicationConnection``, ``start_replication``
  with ``decode=False``, a minimal ``pgoutput`` parser written here (relation, insert,
  update, delete, commit; text values), and per source transaction one destination
  transaction of psycopg 3 ``executemany`` (``INSERT ... ON CONFLICT (id) DO UPDATE``,
  ``DELETE``), committed, then ``send_feedback``. It stops after the last change.
* **etl-actors**: ``Pipeline.from_dict(spec).start()`` on a local Ray (``ray.init``
  before the clock, its time printed apart) of a ``postgres-cdc`` source (``snapshot:
  never``, the slot and publication above) and a ``database`` sink in ``mode: mirror``
  (``keyFields: [id]``); the clock stops when the destination shows the last update's
  value (polled every 20 ms by primary key), so the actors' start is inside it.

Afterwards each destination must equal its source (count, sum of values, a checksum
over every column), and the two destinations the same rows but for ``updated_at``.

Lag (unless ``--skip-lag``): with the etl-actors pipeline still running and caught up,
a producer thread commits ``--lag-txn-rows``-row transactions (default 1,000) on a
fixed schedule adding up to ``--rate`` changes/s (default 20,000) for
``--lag-seconds`` (default 25), each row stamped ``updated_at = clock_timestamp()``.
A poller reads, every 20 ms, the destination's ``updated_at`` of the last row each
pending transaction wrote: a transaction is in the destination once that value
reaches its stamp, and its lag is the time of that poll minus the time its commit
returned to the producer (every transaction has as many changes, so these are the
per-change percentiles, to within the 20 ms polling step).

Printed: per peer changes, seconds and changes/s, the ratio etl-actors / raw (target
>= 1.0), the lag percentiles (target p99 < 2 s), and a final JSON line with every
figure. Slots, publications and schemas are dropped at the end unless ``--keep``::

    .venv/bin/python benchmarks/cdc_mirror.py                       # 1M changes, then the lag run
    .venv/bin/python benchmarks/cdc_mirror.py --changes 50000 --skip-lag
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _pg import connect, server_url  # noqa: E402

STRIDE = 1_000_003          # prime: update k touches row (k * STRIDE) % rows + 1, a permutation of the rows
POLL_S = 0.02
TIMEOUT_S = 600.0


# --- the setup ----------------------------------------------------------------------------

@dataclass
class Setup:
    """One peer's source table, destination table, slot and publication."""

    tag: str
    rows: int

    @property
    def src(self) -> str:
        return f"bench_cdc_{self.tag}"

    @property
    def dst(self) -> str:
        return f"bench_cdc_{self.tag}_dst"

    @property
    def slot(self) -> str:
        return f"bench_cdc_{self.tag}"

    def row_of(self, seq: int) -> int:
        return seq * STRIDE % self.rows + 1


TOUCH = """
CREATE FUNCTION {src}.touch(first bigint, n int, total int) RETURNS TABLE (last_id int, stamp timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
    i int;
    ts timestamptz;
BEGIN
    FOR k IN first .. first + n - 1 LOOP
        i := (k::bigint * {stride} % total) + 1;
        ts := clock_timestamp();
        UPDATE {src}.items SET value = k + 1, note = 'u' || k, updated_at = ts WHERE id = i;
    END LOOP;
    last_id := i;
    stamp := ts;
    RETURN NEXT;
END $$
"""


def create(url: str, setup: Setup) -> None:
    """Source and destination tables with the same ``rows`` rows, the publication and
    the slot (made last: the log from there on holds every change), all vacuumed."""
    with connect(url, "public", autocommit=True) as conn:
        for schema in (setup.src, setup.dst):
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"CREATE TABLE {schema}.items (id int PRIMARY KEY, value int, note text, "
                         "updated_at timestamptz)")
        conn.execute(f"INSERT INTO {setup.src}.items SELECT g, 0, 'initial', "
                     f"'2024-01-01 00:00:00+00'::timestamptz FROM generate_series(1, {setup.rows}) g")
        conn.execute(f"INSERT INTO {setup.dst}.items SELECT * FROM {setup.src}.items")
        conn.execute(TOUCH.format(src=setup.src, stride=STRIDE))
        for schema in (setup.src, setup.dst):
            conn.execute(f"VACUUM (ANALYZE) {schema}.items")
        conn.execute(f"CREATE PUBLICATION {setup.slot} FOR TABLE {setup.src}.items")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (setup.slot,))


def generate(url: str, setup: Setup, first: int, changes: int, txn_rows: int) -> float:
    """``changes`` single-row updates from sequence number ``first`` in transactions of
    ``txn_rows``; the seconds they took."""
    started = time.perf_counter()
    with connect(url, "public") as conn:
        for offset in range(0, changes, txn_rows):
            conn.execute(f"SELECT * FROM {setup.src}.touch(%s, %s, %s)",
                         (first + offset, min(txn_rows, changes - offset), setup.rows))
            conn.commit()
    seconds = time.perf_counter() - started
    with connect(url, "public", autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    return seconds


def drop(url: str, setup: Setup) -> None:
    """The slot (waiting for its reader to let go), the publication and both schemas."""
    with connect(url, "public", autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while True:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                               (setup.slot,)).fetchone()
            if row is None:
                break
            if row[0] is None or time.monotonic() > deadline:
                if row[0] is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    time.sleep(0.5)
                conn.execute("SELECT pg_drop_replication_slot(%s)", (setup.slot,))
                break
            time.sleep(0.2)
        conn.execute(f"DROP PUBLICATION IF EXISTS {setup.slot}")
        for schema in (setup.src, setup.dst):
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def fingerprint(conn, table: str, with_time: bool = True) -> tuple:
    """Count, sum of values, and a checksum over the text of every column."""
    row = "concat_ws('|', id, value, note" + (", extract(epoch FROM updated_at)" if with_time else "") + ")"
    found = conn.execute(f"SELECT count(*), sum(value), sum(hashtextextended({row}, 0)::numeric) "
                         f"FROM {table}").fetchone()
    return tuple(str(v) for v in found)


def verify(url: str, setup: Setup) -> tuple:
    """The destination equals the source; its fingerprint without ``updated_at``."""
    with connect(url, "public", autocommit=True) as conn:
        src, dst = fingerprint(conn, f"{setup.src}.items"), fingerprint(conn, f"{setup.dst}.items")
        if src != dst:
            raise SystemExit(f"MISMATCH: {setup.dst}.items {dst} != {setup.src}.items {src}")
        return fingerprint(conn, f"{setup.dst}.items", with_time=False)


# --- (a) the raw loop -----------------------------------------------------------------------

def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[list, int]:
    (count,) = struct.unpack_from("!h", data, pos)
    pos += 2
    values = []
    for _ in range(count):
        kind = data[pos]
        if kind == 0x74:                                   # 't': text
            (length,) = struct.unpack_from("!i", data, pos + 1)
            values.append(data[pos + 5:pos + 5 + length].decode())
            pos += 5 + length
        elif kind == 0x6E:                                 # 'n': null
            values.append(None)
            pos += 1
        else:                                              # 'u': unchanged TOAST, none in this benchmark
            raise RuntimeError(f"raw loop: tuple value kind {chr(kind)!r} is not handled")
    return values, pos


class RawLoop:
    """Applies a pgoutput stream (protocol 1) to the destination schema: per source
    transaction, runs of upserts and deletes with ``executemany``, one destination
    transaction, then the slot's feedback. Stops after ``expected`` changes."""

    def __init__(self, dst_conn, schema: str, expected: int):
        from psycopg2.extras import StopReplication

        self.conn, self.schema, self.expected = dst_conn, schema, expected
        self.relations: dict[int, tuple[str, list[str], list[int]]] = {}   # id -> (name, columns, key indexes)
        self.statements: dict[tuple[int, str], str] = {}
        self.changes: list[tuple[int, str, list]] = []
        self.applied = self.transactions = 0
        self.first_at: float | None = None
        self.stop = StopReplication

    def __call__(self, message) -> None:
        data = message.payload
        kind = data[:1]
        if kind == b"B":
            self.changes = []
        elif kind == b"R":
            (rel,) = struct.unpack_from("!i", data, 1)
            _, pos = _cstring(data, 5)
            name, pos = _cstring(data, pos)
            (count,) = struct.unpack_from("!h", data, pos + 1)
            pos += 3
            columns, keys = [], []
            for index in range(count):
                flags = data[pos]
                column, pos = _cstring(data, pos + 1)
                pos += 8                                   # type oid, typmod: the server casts the text
                columns.append(column)
                if flags & 1:
                    keys.append(index)
            self.relations[rel] = (name, columns, keys)
        elif kind == b"I":
            (rel,) = struct.unpack_from("!i", data, 1)
            self.changes.append((rel, "upsert", _tuple(data, 6)[0]))
        elif kind == b"U":
            (rel,) = struct.unpack_from("!i", data, 1)
            pos = 5
            if data[pos:pos + 1] in (b"K", b"O"):          # old key (changed) or old row: the new row is what counts
                pos = _tuple(data, pos + 1)[1]
            self.changes.append((rel, "upsert", _tuple(data, pos + 1)[0]))
        elif kind == b"D":
            (rel,) = struct.unpack_from("!i", data, 1)
            keys = self.relations[rel][2]
            old = _tuple(data, 6)[0]
            self.changes.append((rel, "delete", [old[i] for i in keys]))
        elif kind == b"C":
            (end_lsn,) = struct.unpack_from("!q", data, 10)
            self.apply()
            message.cursor.send_feedback(flush_lsn=end_lsn)
            if self.applied >= self.expected:
                raise self.stop

    def apply(self) -> None:
        changes, self.changes = self.changes, []
        if not changes:
            return
        with self.conn.cursor() as cursor:
            start = 0
            for end in range(1, len(changes) + 1):
                if end == len(changes) or changes[end][:2] != changes[start][:2]:
                    rel, op, _ = changes[start]
                    cursor.executemany(self.statement(rel, op), [c[2] for c in changes[start:end]])
                    start = end
        self.conn.commit()
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.applied += len(changes)
        self.transactions += 1

    def statement(self, rel: int, op: str) -> str:
        found = self.statements.get((rel, op))
        if found is None:
            name, columns, keys = self.relations[rel]
            target = f'{self.schema}."{name}"'
            key_names = [columns[i] for i in keys]
            if op == "delete":
                found = f"DELETE FROM {target} WHERE " + " AND ".join(f'"{k}" = %s' for k in key_names)
            else:
                updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in columns if c not in key_names)
                found = (f"INSERT INTO {target} ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in columns)}) "
                         f"VALUES ({', '.join(['%s'] * len(columns))}) "
                         f"ON CONFLICT ({', '.join(f'{chr(34)}{k}{chr(34)}' for k in key_names)}) "
                         f"DO {'UPDATE SET ' + updates if updates else 'NOTHING'}")
            self.statements[(rel, op)] = found
        return found


def run_raw(url: str, setup: Setup, changes: int) -> dict:
    """(a): the raw loop from its replication connection to the last change applied."""
    import psycopg2
    from psycopg2.extras import LogicalReplicationConnection, StopReplication

    from etl_actors.sources.postgres_cdc import libpq_url

    with connect(url, "public") as dst:
        loop = RawLoop(dst, setup.dst, changes)
        started = time.perf_counter()
        repl = psycopg2.connect(libpq_url(url), connection_factory=LogicalReplicationConnection)
        try:
            cursor = repl.cursor()
            cursor.start_replication(slot_name=setup.slot, decode=False, status_interval=10,
                                     options={"proto_version": "1", "publication_names": setup.slot})
            try:
                cursor.consume_stream(loop)
            except StopReplication:
                pass
            seconds = time.perf_counter() - started
        finally:
            repl.close()
    return {"changes": loop.applied, "transactions": loop.transactions, "seconds": round(seconds, 3),
            "firstApplied": round(loop.first_at - started, 3) if loop.first_at else None}


# --- (b) etl-actors -------------------------------------------------------------------------

def etl_spec(url: str, setup: Setup, batch_size: int | None) -> dict:
    source = {"type": "postgres-cdc", "connection": url, "tables": [f"{setup.src}.items"], "slot": setup.slot,
              "publication": setup.slot, "snapshot": "never"}
    if batch_size:
        source["batchSize"] = batch_size
    return {"name": f"bench-cdc-{setup.tag}",
            "stream": {"source": source, "processors": [],
                       "sinks": [{"type": "database", "connection": url, "schema": setup.dst, "mode": "mirror",
                                  "keyFields": ["id"]}]}}


def start_ray() -> float:
    from etl_actors.pipeline import ensure_ray

    started = time.perf_counter()
    ensure_ray()
    return time.perf_counter() - started


def check_running(pipeline) -> None:
    """Raise with the run's summary when the run :meth:`Pipeline.start` began ended."""
    import ray

    started = pipeline._started
    if started is not None and ray.wait([started], timeout=0)[0]:
        summary = pipeline.wait()
        raise RuntimeError(f"etl-actors: the run ended: {summary.get('status')}: {summary.get('error')}")


def run_etl(url: str, setup: Setup, changes: int, log_url: str, batch_size: int | None):
    """(b): ``Pipeline.start()`` until the destination shows the last update; returns the
    figures and the pipeline, still running."""
    from etl_actors.pipeline import Pipeline

    pipeline = Pipeline.from_dict(etl_spec(url, setup, batch_size), base_dir=str(HERE))
    first_id, last_id = setup.row_of(0), setup.row_of(changes - 1)
    first_at = None
    with connect(url, setup.dst, autocommit=True) as conn:
        query = "SELECT id, value FROM items WHERE id = ANY(%s)"
        started = time.perf_counter()
        pipeline.start(log=log_url)
        checked = started
        while True:
            now = time.perf_counter()
            values = dict(conn.execute(query, ([first_id, last_id],)).fetchall())
            if first_at is None and values.get(first_id, 0) > 0:
                first_at = now
            if values.get(last_id) == changes:
                break
            if now - checked > 1.0:
                check_running(pipeline)
                checked = now
            if now - started > TIMEOUT_S:
                raise RuntimeError(f"etl-actors: the last update is not in the destination after {TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    return {"changes": changes, "seconds": round(seconds, 3),
            "firstApplied": round(first_at - started, 3) if first_at else None}, pipeline


# --- the lag run ------------------------------------------------------------------------------

def run_lag(url: str, setup: Setup, pipeline, first: int, args) -> dict:
    """A producer at ``--rate`` changes/s against the running pipeline; per transaction,
    the time from its commit to the destination having it."""
    rows = max(1, args.lag_txn_rows)
    tick = rows / args.rate
    count = max(1, round(args.lag_seconds / tick))
    committed: list[tuple[int, object, float]] = []       # (last id, stamp, commit time)
    failure: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        try:
            with connect(url, "public") as conn:
                start = time.time()
                for i in range(count):
                    wait = start + i * tick - time.time()
                    if wait > 0:
                        time.sleep(wait)
                    last_id, stamp = conn.execute(f"SELECT * FROM {setup.src}.touch(%s, %s, %s)",
                                                  (first + i * rows, rows, setup.rows)).fetchone()
                    conn.commit()
                    committed.append((last_id, stamp, time.time()))
        except BaseException as exc:  # noqa: BLE001 - reported by the poller
            failure.append(exc)
        finally:
            done.set()

    producer = threading.Thread(target=produce, name="producer", daemon=True)
    lags: list[float] = []
    with connect(url, setup.dst, autocommit=True) as conn:
        started = time.time()
        producer.start()
        seen, checked = 0, time.monotonic()
        while True:
            pending = committed[seen:len(committed)]
            if pending:
                now = time.time()
                values = dict(conn.execute("SELECT id, updated_at FROM items WHERE id = ANY(%s)",
                                           ([p[0] for p in pending],)).fetchall())
                for last_id, stamp, at in pending:
                    if values.get(last_id) is None or values[last_id] < stamp:
                        break
                    lags.append(max(0.0, now - at))
                    seen += 1
            if failure:
                raise RuntimeError(f"lag producer failed: {failure[0]}")
            if done.is_set() and seen == len(committed):
                break
            if time.monotonic() - checked > 1.0:
                check_running(pipeline)
                checked = time.monotonic()
            if time.time() - started > args.lag_seconds + TIMEOUT_S:
                raise RuntimeError("lag run: the destination did not catch up")
            time.sleep(POLL_S)
        produced = committed[-1][2] - started if committed else 0.0
    producer.join()
    lags.sort()

    def pct(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))]

    return {"rate": args.rate, "txnRows": rows, "transactions": len(committed), "changes": len(committed) * rows,
            "producedRate": round(len(committed) * rows / max(produced, 1e-9)), "p50": round(pct(0.50), 3),
            "p90": round(pct(0.90), 3), "p99": round(pct(0.99), 3), "max": round(lags[-1], 3),
            "mean": round(statistics.fmean(lags), 3)}


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000, help="single-row updates (default 1,000,000)")
    parser.add_argument("--txn-rows", type=int, default=10_000, help="updates per source transaction (default 10,000)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the source table (default 100,000)")
    parser.add_argument("--rate", type=int, default=20_000, help="changes/s of the lag run (default 20,000)")
    parser.add_argument("--lag-seconds", type=float, default=25.0, help="length of the lag run (default 25)")
    parser.add_argument("--lag-txn-rows", type=int, default=1_000, help="updates per lag-run transaction "
                        "(default 1,000)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the source's batchSize (default the framework's)")
    parser.add_argument("--skip-raw", action="store_true", help="leave out the raw loop")
    parser.add_argument("--skip-etl", action="store_true", help="leave out etl-actors (and the lag run)")
    parser.add_argument("--skip-lag", action="store_true", help="leave out the lag run")
    parser.add_argument("--keep", action="store_true", help="keep the slots, publications and schemas")
    parser.add_argument("--data-dir", type=Path, default=HERE / ".data" / "cdc-mirror",
                        help="where the event log goes")
    args = parser.parse_args(argv)
    if min(args.changes, args.txn_rows, args.rows, args.rate, args.lag_txn_rows) < 1 or args.lag_seconds <= 0:
        parser.error("--changes, --txn-rows, --rows, --rate, --lag-txn-rows and --lag-seconds must be positive")
    if args.txn_rows > args.rows:
        parser.error("--txn-rows must not exceed --rows (a transaction updates distinct rows)")
    return args


def line(label: str, figures: dict, txn_rows: int) -> str:
    """The peer's figures; beside them, the time to its first applied transaction and
    its rate from there on (the start-up left out)."""
    rate = figures["changes"] / figures["seconds"]
    figures["changesPerSecond"] = round(rate)
    first = ""
    if figures.get("firstApplied") and figures["changes"] > txn_rows:
        steady = (figures["changes"] - txn_rows) / (figures["seconds"] - figures["firstApplied"])
        figures["steadyPerSecond"] = round(steady)
        first = (f"  (first transaction applied after {figures['firstApplied']:.2f} s, "
                 f"{figures['steadyPerSecond']:,} changes/s from there)")
    return f"{label:<13} {figures['changes']:>10,} changes  {figures['seconds']:6.2f} s  {rate:>9,.0f} changes/s{first}"


def main(argv=None) -> int:
    args = parse_args(argv)
    url = server_url()
    peers = [p for p in ("raw", "etl") if not getattr(args, f"skip_{p}")]
    results: dict = {}
    prints: dict = {}
    setups: list[Setup] = []
    pipeline = None
    print(f"source: {args.rows:,} rows; {args.changes:,} single-row updates in transactions of "
          f"{args.txn_rows:,}; consumers start once they are committed", flush=True)
    try:
        for peer in peers:
            setup = Setup(uuid.uuid4().hex[:8], args.rows)
            setups.append(setup)
            create(url, setup)
            took = generate(url, setup, 0, args.changes, args.txn_rows)
            print(f"  {peer}: {setup.src}.items, slot {setup.slot}: {args.changes:,} updates committed in "
                  f"{took:.1f} s ({args.changes / took:,.0f}/s)", flush=True)
            if peer == "raw":
                results["raw"] = run_raw(url, setup, args.changes)
            else:
                results["rayInit"] = round(start_ray(), 3)
                print(f"  ray.init: {results['rayInit']:.2f} s (not timed)", flush=True)
                args.data_dir.mkdir(parents=True, exist_ok=True)
                log_dir = args.data_dir / setup.tag
                log_dir.mkdir()
                results["etl"], pipeline = run_etl(url, setup, args.changes, f"sqlite:///{log_dir / 'events.db'}",
                                                   args.batch_size)
            print("  " + line("raw loop" if peer == "raw" else "etl-actors", results[peer], args.txn_rows), flush=True)
            prints[peer] = verify(url, setup)
            print(f"  {peer}: destination equals source ({prints[peer][0]} rows, count, sum, checksum)", flush=True)
            if peer == "etl" and not args.skip_lag:
                results["lag"] = run_lag(url, setup, pipeline, args.changes, args)
            if pipeline is not None:
                summary = pipeline.stop()
                pipeline.close()
                pipeline = None
                if summary.get("status") != "success":
                    raise RuntimeError(f"etl-actors run {summary.get('status')}: {summary.get('error')}")
                results["etlRun"] = {k: summary.get(k) for k in ("recordsExtracted", "recordsLoaded", "durationMs")}
            if "lag" in results and peer == "etl":
                verify(url, setup)
                print(f"  {peer}: after the lag run, destination equals source", flush=True)
            if not args.keep:
                drop(url, setup)
                setups.remove(setup)
        if len(set(prints.values())) > 1:
            raise SystemExit(f"MISMATCH between the destinations: {prints}")
        if len(prints) > 1:
            print("  both destinations hold the same rows (updated_at aside)", flush=True)
    finally:
        if pipeline is not None:
            try:
                pipeline.stop(timeout=30)
            except Exception as exc:  # noqa: BLE001 - cleaning up
                print(f"  (stopping the pipeline: {exc})", flush=True)
            pipeline.close()
        if not args.keep:
            for setup in setups:
                drop(url, setup)
            shutil.rmtree(args.data_dir, ignore_errors=True)
    return report(args, results)


def report(args, results: dict) -> int:
    print()
    if "raw" in results:
        print(line("raw loop", results["raw"], args.txn_rows))
    if "etl" in results:
        ratio = ""
        if "raw" in results:
            results["ratio"] = round(results["etl"]["changes"] / results["etl"]["seconds"]
                                     / (results["raw"]["changes"] / results["raw"]["seconds"]), 3)
            ratio = f"   ratio {results['ratio']:.2f}x (target >= 1.0)"
        print(line("etl-actors", results["etl"], args.txn_rows) + ratio
              + f"   [ray.init {results['rayInit']:.2f} s before, apart]")
    if "lag" in results:
        lag = results["lag"]
        print(f"lag at {lag['rate']:,} changes/s ({lag['producedRate']:,} produced, {lag['transactions']} "
              f"transactions of {lag['txnRows']:,}): p50 {lag['p50']:.2f} s  p90 {lag['p90']:.2f} s  "
              f"p99 {lag['p99']:.2f} s  max {lag['max']:.2f} s (target p99 < 2 s)")
    print(json.dumps({"benchmark": "cdc_mirror", "changes": args.changes, "txnRows": args.txn_rows,
                      "rows": args.rows, "cpus": os.cpu_count(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
