"""Specs of postgres-cdc streams and mirror sinks: what is accepted, the defaults, and
errors that name their path (exit 2 from ``etl-actors validate``, no traceback) and
never show a password."""
import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from etl_actors.errors import SpecError
from etl_actors.spec import parse

SECRET = "Hunter2Secret"
SRC = f"postgresql://etl:{SECRET}@db.example:5432/crm"
ETL = os.path.join(os.path.dirname(sys.executable), "etl-actors")


def cdc(**overrides) -> dict:
    """A valid postgres-cdc stream spec, with ``a__b__c=value`` overrides (None deletes)."""
    data = {
        "name": "customer-sync",
        "stream": {
            "source": {"type": "postgres-cdc", "connection": SRC, "tables": ["public.customers"]},
            "sinks": [{"type": "database", "connection": "sqlite:///dst.db", "mode": "mirror", "keyFields": ["id"]}],
        },
    }
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data


def errors_of(data) -> list[tuple[str, str]]:
    """The ``(path, message)`` of each error the spec has."""
    with pytest.raises(SpecError) as caught:
        parse(copy.deepcopy(data), base_dir="/tmp")
    assert SECRET not in str(caught.value)
    return [(e.path, e.reason) for e in getattr(caught.value, "errors", [caught.value])]


def validate(tmp_path, data, *flags) -> subprocess.CompletedProcess:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run([ETL, "validate", *flags, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


# --- accepted, and the defaults --------------------------------------------------------------------


def test_a_cdc_stream_with_a_mirror_sink_parses_with_its_defaults():
    spec = parse(cdc(), base_dir="/tmp")
    source, sink = spec.source, spec.sinks[0]
    assert spec.kind == "stream" and source.type == "postgres-cdc"
    assert (source.tables, source.snapshot, source.batch_size, source.chunk_size) == \
        (("public.customers",), "initial", 10_000, 50_000)
    assert (sink.mode, sink.key_fields, sink.table) == ("mirror", ("id",), "")


def test_the_default_slot_and_publication_are_named_after_the_pipeline():
    source = parse(cdc(name="Customer-Sync.v2"), base_dir="/tmp").source
    assert source.slot == source.publication == "etl_customer_sync_v2"
    assert source.partition == "postgres-cdc:etl_customer_sync_v2"


def test_slot_publication_globs_and_sizes_are_taken_as_given():
    source = parse(cdc(stream__source__slot="crm_sync", stream__source__publication="CrmPub",
                       stream__source__tables=["public.customers", "crm.order_*"], stream__source__snapshot="never",
                       stream__source__chunkSize=500, stream__source__batchSize=20), base_dir="/tmp").source
    assert (source.slot, source.publication, source.tables, source.snapshot, source.chunk_size,
            source.batch_size) == ("crm_sync", "CrmPub", ("public.customers", "crm.order_*"), "never", 500, 20)


def test_key_fields_as_a_mapping_per_table_and_a_table_mapping_are_accepted():
    spec = parse(cdc(stream__sinks__0__keyFields={"public.customers": ["id"], "public.orders": ["order_no", "line"]},
                     stream__sinks__0__tableMapping={"public.customers": "dim_customers"}), base_dir="/tmp")
    sink = spec.sinks[0]
    assert sink.table_keys == (("public.customers", ("id",)), ("public.orders", ("order_no", "line")))
    assert sink.table_mapping == (("public.customers", "dim_customers"),)
    assert sink.describe()["tableKeys"] == {"public.customers": ["id"], "public.orders": ["order_no", "line"]}


def test_a_data_warehouse_sink_mirrors_too():
    spec = parse(cdc(stream__sinks=[{"type": "data-warehouse", "connection": "sqlite:///wh.db", "mode": "mirror",
                                     "keyFields": ["id"]}]), base_dir="/tmp")
    assert (spec.sinks[0].type, spec.sinks[0].mode) == ("data-warehouse", "mirror")


def test_map_filter_and_validate_processors_are_allowed():
    spec = parse(cdc(stream__processors=[{"id": "active", "type": "filter", "condition": "status == 'active'"}]),
                 base_dir="/tmp")
    assert [s.id for s in spec.transformations] == ["active"]


# --- errors with their path --------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    {"type": "kafka", "topic": "customers", "consumerGroup": "sync", "bootstrapServers": "localhost:9092"},
    {"type": "file", "path": "in", "format": "csv"},
])
def test_mode_mirror_needs_a_postgres_cdc_source(source):
    errors = errors_of(cdc(stream__source=source))
    assert errors == [("stream.sinks[0].mode", "mode mirror applies change rows: it needs a postgres-cdc source")]


def test_mode_mirror_in_a_batch_pipeline_exits_2_naming_the_path(tmp_path):
    data = {"name": "orders", "pipeline": {
        "source": {"type": "file", "path": "in", "format": "csv"},
        "destination": {"type": "database", "connection": "sqlite:///dst.db", "mode": "mirror", "keyFields": ["id"]}}}
    proc = validate(tmp_path, data)
    assert proc.returncode == 2, proc.stderr
    assert "pipeline.destination.mode" in proc.stderr and "stream" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("sink", ["database", "data-warehouse"])
def test_a_mirror_without_key_fields_is_refused(sink):
    errors = errors_of(cdc(stream__sinks__0__type=sink, stream__sinks__0__keyFields=None))
    assert len(errors) == 1
    path, message = errors[0]
    assert path == "stream.sinks[0].keyFields" and "required" in message


def test_key_fields_per_table_must_be_lists_of_names():
    [(path, message)] = errors_of(cdc(stream__sinks__0__keyFields={"public.customers": "id"}))
    assert path == "stream.sinks[0].keyFields.public.customers" and "list of column names" in message


def test_an_unqualified_table_exits_2_naming_its_path(tmp_path):
    proc = validate(tmp_path, cdc(stream__source__tables=["public.orders", "customers"]))
    assert proc.returncode == 2
    assert "stream.source.tables[1]" in proc.stderr and "public.customers" in proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout


def test_a_bad_cdc_source_does_not_also_blame_the_mirror_sink():
    assert [p for p, _ in errors_of(cdc(stream__source__tables=["customers"]))] == ["stream.source.tables[0]"]


@pytest.mark.parametrize("key, value, message", [
    ("slot", "My-Slot", "is not a replication slot name"),
    ("slot", "x" * 64, "is not a replication slot name"),
    ("publication", "pub-lic", "is not a publication name"),
    ("snapshot", "sometimes", "not one of initial, never"),
    ("parallelism", 2, "read by one extractor"),
    ("connection", "sqlite:///x.db", "expected a PostgreSQL URL"),
])
def test_source_errors_name_their_path(key, value, message):
    errors = errors_of(cdc(**{f"stream__source__{key}": value}))
    paths = [p for p, _ in errors]
    assert f"stream.source.{key}" in paths
    assert message in dict(errors)[f"stream.source.{key}"]


def test_an_empty_table_list_is_refused():
    assert [p for p, _ in errors_of(cdc(stream__source__tables=[]))] == ["stream.source.tables"]


def test_a_missing_connection_or_tables_is_required():
    assert ("stream.source.tables", "is required") in errors_of(cdc(stream__source__tables=None))
    assert any(p == "stream.source.connection" for p, _ in errors_of(cdc(stream__source__connection=None)))


# --- output ----------------------------------------------------------------------------------------------


def test_validate_shows_postgres_cdc_as_the_source(tmp_path):
    proc = validate(tmp_path, cdc())
    assert proc.returncode == 0, proc.stderr
    assert "valid stream pipeline 'customer-sync' (postgres-cdc -> [none] -> database)" in proc.stdout
    assert "read postgres-cdc" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_a_password_never_shows_in_validate_json_or_errors(tmp_path):
    good = validate(tmp_path, cdc(), "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["valid"] is True
    bad = validate(tmp_path, cdc(stream__source__slot="Bad-Slot", stream__source__snapshot="sometimes",
                                 stream__sinks__0__connection=f"postgresql://u:{SECRET}@dw/x"), "--json")
    assert bad.returncode == 2
    report = json.loads(bad.stdout)
    assert report["valid"] is False
    assert "stream.source.slot" in [e["path"] for e in report["errors"]]
    not_pg = validate(tmp_path, cdc(stream__source__connection=f"mysql://u:{SECRET}@db/crm"), "--json")
    assert not_pg.returncode == 2
    assert "stream.source.connection" in [e["path"] for e in json.loads(not_pg.stdout)["errors"]]
    for proc in (good, bad, not_pg):
        assert SECRET not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_the_source_describes_itself_without_the_password():
    source = parse(cdc(), base_dir="/tmp").source
    assert SECRET not in repr(source) and SECRET not in json.dumps(source.describe())
    assert source.describe()["slot"] == "etl_customer_sync" and source.describe()["type"] == "postgres-cdc"


def test_a_connection_from_the_environment(monkeypatch):
    monkeypatch.setenv("CRM_URL", SRC)
    source = parse(cdc(stream__source__connection="${CRM_URL}"), base_dir="/tmp").source
    assert source.url == SRC
