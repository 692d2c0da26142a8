"""The batch tests' shared pieces: daily sales exports as CSV, the seed's
``batch:`` spec around them, and what its steps make of each file."""
from __future__ import annotations

import functools

import pyarrow.parquet as pq

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.projections import progress

STEPS = [
    {"id": "parse", "type": "map", "keep": True, "mappings": {"amount": {"source": "amount", "converter": "float"}}},
    {"id": "cleanse", "type": "filter", "condition": "amount > 0"},
    {"id": "transform", "type": "map", "keep": True,
     "mappings": {"region": {"source": "region", "converter": ["trim", "lowercase"]}}},
]


def sales(rows: int, first: int = 0) -> bytes:
    """A daily export: every 7th order refunded (a negative amount, which ``cleanse``
    drops), regions written untidily (which ``transform`` tidies)."""
    lines = ["order_id,region,amount"]
    for i in range(first, first + rows):
        lines.append(f"{i},{' EU ' if i % 2 else 'us'},{-1.5 if i % 7 == 0 else i * 0.25 + 1}")
    return ("\n".join(lines) + "\n").encode()


def processed(rows: int, first: int = 0) -> list[dict]:
    """The rows the steps make of ``sales(rows, first)``, in file order."""
    return [{"order_id": i, "region": "eu" if i % 2 else "us", "amount": i * 0.25 + 1}
            for i in range(first, first + rows) if i % 7]


def job(name: str, raw: str, out: str, connection: str | None = "store", steps=STEPS, chunk: int = 1000,
        source: dict | None = None, destination: dict | None = None, connections: dict | None = None) -> dict:
    """The seed's batch processor reading ``raw``/daily-exports/*.csv and writing
    ``out``/processed/ as snappy Parquet, ``chunk`` rows a batch."""
    with_connection = {"connection": connection} if connection else {}
    return {"name": name, "connections": connections or {},
            "batch": {"source": {"type": "s3", "bucket": raw, "prefix": "daily-exports/", "pattern": "*.csv",
                                 "batchSize": chunk, **with_connection, **(source or {})},
                      "processing": {"parallelism": 2, "transformations": list(steps)},
                      "destination": {"type": "s3", "bucket": out, "prefix": "processed/", "format": "parquet",
                                      "compression": "snappy", **with_connection, **(destination or {})}}}


def output_rows(fs, path: str) -> list[dict]:
    with fs.open_input_file(path) as handle:
        table = pq.read_table(handle)
    return table.select(["order_id", "region", "amount"]).to_pylist()


def compression_of(fs, path: str) -> str:
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata.row_group(0).column(0).compression


def events_of(log_url: str, pipeline: str) -> list[ev.Event]:
    return [r.event for r in EventLog(log_url).read(ev.pipeline_stream(pipeline))]


def progress_at_last_extract(events: list[ev.Event]) -> progress.Progress:
    """The run's progress as it stood when its last batch was extracted (before the
    run's end, which says 100% whatever the bytes)."""
    last = max(i for i, e in enumerate(events) if isinstance(e, ev.BatchExtracted))
    return functools.reduce(progress.evolve, events[:last + 1], progress.Progress())
