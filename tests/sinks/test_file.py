import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from etl_actors.errors import SpecError
from etl_actors.sinks.file import FileSink
from etl_actors.sources.file import FileSource
from etl_actors.spec import Section, SpecContext

from .kit import SinkContract, load, people


def read_folder(path, fmt="parquet") -> list[dict]:
    source = FileSource(path=str(path), format="json" if fmt == "ndjson" else fmt)
    return [row for p in source.partitions({}) for b in source.read(p, None) for row in b.table.to_pylist()]


class TestParquetSinkContract(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path):
        return FileSink(path=str(tmp_path / "out"))

    def rows(self, sink):
        return read_folder(sink.path)


class TestNdjsonSinkContract(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path):
        return FileSink(path=str(tmp_path / "out"), format="ndjson")

    def rows(self, sink):
        return [json.loads(line) for f in Path(sink.path).glob("*.ndjson") for line in f.read_text().splitlines()]


def test_replaying_a_batch_overwrites_its_file(tmp_path):
    sink = FileSink(path=str(tmp_path))
    load(sink, (people(range(5)), "orders.csv#0"), (people(range(5, 8)), "orders.csv#5"))
    load(sink, (people(range(5)), "orders.csv#0"))
    assert len(list(tmp_path.glob("*.parquet"))) == 2 and len(read_folder(tmp_path)) == 8


def test_parquet_is_snappy_compressed_and_readable(tmp_path):
    load(FileSink(path=str(tmp_path)), (people(range(3)), "b1"))
    [written] = tmp_path.glob("part-*.parquet")
    assert pq.ParquetFile(written).metadata.row_group(0).column(0).compression == "SNAPPY"
    assert pq.read_table(written).equals(people(range(3)))


def test_csv_files_have_a_header_and_every_row(tmp_path):
    load(FileSink(path=str(tmp_path), format="csv"), (people(range(4)), "b1"))
    [written] = tmp_path.glob("part-*.csv")
    assert pcsv.read_csv(written).column("name").to_pylist() == ["p0", "p1", "p2", "p3"]


def test_csv_flattens_nested_fields_into_dotted_columns_and_lists_into_json(tmp_path):
    table = pa.table({"id": [1, 2],
                      "contact": [{"email": "a@b.com", "geo": {"country": "DE"}}, {"email": None, "geo": None}],
                      "tags": [["x", "y"], None]})
    load(FileSink(path=str(tmp_path), format="csv"), (table, "b1"))
    [written] = tmp_path.glob("part-*.csv")
    back = pcsv.read_csv(written, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    assert back.column_names == ["id", "contact.email", "contact.geo.country", "tags"]
    assert back.to_pylist() == [
        {"id": 1, "contact.email": "a@b.com", "contact.geo.country": "DE", "tags": '["x", "y"]'},
        {"id": 2, "contact.email": None, "contact.geo.country": None, "tags": None}]


def test_open_removes_temporary_files_left_by_a_crash(tmp_path):
    (tmp_path / ".part-0123.tmp").write_bytes(b"half a file")
    FileSink(path=str(tmp_path)).open("p1")
    assert list(tmp_path.iterdir()) == []


def test_batch_destination_shape(tmp_path):
    spec = {"type": "file", "format": "parquet", "compression": "snappy", "bucket": "lake", "prefix": "orders/"}
    sink = FileSink.from_spec(Section(spec, "batch.destination"), SpecContext(base_dir=str(tmp_path)))
    assert sink.path == f"{tmp_path}/lake/orders"
    with pytest.raises(SpecError, match=r"batch.destination.format: 'xls' is not one of parquet, csv, ndjson"):
        FileSink.from_spec(Section({"type": "file", "path": "x", "format": "xls"}, "batch.destination"), SpecContext())
