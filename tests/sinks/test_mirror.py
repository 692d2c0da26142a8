"""``mode: mirror`` (etl_actors/sinks/mirror.py) through the database and warehouse
sinks, on SQLite and PostgreSQL, fed change rows built by hand as a postgres-cdc
source makes them (``_op``, ``_table``, ``_lsn``, ``_commitTs``, ``_txId`` and the
row's columns)."""
import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_actors.db import engine_for
from etl_actors.errors import TerminalError
from etl_actors.expressions import compile_expression
from etl_actors.sinks.database import DatabaseSink
from etl_actors.sources.postgres_cdc import concat as cdc_concat
from etl_actors.sinks.warehouse import WarehouseSink
from etl_actors.spec import Section, SpecContext
from etl_actors.transforms.filter import FilterStep

SOURCE = "src.customers"
ROW = pa.schema([("id", pa.int64()), ("name", pa.string()), ("n", pa.int64())])
TS = datetime(2024, 5, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def where(request, tmp_path, uniq):
    """``(url, schema)`` of a fresh destination."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dst.db", None
    return request.getfixturevalue("pg_schema"), f"t_{uniq}"


@pytest.fixture(params=["database", "data-warehouse"])
def kind(request):
    return request.param


class Dest:
    """A mirror sink opened on ``where``, and reads of its tables."""

    def __init__(self, kind, url, schema, **options):
        cls = DatabaseSink if kind == "database" else WarehouseSink
        self.url, self.schema = url, schema
        options.setdefault("key_fields", ("id",))
        self.sink = cls(url=url, mode="mirror", schema=schema, **options)
        self.writer = self.sink.open("p")
        self.engine = engine_for(url)

    def write(self, table, batch_id):
        return self.writer.write(table, batch_id)

    def name(self, table):
        return f'"{self.schema}"."{table}"' if self.schema else f'"{table}"'

    def rows(self, table="customers", columns="id, name, n") -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(f"SELECT {columns} FROM {self.name(table)} ORDER BY id"))]

    def execute(self, *statements):
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement.replace("$t", self.name("customers"))))

    def mark(self):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT lsn FROM {self.name('etl_mirror_positions')} "
                                        "WHERE pipeline = 'p'")).scalar()

    def batches(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sa.text(
                f"SELECT batch_id FROM {self.name('etl_batches')} WHERE pipeline = 'p'")))

    def tables(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names(schema=self.schema))

    def close(self):
        self.writer.close()
        self.engine.dispose()


@pytest.fixture
def dest(kind, where):
    opened = []

    def make(**options):
        d = Dest(kind, *where, **options)
        opened.append(d)
        return d

    yield make
    for d in opened:
        d.close()


def changes(*rows, table=SOURCE, schema=ROW, chunk=None) -> pa.Table:
    """Change rows from ``(op, lsn, id, name, n[, unchanged])`` tuples."""
    unchanged = any(len(r) > 5 for r in rows)
    data = {
        "_op": pa.array([r[0] for r in rows], pa.string()),
        "_table": pa.array([table] * len(rows), pa.string()),
        "_lsn": pa.array([r[1] for r in rows], pa.int64()),
        "_commitTs": pa.array([TS] * len(rows), pa.timestamp("us", tz="UTC")),
        "_txId": pa.array([r[1] // 10 for r in rows], pa.int64()),
    }
    for i, field in enumerate(schema):
        data[field.name] = pa.array([r[2 + i] for r in rows], field.type)
    if unchanged:
        data["_unchanged"] = pa.array([r[5] if len(r) > 5 else None for r in rows], pa.list_(pa.string()))
    if chunk is not None:
        data["_chunk"] = pa.array([json.dumps(chunk)] * len(rows), pa.string())
    return pa.table(data)


_OIDS = {pa.int64(): 20, pa.int32(): 23, pa.string(): 25}


def concat(*tables):
    """Several tables' change rows in one batch, as the postgres-cdc source makes it:
    each row with its table's columns and their PostgreSQL types (``_columns``)."""
    marked = []
    for table in tables:
        declared = json.dumps([[f.name, _OIDS[f.type], -1] for f in table.schema if not f.name.startswith("_")])
        marked.append(table.append_column("_columns", pa.array([declared] * table.num_rows).dictionary_encode()))
    return cdc_concat(marked)


# --- changes in order ---------------------------------------------------------------------------


def test_changes_apply_in_order_and_the_last_change_of_a_key_wins(dest):
    d = dest()
    first = d.write(changes(("c", 100, 1, "a", 1), ("c", 100, 2, "b", 2), ("c", 100, 3, "c", 3)), "b1")
    assert first.loaded == 3 and not first.duplicate
    assert d.rows() == [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    result = d.write(changes(
        ("u", 200, 1, "a2", 10), ("d", 200, 2, None, None),
        ("c", 300, 4, "new", 4), ("d", 300, 4, None, None),         # insert then delete: nothing
        ("d", 400, 3, None, None), ("c", 400, 3, "again", 30),      # delete then insert: the row
        ("u", 500, 1, "last", 11)), "b2")
    assert result.loaded == 7 and not result.duplicate
    assert d.rows() == [(1, "last", 11), (3, "again", 30)]
    assert d.mark() == 500
    assert d.batches() == ["b1", "b2"]
    assert d.tables() >= {"customers", "etl_batches", "etl_mirror_positions"}


def test_the_change_columns_are_not_written(dest):
    d = dest()
    d.write(changes(("c", 100, 1, "a", 1)), "b1")
    with d.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("customers", schema=d.schema)}
    assert {"id", "name", "n"} <= columns
    assert not columns & {"_op", "_table", "_lsn", "_commitTs", "_txId", "_unchanged", "_chunk"}


def test_a_batch_replayed_with_the_same_id_is_a_duplicate(dest):
    d = dest()
    batch = changes(("c", 100, 1, "a", 1), ("c", 100, 2, "b", 2))
    d.write(batch, "b1")
    d.execute("UPDATE $t SET name = 'changed since' WHERE id = 1")
    again = d.write(batch, "b1")
    assert again.duplicate and again.loaded == 2
    assert d.rows() == [(1, "changed since", 1), (2, "b", 2)]


def test_the_same_changes_cut_into_other_batches_change_nothing(dest):
    d = dest()
    txns = [("c", 100, 1, "v1", 1), ("u", 200, 1, "v2", 2), ("d", 300, 1, None, None), ("c", 400, 2, "two", 2)]
    d.write(changes(*txns), "a")
    assert d.rows() == [(2, "two", 2)] and d.mark() == 400
    replay = d.write(changes(*txns[:2]), "replay-1")           # would bring id 1 back if applied
    assert replay.loaded == 0 and replay.duplicate
    assert d.rows() == [(2, "two", 2)]
    d.execute("UPDATE $t SET name = 'kept' WHERE id = 2")       # a replayed insert would overwrite it
    more = d.write(changes(*txns[1:], ("c", 500, 3, "three", 3)), "replay-2")
    assert more.loaded == 1 and not more.duplicate
    assert d.rows() == [(2, "kept", 2), (3, "three", 3)]
    assert d.mark() == 500
    assert d.batches() == ["a", "replay-1", "replay-2"]


# --- snapshot chunks ---------------------------------------------------------------------------


def seeded(d, ids):
    d.write(changes(*[("c", 100, i, f"old{i}", i) for i in ids]), "seed")


@pytest.mark.parametrize("after, upto, chunk_ids, left", [
    (["10"], ["20"], [12, 15, 20], [5, 6, 7, 8, 9, 10, 12, 15, 20, 21, 22, 23, 24, 25]),
    (None, ["8"], [6], [6, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25]),
    (["20"], None, [22, 30], list(range(5, 21)) + [22, 30]),
    (None, None, [7], [7]),
])
def test_a_snapshot_chunk_deletes_the_keys_of_its_range_it_lacks(dest, after, upto, chunk_ids, left):
    d = dest()
    seeded(d, range(5, 26))
    chunk = {"keys": ["id"], "after": after, "upto": upto}
    result = d.write(changes(*[("r", 50, i, f"snap{i}", i) for i in chunk_ids], chunk=chunk), "snap")
    assert result.loaded == len(chunk_ids)
    assert [r[0] for r in d.rows()] == left
    assert all(name == f"snap{i}" for i, name, _ in d.rows() if i in chunk_ids)
    assert all(name == f"old{i}" for i, name, _ in d.rows() if i not in chunk_ids)
    assert d.mark() == 100                                       # snapshot rows move no mark


def test_snapshot_rows_apply_even_below_the_mark(dest):
    """A table snapshotted again (after --reset) comes with the consistent point's LSN,
    which may be below the mark: its rows are applied all the same."""
    d = dest()
    d.write(changes(("c", 900, 1, "a", 1)), "b1")
    d.write(changes(("r", 50, 1, "snap", 1), ("r", 50, 2, "snap2", 2),
                    chunk={"keys": ["id"], "after": None, "upto": None}), "snap")
    assert d.rows() == [(1, "snap", 1), (2, "snap2", 2)]


def test_a_snapshot_chunk_of_text_keys_orders_them_bytewise(dest):
    """The snapshot orders text keys byte-wise (COLLATE "C"): 'B' < 'Z' < 'a'."""
    d = dest(key_fields=("code",))
    schema = pa.schema([("code", pa.string()), ("name", pa.string()), ("n", pa.int64())])
    d.write(changes(*[("c", 100, k, "old", 0) for k in ["A", "B", "C", "Z", "a", "b"]], schema=schema), "seed")
    d.write(changes(("r", 50, "C", "snap", 1), ("r", 50, "a", "snap", 1), schema=schema,
                    chunk={"keys": ["code"], "after": ["B"], "upto": ["a"]}), "snap")
    with d.engine.connect() as conn:
        found = sorted(tuple(r) for r in conn.execute(sa.text(f"SELECT code, name FROM {d.name('customers')}")))
    assert found == [("A", "old"), ("B", "old"), ("C", "snap"), ("a", "snap"), ("b", "old")]


# --- tables ----------------------------------------------------------------------------------------


def test_table_mapping_names_the_destination_table(dest):
    d = dest(table_mapping=((SOURCE, "customers_copy"),))
    d.write(changes(("c", 100, 1, "a", 1)), "b1")
    assert d.rows("customers_copy") == [(1, "a", 1)]
    assert "customers" not in d.tables()


def test_two_source_tables_go_to_two_tables_in_one_transaction(dest):
    d = dest()
    orders = pa.schema([("id", pa.int64()), ("total", pa.int64())])
    with d.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {d.name('orders')} (id BIGINT PRIMARY KEY, total BIGINT NOT NULL)"))
    d.write(concat(changes(("c", 100, 1, "a", 1), ("c", 100, 2, "b", 2)),
                   changes(("c", 100, 1, 5), table="src.orders", schema=orders)), "b1")
    assert d.rows() == [(1, "a", 1), (2, "b", 2)]
    assert d.rows("orders", "id, total") == [(1, 5)]
    failing = concat(changes(("u", 200, 1, "a2", 10), ("d", 200, 2, None, None)),
                     changes(("c", 200, 2, None), table="src.orders", schema=orders))
    with pytest.raises(Exception, match="total"):
        d.write(failing, "b2")
    assert d.rows() == [(1, "a", 1), (2, "b", 2)]                # the first table is unchanged too
    assert d.rows("orders", "id, total") == [(1, 5)]
    assert d.batches() == ["b1"] and d.mark() == 100
    fixed = concat(changes(("u", 200, 1, "a2", 10), ("d", 200, 2, None, None)),
                   changes(("c", 200, 2, 7), table="src.orders", schema=orders))
    assert d.write(fixed, "b2").loaded == 3
    assert d.rows() == [(1, "a2", 10)] and d.rows("orders", "id, total") == [(1, 5), (2, 7)]


def columns(d, table) -> set[str]:
    with d.engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns(table, schema=d.schema)} - {"_etl_run_id",
                                                                                           "_etl_loaded_at"}


def test_each_destination_table_gets_its_source_tables_columns_only(dest):
    d = dest()
    orders = pa.schema([("id", pa.int64()), ("total", pa.int64())])
    d.write(concat(changes(("c", 100, 1, "a", 1)), changes(("c", 100, 1, 5), table="src.orders", schema=orders)),
            "b1")
    assert (columns(d, "customers"), columns(d, "orders")) == ({"id", "name", "n"}, {"id", "total"})


def test_two_tables_typing_a_column_differently_change_in_one_batch(dest):
    d = dest()
    texts = pa.schema([("id", pa.int64()), ("code", pa.string())])
    ints = pa.schema([("id", pa.int64()), ("code", pa.int32())])
    d.write(changes(("c", 100, 1, 7), table="src.orders", schema=ints), "b1")
    d.write(concat(changes(("c", 200, 1, "x"), table="src.customers", schema=texts),
                   changes(("c", 200, 2, 8), table="src.orders", schema=ints)), "b2")
    assert d.rows("orders", "id, code") == [(1, 7), (2, 8)]


def test_a_refused_row_is_a_terminal_error_naming_the_batch(dest):
    d = dest()
    with d.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {d.name('customers')} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, "
                             "n BIGINT)"))
    with pytest.raises(TerminalError) as caught:
        d.write(changes(("c", 100, 1, None, 1)), "b1")
    assert "b1" in str(caught.value) and "name" in str(caught.value)


def test_a_refused_batch_names_the_table_that_refused_it(dest):
    d = dest()
    orders = pa.schema([("id", pa.int64()), ("total", pa.int64())])
    with d.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {d.name('orders')} (id BIGINT PRIMARY KEY, total BIGINT NOT NULL)"))
    with pytest.raises(TerminalError) as caught:
        d.write(concat(changes(("c", 100, 1, "a", 1)),
                       changes(("c", 100, 2, None), table="src.orders", schema=orders)), "b1")
    assert "table 'orders'" in str(caught.value)


def test_key_fields_per_source_table(dest):
    d = dest(table_keys=(("src.codes", ("code",)),))
    codes = pa.schema([("code", pa.string()), ("label", pa.string())])
    d.write(concat(changes(("c", 100, 1, "a", 1)),
                   changes(("c", 100, "x", "X"), ("c", 100, "y", "Y"), table="src.codes",
                           schema=codes)), "b1")
    d.write(changes(("d", 200, "x", None), ("u", 200, "y", "Y2"), table="src.codes", schema=codes), "b2")
    with d.engine.connect() as conn:
        found = [tuple(r) for r in conn.execute(sa.text(f"SELECT code, label FROM {d.name('codes')}"))]
    assert found == [("y", "Y2")] and d.rows() == [(1, "a", 1)]


# --- TOAST, bad batches, filters -------------------------------------------------------------------


def test_a_truncate_empties_the_table_in_its_place_among_the_changes(dest):
    d = dest()
    d.write(changes(("c", 100, 1, "a", 1), ("c", 100, 2, "b", 2)), "b1")
    d.write(changes(("u", 200, 1, "a2", 1), ("t", 210, None, None, None), ("c", 220, 3, "c", 3),
                    ("u", 230, 3, "c2", 4)), "b2")
    assert d.rows() == [(3, "c2", 4)]
    d.write(changes(("t", 210, None, None, None), ("c", 220, 3, "c", 3)), "b2-replayed-cut-otherwise")
    assert d.rows() == [(3, "c2", 4)]                   # at or before the mark: applied already
    d.write(changes(("t", 300, None, None, None)), "b3")
    assert d.rows() == []


def test_an_unchanged_column_keeps_the_destinations_value(dest):
    d = dest()
    d.write(changes(("c", 100, 1, "big text", 0), ("c", 100, 2, "other", 0)), "b1")
    d.write(changes(("u", 200, 1, None, 1, ["name"]), ("u", 200, 2, "other2", 1, None)), "b2")
    assert d.rows() == [(1, "big text", 1), (2, "other2", 1)]


def test_an_insert_then_an_update_with_an_unchanged_column_in_one_batch(dest):
    d = dest()
    d.write(changes(("c", 100, 1, "big text", 0), ("u", 200, 1, None, 1, ["name"])), "b1")
    assert d.rows() == [(1, "big text", 1)]


def test_a_batch_without_op_is_a_terminal_error_naming_the_change_columns(dest):
    d = dest()
    table = changes(("c", 100, 1, "a", 1)).drop_columns(["_op"])
    with pytest.raises(TerminalError) as caught:
        d.write(table, "b1")
    assert "_op" in str(caught.value) and "b1" in str(caught.value)
    with pytest.raises(TerminalError) as caught:
        d.write(pa.table({"id": [1], "name": ["a"]}), "b2")
    assert all(c in str(caught.value) for c in ("_op", "_table", "_lsn"))


def test_a_key_field_missing_from_the_rows_is_a_terminal_error(dest):
    d = dest(key_fields=("customer_id",))
    with pytest.raises(TerminalError) as caught:
        d.write(changes(("c", 100, 1, "a", 1)), "b1")
    assert "customer_id" in str(caught.value) and SOURCE in str(caught.value)


def test_a_filter_turns_the_change_rows_it_drops_into_deletes(dest):
    d = dest()
    d.write(changes(("c", 100, 1, "a", 1), ("c", 100, 2, "b", 2), ("c", 100, 3, "c", 3)), "b1")
    section = Section({"id": "positive", "type": "filter", "condition": "n > 0"}, "stream.processors[0]")
    step = FilterStep.from_spec(section, SpecContext())
    batch = changes(("u", 200, 1, "a2", -1),          # stops passing: deleted
                    ("u", 200, 2, "b2", 20),          # passes: updated
                    ("c", 200, 4, "d", -4),           # never passes: not written
                    ("d", 200, 3, None, None),        # a delete passes as it is
                    ("c", 300, 5, "e", None))         # null: dropped, a delete
    filtered = step.apply(batch).table
    assert filtered.num_rows == batch.num_rows
    assert filtered.column("_op").to_pylist() == ["d", "u", "d", "d", "d"]
    d.write(filtered, "b2")
    assert d.rows() == [(2, "b2", 20)]


def test_filter_step_built_directly_on_plain_rows_still_drops():
    """Rows without the change columns are filtered as before (no deletes invented)."""
    step = FilterStep(id="f", condition=compile_expression("n > 0", "condition"))
    plain = pa.table({"id": [1, 2], "n": [1, -1]})
    assert step.apply(plain).table.to_pylist() == [{"id": 1, "n": 1}]
