"""The file probes of the hardening issue, end to end through the CLI: a folder linked
to its parent, a stray byte, a UTF-16 file among good ones, a huge cell after the
first megabyte, a header without its newline. Each loads what it should, once, and
says what it could not."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
import yaml


def run(tmp_path, source: dict, *extra: str, out: str = "out.db", **runtime) -> dict:
    spec = {"name": "lies", "pipeline": {"source": {"type": "file", "path": "in", "format": "csv", **source},
                                         "destination": {"type": "database", "connection": f"sqlite:///{out}",
                                                         "table": "t"}, **runtime}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "etl_actors", "run", str(tmp_path / "spec.yaml"), "--local", "--json",
                          "--log", f"sqlite:///{tmp_path}/events.db", *extra],
                         capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows(tmp_path, sql: str = "SELECT id, v FROM t ORDER BY id") -> list[tuple]:
    with sqlite3.connect(tmp_path / "out.db") as conn:
        return conn.execute(sql).fetchall()


def dead_letters(tmp_path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "etl_actors", "dlq", "lies", "--log", f"sqlite:///{tmp_path}/events.db"],
                         capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


def test_a_folder_linked_to_its_parent_loads_its_one_row_once(tmp_path, folder):
    (folder / "a.csv").write_text("id,v\n1,a\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")
    assert run(tmp_path, {})["recordsLoaded"] == 1 and rows(tmp_path) == [(1, "a")]


def test_one_stray_byte_keeps_the_column_text_and_dead_letters_its_row(tmp_path, folder):
    (folder / "a.csv").write_bytes(b"id,v\n1,a\n2,\xff\xfeb\n3,c\n")
    summary = run(tmp_path, {})
    assert (summary["recordsLoaded"], summary["recordsRejected"]) == (2, 1)
    assert rows(tmp_path, "SELECT id, v, typeof(v) FROM t ORDER BY id") == [(1, "a", "text"), (3, "c", "text")]
    letter, = dead_letters(tmp_path)
    assert (letter["stage"], letter["record"]["_file"], letter["record"]["_line"]) == ("extract", "a.csv", 3)
    assert letter["reason"] == "v: not valid UTF-8 text (byte 0xff)"


def test_with_on_decode_error_replace_the_row_loads_with_the_replacement_character(tmp_path, folder):
    (folder / "a.csv").write_bytes(b"id,v\n1,a\n2,\xffb\n")
    assert run(tmp_path, {"onDecodeError": "replace"})["recordsLoaded"] == 2
    assert rows(tmp_path) == [(1, "a"), (2, "\ufffdb")]


def test_a_utf16_file_among_good_ones_fails_alone_and_named_and_continue_loads_the_others(tmp_path, folder):
    (folder / "a.csv").write_text("id,v\n1,a\n")
    (folder / "b.csv").write_bytes("id,v\n2,b\n".encode("utf-16"))
    (folder / "c.csv").write_text("id,v\n3,c\n")
    first = run(tmp_path, {})
    assert first["status"] == "failed" and first["partitionsFailed"] == ["b.csv"]
    assert first["error"].startswith("b.csv: cannot read 'b.csv' as csv: not UTF-8 text (byte 0xff at offset 0)")
    assert rows(tmp_path) == [(1, "a"), (3, "c")]
    again = run(tmp_path, {})                                   # the good files are not read again
    assert again["status"] == "failed" and again["recordsExtracted"] == 0
    forgiving = run(tmp_path, {"errorHandling": "continue"})
    assert forgiving["status"] == "success" and forgiving["partitionsFailed"] == ["b.csv"]
    assert [(d["stage"], d["record"]["_file"]) for d in dead_letters(tmp_path)] == [("extract", "b.csv")]
    fixed = run(tmp_path, {"encoding": "utf-16", "pattern": "b.csv"})
    assert fixed["status"] == "success" and rows(tmp_path) == [(1, "a"), (2, "b"), (3, "c")]


def test_a_huge_cell_after_the_first_megabyte_is_read_and_the_rerun_reads_nothing(tmp_path, folder):
    lines = [f"{i},{'x' * 20}" for i in range(60_000)]
    lines[55_000] = f"55000,{'y' * 100_000}"
    (folder / "a.csv").write_text("id,v\n" + "\n".join(lines) + "\n")
    first = run(tmp_path, {"batchSize": 1000})
    assert first["status"] == "success" and first["recordsLoaded"] == 60_000
    assert rows(tmp_path, "SELECT length(v) FROM t WHERE id = 55000") == [(100_000,)]
    assert run(tmp_path, {"batchSize": 1000})["recordsExtracted"] == 0


@pytest.mark.parametrize("content", [b"id,v", b"id,v\n", b"", b"\n"], ids=["no-newline", "newline", "empty", "blank"])
def test_a_header_only_or_empty_csv_is_an_empty_file(tmp_path, folder, content):
    (folder / "a.csv").write_bytes(content)
    (folder / "b.csv").write_text("id,v\n1,a\n")
    summary = run(tmp_path, {})
    assert summary["status"] == "success" and summary["recordsLoaded"] == 1
    assert summary["watermark"]["a.csv"]["done"] is True


def test_the_destination_schema_does_not_depend_on_which_file_lands_first(tmp_path, folder):
    (folder / "a.csv").write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(1, 2001)))
    (folder / "b.csv").write_text("id,v,extra\n9001,5,x\n")
    tables = []
    for extractors, out in ((1, "one.db"), (2, "two.db")):
        run(tmp_path, {"batchSize": 500}, "--reset", out=out, extractors=extractors)
        with sqlite3.connect(tmp_path / out) as conn:
            columns = [c[1] for c in conn.execute("PRAGMA table_info(t)")]
            tables.append((sorted(columns), conn.execute("SELECT id, v, extra FROM t ORDER BY id").fetchall()))
    assert tables[0] == tables[1] and tables[0][0] == ["extra", "id", "v"] and len(tables[0][1]) == 2001
    (folder / "c.csv").write_text("id,v\n9002,not-a-number\n")
    changed = run(tmp_path, {"batchSize": 500}, out="one.db", extractors=1)
    assert changed["status"] == "failed"
    assert "column 'v' of batch 'c.csv#0' is string, but table 't' has it as BIGINT" in changed["error"]
