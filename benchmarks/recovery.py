"""How long a pipeline's supervisor takes to start on a long stream: from its newest
snapshot and the events after it, against a replay of every event.

Writes a pipeline stream of ``--events`` events (default 1,000,000) into a SQLite log
under ``benchmarks/.data/`` through a real ``PipelineSupervisor.append`` (in-process
children that never start, a tiny file spec), ``--chunk`` events a transaction
(default 5,000), so snapshots are taken as a supervisor takes them (once more than
``snapshots.EVERY`` events were appended since the last). The mix, run after run: the
lease taken, ``RunRequested``, ``RunStarted``, phases, then per batch ``BatchExtracted``,
``BatchTransformed``, ``BatchLoaded`` and ``WatermarkCommitted`` over 8 files (a few
``RecordsRejected``), or for every fourth run (a stream's) ``CheckpointCommitted`` per
poll, and ``RunSucceeded``; ``--run-events`` (default 2,000) events a run.

Then, each best of ``--repeat`` (default 3):

* **snapshot**: ``PipelineSupervisor(spec, log, LocalChildren)``, whose ``__init__``
  runs ``recover()``: the newest snapshot found by an indexed walk back, and the events
  after it;
* **full replay**: ``snapshots.recover(log, pipeline, resume=False)``, the same fold
  from the stream's first event (what ``recover()`` did before snapshots).

Both must see the same version, epoch, watermarks, last checkpoint, alert state, run
count and last run. Prints the seconds, the ratio, and one JSON line of every figure::

    .venv/bin/python benchmarks/recovery.py                    # 1M events
    .venv/bin/python benchmarks/recovery.py --events 100000 --keep
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.projections import snapshots
from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import PipelineSupervisor
from etl_actors.spec import parse

HERE = Path(__file__).resolve().parent
PIPELINE = "bench-recovery"
FILES = 8
BATCH_ROWS = 10_000


def spec(data_dir: Path):
    return parse({"name": PIPELINE, "pipeline": {
        "source": {"type": "file", "path": "in", "format": "csv"},
        "destination": {"type": "file", "path": "out", "format": "parquet"}}}, base_dir=str(data_dir))


# --- the stream -------------------------------------------------------------------------

def a_run(number: int, size: int) -> list[ev.Event]:
    """About ``size`` events of run ``number``: a batch run over the files, or (every
    fourth) a stream's checkpoints."""
    run_id = f"run-{number:06d}"
    events: list[ev.Event] = [
        ev.LeaseAcquired(pipeline=PIPELINE, epoch=number + 1, owner="bench:1", run_id=run_id),
        ev.RunRequested(pipeline=PIPELINE, run_id=run_id, trigger="schedule"),
        ev.RunStarted(pipeline=PIPELINE, run_id=run_id, epoch=number + 1, watermark={}, trigger="schedule",
                      partitions=[f"in/part-{f}.csv" for f in range(FILES)], total_bytes=size * 400_000),
        ev.PhaseStarted(run_id=run_id, phase="extract")]
    if number % 4 == 3:
        events += [ev.CheckpointCommitted(
            run_id=run_id, seq=number * size + i, positions={f"events:{p}": number * size + i for p in range(4)},
            max_seen={f"events:{p}": 1_700_000_000_000 + i for p in range(4)}, watermark=1_700_000_000_000 + i,
            emitted=1_700_000_000_000 + i - 60_000, windows_open=12, shards=2, extracted=5_000, transformed=5_000,
            loaded=4_990, late=1 if i % 7 == 0 else 0, windows=12, bytes=2_000_000, lag={f"events:{p}": 40 for p in range(4)},
            rate=2_500.0) for i in range(size - 5)]
    else:
        for batch in range((size - 5) // 4):
            events += _batch(run_id, batch)
    return events + [ev.RunSucceeded(run_id=run_id, metrics={})]


def _batch(run_id: str, batch: int) -> list[ev.Event]:
    partition = f"in/part-{batch % FILES}.csv"
    batch_id, rows = f"{partition}:{batch // FILES * BATCH_ROWS}", BATCH_ROWS
    position = {"file": partition, "row": (batch // FILES + 1) * BATCH_ROWS, "done": False}
    rejected = 3 if batch % 50 == 0 else 0
    events: list[ev.Event] = [
        ev.BatchExtracted(run_id=run_id, batch_id=batch_id, partition=partition, rows=rows, bytes=rows * 40),
        ev.BatchTransformed(run_id=run_id, batch_id=batch_id, rows_in=rows, rows_out=rows - rejected,
                            rejected=rejected, filtered=0, steps=[
                                {"id": "clean", "recordsIn": rows, "recordsOut": rows - rejected,
                                 "durationMs": 4.2, "success": True}]),
        ev.BatchLoaded(run_id=run_id, batch_id=batch_id, partition=partition, position=position,
                       rows=rows - rejected, bytes=rows * 40),
        ev.WatermarkCommitted(run_id=run_id, partition=partition, position=position)]
    if rejected:
        events[2:2] = [ev.RecordsRejected(run_id=run_id, batch_id=batch_id, stage="transform", count=rejected,
                                          reason="amount: not a number")]
    return events


def write(log_url: str, data_dir: Path, total: int, chunk: int, run_events: int) -> float:
    """Append at least ``total`` events through a supervisor, ``chunk`` a transaction,
    and go on until one more chunk would bring a snapshot: the stream then ends with
    as many events after its newest snapshot as the chunks allow (the worst case for
    the start-up). Return the seconds."""
    supervisor = PipelineSupervisor(spec(data_dir), log_url, LocalChildren)
    stream = ev.pipeline_stream(PIPELINE)
    started, pending, number = time.perf_counter(), [], 0
    while supervisor.version < total or _after_snapshot(supervisor.log, stream) + chunk <= snapshots.EVERY:
        if len(pending) < chunk:
            pending += a_run(number, run_events)
            number += 1
            continue
        head, pending = pending[:chunk], pending[chunk:]
        for event in head:
            if isinstance(event, ev.LeaseAcquired):
                supervisor.epoch = event.epoch      # as taking the lease sets it, before appending the fact
        supervisor.append(*head)
        if supervisor.version // 100_000 != (supervisor.version - len(head)) // 100_000:
            print(f"  written {supervisor.version:,} events", file=sys.stderr, flush=True)
    return time.perf_counter() - started


def _after_snapshot(log, stream: str) -> int:
    newest = snapshots.latest_in(log, stream, snapshots.SUPERVISOR)
    return log.version(stream) - (newest.version if newest is not None else 0)


# --- recovery ---------------------------------------------------------------------------

def seen(state) -> dict:
    runs = state.runs
    return {"version": state.version, "epoch": state.epoch, "digest": state.digest, "watermarks": state.watermarks,
            "checkpoint": state.checkpoint, "alerts": state.alerts, "runs": runs.count(PIPELINE),
            "last": runs.last(PIPELINE), "unfinished": runs.unfinished(PIPELINE)}


def best(repeat: int, work) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=5_000, help="events appended a transaction")
    parser.add_argument("--run-events", type=int, default=2_000, help="events of one run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--full-repeat", type=int, default=1, help="repeats of the (slow) full replay")
    parser.add_argument("--data-dir", default=str(HERE / ".data" / "recovery"))
    parser.add_argument("--keep", action="store_true", help="reuse the log written by an earlier run")
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / f"events-{args.events}.db"
    log_url = f"sqlite:///{db}"
    write_s = None
    if not (args.keep and db.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        print(f"writing {args.events:,} events into {db} ...", file=sys.stderr, flush=True)
        write_s = write(log_url, data_dir, args.events, args.chunk, args.run_events)

    log = EventLog(log_url)
    stream = ev.pipeline_stream(PIPELINE)
    count = log.version(stream)
    taken = sum(1 for _ in _snapshot_versions(log, stream))
    snapshot_s, supervisor = best(args.repeat, lambda: PipelineSupervisor(spec(data_dir), log_url, LocalChildren))
    full_s, full = best(args.full_repeat, lambda: snapshots.recover(log, PIPELINE, resume=False))
    if seen(supervisor) != seen(full):
        print("MISMATCH: the supervisor resumed from its snapshot sees another state than a full replay",
              file=sys.stderr)
        return 1
    tail = _after_snapshot(log, stream)
    print(f"recover {count:,} events: snapshot {snapshot_s:.3f} s ({tail:,} events after it), "
          f"full replay {full_s:.1f} s (ratio {full_s / snapshot_s:,.0f}x)")
    print(json.dumps({"events": count, "snapshots": taken, "eventsAfterSnapshot": tail,
                      "snapshotS": round(snapshot_s, 4), "fullReplayS": round(full_s, 2),
                      "ratio": round(full_s / snapshot_s, 1), "writeS": round(write_s, 1) if write_s else None,
                      "runs": full.runs.count(PIPELINE), "dbBytes": os.path.getsize(db)}))
    return 0


def _snapshot_versions(log, stream):
    recorded = log.last_of_type(stream, ev.ProjectionSnapshot.__name__)
    while recorded is not None:
        yield recorded.version
        recorded = log.last_of_type(stream, ev.ProjectionSnapshot.__name__, recorded.version)


if __name__ == "__main__":
    sys.exit(main())
