"""The sink contract kit: a new sink inherits the contract by subclassing.

    class TestMySinkContract(SinkContract):
        @pytest.fixture
        def sink(self, tmp_path): ...       # a Sink that starts empty
        def rows(self, sink): ...           # the rows it holds, as dicts
"""
from __future__ import annotations

import pyarrow as pa
import pytest

from etl_actors.errors import TerminalError


def people(ids, name="p") -> pa.Table:
    ids = list(ids)
    return pa.table({"id": pa.array(ids, pa.int64()), "name": [f"{name}{i}" for i in ids],
                     "score": pa.array([i * 1.5 for i in ids], pa.float64())})


def load(sink, *batches, pipeline="p1"):
    """Write ``(table, batch_id)`` pairs through one writer; return the results."""
    writer = sink.open(pipeline)
    try:
        results = [writer.write(table, batch_id) for table, batch_id in batches]
        writer.finish()
    finally:
        writer.close()
    return results


class SinkContract:
    """Subclasses provide a ``sink`` fixture and ``rows(sink) -> list[dict]``."""

    def rows(self, sink) -> list[dict]:
        raise NotImplementedError

    def ids(self, sink) -> list[int]:
        return sorted(row["id"] for row in self.rows(sink))

    def test_writes_every_row_of_every_batch(self, sink):
        results = load(sink, (people(range(0, 50)), "b1"), (people(range(50, 80)), "b2"))
        assert [r.loaded for r in results] == [50, 30]
        assert self.ids(sink) == list(range(80))

    def test_idempotent_write_of_a_replayed_batch(self, sink):
        load(sink, (people(range(10)), "b1"), (people(range(10)), "b1"))
        load(sink, (people(range(10)), "b1"))
        assert self.ids(sink) == list(range(10))

    def test_values_arrive_intact(self, sink):
        load(sink, (people([7]), "b1"))
        row = self.rows(sink)[0]
        assert (row["id"], row["name"], row["score"]) == (7, "p7", 10.5)

    def test_empty_batch_writes_nothing(self, sink):
        load(sink, (people([]), "b0"), (people([1]), "b1"))
        assert self.ids(sink) == [1]

    @pytest.mark.parametrize("extra_first", [False, True])
    def test_a_new_column_gives_the_same_rows_whichever_batch_lands_first(self, sink, extra_first):
        a = (people([1, 2]), "a.csv#0")
        b = (people([3, 4]).append_column("extra", pa.array(["x", None])), "b.csv#0")
        load(sink, *((b, a) if extra_first else (a, b)))
        rows = sorted(({"extra": None} | row for row in self.rows(sink)), key=lambda row: row["id"])
        assert [(r["id"], r["name"], r["extra"]) for r in rows] == [
            (1, "p1", None), (2, "p2", None), (3, "p3", "x"), (4, "p4", None)]

    def test_a_type_change_is_refused_naming_the_column_and_the_batch(self, sink):
        changed = people([2]).set_column(2, "score", pa.array(["high"]))
        with pytest.raises(TerminalError, match=r"column 'score' of batch 'b\.csv#0' is string, but .* has it as "):
            load(sink, (people([1]), "a.csv#0"), (changed, "b.csv#0"))
