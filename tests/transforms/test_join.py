"""The join step: lookups from files and databases, SQL join semantics, input order."""
import pickle

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_actors.db import engine_for
from etl_actors.errors import SpecError, TerminalError
from etl_actors.spec import Section, SpecContext, load_text
from etl_actors.transforms.join import JoinStep

ORDERS = pa.table({"order_id": [1, 2, 3, 4, 5], "country": ["us", "fr", None, "xx", "de"]})


@pytest.fixture
def regions(tmp_path):
    (tmp_path / "regions.csv").write_text("code,region,population\nfr,eu,67\nde,eu,83\nus,am,330\n")
    return tmp_path


def join_step(spec: dict, base_dir=".", connections=None) -> JoinStep:
    section = Section({"id": "enrich", "type": "join", **spec}, "pipeline.transformations[2]")
    return JoinStep.from_spec(section, SpecContext(connections=connections or {}, base_dir=str(base_dir)))


def test_on_key_typed_in_yaml_joins_a_csv_lookup(regions):
    spec = load_text("with: {type: file, path: regions.csv}\non: {country: code}\nselect: [region]\n")
    result = join_step(spec, regions).apply(ORDERS)
    assert result.table.to_pylist() == [
        {"order_id": 1, "country": "us", "region": "am"}, {"order_id": 2, "country": "fr", "region": "eu"},
        {"order_id": 3, "country": None, "region": None}, {"order_id": 4, "country": "xx", "region": None},
        {"order_id": 5, "country": "de", "region": "eu"}]


def test_inner_join_drops_unmatched_rows_and_duplicate_keys_multiply_them(tmp_path):
    (tmp_path / "tags.json").write_text('{"code": "fr", "tag": "a"}\n{"code": "fr", "tag": "b"}\n{"code": "de", "tag": "c"}\n')
    step = join_step({"with": {"type": "file", "path": "tags.json"}, "on": {"country": "code"}, "how": "inner"}, tmp_path)
    assert step.apply(ORDERS).table.to_pylist() == [
        {"order_id": 2, "country": "fr", "tag": "a"}, {"order_id": 2, "country": "fr", "tag": "b"},
        {"order_id": 5, "country": "de", "tag": "c"}]


def test_lookup_from_a_postgres_table(pg_schema):
    with engine_for(pg_schema).begin() as conn:
        conn.execute(sa.text("CREATE TABLE regions (code text PRIMARY KEY, region text)"))
        conn.execute(sa.text("INSERT INTO regions VALUES ('fr', 'eu'), ('us', 'am')"))
    step = join_step({"with": {"type": "database", "connection": "crm", "table": "regions"}, "on": {"country": "code"}},
                     connections={"crm": pg_schema})
    step.open()
    assert step.apply(ORDERS).table["region"].to_pylist() == ["am", "eu", None, None, None]


def test_loaded_lookup_is_not_pickled_with_the_step(regions):
    step = join_step({"with": {"type": "file", "path": "regions.csv"}, "on": {"country": "code"}}, regions)
    step.open()
    (regions / "regions.csv").write_text("code,region,population\nxx,new,1\n")
    copy = pickle.loads(pickle.dumps(step))
    assert copy == step
    assert copy.apply(ORDERS).table["region"].to_pylist() == [None, None, None, "new", None]


def test_missing_lookup_column_is_a_terminal_error_naming_it(regions):
    step = join_step({"with": {"type": "file", "path": "regions.csv"}, "on": {"country": "code"}, "select": ["zone"]},
                     regions)
    with pytest.raises(TerminalError, match="'zone' not in the lookup file .*regions.csv"):
        step.open()


def test_bad_on_is_a_spec_error_at_its_path():
    with pytest.raises(SpecError, match=r"^pipeline\.transformations\[2\]\.on: expected a mapping of left field"):
        join_step({"with": {"type": "file", "path": "regions.csv"}, "on": 5})


def test_with_refresh_seconds_a_changed_lookup_is_read_again_once_it_is_that_old(tmp_path):
    import time

    from etl_actors.spec import Section, SpecContext
    from etl_actors.transforms.join import JoinStep

    lookup = tmp_path / "regions.csv"
    lookup.write_text("code,region\nDE,EU\n")
    section = Section({"id": "j", "type": "join", "with": {"type": "file", "path": str(lookup)},
                       "on": {"country": "code"}, "refreshSeconds": 0.2}, "stream.processors[0]")
    step = JoinStep.from_spec(section, SpecContext())
    step.open()
    rows = pa.table({"country": ["DE"]})
    assert step.apply(rows).table.column("region").to_pylist() == ["EU"]
    lookup.write_text("code,region\nDE,Europe\n")
    assert step.apply(rows).table.column("region").to_pylist() == ["EU"]          # not yet that old
    time.sleep(0.25)
    assert step.apply(rows).table.column("region").to_pylist() == ["Europe"]
    lookup.unlink()                                                                # a failed refresh keeps the table
    time.sleep(0.25)
    assert step.apply(rows).table.column("region").to_pylist() == ["Europe"]
