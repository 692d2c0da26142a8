"""Test-only plugins: a list source and an in-memory sink, importable by workers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from etl_actors.batch import LoadResult, SourceBatch
from etl_actors.sinks.base import Sink, SinkWriter
from etl_actors.sources.base import Source

SINKS: dict[str, dict] = {}


@dataclass(frozen=True)
class ListSource(Source):
    """Partitions of rows, read ``batch_size`` rows at a time; position = rows read."""

    type: ClassVar[str] = "list"
    parts: tuple = ()
    batch_size: int = 2

    def partitions(self, watermark):
        return [p for p, _ in self.parts if not (watermark.get(p) or {}).get("done")]

    def read(self, partition, position):
        rows = dict(self.parts)[partition]
        start = position["rows"] if position else 0
        for i in range(start, len(rows), self.batch_size):
            chunk = list(rows[i:i + self.batch_size])
            end = i + len(chunk)
            yield SourceBatch(pa.Table.from_pylist(chunk), f"{partition}#{i}", partition,
                              {"rows": end, "done": end >= len(rows)})

    def estimate_bytes(self, partition):
        return None


@dataclass(frozen=True)
class FlakyListSource(ListSource):
    """A ListSource whose partitions in ``broken`` fail after their first batch, as a
    file that is not what it says does (a TerminalError naming the partition)."""

    type: ClassVar[str] = "flaky-list"
    broken: tuple = ()
    error_handling: str = "fail"

    def read(self, partition, position):
        from etl_actors.errors import TerminalError

        for i, batch in enumerate(super().read(partition, position)):
            if partition in self.broken and i == 1:
                raise TerminalError(f"cannot read {partition!r}: not what it says", partition=partition)
            yield batch


LISTINGS: dict[str, int] = {}     # listings tried, per UnlistableSource name


@dataclass(frozen=True)
class UnlistableSource(ListSource):
    """A ListSource whose listing fails ``failures`` times (a store answering 503, a
    dropped connection: a TransientError) before it answers."""

    type: ClassVar[str] = "unlistable-list"
    name: str = ""
    failures: int = 0

    def partitions(self, watermark):
        from etl_actors.errors import TransientError

        LISTINGS[self.name] = LISTINGS.get(self.name, 0) + 1
        if LISTINGS[self.name] <= self.failures:
            raise TransientError(f"cannot list the source: store unavailable (attempt {LISTINGS[self.name]})",
                                 retry_after=0.01)
        return super().partitions(watermark)


class MemoryWriter(SinkWriter):
    def __init__(self, store: dict):
        self.store = store

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        if batch_id in self.store["ledger"]:
            return LoadResult(loaded=self.store["ledger"][batch_id], duplicate=True)
        self.store["rows"].extend(table.to_pylist())
        self.store["ledger"][batch_id] = table.num_rows
        return LoadResult(loaded=table.num_rows)


@dataclass(frozen=True)
class MemorySink(Sink):
    """Rows kept in this process under ``name`` (local runtime only), with a ledger."""

    type: ClassVar[str] = "memory"
    name: str = "default"

    def open(self, pipeline: str) -> SinkWriter:
        return MemoryWriter(SINKS.setdefault(self.name, {"rows": [], "ledger": {}}))

    @property
    def rows(self) -> list[dict]:
        return SINKS.get(self.name, {"rows": []})["rows"]


class DirWriter(SinkWriter):
    def __init__(self, path: str):
        import os

        self.path = path
        os.makedirs(path, exist_ok=True)

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        import json
        import os

        target = os.path.join(self.path, batch_id.replace("/", "_") + ".json")
        duplicate = os.path.exists(target)
        with open(target + ".tmp", "w") as handle:
            json.dump(table.to_pylist(), handle)
        os.replace(target + ".tmp", target)
        return LoadResult(loaded=table.num_rows, duplicate=duplicate)


@dataclass(frozen=True)
class DirSink(Sink):
    """One JSON file per batch id in ``path``: works across processes (Ray tests)."""

    type: ClassVar[str] = "dir"
    path: str = ""

    def open(self, pipeline: str) -> SinkWriter:
        return DirWriter(self.path)

    def rows(self) -> list[dict]:
        import glob
        import json

        return [row for f in sorted(glob.glob(f"{self.path}/*.json")) for row in json.load(open(f))]


def slow_identity(table: pa.Table) -> pa.Table:
    """A function step's handler that takes its time (0.3 s a batch): runs long enough
    to be interrupted, taken over or raced."""
    import time

    time.sleep(0.3)
    return table


FAILURES: dict[str, int] = {}


class FlakyWriter(MemoryWriter):
    def __init__(self, store: dict, sink: "FlakySink"):
        super().__init__(store)
        self.sink = sink

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        from etl_actors.errors import TransientError

        key = f"{self.sink.name}:{batch_id}"
        FAILURES[key] = FAILURES.get(key, 0) + 1
        if FAILURES[key] <= self.sink.failures:
            raise TransientError(f"database went away (attempt {FAILURES[key]})", retry_after=self.sink.retry_after)
        return super().write(table, batch_id)


@dataclass(frozen=True)
class FlakySink(MemorySink):
    """A MemorySink whose every batch fails ``failures`` times with a TransientError
    (as a database that went away does) before it is written."""

    type: ClassVar[str] = "flaky-memory"
    failures: int = 2
    retry_after: float | None = None

    def open(self, pipeline: str) -> SinkWriter:
        return FlakyWriter(SINKS.setdefault(self.name, {"rows": [], "ledger": {}}), self)


class SlowWriter(MemoryWriter):
    def __init__(self, store: dict, seconds: float):
        super().__init__(store)
        self.seconds = seconds

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        import time

        time.sleep(self.seconds)
        return super().write(table, batch_id)


@dataclass(frozen=True)
class SlowSink(MemorySink):
    """A MemorySink that takes ``seconds`` for every batch (a slow database)."""

    type: ClassVar[str] = "slow-memory"
    seconds: float = 0.2

    def open(self, pipeline: str) -> SinkWriter:
        return SlowWriter(SINKS.setdefault(self.name, {"rows": [], "ledger": {}}), self.seconds)
