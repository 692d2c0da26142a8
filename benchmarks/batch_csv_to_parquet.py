"""CSV to Parquet, cold, side by side: etl-actors, DuckDB and Ray Data on TPC-H lineitem.

Generates TPC-H-like ``lineitem`` CSV (``--rows``, default 6,000,000 as at scale factor
1, the 16 columns of the TPC-H schema and their value ranges, fixed seed; DuckDB's
``tpch`` extension cannot be downloaded here), then runs the same job with each
engine, every run a fresh process, as a user runs it:

* keep ``l_shipmode in ('AIR', 'RAIL', 'SHIP', 'TRUCK') and l_quantity < 45``;
* add ``revenue = l_extendedprice * (1 - l_discount) * (1 + l_tax)``;
* write snappy Parquet.

=========== ===========================================================================
engine      one process per run
=========== ===========================================================================
etl-actors  ``etl-actors run SPEC --json``: Ray starts, the supervisor and stage
            actors start, the run, the teardown (its ``durationMs`` is run start to
            last commit, from the summary)
duckdb      ``COPY (SELECT ... FROM read_csv(...) WHERE ...) TO ... (FORMAT parquet)``
ray-data    ``ray.init()``, ``read_csv().map_batches(batch_format="pyarrow").write_parquet()``
bare Ray    ``ray.init()`` then ``ray.shutdown()``: what every Ray program pays
=========== ===========================================================================

The outputs are checked to hold the same rows (count, count per ship mode, exact
integer sums, the sum of ``revenue`` in cents). Printed, with one JSON line of every
figure at the end:

* ``etl/duckdb by durationMs``: DuckDB's query seconds over the run's ``durationMs``
  (target >= 1.0);
* ``process overhead``: (etl-actors' process wall - bare Ray's) / DuckDB's process wall
  (target <= 1.3);
* ``etl/ray-data``: Ray Data's job seconds (after its ``ray.init``) over ``durationMs``
  (target >= 4);
* the event log's share of the run: events per batch and ms spent appending them;
* ``small``: a 1,000-row CSV -> SQLite run's process wall against bare Ray's (target:
  under bare Ray + 1 s).

Each figure is the median of ``--repeat`` cold runs (default 5; ``ray.init()`` alone takes
3.2 or 4.2 s from one run to the next here)::

    .venv/bin/python benchmarks/batch_csv_to_parquet.py --keep
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

ENGINES = ("etl", "duckdb", "raydata")
SHIPMODES = ("REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB")
KEPT = ("AIR", "RAIL", "SHIP", "TRUCK")
INSTRUCTIONS = ("DELIVER IN PERSON", "COLLECT COD", "NONE", "TAKE BACK RETURN")
WORDS = ("furiously", "carefully", "quickly", "blithely", "slyly", "ironic", "final", "pending", "regular",
         "express", "special", "bold", "even", "silent", "unusual", "deposits", "packages", "requests",
         "accounts", "instructions", "theodolites", "foxes", "pinto", "beans", "dependencies", "asymptotes")
CHUNK_ROWS = 1_000_000
SEED = 19920101
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
ETL = str(Path(PYTHON).with_name("etl-actors"))
QUIET = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}


# --- the input ------------------------------------------------------------------------

def comments(rng: np.random.Generator, rows: int) -> pa.Array:
    """Comments of 10 to 43 characters from TPC-H-like words."""
    pool = np.array([" ".join(rng.choice(WORDS, 6))[: rng.integers(10, 44)] for _ in range(4096)])
    return pa.array(pool[rng.integers(0, len(pool), rows)])


def lineitem_chunk(rng: np.random.Generator, first_order: int, rows: int) -> tuple[pa.Table, int]:
    """``rows`` lineitems of consecutive orders from ``first_order`` (1 to 7 lines an
    order, as in TPC-H); returns the table and the next order key."""
    lines = rng.integers(1, 8, rows // 2 + 8)
    ends = np.cumsum(lines)
    orders = int(np.searchsorted(ends, rows)) + 1
    order_of_row = np.repeat(np.arange(orders), lines[:orders])[:rows]
    starts = np.concatenate([[0], ends[:orders - 1]])
    linenumber = np.arange(rows) - starts[order_of_row] + 1
    quantity = rng.integers(1, 51, rows).astype(np.float64)
    partkey = rng.integers(1, 200_001, rows)
    retail = (90_000 + (partkey // 10) % 20_001 + 100 * (partkey % 1_000)) / 100
    ship = np.datetime64("1992-01-02") + rng.integers(0, 2_526, rows).astype("timedelta64[D]")
    table = pa.table({
        "l_orderkey": (first_order + order_of_row) * 4 + 1,
        "l_partkey": partkey,
        "l_suppkey": rng.integers(1, 10_001, rows),
        "l_linenumber": linenumber,
        "l_quantity": quantity,
        "l_extendedprice": np.round(quantity * retail, 2),
        "l_discount": rng.integers(0, 11, rows) / 100,
        "l_tax": rng.integers(0, 9, rows) / 100,
        "l_returnflag": pa.array(np.array(["R", "A", "N"])[rng.integers(0, 3, rows)]),
        "l_linestatus": pa.array(np.array(["O", "F"])[rng.integers(0, 2, rows)]),
        "l_shipdate": pa.array(ship, pa.date32()),
        "l_commitdate": pa.array(ship + rng.integers(-60, 60, rows).astype("timedelta64[D]"), pa.date32()),
        "l_receiptdate": pa.array(ship + rng.integers(1, 31, rows).astype("timedelta64[D]"), pa.date32()),
        "l_shipinstruct": pa.array(np.array(INSTRUCTIONS)[rng.integers(0, 4, rows)]),
        "l_shipmode": pa.array(np.array(SHIPMODES)[rng.integers(0, 7, rows)]),
        "l_comment": comments(rng, rows),
    })
    return table, first_order + orders


def generate(folder: Path, rows: int, files: int) -> None:
    """Write ``rows`` lineitems as ``files`` CSV files (same seed, same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    order = 1
    for i in range(files):
        path = folder / f"lineitem-{i:03d}.csv"
        share = rows // files + (1 if i < rows % files else 0)
        writer = None
        for start in range(0, share, CHUNK_ROWS):
            table, order = lineitem_chunk(rng, order, min(CHUNK_ROWS, share - start))
            writer = writer or pcsv.CSVWriter(str(path) + ".tmp", table.schema)
            writer.write_table(table)
        writer.close()
        os.replace(str(path) + ".tmp", path)


def ensure_input(data_dir: Path, rows: int, files: int, keep: bool) -> Path:
    folder = data_dir / f"lineitem-{rows}-{files}"
    done = folder / "_COMPLETE"
    if keep and done.exists():
        print(f"input: reusing {folder}", flush=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    generate(folder, rows, files)
    done.touch()
    size = sum(p.stat().st_size for p in folder.glob("*.csv"))
    print(f"input: {rows:,} lineitems in {files} CSV file(s), {size / 2**20:.0f} MiB, "
          f"generated in {time.perf_counter() - started:.1f}s", flush=True)
    return folder


def small_input(data_dir: Path) -> Path:
    folder = data_dir / "small"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "customers.csv"
    if not path.exists():
        rows = ["id,name,email,amount"] + [f"{i},name {i},user{i}@example.com,{i * 1.25:.2f}" for i in range(1000)]
        path.write_text("\n".join(rows) + "\n")
    return path


# --- the engines, each a fresh process ----------------------------------------------------

def timed(argv: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """Run ``argv`` to its end; its wall seconds and stdout (raise on failure)."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=QUIET, cwd=cwd)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr[-3000:]}")
    return seconds, done.stdout


BARE_RAY = "import ray; ray.init(); ray.shutdown()"


def run_bare(*_) -> dict:
    seconds, _ = timed([PYTHON, "-c", BARE_RAY])
    return {"process": seconds}


def etl_spec(csv_dir: Path, out: Path, args) -> dict:
    source = {"type": "file", "path": str(csv_dir), "format": "csv"}
    if args.batch_size:
        source["batchSize"] = args.batch_size
    return {"name": "bench-lineitem", "pipeline": {
        "source": source,
        "transformations": [
            {"id": "kept", "type": "filter",
             "condition": f"l_shipmode in {KEPT!r} and l_quantity < 45"},
            {"id": "revenue", "type": "map", "keep": True, "mappings": {
                "revenue": {"expression": "l_extendedprice * (1 - l_discount) * (1 + l_tax)"}}},
        ],
        "destination": {"type": "file", "path": str(out), "format": "parquet", "compression": "snappy"},
    }}


def run_etl(csv_dir: Path, out: Path, args, work: Path) -> dict:
    spec = work / "lineitem.json"
    spec.write_text(json.dumps(etl_spec(csv_dir, out, args)))
    log = work / f"etl-log-{time.time_ns()}.db"      # a new log: every run reads the whole input
    seconds, stdout = timed([ETL, "run", str(spec), "--log", f"sqlite:///{log}", "--json"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    if summary.get("status") != "success":
        raise RuntimeError(f"etl-actors run failed: {summary.get('error')}")
    return {"process": seconds, "durationMs": summary["durationMs"], "eventLog": event_log_cost(summary, log),
            "plan": summary.get("plan"), "recordsLoaded": summary["recordsLoaded"]}


def event_log_cost(summary: dict, log: Path) -> dict:
    """Events the run appended, per batch, and the share of its time spent appending."""
    import sqlite3

    cost = dict(summary.get("eventLog") or {})
    with sqlite3.connect(log) as db:
        batches = db.execute("SELECT count(*) FROM etl_events WHERE type = 'BatchExtracted'").fetchone()[0]
    cost["batches"] = batches
    cost["eventsPerBatch"] = round(cost.get("events", 0) / max(1, batches), 2)
    cost["share"] = round(cost.get("appendMs", 0) / max(1e-9, summary["durationMs"]), 4)
    return cost


DUCKDB = """
import sys, time, duckdb
started = time.perf_counter()
duckdb.connect().execute(sys.argv[1])
print(time.perf_counter() - started)
"""


def duckdb_sql(csv_dir: Path, out: Path) -> str:
    kept = ", ".join(f"'{s}'" for s in KEPT)
    return (f"COPY (SELECT *, l_extendedprice * (1 - l_discount) * (1 + l_tax) AS revenue "
            f"FROM read_csv('{csv_dir}/*.csv') WHERE l_shipmode IN ({kept}) AND l_quantity < 45) "
            f"TO '{out / 'lineitem.parquet'}' (FORMAT parquet, COMPRESSION snappy)")


def run_duckdb(csv_dir: Path, out: Path, args, work: Path) -> dict:
    out.mkdir(parents=True)
    seconds, stdout = timed([PYTHON, "-c", DUCKDB, duckdb_sql(csv_dir, out)])
    return {"process": seconds, "query": float(stdout.strip().splitlines()[-1])}


RAY_DATA = """
import logging, sys, time
import pyarrow as pa, pyarrow.compute as pc
import ray, ray.data
ray.init()
ctx = ray.data.DataContext.get_current()
ctx.enable_progress_bars = ctx.enable_operator_progress_bars = ctx.print_on_execution_start = False
logging.getLogger("ray.data").setLevel(logging.WARNING)

def batch(t):
    keep = pc.and_(pc.is_in(t["l_shipmode"], value_set=pa.array(%r)), pc.less(t["l_quantity"], 45))
    t = t.filter(keep)
    return t.append_column("revenue", pc.multiply(pc.multiply(t["l_extendedprice"],
        pc.subtract(1, t["l_discount"])), pc.add(1, t["l_tax"])))

started = time.perf_counter()
ray.data.read_csv(sys.argv[1], file_extensions=["csv"]).map_batches(batch, batch_format="pyarrow",
    batch_size=None).write_parquet(sys.argv[2], compression="snappy")
print(time.perf_counter() - started)
ray.shutdown()
""" % (KEPT,)


def run_raydata(csv_dir: Path, out: Path, args, work: Path) -> dict:
    seconds, stdout = timed([PYTHON, "-c", RAY_DATA, str(csv_dir), str(out)])
    return {"process": seconds, "query": float(stdout.strip().splitlines()[-1])}


def run_small(args, work: Path) -> dict:
    """1,000 rows CSV -> SQLite through ``etl-actors run``, a fresh process."""
    source = small_input(args.data_dir)
    target = work / "small.db"
    spec = work / "small.json"
    spec.write_text(json.dumps({"name": "bench-small", "pipeline": {
        "source": {"type": "file", "path": str(source), "format": "csv"},
        "destination": {"type": "database", "connection": f"sqlite:///{target}", "table": "customers"}}}))
    target.unlink(missing_ok=True)
    log = work / f"small-log-{time.time_ns()}.db"
    seconds, stdout = timed([ETL, "run", str(spec), "--log", f"sqlite:///{log}", "--json"])
    summary = json.loads(stdout.strip().splitlines()[-1])
    if summary.get("recordsLoaded") != 1000:
        raise RuntimeError(f"the small run loaded {summary.get('recordsLoaded')} rows, not 1,000")
    return {"process": seconds, "durationMs": summary["durationMs"]}


RUNNERS = {"etl": run_etl, "duckdb": run_duckdb, "raydata": run_raydata, "bare": run_bare}


# --- checking the outputs ---------------------------------------------------------------------

def checksum(out: Path) -> dict:
    """What the rows of one output add up to: equal rows, equal figures."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW o AS SELECT * FROM read_parquet('{out}/**/*.parquet')")
        rows, orders, parts, quantity, cents = con.execute(
            "SELECT count(*), sum(l_orderkey), sum(l_partkey), sum(CAST(l_quantity AS BIGINT)), "
            "sum(CAST(round(revenue * 100) AS BIGINT)) FROM o").fetchone()
        by_mode = dict(con.execute("SELECT l_shipmode, count(*) FROM o GROUP BY ALL ORDER BY ALL").fetchall())
    finally:
        con.close()
    return {"rows": rows, "byShipmode": by_mode, "sumOrderkey": int(orders), "sumPartkey": int(parts),
            "sumQuantity": int(quantity), "sumRevenueCents": int(cents)}


def verify(outputs: dict[str, Path]) -> dict:
    sums = {engine: checksum(path) for engine, path in outputs.items()}
    first, *others = sums
    for engine in others:
        diff = [k for k in sums[first] if sums[engine][k] != sums[first][k]]
        if diff:
            raise SystemExit(f"MISMATCH: {engine} differs from {first} in {diff}: "
                             f"{ {k: (sums[first][k], sums[engine][k]) for k in diff} }")
    print(f"verified: {sums[first]['rows']:,} rows out of every engine; count per ship mode, sums of "
          f"l_orderkey, l_partkey, l_quantity and revenue (cents) equal", flush=True)
    return sums


# --- main ----------------------------------------------------------------------------------------

def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000_000, help="lineitems (default 6,000,000: SF1)")
    parser.add_argument("--files", type=int, default=1, help="CSV files the rows are split over (default 1)")
    parser.add_argument("--data-dir", type=Path, default=HERE / ".data", help="where input and outputs go")
    parser.add_argument("--keep", action="store_true", help="reuse the generated CSV when present")
    parser.add_argument("--only", default=",".join(ENGINES), help="engines to run: etl,duckdb,raydata")
    parser.add_argument("--repeat", type=int, default=5, help="cold runs per engine, the median kept (default 5: ray.init alone varies by a second)")
    parser.add_argument("--skip-small", action="store_true", help="skip the 1,000-row CSV -> SQLite run")
    parser.add_argument("--batch-size", type=int, default=0, help="etl-actors: the source's batchSize "
                                                                   "(default: the framework's)")
    args = parser.parse_args(argv)
    args.only = [e.strip() for e in args.only.split(",") if e.strip()]
    unknown = [e for e in args.only if e not in ENGINES]
    if unknown or not args.only:
        parser.error(f"--only: expected some of {','.join(ENGINES)}, got {args.only}")
    if min(args.rows, args.files, args.repeat) < 1 or args.files > args.rows:
        parser.error("--rows, --files and --repeat must be positive, with no more files than rows")
    args.data_dir = args.data_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    csv_dir = ensure_input(args.data_dir, args.rows, args.files, args.keep)
    work = args.data_dir / "lineitem-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    engines = ["bare", *args.only]
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    small: list[dict] = []
    outputs = {e: args.data_dir / f"lineitem-out-{e}" for e in args.only}
    for attempt in range(args.repeat):      # interleaved, so drift in the machine hits every engine alike
        for engine in engines:
            shutil.rmtree(outputs.get(engine, work / "none"), ignore_errors=True)
            result = RUNNERS[engine](csv_dir, outputs.get(engine), args, work)
            runs[engine].append(result)
            detail = {k: v for k, v in result.items() if k not in ("process", "plan")}
            print(f"  {engine:<8} run {attempt + 1}/{args.repeat}: process {result['process']:.2f} s {detail}",
                  flush=True)
        if not args.skip_small:
            small.append(run_small(args, work))
            print(f"  small    run {attempt + 1}/{args.repeat}: process {small[-1]['process']:.2f} s", flush=True)
    verify(outputs)
    bare = median(runs["bare"], "process")
    figures: dict = {"bare": {"process": round(bare, 3)}}
    print(f"\nbare Ray   ray.init()+ray.shutdown() process {bare:6.2f} s")
    ratios: dict = {}
    if "duckdb" in runs:
        duck_query, duck_process = median(runs["duckdb"], "query"), median(runs["duckdb"], "process")
        figures["duckdb"] = {"query": round(duck_query, 3), "process": round(duck_process, 3)}
        print(f"duckdb     query {duck_query:6.2f} s   process {duck_process:6.2f} s")
    if "raydata" in runs:
        ray_query, ray_process = median(runs["raydata"], "query"), median(runs["raydata"], "process")
        figures["raydata"] = {"query": round(ray_query, 3), "process": round(ray_process, 3)}
        print(f"ray-data   job   {ray_query:6.2f} s   process {ray_process:6.2f} s")
    if "etl" in runs:
        run_s, process = median(runs["etl"], "durationMs") / 1000, median(runs["etl"], "process")
        cost = sorted((r["eventLog"] for r in runs["etl"]), key=lambda c: c["share"])[len(runs["etl"]) // 2]
        figures["etl"] = {"durationMs": round(run_s * 1000), "process": round(process, 3), "eventLog": cost,
                          "plan": runs["etl"][-1]["plan"]}
        print(f"etl-actors run   {run_s:6.2f} s   process {process:6.2f} s   (durationMs, cold)")
        print(f"event log  {cost['events']} events for {cost['batches']} batches ({cost['eventsPerBatch']} a batch), "
              f"{cost['appendMs']:.0f} ms appending = {cost['share']:.1%} of the run (target < 5%)")
        if "duckdb" in runs:
            ratios["etl/duckdb"] = round(duck_query / run_s, 3)
            ratios["overhead/duckdb"] = round((process - bare) / duck_process, 3)
            print(f"etl/duckdb by durationMs  {ratios['etl/duckdb']:.2f}x (target >= 1.0)")
            print(f"process overhead          ({process:.2f} - {bare:.2f}) / {duck_process:.2f} = "
                  f"{ratios['overhead/duckdb']:.2f}x DuckDB's process (target <= 1.3)")
        if "raydata" in runs:
            ratios["etl/raydata"] = round(ray_query / run_s, 3)
            ratios["etlProcess/raydataProcess"] = round(ray_process / process, 3)
            print(f"etl/ray-data by job time  {ratios['etl/raydata']:.2f}x (target >= 4); by process "
                  f"{ratios['etlProcess/raydataProcess']:.2f}x")
    if small:
        small_s = median(small, "process")
        figures["small"] = {"process": round(small_s, 3), "overSeconds": round(small_s - bare, 3)}
        print(f"small      1,000 rows CSV -> SQLite: process {small_s:.2f} s = bare Ray + {small_s - bare:.2f} s "
              f"(target < +1 s)")
    print(json.dumps({"benchmark": "batch_csv_to_parquet", "rows": args.rows, "files": args.files,
                      "repeat": args.repeat, "cpus": os.cpu_count(), "figures": figures, "ratios": ratios,
                      "runs": runs, "small": small}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
