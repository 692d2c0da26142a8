"""The Parquet reader of the file source: row group by row group, skipping whole
groups before the resume point. ``encoding`` does not apply (Parquet text is UTF-8)."""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .batching import Rows, after


class ParquetReader:
    """Reads one Parquet file for a :class:`~etl_actors.sources.file.FileSource`."""

    def __init__(self, source, fs, path: str, partition: str):
        self.source, self.fs, self.path = source, fs, path

    def schema(self) -> pa.Schema:
        """The footer's schema."""
        with self.fs.open_input_file(self.path) as handle:
            return pq.ParquetFile(handle).schema_arrow

    def pieces(self, start: int) -> Iterator[Rows]:
        with self.fs.open_input_file(self.path) as handle:
            parquet = pq.ParquetFile(handle)
            first = 0
            for group in range(parquet.metadata.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                if first + size > start:
                    batches = parquet.iter_batches(batch_size=self.source.batch_size, row_groups=[group])
                    yield from after(batches, start, first)
                first += size
