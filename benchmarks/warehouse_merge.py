"""Upsert into PostgreSQL, side by side: the ``data-warehouse`` sink against a hand-written
COPY into a staging table + MERGE, on the same server, the same rows.

Builds ``--rows`` customers (default 1M, fixed seed) as Arrow: ``id, name, email,
country, amount (float), score (int), active (bool), updated_at (timestamptz)``. Then,
in a fresh schema (dropped at the end):

* **hand**: psycopg 3 alone, one transaction: ``CREATE TEMP TABLE ... (LIKE target) ON
  COMMIT DROP``, one ``COPY ... (FORMAT csv)`` of the whole table (Arrow's CSV writer,
  zoned timestamps written as UTC text, streamed in chunks of 10,000 rows: the fastest
  way found by hand; one COPY of the whole CSV took 1.7-3.0 s against 1.3-1.6 s, and a
  forced nested-loop plan did not beat the server's own), ``MERGE`` into a target created
  beforehand (primary key ``id``) with the plan the server picks, commit.
* **etl-actors**: ``WarehouseSink(keyFields: [id], cursorField: updated_at)``,
  ``writer.write`` of ``--batch-rows`` slices (default 100,000, as a pipeline hands a
  loader its batches), each its own transaction with staging, MERGE, the ledger row and
  the ``_etl_run_id`` / ``_etl_loaded_at`` stamps; the table is created by the sink.

Each runs twice: into the empty table (all inserts), then the same keys with changed
values (all updates). A ``CHECKPOINT`` precedes each timed pass. Afterwards both tables
must hold the same rows (``EXCEPT`` both ways). Prints seconds and rows/s per pass, the
ratios ``etl-actors/hand`` and one JSON line of every figure::

    .venv/bin/python benchmarks/warehouse_merge.py              # 1M rows
    .venv/bin/python benchmarks/warehouse_merge.py --breakdown  # where the sink's time goes
    .venv/bin/python benchmarks/warehouse_merge.py --hand-nested-loop  # the sink's join plan by hand

The server comes from ``ETL_BENCH_PG_URL``, else ``ETL_TEST_PG_URL``, else
``bash scripts/start_postgres.sh``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _pg import connect, server_url, time_phases, with_schema  # noqa: E402

SEED = 20240607
HAND_CHUNK_ROWS = 10_000  # streamed: the server parses one chunk while the next is converted
COUNTRIES = np.array(["DE", "FR", "US", "JP", "BR", "IN", "GB", "ES"])
COLUMNS = ("id", "name", "email", "country", "amount", "score", "active", "updated_at")
TARGET_DDL = ("id bigint PRIMARY KEY, name text, email text, country text, amount double precision, "
              "score bigint, active boolean, updated_at timestamp with time zone")


# --- the input ------------------------------------------------------------------------

def customers(rows: int, version: int) -> pa.Table:
    """``rows`` customers; ``version`` 1 is the first load, 2 the same ids with new values."""
    rng = np.random.default_rng(SEED + version)
    ids = np.arange(1, rows + 1, dtype=np.int64)
    text = pa.array(ids).cast(pa.string())
    start = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64) + (version - 1) * 86_400_000_000
    return pa.table({
        "id": ids,
        "name": pc.binary_join_element_wise(f"customer-v{version}-", text, ""),
        "email": pc.binary_join_element_wise("user", text, f"@v{version}.example.com", ""),
        "country": pa.array(COUNTRIES[rng.integers(0, len(COUNTRIES), rows)]),
        "amount": np.round(rng.uniform(0, 10_000, rows), 2),
        "score": rng.integers(0, 1_000, rows),
        "active": rng.integers(0, 2, rows).astype(bool),
        "updated_at": pa.array(start + rng.integers(0, 86_400_000_000, rows), pa.timestamp("us", "UTC")),
    })


# --- the server ---------------------------------------------------------------------------







# --- the two ways --------------------------------------------------------------------------

def csv_bytes(table: pa.Table) -> bytes:
    """The table as CSV, zoned timestamps as UTC text (Arrow's CSV writer is ~20x slower
    on zoned timestamps than on naive ones, and COPY reads both the same)."""
    columns = [pc.binary_join_element_wise(pc.cast(c.cast(pa.timestamp(c.type.unit)), pa.string()), "Z", "")
               if pa.types.is_timestamp(c.type) and c.type.tz else c for c in table.columns]
    buffer = io.BytesIO()
    pcsv.write_csv(pa.table(columns, names=table.column_names), buffer, pcsv.WriteOptions(include_header=False))
    return buffer.getvalue()


def hand_merge(conn, table: pa.Table, nested_loop: bool = False) -> dict:
    """One transaction: temp staging, one COPY, MERGE into ``hand``, commit; with
    ``nested_loop`` the MERGE joins by the key index, as the sink's does."""
    names = ", ".join(COLUMNS)
    updates = ", ".join(f"{c} = s.{c}" for c in COLUMNS if c != "id")
    phases = {}
    started = time.perf_counter()
    with conn.cursor() as cursor:
        for setting in ("enable_hashjoin = off", "enable_mergejoin = off") if nested_loop else ():
            cursor.execute(f"SET LOCAL {setting}")
        cursor.execute("CREATE TEMP TABLE hand_stage (LIKE hand) ON COMMIT DROP")
        mark, phases["csv"] = time.perf_counter(), 0.0
        with cursor.copy(f"COPY hand_stage ({names}) FROM STDIN WITH (FORMAT csv)") as copy:
            for offset in range(0, table.num_rows, HAND_CHUNK_ROWS):
                converted = time.perf_counter()
                data = csv_bytes(table.slice(offset, HAND_CHUNK_ROWS))
                phases["csv"] += time.perf_counter() - converted
                copy.write(data)
        phases["csv+copy"] = time.perf_counter() - mark
        mark = time.perf_counter()
        cursor.execute(f"MERGE INTO hand t USING hand_stage s ON t.id = s.id "
                       f"WHEN MATCHED THEN UPDATE SET {updates} "
                       f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({', '.join('s.' + c for c in COLUMNS)})")
        phases["merge"] = time.perf_counter() - mark
    mark = time.perf_counter()
    conn.commit()
    phases["commit"] = time.perf_counter() - mark
    return {"seconds": time.perf_counter() - started, "phases": phases}


def etl_merge(writer, table: pa.Table, batch_rows: int, run: str, breakdown: bool) -> dict:
    """``writer.write`` of each ``batch_rows`` slice, as the loader calls it."""
    spent = defaultdict(float)
    if breakdown:
        time_phases(writer, spent, {"_copy": "csv+copy", "_bulk": "bulk", "_write": "transaction", "_target": "schema",
                                    "_deduplicated": "dedupe", "_split_null_keys": "nullKeys"})
    writer.run_id = run
    started = time.perf_counter()
    for index, offset in enumerate(range(0, table.num_rows, batch_rows)):
        result = writer.write(table.slice(offset, batch_rows), f"{run}-{index}")
        if result.failed or result.duplicate:
            raise SystemExit(f"etl-actors: batch {index} of {run}: {result}")
    seconds = time.perf_counter() - started
    if breakdown:
        for name in ("_copy", "_bulk", "_write", "_target", "_deduplicated", "_split_null_keys"):
            writer.__dict__.pop(name, None)
    return {"seconds": seconds, "phases": dict(spent)}




# --- main ----------------------------------------------------------------------------------

def same_rows(conn) -> int:
    """Rows that differ between the two tables (both ways), over the data columns."""
    names = ", ".join(COLUMNS)
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT (SELECT count(*) FROM (SELECT {names} FROM hand EXCEPT SELECT {names} FROM etl) a)"
                       f" + (SELECT count(*) FROM (SELECT {names} FROM etl EXCEPT SELECT {names} FROM hand) b)")
        return cursor.fetchone()[0]


def checkpoint(conn) -> None:
    with conn.cursor() as cursor:
        cursor.execute("CHECKPOINT")
    conn.commit()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="customers (default 1,000,000)")
    parser.add_argument("--batch-rows", type=int, default=100_000,
                        help="rows per writer.write for etl-actors (default 100,000)")
    parser.add_argument("--breakdown", action="store_true", help="time the sink's steps (adds a little overhead)")
    parser.add_argument("--hand-nested-loop", action="store_true",
                        help="the hand-written MERGE joins by the key index too (hash and merge joins off)")
    args = parser.parse_args(argv)
    if min(args.rows, args.batch_rows) < 1:
        parser.error("--rows and --batch-rows must be positive")
    return args


def main(argv=None) -> int:
    from etl_actors.sinks.warehouse import WarehouseSink

    args = parse_args(argv)
    url, schema = server_url(), f"bench_wh_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    tables = {"insert": customers(args.rows, 1), "update": customers(args.rows, 2)}
    print(f"input: {args.rows:,} rows x {len(COLUMNS)} columns as Arrow, built in "
          f"{time.perf_counter() - started:.1f}s; schema {schema}", flush=True)
    conn = connect(url, "public")
    conn.autocommit = True
    conn.execute(f'CREATE SCHEMA "{schema}"')
    conn.close()
    results: dict = {"hand": {}, "etl": {}}
    try:
        conn = connect(url, schema)
        conn.execute(f"CREATE TABLE hand ({TARGET_DDL})")
        conn.commit()
        sink = WarehouseSink(url=with_schema(url, schema), table="etl", key_fields=("id",), cursor_field="updated_at")
        writer = sink.open("bench")
        for kind, table in tables.items():
            checkpoint(conn)
            results["hand"][kind] = hand_merge(conn, table, args.hand_nested_loop)
            checkpoint(conn)
            results["etl"][kind] = etl_merge(writer, table, args.batch_rows, f"run-{kind}", args.breakdown)
            for engine in ("hand", "etl"):
                figures = results[engine][kind]
                phases = ", ".join(f"{k} {v * 1000:.0f}" for k, v in figures["phases"].items())
                print(f"  {kind:<6} {engine:<4} {figures['seconds']:6.2f} s" + (f"  (ms: {phases})" if phases else ""),
                      flush=True)
        writer.close()
        differ = same_rows(conn)
        if differ:
            raise SystemExit(f"MISMATCH: {differ} rows differ between the hand-merged and the etl-actors table")
        print(f"verified: both tables hold the same {args.rows:,} rows (EXCEPT both ways)", flush=True)
        conn.close()
    finally:
        drop = connect(url, "public")
        drop.autocommit = True
        drop.execute(f'DROP SCHEMA "{schema}" CASCADE')
        drop.close()
    ratios = {}
    for kind in tables:
        for engine, label in (("hand", "hand"), ("etl", "etl-actors")):
            figures = results[engine][kind]
            figures["rowsPerSecond"] = round(args.rows / figures["seconds"])
            print(f"{kind:<6} {label:<10} {figures['seconds']:6.2f} s  {figures['rowsPerSecond']:>10,} rows/s")
        ratios[kind] = round(results["etl"][kind]["rowsPerSecond"] / results["hand"][kind]["rowsPerSecond"], 3)
    total = {e: sum(results[e][k]["seconds"] for k in tables) for e in results}
    ratios["both"] = round(total["hand"] / total["etl"], 3)
    for kind, ratio in ratios.items():
        print(f"etl-actors/hand {kind:<6} {ratio:.2f}x")
    print(json.dumps({"benchmark": "warehouse_merge", "rows": args.rows, "batchRows": args.batch_rows,
                      "handNestedLoop": args.hand_nested_loop, "cpus": os.cpu_count(), "results": results,
                      "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
