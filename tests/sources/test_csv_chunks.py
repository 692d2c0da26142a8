"""The CSV reader parses a file in chunks on several threads: every row keeps its exact
number, and a read resumed at any committed position yields the very batches a first
read did, wherever the chunks fall."""
from __future__ import annotations

from datetime import date

import pyarrow as pa
from hypothesis import HealthCheck, given, settings, strategies as st

from etl_actors.sources import csv_reader
from etl_actors.sources.file import FileSource

# A row: a good one, one with a field too many, one whose amount is not a number, one
# whose name holds a byte that is not UTF-8, or a blank line (pyarrow skips those: they
# are not rows).
KINDS = st.sampled_from(["good"] * 6 + ["extra", "text", "badbyte", "blank"])
# Rows for a file whose types are inferred: a number that is not one would make its
# column text instead.
INFERRED_KINDS = st.sampled_from(["good"] * 6 + ["extra", "badbyte", "blank"])


def render(kinds: list[str]) -> tuple[bytes, list[tuple], list[tuple]]:
    """The file, the good rows ``(id, name, amount)`` and the rejects ``(line, reason)``
    a reader must give, counted independently of it."""
    lines, good, rejects, row = [b"id,name,amount"], [], [], 0
    for i, kind in enumerate(kinds):
        if kind == "blank":
            lines.append(b"")
            continue
        line = row + 2          # the header is line 1; _line counts rows
        if kind == "good":
            lines.append(b"%d,name %d,%d" % (i, i, i * 7))
            good.append((i, f"name {i}", i * 7))
        elif kind == "extra":
            lines.append(b"%d,name %d,%d,surplus" % (i, i, i))
            rejects.append((line, "row has 4 fields, expected 3"))
        elif kind == "badbyte":
            lines.append(b"%d,name \xff%d,%d" % (i, i, i))
            rejects.append((line, "name: not valid UTF-8 text (byte 0xff)"))
        else:
            lines.append(b"%d,name %d,lots" % (i, i))
            rejects.append((line, "amount: cannot convert 'lots' to int64"))
        row += 1
    return b"\n".join(lines) + b"\n", good, rejects


def read(source: FileSource, position=None) -> list:
    return list(source.read(source.partitions({})[0], position))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(KINDS, min_size=1, max_size=120), chunk=st.integers(8, 200), batch=st.integers(1, 40),
       data=st.data())
def test_rows_keep_their_numbers_and_a_resumed_read_repeats_the_batches(tmp_path, monkeypatch, kinds, chunk,
                                                                       batch, data):
    check_reads(tmp_path, monkeypatch, kinds, chunk, batch, data, columns=(("id", "int"), ("amount", "int")))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(INFERRED_KINDS, min_size=0, max_size=120), chunk=st.integers(8, 200),
       batch=st.integers(1, 40), data=st.data())
def test_with_types_inferred_the_first_block_read_once_keeps_the_rows_and_their_numbers(tmp_path, monkeypatch, kinds,
                                                                                       chunk, batch, data):
    """Without declared types, the rows of the first block come from inferring its
    types (when it holds no invalid row): the same rows, numbers and batches."""
    check_reads(tmp_path, monkeypatch, ["good"] + kinds, chunk, batch, data, columns=())


def check_reads(tmp_path, monkeypatch, kinds, chunk, batch, data, columns) -> None:
    text, good, rejects = render(kinds)
    path = tmp_path / "a.csv"
    path.write_bytes(text)
    monkeypatch.setattr(csv_reader, "CHUNK_BYTES", chunk)
    source = FileSource(path=str(path), batch_size=batch, columns=columns)
    batches = read(source)

    rows = [tuple(r.values()) for b in batches for r in b.table.to_pylist()]
    assert rows == good
    assert [(r.record["_line"], r.reason) for b in batches for r in b.rejects] == rejects
    assert batches[-1].position == {"rows": len(good) + len(rejects), "done": True}
    assert all(b.table.schema == pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.int64())])
               for b in batches if b.table.num_columns)

    resume = data.draw(st.integers(0, len(batches) - 1))
    again = read(source, batches[resume - 1].position if resume else None)
    assert [(b.batch_id, b.position, b.table.to_pylist(), [r.record for r in b.rejects]) for b in again] == \
        [(b.batch_id, b.position, b.table.to_pylist(), [r.record for r in b.rejects]) for b in batches[resume:]]


def test_the_first_block_is_parsed_once_when_inferring_its_types_gave_its_rows(tmp_path, monkeypatch):
    """The rows of the first block come from inferring its types; the chunk parses
    begin after it. A row with a field too many in it makes the chunks parse it all."""
    parsed = []
    parse = csv_reader.CsvReader._parse
    monkeypatch.setattr(csv_reader.CsvReader, "_parse", lambda self, chunk, *a: parsed.append(
        (result := parse(self, chunk, *a))[0].num_rows) or result)
    rows = [b"id,amount,day"] + [b"%d,%d.5,2024-01-%02d" % (i, i, i % 28 + 1) for i in range(30_000)]
    (tmp_path / "a.csv").write_bytes(b"\n".join(rows) + b"\n")
    source = FileSource(path=str(tmp_path / "a.csv"), batch_size=10_000)
    batches = read(source)
    assert [b.batch_id for b in batches] == ["a.csv#0", "a.csv#10000", "a.csv#20000"]
    assert pa.concat_tables(b.table for b in batches).to_pylist() == \
        [{"id": i, "amount": i + 0.5, "day": date(2024, 1, i % 28 + 1)} for i in range(30_000)]
    first_block = 30_000 - sum(parsed)
    assert 5_000 < first_block < 30_000          # about batchSize rows, read once

    parsed.clear()
    rows[3] += b",surplus"
    (tmp_path / "a.csv").write_bytes(b"\n".join(rows) + b"\n")
    batches = read(source)
    assert sum(parsed) == 29_999 and [r.record["_line"] for b in batches for r in b.rejects] == [4]


def test_a_line_longer_than_a_chunk_is_one_row(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_reader, "CHUNK_BYTES", 16)
    long = "x" * 1000
    (tmp_path / "a.csv").write_text(f"id,note\n1,short\n2,{long}\n3,end")      # no newline at the end
    batches = read(FileSource(path=str(tmp_path / "a.csv")))
    assert [r["note"] for b in batches for r in b.table.to_pylist()] == ["short", long, "end"]


def test_types_come_from_the_whole_first_block_and_a_row_longer_than_it_grows_it(tmp_path):
    """Types are inferred from the rows of the file's first block (about ``batchSize``
    rows), not from its first megabyte: an amount with a fraction 60,000 rows down makes
    the column a float; a block too small for the header and a row is grown."""
    rows = [b"id,amount,note"] + [b"%d,%d,some words of note" % (i, i) for i in range(60_000)] + \
        [b"60000,0.5,a fraction"] + [b"%d,%d,more" % (i, i) for i in range(60_001, 60_100)]
    (tmp_path / "a.csv").write_bytes(b"\n".join(rows) + b"\n")
    assert len(b"\n".join(rows[:60_001])) > 1 << 20
    source = FileSource(path=str(tmp_path / "a.csv"), batch_size=100_000)
    batches = read(source)
    assert batches[0].table.schema.field("amount").type == pa.float64()
    assert sum(b.table.num_rows for b in batches) == 60_100 and not any(b.rejects for b in batches)

    reader = csv_reader.CsvReader(source, source._root().fs, str(tmp_path / "a.csv"), "a.csv")
    reader.block = 4                                     # not even the header fits
    assert reader.schema() == pa.schema([("id", pa.int64()), ("amount", pa.int64()), ("note", pa.string())])
    assert reader.block > 4
