"""The CSV reader parses a file in chunks on several threads: every row keeps its exact
number, and a read resumed at any committed position yields the very batches a first
read did, wherever the chunks fall."""
from __future__ import annotations

import pyarrow as pa
from hypothesis import HealthCheck, given, settings, strategies as st

from etl_actors.sources import csv_reader
from etl_actors.sources.file import FileSource

# A row: a good one, one with a field too many, one whose amount is not a number, or a
# blank line (pyarrow skips those: they are not rows).
KINDS = st.sampled_from(["good"] * 6 + ["extra", "text", "blank"])


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
    text, good, rejects = render(kinds)
    path = tmp_path / "a.csv"
    path.write_bytes(text)
    monkeypatch.setattr(csv_reader, "CHUNK_BYTES", chunk)
    source = FileSource(path=str(path), batch_size=batch, columns=(("id", "int"), ("amount", "int")))
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


def test_a_line_longer_than_a_chunk_is_one_row(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_reader, "CHUNK_BYTES", 16)
    long = "x" * 1000
    (tmp_path / "a.csv").write_text(f"id,note\n1,short\n2,{long}\n3,end")      # no newline at the end
    batches = read(FileSource(path=str(tmp_path / "a.csv")))
    assert [r["note"] for b in batches for r in b.table.to_pylist()] == ["short", long, "end"]
