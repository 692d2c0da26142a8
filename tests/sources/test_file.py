import errno
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl_actors.errors import EtlError, SpecError, TerminalError, TransientError
from etl_actors.sources.csv_reader import CsvReader
from etl_actors.sources.file import FileSource, format_of
from etl_actors.spec import Section, SpecContext

from .kit import SourceContract, ids, read_all


def write_csv(path, n, start=0, bad=None):
    lines = ["id,name,amount"] + [f"{i},name{i},{i * 10}" for i in range(start, start + n)]
    for index, line in (bad or {}).items():
        lines[index + 1] = line
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def build(spec, base_dir):
    return FileSource.from_spec(Section(spec, "pipeline.source"), SpecContext(base_dir=str(base_dir)))


class TestCsvContract(SourceContract):
    @pytest.fixture
    def source(self, tmp_path):
        return FileSource(path=write_csv(tmp_path / "a.csv", self.expected), batch_size=100)

    @pytest.fixture
    def empty_source(self, tmp_path):
        (tmp_path / "empty.csv").write_text("")
        return FileSource(path=str(tmp_path / "empty.csv"))


class TestNdjsonContract(SourceContract):
    @pytest.fixture
    def source(self, tmp_path):
        lines = [json.dumps({"id": i, "name": f"n{i}"}) for i in range(self.expected)]
        (tmp_path / "a.ndjson").write_text("\n".join(lines) + "\n")
        return FileSource(path=str(tmp_path / "a.ndjson"), format="json", batch_size=100)

    @pytest.fixture
    def empty_source(self, tmp_path):
        (tmp_path / "empty.jsonl").write_text("")
        return FileSource(path=str(tmp_path / "empty.jsonl"), format="json")


class TestParquetContract(SourceContract):
    @pytest.fixture
    def source(self, tmp_path):
        table = pa.table({"id": range(self.expected), "name": [f"n{i}" for i in range(self.expected)]})
        pq.write_table(table, tmp_path / "a.parquet", row_group_size=250)
        return FileSource(path=str(tmp_path / "a.parquet"), format="parquet", batch_size=100)

    @pytest.fixture
    def empty_source(self, tmp_path):
        pq.write_table(pa.table({"id": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
        return FileSource(path=str(tmp_path / "empty.parquet"), format="parquet")


def test_directory_reads_every_csv_file_below_it(tmp_path):
    (tmp_path / "2024" / "01").mkdir(parents=True)
    write_csv(tmp_path / "a.csv", 10)
    write_csv(tmp_path / "2024" / "01" / "b.csv", 10, start=10)
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / ".tmp-c.csv").write_text("id\n99\n")
    source = build({"type": "file", "path": ".", "format": "csv"}, tmp_path)
    assert source.partitions({}) == ["2024/01/b.csv", "a.csv"]
    assert ids(read_all(source)) == list(range(20))


def test_glob_path_matches_files_in_its_folder_only(tmp_path):
    (tmp_path / "sub").mkdir()
    write_csv(tmp_path / "a.csv", 5)
    write_csv(tmp_path / "b.csv", 5, start=5)
    write_csv(tmp_path / "sub" / "c.csv", 5, start=10)
    source = build({"type": "file", "path": "*.csv"}, tmp_path)
    assert ids(read_all(source)) == list(range(10))
    assert ids(read_all(build({"type": "file", "path": "**/*.csv"}, tmp_path))) == list(range(15))


def test_batch_shape_bucket_prefix_and_pattern(tmp_path):
    (tmp_path / "landing" / "in").mkdir(parents=True)
    write_csv(tmp_path / "landing" / "in" / "orders-1.csv", 5)
    write_csv(tmp_path / "landing" / "in" / "refunds-1.csv", 5, start=5)
    source = build({"type": "file", "bucket": "landing", "prefix": "in/", "pattern": "orders-*.csv"}, tmp_path)
    assert source.format == "csv"
    assert ids(read_all(source)) == list(range(5))


def test_files_already_done_are_skipped_next_run(tmp_path):
    write_csv(tmp_path / "a.csv", 5)
    write_csv(tmp_path / "b.csv", 5, start=5)
    (tmp_path / "c.csv").write_text("")
    source = FileSource(path=str(tmp_path))
    watermark = {b.partition: b.position for b in read_all(source)}
    assert all(position["done"] for position in watermark.values())
    assert source.partitions(watermark) == []
    write_csv(tmp_path / "d.csv", 5, start=10)
    assert ids(read_all(source, watermark)) == list(range(10, 15))


def test_the_watermark_survives_the_folder_moving(tmp_path):
    (tmp_path / "old").mkdir()
    write_csv(tmp_path / "old" / "a.csv", 5)
    watermark = {b.partition: b.position for b in read_all(FileSource(path=str(tmp_path / "old")))}
    (tmp_path / "old").rename(tmp_path / "new")
    write_csv(tmp_path / "new" / "b.csv", 5, start=5)
    assert ids(read_all(FileSource(path=str(tmp_path / "new")), watermark)) == list(range(5, 10))


def test_bad_csv_rows_become_rejects_with_reasons_and_the_rest_loads(tmp_path):
    path = write_csv(tmp_path / "a.csv", 2000, bad={1500: "1500,name1500,abc", 700: "700,short"})
    batches = list(FileSource(path=path, batch_size=100).read(path, None))
    rejects = [r for b in batches for r in b.rejects]
    assert batches[0].rejects == () and len(batches) > 10
    assert sorted(r.reason for r in rejects) == ["amount: cannot convert 'abc' to int64", "row has 2 fields, expected 3"]
    assert ids(batches) == [i for i in range(2000) if i not in (700, 1500)]
    assert {b.table.schema for b in batches} == {batches[0].table.schema}
    assert batches[-1].position == {"rows": 2000, "done": True}


def test_resume_after_a_bad_value_keeps_rows_and_rejects_once(tmp_path):
    path = write_csv(tmp_path / "a.csv", 1000, bad={500: "500,x,NaN-ish", 501: "501,y"})
    batches = list(FileSource(path=path, batch_size=100).read(path, None))
    for k, stopped in enumerate(batches):
        resumed = list(FileSource(path=path, batch_size=100).read(path, stopped.position))
        together = batches[:k + 1] + resumed
        assert ids(together) == [i for i in range(1000) if i not in (500, 501)]
        assert sum(len(b.rejects) for b in together) == 2


def test_declared_column_types_are_used(tmp_path):
    path = write_csv(tmp_path / "a.csv", 3)
    source = build({"type": "file", "path": "a.csv", "columns": {"id": "string", "amount": "float"}}, tmp_path)
    table = read_all(source)[0].table
    assert table.schema.field("id").type == pa.string() and table.column("amount").to_pylist() == [0.0, 10.0, 20.0]


def test_json_array_file_is_read(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"id": i} for i in range(7)]))
    batches = list(FileSource(path=str(tmp_path / "a.json"), format="json", batch_size=3).read(str(tmp_path / "a.json"), None))
    assert [b.table.num_rows for b in batches] == [3, 3, 1] and batches[-1].position == {"rows": 7, "done": True}


def test_spec_errors_name_the_key(tmp_path):
    with pytest.raises(SpecError, match=r"pipeline.source.format: 'xml' is not one of csv, json, parquet"):
        build({"type": "file", "path": "a.csv", "format": "xml"}, tmp_path)
    with pytest.raises(SpecError, match=r"pipeline.source.format: is required: cannot tell the format"):
        build({"type": "file", "path": "data/"}, tmp_path)
    with pytest.raises(SpecError, match=r"pipeline.source.batchSizes: unknown key; did you mean 'batchSize'"):
        build({"type": "file", "path": "a.csv", "batchSizes": 10}, tmp_path)


def test_estimate_bytes_is_the_file_size(tmp_path):
    path = write_csv(tmp_path / "a.csv", 10)
    assert FileSource(path=path).estimate_bytes(path) == (tmp_path / "a.csv").stat().st_size


def test_s3_batch_shape_builds_an_object_store_uri(tmp_path):
    source = build({"type": "s3", "bucket": "landing", "prefix": "orders/2024/", "pattern": "*.parquet"}, tmp_path)
    assert (source.path, source.pattern, source.format) == ("s3://landing/orders/2024", "*.parquet", "parquet")
    assert "s3://" in source.describe()["path"]


def test_a_missing_folder_fails_with_its_name(tmp_path):
    with pytest.raises(TerminalError, match="no such file or folder"):
        FileSource(path=str(tmp_path / "nowhere")).partitions({})


# --- files that lie ------------------------------------------------------------------

def rows_of(batches, column):
    return [v for b in batches for v in b.table.column(column).to_pylist()]


def test_a_link_to_a_parent_folder_reads_each_file_once(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    write_csv(tmp_path / "data" / "a.csv", 1)
    write_csv(tmp_path / "elsewhere" / "b.csv", 1, start=1)
    (tmp_path / "data" / "sub" / "up").symlink_to("..")
    (tmp_path / "data" / "sub" / "same.csv").symlink_to("../a.csv")
    (tmp_path / "data" / "linked").symlink_to("../elsewhere")
    (tmp_path / "data" / "broken.csv").symlink_to("nowhere.csv")
    source = FileSource(path=str(tmp_path / "data"))
    assert source.partitions({}) == ["a.csv", "linked/b.csv"]
    assert ids(read_all(source)) == [0, 1]


def write_bytes(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def names_file(tmp_path, bad_rows=(5, 2500), n=3000) -> str:
    """id,name rows; the names of ``bad_rows`` hold a byte that is not UTF-8."""
    lines = [b"id,name"] + [b"%d,%s" % (i, b"caf\xff" if i in bad_rows else b"n%d" % i) for i in range(n)]
    return write_bytes(tmp_path / "a.csv", lines)


def test_a_byte_that_is_not_utf8_rejects_its_row_and_the_column_stays_text(tmp_path):
    names_file(tmp_path)
    batches = read_all(FileSource(path=str(tmp_path), batch_size=100))
    assert {b.table.schema.field("name").type for b in batches} == {pa.string()}
    assert ids(batches) == [i for i in range(3000) if i not in (5, 2500)]
    rejects = [r for b in batches for r in b.rejects]
    assert [r.reason for r in rejects] == ["name: not valid UTF-8 text (byte 0xff)"] * 2
    assert [(r.record["_file"], r.record["_line"], r.record["name"]) for r in rejects] == [
        ("a.csv", 7, "caf\\xff"), ("a.csv", 2502, "caf\\xff")]
    assert batches[-1].position == {"rows": 3000, "done": True}


def test_on_decode_error_replace_loads_the_row_with_replacement_characters(tmp_path):
    names_file(tmp_path)
    source = build({"type": "file", "path": ".", "format": "csv", "onDecodeError": "replace"}, tmp_path)
    batches = read_all(source)
    assert ids(batches) == list(range(3000)) and not any(b.rejects for b in batches)
    assert rows_of(batches, "name")[5] == "caf\ufffd"


def test_a_declared_encoding_is_decoded(tmp_path):
    (tmp_path / "a.csv").write_bytes("id,name\n1,café\n2,Müller\n".encode("latin-1"))
    source = build({"type": "file", "path": "a.csv", "encoding": "latin-1"}, tmp_path)
    assert rows_of(read_all(source), "name") == ["café", "Müller"]


def test_a_byte_the_declared_encoding_cannot_decode_rejects_its_row(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"id,name\n1,caf\xe9\n2,x\x81y\n")
    batches = read_all(FileSource(path=str(tmp_path / "a.csv"), encoding="cp1252"))
    assert rows_of(batches, "name") == ["café"]
    assert [(r.reason, r.record["_line"]) for b in batches for r in b.rejects] == [
        ("name: not valid cp1252 text (byte 0x81)", 3)]


def test_a_utf8_bom_is_not_part_of_the_first_column_name(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfid,name\n1,x\n")
    assert read_all(FileSource(path=str(tmp_path / "a.csv")))[0].table.column_names == ["id", "name"]


def test_encoding_and_error_options_are_checked_at_spec_time(tmp_path):
    with pytest.raises(SpecError, match=r"pipeline.source.encoding: unknown encoding 'utf-9'"):
        build({"type": "file", "path": "a.csv", "encoding": "utf-9"}, tmp_path)
    with pytest.raises(SpecError, match=r"pipeline.source.encoding: 'rot13' is not a text encoding"):
        build({"type": "file", "path": "a.csv", "encoding": "rot13"}, tmp_path)
    with pytest.raises(SpecError, match=r"pipeline.source.onDecodeError: 'skip' is not one of fail, replace"):
        build({"type": "file", "path": "a.csv", "onDecodeError": "skip"}, tmp_path)
    with pytest.raises(SpecError, match=r"pipeline.source.errorHandling: 'ignore' is not one of fail, continue"):
        build({"type": "file", "path": "a.csv", "errorHandling": "ignore"}, tmp_path)
    assert build({"type": "file", "path": "a.csv", "errorHandling": "continue"}, tmp_path).error_handling == "continue"


def test_a_utf16_file_among_good_ones_fails_alone_naming_itself(tmp_path):
    write_csv(tmp_path / "a.csv", 5)
    (tmp_path / "c.csv").write_text("id,name,amount\n5,x,1\n", encoding="utf-16")
    write_csv(tmp_path / "d.csv", 5, start=6)
    source = FileSource(path=str(tmp_path))
    assert ids(b for p in ("a.csv", "d.csv") for b in source.read(p, None)) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    with pytest.raises(TerminalError) as failed:
        list(source.read("c.csv", None))
    assert str(failed.value) == ("cannot read 'c.csv' as csv: not UTF-8 text (byte 0xff at offset 0); "
                                 "set encoding: utf-16?")
    assert failed.value.partition == "c.csv"
    assert ids(read_all(FileSource(path=str(tmp_path / "c.csv"), encoding="utf-16"))) == [5]


@pytest.mark.parametrize("name, content, reason", [
    ("h.csv", b"i\xffd,name\n1,x\n", "not UTF-8 text (byte 0xff at offset 1)"),
    ("p.parquet", b"PAR1 not really parquet", "Parquet magic bytes not found"),
    ("j.json", b"this is not json\n", "JSON parse error"),
    ("k.json", b'{"name": "ok"}\n{"name": "caf\xff"}\n', "not UTF-8 text in lines 1-2"),
    ("z.csv.gz", b"not gzip at all", "zlib inflate failed"),
])
def test_a_file_that_cannot_be_read_raises_a_terminal_error_naming_it(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    source = FileSource(path=str(tmp_path / name), format=format_of(name))
    with pytest.raises(TerminalError, match=f"^cannot read '{name}' as {format_of(name)}: .*{re.escape(reason)}") as failed:
        list(source.read(name, None))
    assert failed.value.partition == name and "\n" not in str(failed.value)


def straddling_csv(tmp_path, rows=60_000, big_row=55_000) -> str:
    """About 1.4 MB of short rows, with a 100k-character cell well after the first MB."""
    lines = ["id,name,amount"] + [f"{i},{'x' * 100_000 if i == big_row else f'n{i}'},{i}" for i in range(rows)]
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "big.csv")


def test_a_cell_larger_than_the_block_after_the_first_megabyte_is_read(tmp_path):
    source = FileSource(path=straddling_csv(tmp_path), batch_size=1000)
    batches = list(source.read("big.csv", None))
    assert ids(batches) == list(range(60_000))
    assert len(rows_of(batches, "name")[55_000]) == 100_000
    assert [b.table.num_rows for b in batches] == [1000] * 60


def test_a_read_resumed_anywhere_yields_the_batches_of_the_first_read(tmp_path):
    source = FileSource(path=straddling_csv(tmp_path), batch_size=1000)
    first = list(source.read("big.csv", None))
    for k, stopped in enumerate(first[:-1]):
        resumed = list(source.read("big.csv", stopped.position))
        assert [b.batch_id for b in resumed] == [b.batch_id for b in first[k + 1:]], f"resumed after batch {k}"
        assert [b.position for b in resumed] == [b.position for b in first[k + 1:]]
        assert all(r.table.equals(f.table) for r, f in zip(resumed, first[k + 1:]))


def test_an_ndjson_value_larger_than_the_block_is_read(tmp_path):
    rows = [{"id": i, "v": "x" * 100_000 if i == 5000 else "v"} for i in range(6000)]
    (tmp_path / "a.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = FileSource(path=str(tmp_path / "a.ndjson"), format="json", batch_size=100)
    batches = list(source.read("a.ndjson", None))
    assert ids(batches) == list(range(6000)) and [b.batch_id for b in batches][50] == "a.ndjson#5000"
    assert [b.batch_id for b in source.read("a.ndjson", batches[49].position)] == [b.batch_id for b in batches[50:]]


@pytest.mark.parametrize("content", [b"id,name", b"id,name\n", b"id,name\r\n", b"", b"\n\n"])
def test_a_header_only_or_blank_csv_is_an_empty_file(tmp_path, content):
    (tmp_path / "a.csv").write_bytes(content)
    source = FileSource(path=str(tmp_path))
    batches = read_all(source)
    assert [(b.table.num_rows, b.position) for b in batches] == [(0, {"rows": 0, "done": True})]
    assert source.partitions({b.partition: b.position for b in batches}) == []


def test_schema_is_what_the_first_file_yields(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(b"id,name,note,amount,score\n1,caf\xff,,3,1.5\n")
    source = FileSource(path=str(tmp_path / "in"), columns=(("amount", "float"),))
    expected = pa.schema([("id", pa.int64()), ("name", pa.string()), ("note", pa.string()),
                          ("amount", pa.float64()), ("score", pa.float64())])
    assert source.schema() == expected == read_all(source)[0].table.schema
    (tmp_path / "h.csv").write_text("id,name")
    assert FileSource(path=str(tmp_path / "h.csv")).schema() == pa.schema([("id", pa.string()), ("name", pa.string())])
    pq.write_table(pa.table({"id": [1], "at": pa.array([1], pa.timestamp("ms"))}), tmp_path / "a.parquet")
    assert FileSource(path=str(tmp_path / "a.parquet"), format="parquet").schema() == pa.schema(
        [("id", pa.int64()), ("at", pa.timestamp("ms"))])
    (tmp_path / "a.ndjson").write_text('{"id": 1, "tags": ["x"]}\n')
    assert FileSource(path=str(tmp_path / "a.ndjson"), format="json").schema() == pa.schema(
        [("id", pa.int64()), ("tags", pa.list_(pa.string()))])


def test_schema_is_none_without_a_readable_file(tmp_path):
    (tmp_path / "empty").mkdir()
    assert FileSource(path=str(tmp_path / "empty")).schema() is None
    (tmp_path / "c.csv").write_text("id,name\n1,x\n", encoding="utf-16")
    assert FileSource(path=str(tmp_path / "c.csv")).schema() is None


def test_would_read_says_whether_a_written_file_would_be_ingested(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    folder = FileSource(path=str(tmp_path / "in"))
    assert folder.would_read(str(tmp_path / "in" / "part-1.csv"))
    assert folder.would_read(str(tmp_path / "alias" / "out" / "part-1.csv"))
    assert folder.would_read(f"file://{tmp_path}/in/part-1.csv.gz")
    assert not folder.would_read(str(tmp_path / "in" / "part-1.parquet"))
    assert not folder.would_read(str(tmp_path / "in" / ".part-1.tmp"))
    assert not folder.would_read(str(tmp_path / "in-other" / "part-1.csv"))
    by_pattern = FileSource(path=str(tmp_path / "in"), pattern="orders-*.csv")
    assert by_pattern.would_read(str(tmp_path / "in" / "x" / "orders-2.csv"))
    assert not by_pattern.would_read(str(tmp_path / "in" / "part-1.csv"))
    globbed = FileSource(path=str(tmp_path / "in" / "*.csv"))
    assert globbed.would_read(str(tmp_path / "in" / "p.csv")) and not globbed.would_read(str(tmp_path / "in/x/p.csv"))
    one = FileSource(path=str(tmp_path / "in" / "a.csv"))
    assert one.would_read(str(tmp_path / "in" / "a.csv")) and not one.would_read(str(tmp_path / "in" / "b.csv"))
    store = FileSource(path="s3://bucket/landing?region=eu-west-1&secret_key=S3CR3T-VALUE", format="parquet")
    assert store.would_read("s3://bucket/landing/out/part-1.parquet")
    assert not store.would_read("s3://bucket/landing-2/part-1.parquet")
    assert not store.would_read(str(tmp_path / "bucket" / "landing" / "part-1.parquet"))


def test_secrets_in_an_object_store_path_are_never_shown(tmp_path):
    uri = "s3://bucket/landing?access_key=AKIAEXAMPLE&secret_key=S3CR3T-VALUE&endpoint_override=localhost:9"
    source = build({"type": "file", "path": uri, "format": "csv"}, tmp_path)
    assert source.path == uri
    assert "S3CR3T-VALUE" not in repr(source) and "S3CR3T-VALUE" not in json.dumps(source.describe())
    assert source.describe()["path"].startswith("s3://bucket/landing?")
    with pytest.raises(SpecError) as failed:
        build({"type": "file", "path": uri}, tmp_path)
    assert "S3CR3T-VALUE" not in str(failed.value) and "cannot tell the format" in str(failed.value)


@pytest.mark.parametrize("error, kind, message", [
    (OSError(errno.EIO, "Input/output error"), TransientError, "cannot read 'a.csv': [Errno 5] Input/output error"),
    (PermissionError(errno.EACCES, "Permission denied"), TerminalError,
     "cannot read 'a.csv' as csv: [Errno 13] Permission denied"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), TerminalError,
     "cannot read 'a.csv' as csv: not utf-8 text (byte 0xff at offset 2)"),
])
def test_storage_errors_name_the_file_and_say_whether_a_retry_helps(tmp_path, monkeypatch, error, kind, message):
    write_csv(tmp_path / "a.csv", 5)

    def failing(self, start):
        raise error
        yield

    monkeypatch.setattr(CsvReader, "pieces", failing)
    with pytest.raises(EtlError) as failed:
        list(FileSource(path=str(tmp_path)).read("a.csv", None))
    assert (type(failed.value), str(failed.value), failed.value.partition) == (kind, message, "a.csv")


def test_ndjson_is_decoded_with_the_declared_encoding(tmp_path):
    (tmp_path / "a.ndjson").write_bytes('{"id": 1, "name": "café"}\n'.encode("latin-1"))
    source = build({"type": "file", "path": "a.ndjson", "encoding": "latin-1"}, tmp_path)
    assert rows_of(read_all(source), "name") == ["café"]
    with pytest.raises(TerminalError, match=r"^cannot read 'a.ndjson' as json: not UTF-8 text \(byte 0xe9"):
        read_all(build({"type": "file", "path": "a.ndjson"}, tmp_path))
