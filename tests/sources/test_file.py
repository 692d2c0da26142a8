import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.sources.file import FileSource
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
