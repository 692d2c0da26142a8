from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_actors.db import engine_for
from etl_actors.errors import SpecError, TerminalError
from etl_actors.sinks.database import DatabaseSink
from etl_actors.spec import Section, SpecContext

from .kit import SinkContract, load, people


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sink.db"
    return request.getfixturevalue("pg_schema")


def select(url, sql="SELECT * FROM people ORDER BY id") -> list[dict]:
    with engine_for(url).connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(sql))]


def execute(url, *statements):
    with engine_for(url).begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


class TestInsertContract(SinkContract):
    @pytest.fixture
    def sink(self, db_url):
        return DatabaseSink(url=db_url, table="people")

    def rows(self, sink):
        return select(sink.url)


class TestUpsertContract(TestInsertContract):
    @pytest.fixture
    def sink(self, db_url):
        return DatabaseSink(url=db_url, table="people", mode="upsert", key_fields=("id",))


class TestReplaceContract(TestInsertContract):
    @pytest.fixture
    def sink(self, db_url):
        return DatabaseSink(url=db_url, table="people", mode="replace")


def test_upsert_updates_existing_keys_and_inserts_new_ones(db_url):
    sink = DatabaseSink(url=db_url, table="people", mode="upsert", key_fields=("id",))
    load(sink, (people(range(5)), "b1"))
    load(sink, (people(range(3, 8), name="new"), "b2"))
    assert [r["name"] for r in select(db_url)] == ["p0", "p1", "p2", "new3", "new4", "new5", "new6", "new7"]


def test_upsert_keeps_the_last_row_of_a_key_repeated_in_one_batch(db_url):
    sink = DatabaseSink(url=db_url, table="people", mode="upsert", key_fields=("id",))
    load(sink, (pa.table({"id": [1, 2, 1], "name": ["a", "b", "c"]}), "b1"))
    assert [(r["id"], r["name"]) for r in select(db_url)] == [(1, "c"), (2, "b")]


def test_upsert_into_an_existing_table_adds_a_unique_index(db_url):
    execute(db_url, "CREATE TABLE people (id BIGINT NOT NULL, name TEXT, score FLOAT)",
            "INSERT INTO people VALUES (1, 'old', 0)")
    sink = DatabaseSink(url=db_url, table="people", mode="upsert", key_fields=("id",))
    load(sink, (people([1, 2]), "b1"))
    assert [(r["id"], r["name"]) for r in select(db_url)] == [(1, "p1"), (2, "p2")]


def test_replace_swaps_in_the_new_rows_only_at_finish(db_url):
    load(DatabaseSink(url=db_url, table="people"), (people(range(10)), "old"))
    writer = DatabaseSink(url=db_url, table="people", mode="replace").open("p1")
    writer.write(people([100, 101]), "b1")
    assert len(select(db_url)) == 10
    writer.finish()
    assert [r["id"] for r in select(db_url)] == [100, 101]
    writer.finish()
    assert [r["id"] for r in select(db_url)] == [100, 101]


def test_same_batch_id_twice_is_a_duplicate_and_writes_nothing(db_url):
    sink = DatabaseSink(url=db_url, table="people")
    first, second = load(sink, (people(range(5)), "b1"), (people(range(5)), "b1"))
    assert (first.loaded, first.duplicate, second.loaded, second.duplicate) == (5, False, 5, True)
    assert len(select(db_url)) == 5
    assert select(db_url, "SELECT pipeline, target, batch_id, rows FROM etl_batches") == [
        {"pipeline": "p1", "target": "people", "batch_id": "b1", "rows": 5}]


def test_ledger_is_per_pipeline_and_table(db_url):
    sink = DatabaseSink(url=db_url, table="people")
    load(sink, (people([1]), "b1"), pipeline="a")
    load(sink, (people([2]), "b1"), pipeline="b")
    load(DatabaseSink(url=db_url, table="others"), (people([3]), "b1"), pipeline="a")
    assert [r["id"] for r in select(db_url)] == [1, 2] and len(select(db_url, "SELECT * FROM others")) == 1


def test_continue_dead_letters_refused_rows_and_loads_the_rest(db_url):
    execute(db_url, "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score FLOAT)")
    sink = DatabaseSink(url=db_url, table="people", error_handling="continue")
    load(sink, (people([1]), "b0"))
    batch = pa.table({"id": [1, 2, 3, 4], "name": ["dup", "b", None, "d"], "score": [1.0, 2.0, 3.0, 4.0]})
    [result] = load(sink, (batch, "b1"))
    assert (result.loaded, result.failed) == (2, 2)
    assert [r["id"] for r in select(db_url)] == [1, 2, 4]
    reasons = {d.record["id"]: d.reason.lower() for d in result.dead_letters}
    assert "unique" in reasons[1] or "duplicate" in reasons[1]
    assert "null" in reasons[3] and reasons[3].startswith("people: ")
    assert load(sink, (batch, "b1"))[0].duplicate


def test_fail_mode_raises_naming_table_and_batch_and_writes_nothing(db_url):
    execute(db_url, "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score FLOAT)")
    sink = DatabaseSink(url=db_url, table="people")
    batch = pa.table({"id": [1, 2], "name": ["a", None], "score": [1.0, 2.0]})
    with pytest.raises(TerminalError, match=r"(?i)cannot write batch 'b1' to table 'people': .*null"):
        load(sink, (batch, "b1"))
    assert select(db_url) == [] and select(db_url, "SELECT * FROM etl_batches") == []


def test_postgres_insert_and_upsert_go_through_copy(pg_schema):
    for sink in (DatabaseSink(url=pg_schema, table="people"),
                 DatabaseSink(url=pg_schema, table="keyed", mode="upsert", key_fields=("id",))):
        writer = sink.open("p1")
        writer.write(people(range(1000)), "b1")
        writer.write(pa.table({"id": [1], "name": ['with "quotes", commas\nand a newline'], "score": [None]}), "b2")
        assert writer.copies == 2
    assert len(select(pg_schema)) == 1001
    assert select(pg_schema, "SELECT name, score FROM keyed WHERE id = 1") == [
        {"name": 'with "quotes", commas\nand a newline', "score": None}]


def test_types_map_to_sql_types(db_url):
    when = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    table = pa.table({"id": [1], "ok": [True], "day": [date(2024, 5, 1)], "at": pa.array([when], pa.timestamp("us", "UTC")),
                      "price": pa.array([Decimal("12.34")], pa.decimal128(10, 2)), "tags": [["a", "b"]],
                      "empty": pa.array([""], pa.string())})
    load(DatabaseSink(url=db_url, table="typed"), (table, "b1"))
    row = select(db_url, "SELECT * FROM typed")[0]
    assert Decimal(str(row["price"])) == Decimal("12.34") and str(row["day"]) == "2024-05-01"
    assert row["tags"] == '["a", "b"]' and row["empty"] == "" and bool(row["ok"]) is True


def test_spec_errors_name_the_key():
    ctx = SpecContext(connections={"wh": "sqlite:///wh.db"})
    with pytest.raises(SpecError, match=r"^pipeline.destination.mode: 'upsrt' is not one of insert, upsert, replace$"):
        DatabaseSink.from_spec(Section({"type": "database", "connection": "wh", "table": "t", "mode": "upsrt"},
                                       "pipeline.destination"), ctx)
    with pytest.raises(SpecError, match=r"^pipeline.destination.keyFields: is required for mode upsert"):
        DatabaseSink.from_spec(Section({"type": "data-warehouse", "connection": "wh", "table": "t", "mode": "upsert"},
                                       "pipeline.destination"), ctx)


def test_errors_and_describe_hide_the_password(tmp_path):
    sink = DatabaseSink(url="postgresql://etl:s3cret@localhost:1/nowhere", table="t")
    assert "s3cret" not in repr(sink) and "s3cret" not in str(sink.describe())
    with pytest.raises(Exception) as caught:
        sink.open("p1")
    assert "s3cret" not in str(caught.value) and caught.value.retryable


def test_replace_with_key_fields_twice_keeps_the_primary_key(db_url):
    sink = DatabaseSink(url=db_url, table="people", mode="replace", key_fields=("id",))
    load(sink, (people([1, 2]), "b1"))
    load(sink, (people([2, 3, 3]), "b1"))
    assert [r["id"] for r in select(db_url)] == [2, 3]
    with pytest.raises(sa.exc.IntegrityError):
        execute(db_url, "INSERT INTO people (id, name) VALUES (2, 'again')")


def test_missing_table_without_create_table_fails_with_its_name(db_url):
    with pytest.raises(TerminalError, match="table 'people' does not exist and createTable is false"):
        load(DatabaseSink(url=db_url, table="people", create_table=False), (people([1]), "b1"))


def test_insert_mode_with_key_fields_appends_and_refuses_a_repeated_key(db_url):
    sink = DatabaseSink(url=db_url, table="people", key_fields=("id",), error_handling="continue")
    load(sink, (people([1, 2]), "b1"))
    [result] = load(sink, (people([2, 3], name="new"), "b2"))
    assert (result.loaded, result.failed) == (1, 1)
    assert [(r["id"], r["name"]) for r in select(db_url)] == [(1, "p1"), (2, "p2"), (3, "new3")]
