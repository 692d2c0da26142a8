import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.sinks.file import FileSink, file_name
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


def _encodings(path) -> dict[str, bool]:
    """Per column of a Parquet file's first row group: whether it has a dictionary."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: "RLE_DICTIONARY" in group.column(i).encodings
            for i in range(group.num_columns)}


def test_parquet_columns_whose_values_repeat_get_a_dictionary_and_the_others_do_not(tmp_path):
    n = 5_000
    rows = pa.table({"id": range(n), "price": [i * 1.01 for i in range(n)], "email": [f"u{i}@x.io" for i in range(n)],
                     "qty": [i % 50 for i in range(n)], "day": pa.array([i % 365 for i in range(n)], pa.int32()).cast(
                         pa.date32()), "status": ["open", "shut"] * (n // 2), "ok": [True] * n,
                     "tags": [[i % 3] for i in range(n)]})
    small = rows.slice(0, 10)          # too few rows to judge: text gets a dictionary, nothing else
    load(FileSink(path=str(tmp_path)), (small, "b0"), (rows, "b1"), (small, "b2"))
    judged = {"id": False, "price": False, "email": False, "qty": True, "day": True, "status": True, "ok": False,
              "tags.list.element": False}
    by_batch = {b: _encodings(tmp_path / file_name(b, "parquet")) for b in ("b0", "b1", "b2")}
    assert by_batch["b0"] == {**judged, "email": True, "qty": False, "day": False}
    assert by_batch["b1"] == by_batch["b2"] == judged     # judged once, on the first batch large enough
    assert pq.read_table(tmp_path / file_name("b1", "parquet")).equals(rows)


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


def test_writes_files_in_its_path(tmp_path):
    assert FileSink(path=str(tmp_path / "out"), format="csv").writes_files_in() == str(tmp_path / "out")


# --- one schema per dataset, whichever batch lands first -----------------------------

A_CSV = (pa.table({"id": [1, 2], "v": pa.array([10, 20], pa.int32())}), "a.csv#0")
B_CSV = (pa.table({"id": [3, 4], "v": [30, 40], "extra": ["x", None]}), "b.csv#0")
C_CSV = (pa.table({"extra": ["y"], "v": [50], "id": [5]}), "c.csv#0")
DATASET = pa.schema([("id", pa.int64()), ("v", pa.int64()), ("extra", pa.string())])
ROWS = [{"id": 1, "v": 10, "extra": None}, {"id": 2, "v": 20, "extra": None},
        {"id": 3, "v": 30, "extra": "x"}, {"id": 4, "v": 40, "extra": None}]
ORDERS = pytest.mark.parametrize("order", [(A_CSV, B_CSV), (B_CSV, A_CSV)], ids=["extra-second", "extra-first"])


def dataset_schema(path) -> pa.Schema:
    return pq.read_schema(Path(path) / "_common_metadata")


@ORDERS
@pytest.mark.parametrize("runs", [1, 2])
def test_parquet_dataset_has_one_schema_and_the_same_rows_in_either_order(tmp_path, order, runs):
    sink = FileSink(path=str(tmp_path))
    for batches in [order] if runs == 1 else [[batch] for batch in order]:
        load(sink, *batches)
    schema = dataset_schema(tmp_path)
    assert schema == DATASET
    for part in tmp_path.glob("part-*.parquet"):  # a file holds a prefix of the dataset's columns, same types
        assert list(pq.read_schema(part)) == list(DATASET)[:len(pq.read_schema(part))]
    table = ds.dataset(tmp_path, format="parquet", schema=schema).to_table()
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == ROWS
    assert sorted(({"extra": None} | r for r in read_folder(tmp_path)), key=lambda r: r["id"]) == ROWS


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson"])
def test_a_type_change_is_refused_naming_column_batch_and_both_types(tmp_path, fmt):
    sink = FileSink(path=str(tmp_path), format=fmt)
    load(sink, A_CSV)
    with pytest.raises(TerminalError) as caught:
        load(sink, (pa.table({"id": [5], "v": ["ten"]}), "c.csv#0"))
    assert str(caught.value) == (f"column 'v' of batch 'c.csv#0' is string, but the dataset at '{tmp_path}' has it "
                                 "as int64; type changes are refused (schema evolution only adds nullable columns)")
    assert len(list(tmp_path.glob("part-*"))) == 1 and dataset_schema(tmp_path) == DATASET.remove(2)


def test_csv_header_and_ndjson_keys_follow_the_dataset(tmp_path):
    load(FileSink(path=str(tmp_path / "csv"), format="csv"), A_CSV, C_CSV)
    load(FileSink(path=str(tmp_path / "json"), format="ndjson"), A_CSV, C_CSV)
    headers = {f.read_text().splitlines()[0] for f in (tmp_path / "csv").glob("part-*.csv")}
    assert headers == {'"id","v"', '"id","v","extra"'}
    keys = {tuple(json.loads(line)) for f in (tmp_path / "json").glob("part-*.ndjson")
            for line in f.read_text().splitlines()}
    assert keys == {("id", "v"), ("id", "v", "extra")}
    load(FileSink(path=str(tmp_path / "csv"), format="csv"), A_CSV)  # a later run: every column, dataset order
    assert pcsv.read_csv(tmp_path / "csv" / file_name("a.csv#0", "csv")).to_pylist() == [
        {"id": 1, "v": 10, "extra": None}, {"id": 2, "v": 20, "extra": None}]


def test_a_column_without_values_is_added_by_the_first_batch_with_values(tmp_path):
    sink = FileSink(path=str(tmp_path))
    load(sink, (pa.table({"id": [1], "note": pa.nulls(1)}), "a.csv#0"))
    assert dataset_schema(tmp_path) == pa.schema([("id", pa.int64())])
    load(sink, (pa.table({"id": [2], "note": [7.5]}), "b.csv#0"), (pa.table({"id": [3], "note": pa.nulls(1)}), "c#0"))
    assert dataset_schema(tmp_path) == pa.schema([("id", pa.int64()), ("note", pa.float64())])
    assert sorted(r.get("note") or 0 for r in read_folder(tmp_path)) == [0, 0, 7.5]


def test_ndjson_is_strict_json_with_non_finite_floats_as_null(tmp_path):
    table = pa.table({"id": [1, 2, 3, 4], "x": [float("nan"), float("inf"), float("-inf"), 1.5],
                      "xs": [[float("nan")], [1.0], None, []]})
    load(FileSink(path=str(tmp_path), format="ndjson"), (table, "b1"))
    [written] = tmp_path.glob("part-*.ndjson")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    rows = [json.loads(line, parse_constant=refuse) for line in written.read_text().splitlines()]
    assert rows == [{"id": 1, "x": None, "xs": [None]}, {"id": 2, "x": None, "xs": [1.0]},
                    {"id": 3, "x": None, "xs": None}, {"id": 4, "x": 1.5, "xs": []}]


def test_window_results_are_rolled_into_files_named_by_their_window_range(tmp_path):
    sink = FileSink(path=str(tmp_path / "w"))
    writer = sink.open("p")
    minute = pa.table({"windowStart": [60_000, 120_000], "windowEnd": [120_000, 180_000], "n": [3, 4]})
    writer.write(minute, "window0:abc")
    writer.write(minute, "window0:abc")                       # a replayed emission replaces its file
    names = sorted(p.name for p in (tmp_path / "w").iterdir() if not p.name.startswith(("_", ".")))
    assert len(names) == 1 and names[0].startswith("windows-60000-180000-") and names[0].endswith(".parquet")
    assert pq.read_table(tmp_path / "w" / names[0]).to_pylist() == minute.to_pylist()
