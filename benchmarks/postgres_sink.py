"""Load into PostgreSQL, side by side: the ``database`` sink against hand-written COPY
through psycopg 3, on the same server, the same Arrow rows, conversion from Arrow included.

Builds ``--rows`` orders (default 2M, fixed seed) as Arrow: ``id`` int64, ``qty`` int32,
``price`` float64, ``amount`` (a float rounded to cents), ``code`` (2 characters),
``comment`` (about 30 characters with quotes, commas, tabs and accents), ``created_at``
(timestamp in UTC), ``seen_at`` (naive timestamp), ``day`` (date), ``paid`` (bool);
``qty``, ``price``, ``code``, ``seen_at`` and ``paid`` hold 2-10% nulls. Then, in a fresh
schema (dropped at the end), two loads:

* **append**: into an empty table. **hand**: one transaction, one ``COPY ... FROM
  STDIN`` of the whole table, streamed in chunks of 10,000 rows, in two ways:
  ``binary`` (PGCOPY built with numpy from the Arrow buffers, 40 lines below; psycopg's
  own ``write_row`` fed by ``to_pylist`` goes row by row in Python: 1.23 s per 200k rows
  against 0.45 s as text and 0.18 s this way) and ``text`` (Arrow's CSV writer, zoned
  timestamps as UTC text, which it formats 20x faster). The faster is the peer.
  **etl-actors**: ``DatabaseSink(mode: insert)``, ``writer.write`` of ``--batch-rows``
  slices (default 100,000) as the loader calls it, each its own transaction with its
  ledger row; the writer is opened before the clock starts, its first write finds the
  table.
* **upsert**: into a table (primary key ``id``) that holds the odd ids with older
  values, so half the rows update and half insert. **hand**: one transaction, ``CREATE
  TEMP TABLE ... (LIKE target)``, one COPY (binary and text, as above), ``INSERT ...
  SELECT ... ON CONFLICT (id) DO UPDATE``, commit. **etl-actors**: ``DatabaseSink(mode:
  upsert, keyFields: [id])``, as above.

Each engine runs ``--repeat`` times (default 3), interleaved, each pass after a
``CHECKPOINT`` (upsert tables are refilled and vacuumed first, untimed). Afterwards
every table of a load must hold the same rows: count, exact sums, and a checksum over
the text of every column. Printed: seconds (median and best) and rows/s per engine, the
ratios ``peer seconds / etl-actors seconds`` (target >= 0.8) and one JSON line of every
figure::

    ETL_BENCH_PG_URL=postgresql://... .venv/bin/python benchmarks/postgres_sink.py
    .venv/bin/python benchmarks/postgres_sink.py --rows 500000 --breakdown  # where the sink's time goes

The server comes from ``ETL_BENCH_PG_URL``, else ``ETL_TEST_PG_URL``, else
``bash scripts/start_postgres.sh``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
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

SEED = 20240921
HAND_CHUNK_ROWS = 10_000  # streamed: the server reads one chunk while the next is converted
COLUMNS = ("id", "qty", "price", "amount", "code", "comment", "created_at", "seen_at", "day", "paid")
DDL = ("id bigint{key}, qty integer, price double precision, amount double precision, code text, comment text, "
       "created_at timestamp with time zone, seen_at timestamp without time zone, day date, paid boolean")
WORDS = np.array(["alpha", "beta", "gamma delta", "épsilon", "zeta, eta", 'the "quoted"', "tab\there", "x"])
FORMATS = ("binary", "text")


# --- the input ------------------------------------------------------------------------

def orders(rows: int, version: int) -> pa.Table:
    """``rows`` orders; ``version`` 2 has the same ids as 1 with other values."""
    rng = np.random.default_rng(SEED + version)
    ids = np.arange(1, rows + 1, dtype=np.int64)

    def nulls(share: float) -> np.ndarray:
        return rng.random(rows) < share

    start = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    year_us = 365 * 86_400_000_000
    return pa.table({
        "id": ids,
        "qty": pa.array(rng.integers(0, 1_000, rows, dtype=np.int32), mask=nulls(0.05)),
        "price": pa.array(rng.normal(100, 30, rows), mask=nulls(0.02)),
        "amount": np.round(rng.uniform(0, 10_000, rows), 2),
        "code": pa.array(np.array(["DE", "FR", "US", "JP", "BR"])[rng.integers(0, 5, rows)], mask=nulls(0.03)),
        "comment": pc.binary_join_element_wise(pa.array(WORDS[rng.integers(0, len(WORDS), rows)]),
                                               pa.array(ids).cast(pa.string()), f" order v{version}", ""),
        "created_at": pa.array(start + rng.integers(0, year_us, rows), pa.timestamp("us", "UTC")),
        "seen_at": pa.array(start + rng.integers(0, year_us, rows), pa.timestamp("us"), mask=nulls(0.1)),
        "day": pa.array(rng.integers(19_000, 20_000, rows, dtype=np.int32), pa.date32()),
        "paid": pa.array(rng.integers(0, 2, rows).astype(bool), mask=nulls(0.05)),
    })


# --- the server ---------------------------------------------------------------------------







# --- by hand: Arrow to COPY data ------------------------------------------------------------

PGCOPY_HEADER, PGCOPY_TRAILER = b"PGCOPY\n\xff\r\n\x00" + bytes(8), b"\xff\xff"
NULL_FIELD = pa.scalar(b"\xff\xff\xff\xff", pa.binary())
PG_EPOCH_US, PG_EPOCH_DAYS = 946_684_800_000_000, 10_957


def binary_rows(table: pa.Table) -> pa.Buffer:
    """The rows in PGCOPY format: per row an int16 field count, per field an int32
    length (-1: NULL) and the big-endian value; one binary array of fields per column,
    joined row by row by Arrow."""
    table = table.combine_chunks()
    count = fixed_width(np.full(table.num_rows, table.num_columns, ">i2"))
    rows = pc.binary_join_element_wise(count, *(binary_fields(c.chunk(0)) for c in table.columns), b"")
    offsets = np.frombuffer(rows.buffers()[1], np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    return rows.buffers()[2][offsets[0]:offsets[-1]]


def binary_fields(array: pa.Array) -> pa.Array:
    if pa.types.is_string(array.type):
        offsets = np.frombuffer(array.buffers()[1], np.int32, count=len(array) + 1, offset=array.offset * 4)
        fields = pc.binary_join_element_wise(fixed_width(np.diff(offsets).astype(">i4")), array.cast(pa.binary()), b"")
    else:
        if pa.types.is_timestamp(array.type):
            array = pc.subtract(array.cast(pa.int64()), PG_EPOCH_US)
        elif pa.types.is_date32(array.type):
            array = pc.subtract(array.cast(pa.int32()), pa.scalar(PG_EPOCH_DAYS, pa.int32()))
        values = array.fill_null(False if pa.types.is_boolean(array.type) else 0).to_numpy(zero_copy_only=False)
        record = np.empty(len(values), [("length", ">i4"), ("value", values.dtype.newbyteorder(">"))])
        record["length"], record["value"] = values.dtype.itemsize, values
        fields = fixed_width(record)
    return pc.if_else(array.is_valid(), fields, NULL_FIELD) if array.null_count else fields


def fixed_width(values: np.ndarray) -> pa.Array:
    fixed = pa.Array.from_buffers(pa.binary(values.itemsize), len(values), [None, pa.py_buffer(values)])
    return fixed.cast(pa.binary())


def text_rows(table: pa.Table) -> bytes:
    """The rows as CSV, zoned timestamps as UTC text."""
    columns = [pc.binary_join_element_wise(pc.cast(c.cast(pa.timestamp(c.type.unit)), pa.string()), "Z", "")
               if pa.types.is_timestamp(c.type) and c.type.tz else c for c in table.columns]
    buffer = io.BytesIO()
    pcsv.write_csv(pa.table(columns, names=table.column_names), buffer, pcsv.WriteOptions(include_header=False))
    return buffer.getvalue()


def hand_copy(cursor, target: str, table: pa.Table, how: str) -> None:
    format_ = "csv" if how == "text" else how
    with cursor.copy(f"COPY {target} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT {format_})") as copy:
        copy.write(PGCOPY_HEADER if how == "binary" else b"")
        for offset in range(0, table.num_rows, HAND_CHUNK_ROWS):
            chunk = table.slice(offset, HAND_CHUNK_ROWS)
            copy.write(binary_rows(chunk) if how == "binary" else text_rows(chunk))
        copy.write(PGCOPY_TRAILER if how == "binary" else b"")


# --- the two ways ------------------------------------------------------------------------

def hand_append(conn, target: str, table: pa.Table, how: str) -> float:
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cursor:
        hand_copy(cursor, target, table, how)
    return time.perf_counter() - started


def hand_upsert(conn, target: str, table: pa.Table, how: str) -> float:
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE stage (LIKE {target}) ON COMMIT DROP")
        hand_copy(cursor, "stage", table, how)
        cursor.execute(f"INSERT INTO {target} ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM stage "
                       f"ON CONFLICT (id) DO UPDATE SET {updates}")
    return time.perf_counter() - started


def etl_load(sink, table: pa.Table, batch_rows: int, run: str, spent: dict | None) -> float:
    """``writer.write`` of each ``batch_rows`` slice, as the loader calls it."""
    writer = sink.open("bench")
    if spent is not None:
        time_phases(writer, spent, {name: name for name in ("_write", "_target", "_bulk", "_upsert", "_copy",
                                                             "_recorded")})
    started = time.perf_counter()
    for index, offset in enumerate(range(0, table.num_rows, batch_rows)):
        result = writer.write(table.slice(offset, batch_rows), f"{run}-{index}")
        if result.failed or result.duplicate:
            raise SystemExit(f"etl-actors: batch {index} of {run}: {result}")
    seconds = time.perf_counter() - started
    writer.close()
    return seconds




# --- the tables --------------------------------------------------------------------------

def prepare(conn, kind: str, tables: list[str], seed: str) -> None:
    """Empty (append) or refill with the odd ids of version 1 (upsert) every table,
    then vacuum and checkpoint, so each timed pass starts alike."""
    with conn.cursor() as cursor:
        for name in tables:
            cursor.execute(f"TRUNCATE {name}")
            if kind == "upsert":
                cursor.execute(f"INSERT INTO {name} SELECT * FROM {seed}")
            cursor.execute(f"VACUUM (ANALYZE) {name}")
        cursor.execute("TRUNCATE etl_batches")
        cursor.execute("CHECKPOINT")


def fingerprint(conn, name: str) -> tuple:
    """Count, exact sums, and a checksum over the text of every column."""
    row_text = "concat_ws('|', " + ", ".join(f"{c}::text" for c in COLUMNS) + ")"
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT count(*), sum(id), sum(qty), sum(price::numeric), sum(amount::numeric), "
                       f"count(code), count(seen_at), count(paid), "
                       f"sum(hashtextextended({row_text}, 0)::numeric) FROM {name}")
        return tuple(str(v) for v in cursor.fetchone())


# --- main ----------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="orders (default 2,000,000)")
    parser.add_argument("--batch-rows", type=int, default=100_000,
                        help="rows per writer.write for etl-actors (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine and load, the median kept (default 3)")
    parser.add_argument("--only", default="append,upsert", help="loads to run (default append,upsert)")
    parser.add_argument("--hand", default=",".join(FORMATS), help="hand-written COPY formats (default binary,text)")
    parser.add_argument("--breakdown", action="store_true", help="time the sink's steps (adds a little overhead)")
    args = parser.parse_args(argv)
    args.only, args.hand = args.only.split(","), args.hand.split(",")
    if min(args.rows, args.batch_rows, args.repeat) < 1:
        parser.error("--rows, --batch-rows and --repeat must be positive")
    if not set(args.only) <= {"append", "upsert"} or not args.hand or not set(args.hand) <= set(FORMATS):
        parser.error("--only takes append,upsert and --hand binary,text")
    return args


def run_load(conn, url: str, kind: str, tables: dict, args) -> dict:
    """Every engine ``--repeat`` times, interleaved; the seconds of each run."""
    from etl_actors.sinks.database import DatabaseSink

    engines = [f"hand-{how}" for how in args.hand] + ["etl"]
    sink = DatabaseSink(url=url, table=f"{kind}_etl", mode="insert" if kind == "append" else "upsert",
                        key_fields=("id",) if kind == "upsert" else ())
    seconds, spent = defaultdict(list), defaultdict(float)
    hand = hand_append if kind == "append" else hand_upsert
    for attempt in range(args.repeat):
        order = engines if attempt % 2 == 0 else engines[::-1]  # drift in the machine hits every engine alike
        prepare(conn, kind, [f"{kind}_{e.replace('-', '_')}" for e in engines], "seed")
        for engine in order:
            conn.execute("CHECKPOINT")
            if engine == "etl":
                took = etl_load(sink, tables[kind], args.batch_rows, f"{kind}-{attempt}",
                                spent if args.breakdown else None)
            else:
                took = hand(conn, f"{kind}_{engine.replace('-', '_')}", tables[kind], engine.removeprefix("hand-"))
            seconds[engine].append(took)
            print(f"  {kind:<6} {engine:<11} run {attempt + 1}/{args.repeat}: {took:6.2f} s", flush=True)
    if spent:
        print(f"  {kind:<6} etl-actors steps (ms, all runs, nested): "
              + ", ".join(f"{k} {v * 1000 / args.repeat:.0f}" for k, v in spent.items()), flush=True)
    prints = {e: fingerprint(conn, f"{kind}_{e.replace('-', '_')}") for e in engines}
    if len(set(prints.values())) != 1 or int(prints["etl"][0]) != args.rows:
        raise SystemExit(f"MISMATCH in {kind}: " + "; ".join(f"{e}: {p}" for e, p in prints.items()))
    print(f"  {kind:<6} verified: every table holds the same {args.rows:,} rows (count, sums, checksum)", flush=True)
    return dict(seconds)


def main(argv=None) -> int:
    args = parse_args(argv)
    url, schema = server_url(), f"bench_pg_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    tables = {"append": orders(args.rows, 1), "upsert": orders(args.rows, 2)}
    print(f"input: {args.rows:,} rows x {len(COLUMNS)} columns as Arrow, built in "
          f"{time.perf_counter() - started:.1f}s; schema {schema}; batches of {args.batch_rows:,} rows", flush=True)
    with connect(url, "public", autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    results = {}
    try:
        with connect(url, schema, autocommit=True) as conn:
            for kind in args.only:
                for engine in [*(f"hand_{h}" for h in args.hand), "etl"]:
                    key = " PRIMARY KEY" if kind == "upsert" else ""
                    conn.execute(f"CREATE TABLE {kind}_{engine} ({DDL.format(key=key)})")
            conn.execute(f"CREATE TABLE seed ({DDL.format(key='')})")
            conn.execute("CREATE TABLE etl_batches (pipeline varchar(200), target varchar(200), batch_id text, "
                         "rows bigint NOT NULL, loaded_at timestamp with time zone NOT NULL, "
                         "PRIMARY KEY (pipeline, target, batch_id))")
            odd = tables["append"].filter(pc.equal(pc.bit_wise_and(tables["append"]["id"], 1), 1))
            with conn.cursor() as cursor:
                hand_copy(cursor, "seed", odd, "binary")
            for kind in args.only:
                results[kind] = run_load(conn, with_schema(url, schema), kind, tables, args)
    finally:
        with connect(url, "public", autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return report(args, results)


def report(args, results: dict) -> int:
    figures, ratios, peers = {}, {}, {}
    for kind, runs in results.items():
        figures[kind] = {e: {"seconds": [round(s, 3) for s in r], "median": round(statistics.median(r), 3),
                             "best": round(min(r), 3), "rowsPerSecond": round(args.rows / statistics.median(r))}
                         for e, r in runs.items()}
        for engine, f in figures[kind].items():
            label = "etl-actors" if engine == "etl" else engine
            print(f"{kind:<6} {label:<11} {f['median']:6.2f} s (best {f['best']:.2f})  "
                  f"{f['rowsPerSecond']:>10,} rows/s")
        peers[kind] = min((e for e in runs if e != "etl"), key=lambda e: figures[kind][e]["median"])
        ratios[kind] = round(figures[kind][peers[kind]]["median"] / figures[kind]["etl"]["median"], 3)
        best = round(figures[kind][peers[kind]]["best"] / figures[kind]["etl"]["best"], 3)
        print(f"{kind:<6} ratio {peers[kind]} / etl-actors: {ratios[kind]:.2f}x (best of {args.repeat}: {best:.2f}x)"
              f"  target >= 0.8")
    print(json.dumps({"benchmark": "postgres_sink", "rows": args.rows, "batchRows": args.batch_rows,
                      "repeat": args.repeat, "cpus": os.cpu_count(), "results": figures, "peers": peers,
                      "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
