"""The sink contract.

A sink is a frozen description; :meth:`Sink.open` makes a :class:`SinkWriter` inside
the loader process. ``write`` takes one batch with its deterministic ``batch_id`` and
must be safe to call again with the same id (Ray delivers at least once): database
sinks keep a ledger table written in the same transaction as the rows; file sinks
write deterministic names through a temporary file and a rename.
"""
from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from ..batch import LoadResult


class SinkWriter:
    """An open sink in a loader process. ``run_id`` is set by the loader before each
    ``write`` (warehouse sinks stamp it on every row)."""

    run_id: str = ""

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        raise NotImplementedError

    def complete_partition(self, partition: str) -> None:
        """Called when every batch of a source partition is written, before its
        ``done`` position is committed, by sinks whose ``completes_partitions`` is true
        (one output file per input file is assembled here). May be called again for
        the same partition after a crash or a retry: it must be idempotent."""

    def finish(self) -> None:
        """Called once when every batch of a successful run is written (replace mode
        swaps its staging table in here)."""

    def close(self) -> None:
        """Release connections and files; called on every exit path."""


class Sink:
    """Base class of sinks; subclasses are frozen dataclasses."""

    type: ClassVar[str]
    @property
    def commits_at_finish(self) -> bool:
        """True when written batches become visible only in ``finish`` (replace mode):
        the runtime then commits positions after ``finish``, not after each batch."""
        return False

    @property
    def completes_partitions(self) -> bool:
        """True when the sink assembles its output per source partition in
        :meth:`SinkWriter.complete_partition`: the runtime then commits a partition's
        position once, when it is ``done`` and complete, instead of after each batch."""
        return False

    @classmethod
    def from_spec(cls, section, ctx) -> "Sink":
        raise NotImplementedError

    def open(self, pipeline: str) -> SinkWriter:
        raise NotImplementedError

    def writes_files_in(self) -> str | None:
        """The folder (path or URI) this sink writes files into, if it writes files."""
        return None

    def describe(self) -> dict:
        """A secret-free summary for events and status output."""
        return {"type": self.type}
