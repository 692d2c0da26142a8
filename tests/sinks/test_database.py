from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_actors.db import engine_for
from etl_actors.errors import SpecError, TerminalError
from etl_actors.sinks.database import DatabaseSink
from etl_actors.sinks.sql_table import sql_family
from etl_actors.spec import Section, SpecContext

from .kit import SinkContract, load, people


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sink.db"
    return request.getfixturevalue("pg_schema")


def select(url, sql="SELECT * FROM people ORDER BY id") -> list[dict]:
    with engine_for(url).connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(sql))]


def columns(url, table="people") -> dict[str, str | None]:
    """The table's columns and their families, in table order."""
    with engine_for(url).connect() as conn:
        return {c["name"]: sql_family(c["type"], zones=True) for c in sa.inspect(conn).get_columns(table)}


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


@pytest.mark.postgres
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
    with pytest.raises(SpecError, match=r"^pipeline.destination.mode: 'upsrt' is not one of insert, upsert, replace, mirror$"):
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


# --- schema evolution: the table does not depend on which batch lands first ----------

A_CSV = (pa.table({"id": [1, 2], "v": [10, 20]}), "a.csv#0")
B_CSV = (pa.table({"id": [3, 4], "v": [30, 40], "extra": ["x", None]}), "b.csv#0")
ROWS = [{"id": 1, "v": 10, "extra": None}, {"id": 2, "v": 20, "extra": None},
        {"id": 3, "v": 30, "extra": "x"}, {"id": 4, "v": 40, "extra": None}]


@pytest.mark.parametrize("mode", ["insert", "upsert", "replace"])
@pytest.mark.parametrize("order", [(A_CSV, B_CSV), (B_CSV, A_CSV)], ids=["extra-second", "extra-first"])
def test_a_new_column_is_added_whichever_batch_lands_first(db_url, mode, order):
    sink = DatabaseSink(url=db_url, table="people", mode=mode, key_fields=("id",) if mode == "upsert" else ())
    load(sink, *order)
    assert columns(db_url) == {"id": "integer", "v": "integer", "extra": "text"}
    assert select(db_url) == ROWS


@pytest.mark.parametrize("order", [(A_CSV, B_CSV), (B_CSV, A_CSV)], ids=["extra-second", "extra-first"])
def test_a_new_column_is_added_by_a_later_run(db_url, order):
    sink = DatabaseSink(url=db_url, table="people")
    for batch in order:
        load(sink, batch)
    assert sorted(columns(db_url)) == ["extra", "id", "v"] and select(db_url) == ROWS


@pytest.mark.parametrize("mode", ["insert", "replace"])
def test_a_type_change_is_refused_naming_column_batch_and_both_types(db_url, mode):
    sink = DatabaseSink(url=db_url, table="people", mode=mode, error_handling="continue")
    writer = sink.open("p1")
    writer.write(pa.table({"id": [1], "v": [10]}), "a.csv#0")
    with pytest.raises(TerminalError) as caught:
        writer.write(pa.table({"id": [2], "v": ["ten"]}), "b.csv#0")
    assert str(caught.value) == ("column 'v' of batch 'b.csv#0' is string, but table 'people' has it as BIGINT; "
                                 "type changes are refused (schema evolution only adds nullable columns)")
    writer.finish()
    assert select(db_url) == [{"id": 1, "v": 10}]
    assert [r["batch_id"] for r in select(db_url, "SELECT batch_id FROM etl_batches")] == ["a.csv#0"]


def test_an_integer_batch_widens_into_a_float_column_and_a_float_batch_is_refused_from_an_integer_one(db_url):
    sink = DatabaseSink(url=db_url, table="people")
    load(sink, (people([1]), "a.csv#0"), (pa.table({"id": [2], "score": [3]}), "b.csv#0"))
    assert [r["score"] for r in select(db_url)] == [1.5, 3.0]
    with pytest.raises(TerminalError, match="column 'id' of batch 'c.csv#0' is double, but table 'people' has it "
                                            "as BIGINT"):
        load(sink, (pa.table({"id": [2.5]}), "c.csv#0"))


def test_replace_takes_the_schema_of_the_new_run(db_url):
    load(DatabaseSink(url=db_url, table="people"), (pa.table({"id": [1], "v": [10]}), "a.csv#0"))
    load(DatabaseSink(url=db_url, table="people", mode="replace"), (pa.table({"id": [2], "v": ["ten"]}), "a.csv#0"))
    assert columns(db_url) == {"id": "integer", "v": "text"} and select(db_url) == [{"id": 2, "v": "ten"}]


@pytest.mark.parametrize("empty_first", [True, False])
def test_a_column_without_values_waits_for_a_batch_with_values(db_url, empty_first):
    empty = (pa.table({"id": [1], "note": pa.nulls(1)}), "a.csv#0")
    typed = (pa.table({"id": [2], "note": [7]}), "b.csv#0")
    load(DatabaseSink(url=db_url, table="people"), *((empty, typed) if empty_first else (typed, empty)))
    assert columns(db_url) == {"id": "integer", "note": "integer"}
    assert select(db_url) == [{"id": 1, "note": None}, {"id": 2, "note": 7}]


def test_upsert_of_a_batch_without_a_column_keeps_its_value(db_url):
    sink = DatabaseSink(url=db_url, table="people", mode="upsert", key_fields=("id",))
    load(sink, (pa.table({"id": [1, 2], "v": [10, 20], "extra": ["x", "y"]}), "b.csv#0"))
    load(sink, (pa.table({"id": [1, 3], "v": [11, 30]}), "a.csv#0"))
    assert select(db_url) == [{"id": 1, "v": 11, "extra": "x"}, {"id": 2, "v": 20, "extra": "y"},
                              {"id": 3, "v": 30, "extra": None}]


def test_upsert_refuses_a_key_field_the_table_lacks(db_url):
    execute(db_url, "CREATE TABLE people (v BIGINT)")
    sink = DatabaseSink(url=db_url, table="people", mode="upsert", key_fields=("id",))
    with pytest.raises(TerminalError, match=r"key fields \['id'\] are not columns of table 'people'; a new column "
                                            r"is never a key"):
        load(sink, (pa.table({"id": [1], "v": [10]}), "a.csv#0"))


def test_a_user_table_with_columns_of_unknown_types_still_loads_and_evolves(db_url):
    postgres = db_url.startswith("postgresql")
    execute(db_url, f"CREATE TABLE people (id BIGINT, doc {'JSONB' if postgres else 'JSON'}, "
                    f"code {'UUID' if postgres else 'SOMETHING_ELSE'})")
    code = "6f1c1c9e-0c7a-4a55-9a53-2d1d1b0a2f10"
    load(DatabaseSink(url=db_url, table="people"), (pa.table({"id": [1], "doc": ['{"a": 1}'], "code": [code],
                                                              "extra": [True]}), "a.csv#0"))
    [row] = select(db_url)
    assert (row["id"], str(row["code"]), bool(row["extra"])) == (1, code, True)
    assert columns(db_url)["extra"] == "boolean"


@pytest.mark.postgres
def test_postgres_refuses_naive_timestamps_into_a_zoned_column(pg_schema):
    sink = DatabaseSink(url=pg_schema, table="events")
    at = datetime(2024, 5, 1, 12, 30)
    load(sink, (pa.table({"at": pa.array([at.replace(tzinfo=timezone.utc)], pa.timestamp("us", "UTC"))}), "a#0"))
    with pytest.raises(TerminalError, match="column 'at' of batch 'b#0' is timestamp\\[us\\], but table 'events' "
                                            "has it as TIMESTAMP WITH TIME ZONE"):
        load(sink, (pa.table({"at": pa.array([at], pa.timestamp("us"))}), "b#0"))


@pytest.mark.parametrize("mode", ["insert", "upsert", "replace"])
def test_column_names_with_percent_signs_and_quotes_load_in_every_mode(db_url, mode):
    sink = DatabaseSink(url=db_url, table="Sales Facts", mode=mode, key_fields=("Order ID",) if mode != "insert" else ())
    writer = sink.open("p")
    writer.write(pa.table({"Order ID": [1, 2], "50% off": [1.5, 2.5], 'say "hi"': ["a", "b"]}), "b1")
    writer.finish()
    writer.close()
    rows = select(db_url, 'SELECT * FROM "Sales Facts" ORDER BY "Order ID"')
    assert [(r["Order ID"], r["50% off"], r['say "hi"']) for r in rows] == [(1, 1.5, "a"), (2, 2.5, "b")]
