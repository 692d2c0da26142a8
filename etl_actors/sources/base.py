"""The source contract.

A source is a frozen description (it pickles cleanly to an extractor actor). It opens
its connections and files inside :meth:`Source.read`, derived only from the resume
position it is handed, and yields :class:`~etl_actors.batch.SourceBatch` es.

Partitions are the unit of parallel reading and of resume positions: a file, a key
range, a set of Kafka partitions. The committed watermark of a pipeline is a mapping
``{partition: position}``; positions are plain msgpack-able values.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Mapping

from ..batch import SourceBatch


class Source:
    """Base class of sources; subclasses are frozen dataclasses."""

    type: ClassVar[str]
    error_handling = "fail"     # or "continue": a partition that cannot be read is dead-lettered

    @classmethod
    def from_spec(cls, section, ctx) -> "Source":
        """Build from a spec :class:`~etl_actors.spec.Section`; raise SpecError with its path."""
        raise NotImplementedError

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        """The partitions to read this run, given the committed ``watermark``.

        Partitions that are finished for good (a file already loaded) are left out.
        """
        raise NotImplementedError

    def read(self, partition: str, position: Any | None) -> Iterator[SourceBatch]:
        """Yield the batches of ``partition`` after ``position`` (None: from the start).

        Batch ids are deterministic; each batch's ``position`` resumes right after it.
        """
        raise NotImplementedError

    def schema(self):
        """The Arrow schema of the rows this source yields, when it can be told cheaply
        without reading the data (declared columns, a file's header or footer); else
        None. Used by ``validate`` to check the transformation chain."""
        return None

    def would_read(self, location: str) -> bool:
        """Whether a file written at ``location`` (a path or URI) would be read by this
        source on a later run."""
        return False

    def estimate_bytes(self, partition: str) -> int | None:
        """The partition's size in bytes if cheaply known (for progress), else None."""
        return None

    def view_watermark(self, watermark: Mapping[str, Any]) -> Any:
        """The committed watermark as users read it in summaries and status; by default
        the ``{partition: position}`` mapping itself."""
        return dict(watermark)

    def describe(self) -> dict:
        """A secret-free summary for events and status output."""
        return {"type": self.type}
