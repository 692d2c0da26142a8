"""The seed's ``batch:`` shape read from a spec: object-store sources and destinations
through a connection, one output per input file, and the errors naming their paths."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from etl_actors import Pipeline
from etl_actors.errors import SpecError
from etl_actors.sinks.per_file import check_spec
from etl_actors.spec import parse

from .jobs import job, processed, sales

STORE = "s3://AKIASPECKEY:spec%2Fsecret@127.0.0.1:9?scheme=http&region=us-east-1&max_attempts=1"   # nothing listens


def test_a_batch_destination_with_bucket_and_prefix_writes_one_output_per_input_file():
    spec = parse(job("b", "raw-data", "processed-data", connections={"store": STORE}))
    source, sink = spec.source, spec.destination
    assert source.path == ("s3://raw-data/daily-exports?access_key=AKIASPECKEY&secret_key=spec%2Fsecret"
                           "&endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1&max_attempts=1")
    assert (source.pattern, sink.per_file, sink.completes_partitions, sink.format, sink.compression) == \
        ("*.csv", True, True, "parquet", "snappy")
    described = json.dumps([source.describe(), sink.describe()])
    assert "AKIASPECKEY" not in described and "spec%2Fsecret" not in described and "spec/secret" not in described
    assert sink.describe()["path"] == ("s3://processed-data/processed?access_key=***&secret_key=***"
                                       "&endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1&max_attempts=1")


def test_a_pipeline_destination_keeps_one_file_per_batch():
    data = job("b", "raw-data", "processed-data", connections={"store": STORE})
    spec = parse({"name": "b", "connections": data["connections"],
                  "pipeline": {"source": data["batch"]["source"], "destination": data["batch"]["destination"]}})
    assert not spec.destination.per_file and spec.destination.path.startswith("s3://processed-data/processed?")


@pytest.mark.parametrize("where, value, path, message", [
    ("source", {"type": "file", "connection": "store"}, "batch.source.connection",
     "applies to object stores (type: s3)"),
    ("source", {"connection": "s3://k:s@127.0.0.1:9/raw-data"}, "batch.source.connection",
     "names the store (host:port), not a bucket"),
    ("destination", {"connection": "postgresql://u:pw@db/x"}, "batch.destination.connection",
     "expected an S3 connection"),
    ("destination", {"connection": "s3://k:s@h:9?colour=red"}, "batch.destination.connection",
     "unknown option 'colour'"),
    ("destination", {"connection": "s3://k:s@h:9?max_attempts=none"}, "batch.destination.connection",
     "max_attempts: expected a positive number, got 'none'"),
    ("destination", {"extension": "parquet"}, "batch.destination.extension",
     "expected a file name suffix such as '.parquet', got 'parquet'"),
])
def test_a_wrong_store_setting_names_its_path(where, value, path, message):
    data = job("b", "raw-data", "processed-data", connections={"store": STORE})
    data["batch"][where].update(value)
    with pytest.raises(SpecError) as refused:
        parse(data)
    assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value)
    assert ":s@" not in str(refused.value) and "pw" not in str(refused.value)


def test_an_extension_is_refused_where_each_batch_is_its_own_file(tmp_path):
    with pytest.raises(SpecError, match=r"^pipeline.destination.extension: applies to one output per input file"):
        parse({"name": "b", "pipeline": {"source": {"type": "file", "path": str(tmp_path), "format": "csv"},
                                         "destination": {"type": "file", "path": str(tmp_path / "out"),
                                                         "extension": ".parquet"}}})


def test_a_batch_job_between_local_folders_writes_one_output_per_file(tmp_path):
    (tmp_path / "raw" / "daily-exports").mkdir(parents=True)
    for i, rows in enumerate((5, 2300)):
        (tmp_path / "raw" / "daily-exports" / f"sales-{i}.csv").write_bytes(sales(rows, first=10_000 * i))
    data = job("local-batch", "raw", "lake", connection=None, destination={"extension": ".parquet"})
    data["batch"]["source"]["type"] = data["batch"]["destination"]["type"] = "file"
    result = Pipeline.from_dict(data, base_dir=str(tmp_path)).run(log=f"sqlite:///{tmp_path}/events.db",
                                                                   runtime="local")
    assert result["status"] == "success", result.get("error")
    out = tmp_path / "lake" / "processed"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["sales-0.parquet", "sales-1.parquet"]
    assert not [p for p in (out / "_parts").rglob("*") if p.is_file()]
    for i, rows in enumerate((5, 2300)):
        table = pq.read_table(out / f"sales-{i}.parquet")
        assert table.select(["order_id", "region", "amount"]).to_pylist() == processed(rows, first=10_000 * i)


AGGREGATE = {"id": "totals", "type": "aggregate", "groupBy": ["region"], "aggregations": {"amount": "sum"}}


@pytest.mark.parametrize("change, message", [
    ({"steps": [AGGREGATE]}, "cannot follow an aggregate step"),
    ({"also": {"type": "database", "connection": "sqlite:///out.db", "table": "t", "mode": "replace"}},
     "beside a destination that commits only at the end of the run"),
    ({"out": "raw-data", "prefix": "daily-exports/processed"}, "into the folder the source reads"),
])
def test_a_pipeline_that_cannot_write_one_output_per_input_file_is_refused(change, message):
    data = job("b", "raw-data", change.get("out", "processed-data"), connections={"store": STORE},
               steps=change.get("steps", []))
    if "prefix" in change:
        data["batch"]["destination"]["prefix"] = change["prefix"]
    if "also" in change:
        data["batch"]["destinations"] = [data["batch"].pop("destination"), change["also"]]
    path = "batch.destinations" if "also" in change else "batch.destination"
    with pytest.raises(SpecError, match=f"^{path}: .*{message}"):
        parse(data)


def test_a_destination_beside_the_source_folder_is_fine():
    spec = parse(job("b", "raw-data", "raw-data", connections={"store": STORE}))     # raw-data/processed
    check_spec(spec.source, spec.transformations, spec.sinks, "batch.destination")


def test_chunk_size_is_the_number_of_rows_a_batch_holds():
    data = job("b", "raw-data", "processed-data", connections={"store": STORE})
    del data["batch"]["source"]["batchSize"]
    data["batch"]["processing"]["chunkSize"] = 10_000
    assert parse(data).source.batch_size == 10_000


def test_the_spec_refuses_an_aggregate_before_a_per_file_destination():
    data = job("b", "raw-data", "processed-data", connections={"store": STORE}, steps=[AGGREGATE])
    with pytest.raises(SpecError, match=r"^batch.destination: one output per input file cannot follow an aggregate"):
        parse(data)
