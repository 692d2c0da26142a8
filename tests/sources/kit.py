"""The source contract kit: a new source inherits the contract by subclassing.

    class TestCsvContract(SourceContract):
        @pytest.fixture
        def source(self, tmp_path): ...        # a Source over rows with ids 0..n-1
        @pytest.fixture
        def empty_source(self, tmp_path): ...  # a Source with nothing to read
"""
from __future__ import annotations

import pytest


def read_all(source, watermark=None) -> list:
    """Every batch of every partition, starting from ``watermark``."""
    watermark = watermark or {}
    return [b for p in source.partitions(watermark) for b in source.read(p, watermark.get(p))]


def ids(batches, key="id") -> list:
    return sorted(v for b in batches for v in b.table.column(key).to_pylist())


class SourceContract:
    """Subclasses provide ``source`` (rows whose ``key`` column holds 0..expected-1,
    read in several batches) and ``empty_source``."""

    key = "id"
    expected = 1000

    def test_reads_every_row_once_in_several_batches(self, source):
        batches = read_all(source)
        assert len(batches) > 2
        assert ids(batches, self.key) == list(range(self.expected))

    def test_resumes_without_loss_or_duplicates(self, source):
        for partition in source.partitions({}):
            batches = list(source.read(partition, None))
            for k, stopped in enumerate(batches):
                resumed = list(source.read(partition, stopped.position))
                assert ids(batches[:k + 1] + resumed, self.key) == ids(batches, self.key), f"resumed after batch {k}"

    def test_batch_ids_are_deterministic(self, source):
        first, second = read_all(source), read_all(source)
        assert [b.batch_id for b in first] == [b.batch_id for b in second]
        assert len({b.batch_id for b in first}) == len(first)

    def test_empty_source_yields_no_rows(self, empty_source):
        assert sum(b.table.num_rows for b in read_all(empty_source)) == 0
