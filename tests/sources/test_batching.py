"""A file's parsed pieces regrouped into batches: on the grid of ``batchSize`` from the
start, the last one ``done``, and each handed on as soon as it is whole, not a batch
later."""
from __future__ import annotations

import pyarrow as pa
from hypothesis import given, strategies as st

from etl_actors.batch import DeadLetter
from etl_actors.sources.batching import Rows, file_batches

# A piece: how many good rows and rejected rows it holds (both may be none).
PIECES = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2)), max_size=25)


def pieces(shape: list[tuple[int, int]], start: int = 0) -> list[Rows]:
    """Contiguous pieces from row ``start``: good rows hold their row number, rejected
    rows come after the good ones of their piece."""
    out, row = [], start
    for good, rejected in shape:
        table = pa.table({"row": pa.array(range(row, row + good), pa.int64())})
        rejects = tuple((row + good + i, DeadLetter("bad", {"_line": row + good + i + 2})) for i in range(rejected))
        out.append(Rows(row, table, rejects))
        row += good + rejected
    return out


@given(shape=PIECES, size=st.integers(1, 12), start=st.integers(0, 5))
def test_batches_fall_on_the_grid_and_only_the_last_is_done(shape, size, start):
    batches = list(file_batches(pieces(shape, start), "f.csv", start, size))
    total = sum(good + rejected for good, rejected in shape)
    firsts = list(range(start, start + total, size)) or [start]
    assert [b.batch_id for b in batches] == [f"f.csv#{first}" for first in firsts]
    assert [b.position for b in batches] == \
        [{"rows": min(first + size, start + total), "done": first == firsts[-1]} for first in firsts]
    rows = [r for b in batches for r in (b.table.column("row").to_pylist() if b.table.num_columns else [])]
    lines = [letter.record["_line"] for b in batches for letter in b.rejects]
    assert sorted(rows + [line - 2 for line in lines]) == list(range(start, start + total))


@given(shape=PIECES, size=st.integers(1, 12))
def test_a_batch_is_handed_on_once_whole_without_waiting_for_the_next_one(shape, size):
    """When a batch is handed on, the pieces read are those it needs, and at most one
    more: the next piece with rows, read to tell whether the batch is the last."""
    given_pieces = pieces(shape)
    read = []

    def reading():
        for piece in given_pieces:
            read.append(piece)
            yield piece

    for batch in file_batches(reading(), "f.csv", 0, size):
        end = batch.position["rows"]
        needed = next((i + 1 for i, p in enumerate(given_pieces) if p.end >= end), len(given_pieces))
        with_rows_after = [i for i, p in enumerate(given_pieces) if i >= needed and p.end > p.first]
        allowed = max(needed, with_rows_after[0] + 1 if with_rows_after else len(given_pieces))
        assert len(read) <= allowed
