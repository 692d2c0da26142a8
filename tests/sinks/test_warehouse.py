from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given, settings, strategies as st

from etl_actors.db import engine_for
from etl_actors.errors import SpecError, TerminalError
from etl_actors.sinks.warehouse import WarehouseSink, last_per_key
from etl_actors.spec import Section, SpecContext

from .kit import SinkContract, load, people

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/wh.db"
    return request.getfixturevalue("pg_schema")


def select(url, sql="SELECT * FROM people ORDER BY id") -> list[dict]:
    with engine_for(url).connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.text(sql))]


def execute(url, *statements):
    with engine_for(url).begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def warehouse(url, **options) -> WarehouseSink:
    return WarehouseSink(url=url, table="people", key_fields=("id",), **options)


def at(*hours) -> pa.Array:
    return pa.array([None if h is None else T0 + timedelta(hours=h) for h in hours], pa.timestamp("us", "UTC"))


def utc(value) -> datetime:
    """A timestamp as read back: SQLite gives naive UTC text, PostgreSQL a zoned datetime."""
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class TestWarehouseContract(SinkContract):
    @pytest.fixture
    def sink(self, db_url):
        return warehouse(db_url)

    def rows(self, sink):
        return select(sink.url)


# --- merging ----------------------------------------------------------------------------

def test_upsert_changes_existing_rows_and_inserts_new_ones(db_url):
    sink = warehouse(db_url)
    load(sink, (pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"], "score": [1.0, 2.0, 3.0]}), "b1"))
    load(sink, (pa.table({"id": [2, 4], "name": ["B", "d"]}), "b2"))
    assert [(r["id"], r["name"], r["score"]) for r in select(db_url)] == [
        (1, "a", 1.0), (2, "B", 2.0), (3, "c", 3.0), (4, "d", None)]  # a column the batch lacks keeps its value


@pytest.mark.postgres
def test_postgres_merges_through_copy_and_appends_new_keys_with_a_plain_insert(pg_schema):
    writer = warehouse(pg_schema).open("p1")
    writer.write(people(range(100)), "b1")        # into the empty table: an append
    writer.write(people(range(100, 200)), "b2")   # every key above the table's: an append
    writer.write(people([50, 300], name="new"), "b3")
    assert (writer.copies, writer.appends, writer.merges) == (3, 2, 1)
    rows = {r["id"]: r["name"] for r in select(pg_schema)}
    assert len(rows) == 201 and (rows[49], rows[50], rows[300]) == ("p49", "new50", "new300")


def test_repeated_keys_in_a_batch_the_greatest_cursor_wins(db_url):
    batch = pa.table({"id": [1, 2, 1, 1, 2, 3, 3], "name": ["old", "b-new", "new", "null-cursor", "b-old", "x", "y"],
                      "updated_at": at(1, 5, 3, None, 4, 2, 2)})
    load(warehouse(db_url, cursor_field="updated_at"), (batch, "b1"))
    assert [(r["id"], r["name"]) for r in select(db_url)] == [(1, "new"), (2, "b-new"), (3, "y")]  # ties: the last


def test_repeated_keys_without_a_cursor_the_last_in_batch_order_wins(db_url):
    load(warehouse(db_url), (pa.table({"id": [1, 2, 1, 2, 1], "name": ["a", "b", "c", "d", "e"]}), "b1"))
    assert [(r["id"], r["name"]) for r in select(db_url)] == [(1, "e"), (2, "d")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.none() | st.integers(0, 3)), max_size=12))
def test_last_per_key_keeps_for_each_key_the_row_a_replay_in_cursor_order_would_leave(rows):
    table = pa.table({"id": [k for k, _ in rows], "cursor": pa.array([c for _, c in rows], pa.int64()),
                      "row": list(range(len(rows)))})
    expected = {}
    for row, (key, cursor) in enumerate(rows):
        best = expected.get(key)
        if best is None or (cursor is not None and (best[1] is None or cursor >= best[1])) or \
                (cursor is None and best[1] is None):
            expected[key] = (row, cursor)
    kept = last_per_key(table, ("id",), "cursor").to_pylist()
    assert sorted((r["id"], r["row"]) for r in kept) == sorted((k, row) for k, (row, _) in expected.items())


def test_composite_keys_merge_on_every_key_field(db_url):
    sink = WarehouseSink(url=db_url, table="people", key_fields=("region", "id"))
    load(sink, (pa.table({"region": ["eu", "us", "eu"], "id": [1, 1, 2], "name": ["a", "b", "c"]}), "b1"))
    load(sink, (pa.table({"region": ["us", "us"], "id": [1, 2], "name": ["B", "new"]}), "b2"))
    assert [(r["region"], r["id"], r["name"]) for r in select(db_url, "SELECT * FROM people ORDER BY region, id")] == [
        ("eu", 1, "a"), ("eu", 2, "c"), ("us", 1, "B"), ("us", 2, "new")]


# --- replay, stamps, staging --------------------------------------------------------------

def test_a_replayed_batch_changes_nothing_not_even_the_load_time(db_url):
    sink = warehouse(db_url)
    load(sink, (people(range(3)), "b1"))
    before = select(db_url)
    writer = sink.open("p1")
    writer.run_id = "run-2"
    result = writer.write(people(range(3), name="changed"), "b1")
    writer.close()
    assert result.duplicate and result.loaded == 3
    assert select(db_url) == before
    assert select(db_url, "SELECT batch_id, rows FROM etl_batches") == [{"batch_id": "b1", "rows": 3}]


def test_rows_carry_the_writers_run_id_and_their_transactions_time(db_url):
    writer = warehouse(db_url).open("p1")
    started = datetime.now(timezone.utc)
    writer.run_id = "run-1"
    writer.write(people([1, 2]), "b1")
    between = datetime.now(timezone.utc)
    writer.run_id = "run-2"
    writer.write(people([2, 3], name="new"), "b2")
    ended = datetime.now(timezone.utc)
    writer.close()
    rows = {r["id"]: (r["_etl_run_id"], utc(r["_etl_loaded_at"])) for r in select(db_url)}
    assert [rows[i][0] for i in (1, 2, 3)] == ["run-1", "run-2", "run-2"]
    assert rows[2][1] == rows[3][1]  # one transaction, one time
    assert started <= rows[1][1] <= between <= rows[2][1] <= ended


def test_the_run_id_defaults_to_empty_and_batch_columns_named_like_the_stamps_are_replaced(db_url):
    batch = people([1]).append_column("_etl_run_id", pa.array(["forged"]))
    load(warehouse(db_url), (batch, "b1"))
    assert [r["_etl_run_id"] for r in select(db_url)] == [""]


@pytest.mark.postgres
def test_no_staging_table_is_left_after_a_batch_written_or_refused(pg_schema):
    execute(pg_schema, "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score FLOAT)")
    writer = warehouse(pg_schema).open("p1")
    writer.write(people([1, 2]), "b1")
    writer.write(people([2, 3], name="new"), "b2")
    with pytest.raises(TerminalError):
        writer.write(pa.table({"id": [4], "name": pa.array([None], pa.string())}), "b3")
    tables = select(pg_schema, "SELECT schemaname, tablename FROM pg_tables "
                               "WHERE tablename LIKE 'etl_stage%' OR schemaname = current_schema()")
    assert sorted(t["tablename"] for t in tables) == ["etl_batches", "people"]
    writer.close()


# --- schema ------------------------------------------------------------------------------------

def test_a_new_column_is_added_nullable_and_older_rows_read_null(db_url):
    sink = warehouse(db_url)
    load(sink, (pa.table({"id": [1, 2], "v": [10, 20]}), "b1"))
    load(sink, (pa.table({"id": [2, 3], "v": [21, 30], "extra": ["x", "y"]}), "b2"))
    assert [(r["id"], r["v"], r["extra"]) for r in select(db_url)] == [(1, 10, None), (2, 21, "x"), (3, 30, "y")]
    with engine_for(db_url).connect() as conn:
        extra = next(c for c in sa.inspect(conn).get_columns("people") if c["name"] == "extra")
    assert extra["nullable"]


def test_a_type_change_fails_the_batch_naming_the_column_and_both_types(db_url):
    sink = warehouse(db_url, error_handling="continue")
    load(sink, (pa.table({"id": [1], "v": [10]}), "b1"))
    with pytest.raises(TerminalError) as caught:
        load(sink, (pa.table({"id": [1, 2], "v": ["eleven", "twenty"]}), "b2"))
    assert str(caught.value).startswith("column 'v' of batch 'b2' is string, but table 'people' has it as BIGINT")
    assert [(r["id"], r["v"]) for r in select(db_url)] == [(1, 10)]
    assert [r["batch_id"] for r in select(db_url, "SELECT batch_id FROM etl_batches")] == ["b1"]


def test_awkward_names_are_quoted_everywhere(db_url):
    sink = WarehouseSink(url=db_url, table="Sales Facts", key_fields=("Order ID",))
    first = pa.table({"Order ID": [1, 2], "50% off": [True, False], 'say "hi": x': ["a", "b"]})
    second = pa.table({"Order ID": [2, 3], "50% off": [True, True], 'say "hi": x': ["B", "c"]})
    load(sink, (first, "b1"), (second, "b2"))
    rows = select(db_url, 'SELECT * FROM "Sales Facts" ORDER BY "Order ID"')
    assert [(r["Order ID"], bool(r["50% off"]), r['say "hi": x']) for r in rows] == [
        (1, True, "a"), (2, True, "B"), (3, True, "c")]


# --- refused rows -------------------------------------------------------------------------------

NOT_NULL_NAME = "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score FLOAT)"


def test_a_refused_row_with_fail_leaves_the_table_and_the_ledger_as_they_were(db_url):
    execute(db_url, NOT_NULL_NAME)
    sink = warehouse(db_url)
    load(sink, (people([1, 2]), "b1"))
    before = select(db_url)
    batch = pa.table({"id": [1, 3], "name": ["changed", None], "score": [9.0, 9.0]})
    with pytest.raises(TerminalError, match=r"(?i)cannot write batch 'b2' to table 'people': .*null"):
        load(sink, (batch, "b2"))
    assert select(db_url) == before
    assert [r["batch_id"] for r in select(db_url, "SELECT batch_id FROM etl_batches")] == ["b1"]


def test_continue_makes_refused_rows_dead_letters_with_the_databases_reason(db_url):
    execute(db_url, NOT_NULL_NAME)
    sink = warehouse(db_url, error_handling="continue")
    batch = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"], "score": [1.0, 2.0, 3.0]})
    [result] = load(sink, (batch, "b1"))
    assert (result.loaded, result.failed) == (2, 1)
    [letter] = result.dead_letters
    assert letter.record == {"id": 2, "name": None, "score": 2.0}
    assert letter.reason.startswith("people: ") and "null" in letter.reason.lower()
    assert [r["id"] for r in select(db_url)] == [1, 3]
    assert load(sink, (batch, "b1"))[0].duplicate


def test_a_row_with_a_null_key_is_a_dead_letter_with_continue(db_url):
    sink = WarehouseSink(url=db_url, table="people", key_fields=("region", "id"), error_handling="continue")
    batch = pa.table({"region": ["eu", None, "eu"], "id": [1, 2, None], "name": ["a", "b", "c"]})
    [result] = load(sink, (batch, "b1"))
    assert (result.loaded, result.failed) == (1, 2)
    assert [d.record["name"] for d in result.dead_letters] == ["b", "c"]
    assert result.dead_letters[0].reason == ("people: key field(s) ['region', 'id'] null; "
                                             "a row without its key cannot be merged")
    assert [r["name"] for r in select(db_url)] == ["a"]


def test_a_row_with_a_null_key_fails_the_batch_with_fail(db_url):
    sink = warehouse(db_url)
    with pytest.raises(TerminalError, match=r"^cannot write batch 'b1' to table 'people': 1 row\(s\) key field\(s\) "
                                            r"\['id'\] null"):
        load(sink, (pa.table({"id": [1, None], "name": ["a", "b"]}), "b1"))
    with engine_for(db_url).connect() as conn:
        assert not sa.inspect(conn).has_table("people")


def test_a_batch_without_a_key_field_or_the_cursor_field_fails_naming_it(db_url):
    with pytest.raises(TerminalError, match="'updated_at' is not a column of batch 'b1'"):
        load(warehouse(db_url, cursor_field="updated_at"), (people([1]), "b1"))


def test_insert_mode_appends_and_refuses_a_repeated_key(db_url):
    sink = warehouse(db_url, mode="insert", error_handling="continue")
    load(sink, (people([1, 2]), "b1"))
    [result] = load(sink, (people([2, 3], name="new"), "b2"))
    assert (result.loaded, result.failed) == (1, 1)
    assert [(r["id"], r["name"]) for r in select(db_url)] == [(1, "p1"), (2, "p2"), (3, "new3")]


# --- the spec -------------------------------------------------------------------------------------

CTX = SpecContext(connections={"wh": "postgresql://etl:s3cret@localhost:1/wh"})


def from_spec(**keys) -> WarehouseSink:
    return WarehouseSink.from_spec(Section({"type": "data-warehouse", "connection": "wh", "table": "customers",
                                            **keys}, "pipeline.destination"), CTX)


def test_spec_keys_and_defaults():
    sink = from_spec(keyFields=["id"], cursorField="updated_at", batchSize=500, errorHandling="continue",
                     schema="mart", createTable=False)
    assert (sink.mode, sink.key_fields, sink.cursor_field, sink.batch_size, sink.error_handling, sink.schema,
            sink.create_table) == ("upsert", ("id",), "updated_at", 500, "continue", "mart", False)
    assert from_spec(keyFields="id", mode="insert").mode == "insert"
    assert "s3cret" not in repr(sink) and "s3cret" not in str(sink.describe())


@pytest.mark.parametrize("keys, message", [
    ({"keyFields": ["id"], "mode": "merge"}, "pipeline.destination.mode: 'merge' is not one of upsert, insert, mirror"),
    ({}, "pipeline.destination.keyFields: is required"),
    ({"keyFields": []}, "pipeline.destination.keyFields: is required: the columns that identify a row"),
    ({"keyFields": ["id"], "keyField": "x"}, "pipeline.destination.keyField: unknown key; did you mean 'keyFields'?"),
    ({"keyFields": ["id"], "errorHandling": "skip"},
     "pipeline.destination.errorHandling: 'skip' is not one of fail, continue"),
])
def test_spec_errors_name_the_path(keys, message):
    with pytest.raises(SpecError) as caught:
        from_spec(**keys)
    assert str(caught.value) == message
