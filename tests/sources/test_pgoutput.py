"""The pgoutput decoder (etl_actors/sources/pgoutput.py) fed real messages.

Each test makes tables in a schema of its own, a publication and a logical slot
(plugin pgoutput), changes the tables, then reads the slot's messages with
``pg_logical_slot_peek_binary_changes`` (protocol version 1, as the source asks for)
and decodes them. The slot and the publication are dropped at the end.
"""
import secrets
import struct
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_actors.errors import TerminalError
from etl_actors.sources import pgoutput

psycopg = pytest.importorskip("psycopg")


class Capture:
    """A schema, publication and slot named ``name``, on an autocommit connection."""

    def __init__(self, url: str, name: str):
        self.name, self.schema = name, name
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f'CREATE SCHEMA "{name}"')
        self.slot = False

    def sql(self, *statements, params=None):
        for statement in statements:
            self.conn.execute(statement.replace("$s", self.schema), params)

    def start(self, *tables: str) -> None:
        """Publish ``tables`` and create the slot: changes from here on are captured."""
        names = ", ".join(f'"{self.schema}"."{t}"' for t in tables)
        self.conn.execute(f'CREATE PUBLICATION "{self.name}" FOR TABLE {names}')
        self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.name,))
        self.slot = True

    def primary_key(self, table: str) -> list[str]:
        from etl_actors.sources.postgres_cdc import primary_key

        return [name for name, *_ in primary_key(self.conn, table)]

    def messages(self, consume: bool = False) -> list[tuple[int, bytes]]:
        function = "pg_logical_slot_get_binary_changes" if consume else "pg_logical_slot_peek_binary_changes"
        rows = self.conn.execute(
            f"SELECT lsn::text, data FROM {function}(%s, NULL, NULL, 'proto_version', '1', "
            "'publication_names', %s)", (self.name, self.name)).fetchall()
        return [(pgoutput.lsn_int(lsn), bytes(data)) for lsn, data in rows]

    def decoder(self, skip_until: int = 0, consume: bool = False) -> pgoutput.Decoder:
        decoder = pgoutput.Decoder(key_columns=self.primary_key)     # as the postgres-cdc reader makes it
        decoder.skip_until = skip_until
        for lsn, data in self.messages(consume):
            decoder.feed(data, offset=lsn)
        return decoder

    def decode(self, skip_until: int = 0, consume: bool = False) -> dict[str, pa.Table]:
        """The committed changes per table (``schema.table``, or ``schema.table#n`` for
        rows decoded under an earlier shape of the relation), as Arrow."""
        return {table: pgoutput.to_arrow(changes)
                for table, changes in self.decoder(skip_until, consume).take().items()}

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}"

    def close(self) -> None:
        if self.slot:
            self.conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE slot_name = %s", (self.name,))
        self.conn.execute(f'DROP PUBLICATION IF EXISTS "{self.name}"')
        self.conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.conn.close()


@pytest.fixture
def cap(pg_url, uniq):
    capture = Capture(pg_url, f"pgo_{uniq}")
    yield capture
    capture.close()


def commits(messages) -> list[dict]:
    """Per transaction, from its begin and commit messages: the final (commit) LSN the
    begin announces, the commit LSN and end LSN the commit carries, and the xid."""
    found, begin = [], None
    for _, data in messages:
        if data[:1] == b"B":
            begin = struct.unpack_from("!qqi", data, 1)
        elif data[:1] == b"C":
            _, commit_lsn, end_lsn, _ = struct.unpack_from("!bqqq", data, 1)
            found.append({"final": begin[0], "commit": commit_lsn, "end": end_lsn, "xid": begin[2]})
    return found


def rows(table: pa.Table, *columns: str) -> list[tuple]:
    columns = columns or tuple(table.column_names)
    return [tuple(row[c] for c in columns) for row in table.to_pylist()]


# --- types ----------------------------------------------------------------------------------


def test_column_types_become_arrow_types_and_values_round_trip(cap):
    cap.sql("""CREATE TABLE $s.typed (
        id int4 PRIMARY KEY, small int2, big int8, real8 float8, price numeric(12,2), free numeric,
        huge numeric(50,2), name text, flag bool, day date, at timestamp, at_tz timestamptz, raw bytea,
        uid uuid, doc json, docb jsonb)""")
    cap.start("typed")
    uid = uuid.uuid4()
    cap.sql("""INSERT INTO $s.typed VALUES
        (1, -32768, 9223372036854775807, 1.5, 1234567890.12, 3.14159265358979323846264338327950288419716939937510,
         123456789012345678901234567890123456789012345.67, 'héllo ''quoted''', true, '2024-02-29',
         '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+02', '\\x00ff10'::bytea,
         %s, '{"a": [1, 2]}', '{"b": null}'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, 32767, -1, 'NaN', -0.01, 'NaN', 0, '', false, '0001-01-01', '1999-12-31 23:59:59',
         '1970-01-01 00:00:00+00', ''::bytea, %s, 'null', '[]')""", params=(uid, uid))
    decoded = cap.decode()
    assert list(decoded) == [cap.table("typed")]
    table = decoded[cap.table("typed")]
    types = dict(zip(table.column_names, table.schema.types))
    assert types == {
        "_op": pa.string(), "_table": pa.string(), "_lsn": pa.int64(), "_commitTs": pa.timestamp("us", tz="UTC"),
        "_txId": pa.int64(), "id": pa.int32(), "small": pa.int16(), "big": pa.int64(), "real8": pa.float64(),
        "price": pa.decimal128(12, 2), "free": pa.string(), "huge": pa.string(), "name": pa.string(),
        "flag": pa.bool_(), "day": pa.date32(), "at": pa.timestamp("us"), "at_tz": pa.timestamp("us", tz="UTC"),
        "raw": pa.binary(), "uid": pa.string(), "doc": pa.string(), "docb": pa.string()}
    first, empty, third = table.to_pylist()
    assert first["_op"] == "c" and first["_table"] == cap.table("typed")
    assert (first["small"], first["big"], first["real8"]) == (-32768, 9223372036854775807, 1.5)
    assert first["price"] == Decimal("1234567890.12")
    assert first["free"] == "3.14159265358979323846264338327950288419716939937510"
    assert first["huge"] == "123456789012345678901234567890123456789012345.67"
    assert first["name"] == "héllo 'quoted'" and first["flag"] is True
    assert first["day"] == date(2024, 2, 29)
    assert first["at"] == datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert first["at_tz"] == datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=timezone.utc)
    assert first["raw"] == b"\x00\xff\x10"
    assert first["uid"] == str(uid)
    assert first["doc"] == '{"a": [1, 2]}' and first["docb"] == '{"b": null}'
    assert all(v is None for k, v in empty.items() if not k.startswith("_") and k != "id")
    assert third["real8"] != third["real8"]           # NaN
    assert (third["small"], third["big"], third["price"], third["free"]) == (32767, -1, Decimal("-0.01"), "NaN")
    assert (third["name"], third["flag"], third["raw"]) == ("", False, b"")
    assert third["day"] == date(1, 1, 1)
    assert third["at_tz"] == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert (third["doc"], third["docb"]) == ("null", "[]")


def test_timestamptz_printed_in_another_zone_is_the_same_instant(cap):
    """The text carries the session's offset (+05:30 here): the instant is kept."""
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, at timestamptz)")
    cap.start("t")
    cap.sql("SET TimeZone = 'Asia/Kolkata'")
    cap.sql("INSERT INTO $s.t VALUES (1, '2024-06-01 12:00:00.25+00')")
    table = cap.decode()[cap.table("t")]
    cap.sql("SET TimeZone = 'UTC'")
    assert table.column("at").to_pylist() == [datetime(2024, 6, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)]


# --- operations ---------------------------------------------------------------------------------


def test_insert_update_delete_give_c_u_d_and_a_delete_carries_the_key_only(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, name text, n int)")
    cap.start("t")
    cap.sql("INSERT INTO $s.t VALUES (1, 'a', 10), (2, 'b', 20)",
            "UPDATE $s.t SET name = 'a2' WHERE id = 1",
            "DELETE FROM $s.t WHERE id = 2")
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "name", "n") == [
        ("c", 1, "a", 10), ("c", 2, "b", 20), ("u", 1, "a2", 10), ("d", 2, None, None)]


def test_replica_identity_full_delete_carries_the_whole_old_row(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, name text, n int)",
            "ALTER TABLE $s.t REPLICA IDENTITY FULL")
    cap.start("t")
    cap.sql("INSERT INTO $s.t VALUES (1, 'a', 10), (2, 'b', 20)", "DELETE FROM $s.t WHERE id = 1")
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "name", "n") == [("c", 1, "a", 10), ("c", 2, "b", 20), ("d", 1, "a", 10)]


def test_replica_identity_full_update_is_one_update_row(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, name text, n int)",
            "ALTER TABLE $s.t REPLICA IDENTITY FULL",
            "INSERT INTO $s.t VALUES (1, 'a', 10)")
    cap.start("t")
    cap.sql("UPDATE $s.t SET n = 11 WHERE id = 1", "DELETE FROM $s.t WHERE id = 1")
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "name", "n") == [("u", 1, "a", 11), ("d", 1, "a", 11)]


def test_replica_identity_full_key_change_deletes_the_old_row(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, name text)", "ALTER TABLE $s.t REPLICA IDENTITY FULL",
            "INSERT INTO $s.t VALUES (1, 'a')")
    cap.start("t")
    cap.sql("UPDATE $s.t SET id = 2 WHERE id = 1")
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "name") == [("d", 1, "a"), ("u", 2, "a")]


def test_an_update_changing_the_primary_key_deletes_the_old_key_then_updates(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, name text)", "INSERT INTO $s.t VALUES (1, 'a')")
    cap.start("t")
    cap.sql("UPDATE $s.t SET id = 5, name = 'moved' WHERE id = 1")
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "name") == [("d", 1, None), ("u", 5, "moved")]
    assert len(set(table.column("_lsn").to_pylist())) == 1


def test_an_unchanged_toasted_value_is_listed_in_unchanged_and_null(cap):
    big = secrets.token_urlsafe(15_000)          # > 8 KB and uncompressible: stored out of line
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, body text, n int)")
    cap.sql("INSERT INTO $s.t VALUES (1, %s, 0), (2, 'short', 0)", params=(big,))
    cap.start("t")
    cap.sql("UPDATE $s.t SET n = n + 1")
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "body", "n", "_unchanged") == [
        ("u", 1, None, 1, ["body"]), ("u", 2, "short", 1, None)]
    assert table.schema.field("_unchanged").type == pa.list_(pa.string())


def test_an_unchanged_toasted_value_is_taken_from_the_keys_earlier_image_in_the_batch(cap):
    big = secrets.token_urlsafe(15_000)
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, body text, n int)")
    cap.start("t")
    cap.sql("INSERT INTO $s.t VALUES (1, %s, 0)", params=(big,))
    cap.sql("UPDATE $s.t SET n = n + 1")        # its own transaction: the insert is not in the destination yet
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "id", "body", "n") == [("c", 1, big, 0), ("u", 1, big, 1)]
    assert "_unchanged" not in table.column_names


def test_an_unchanged_toasted_value_under_replica_identity_full_comes_from_the_old_row(cap):
    big = secrets.token_urlsafe(15_000)
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, body text, n int)", "ALTER TABLE $s.t REPLICA IDENTITY FULL")
    cap.sql("INSERT INTO $s.t VALUES (1, %s, 0)", params=(big,))
    cap.start("t")
    cap.sql("UPDATE $s.t SET n = 1")
    table = cap.decode()[cap.table("t")]
    updates = [r for r in rows(table, "_op", "id", "body", "n") if r[0] == "u"]
    assert updates == [("u", 1, big, 1)]
    assert "_unchanged" not in table.column_names


def test_a_toasted_value_that_changes_is_sent_whole(cap):
    big, bigger = secrets.token_urlsafe(15_000), secrets.token_urlsafe(16_000)
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, body text)")
    cap.sql("INSERT INTO $s.t VALUES (1, %s)", params=(big,))
    cap.start("t")
    cap.sql("UPDATE $s.t SET body = %s", params=(bigger,))
    table = cap.decode()[cap.table("t")]
    assert rows(table, "_op", "body") == [("u", bigger)] and "_unchanged" not in table.column_names


# --- transactions and positions -----------------------------------------------------------------


def test_every_row_of_a_transaction_carries_its_commit_lsn_and_xid(cap):
    cap.sql("CREATE TABLE $s.a (id int PRIMARY KEY)", "CREATE TABLE $s.b (id int PRIMARY KEY, v text)")
    cap.start("a", "b")
    xids, bounds = [], []
    for i in range(3):
        with cap.conn.transaction():
            before = pgoutput.lsn_int(cap.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
            cap.sql(f"INSERT INTO $s.a VALUES ({i * 10}), ({i * 10 + 1})",
                    f"INSERT INTO $s.b VALUES ({i}, 'x')",
                    f"UPDATE $s.a SET id = id + 100 WHERE id = {i * 10}")
            xids.append(cap.conn.execute("SELECT txid_current()").fetchone()[0])
        after = pgoutput.lsn_int(cap.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        bounds.append((before, after))
    messages = cap.messages()
    txns = commits(messages)
    assert len(txns) == 3
    decoded = cap.decode()
    a, b = decoded[cap.table("a")], decoded[cap.table("b")]
    assert rows(a, "_op", "id") == [("c", 0), ("c", 1), ("d", 0), ("u", 100),
                                    ("c", 10), ("c", 11), ("d", 10), ("u", 110),
                                    ("c", 20), ("c", 21), ("d", 20), ("u", 120)]
    for i, txn in enumerate(txns):
        assert txn["final"] == txn["commit"] < txn["end"]
        assert bounds[i][0] < txn["commit"] < bounds[i][1]
        assert a.column("_lsn").to_pylist()[i * 4:i * 4 + 4] == [txn["commit"]] * 4
        assert b.column("_lsn").to_pylist()[i] == txn["commit"]
        assert a.column("_txId").to_pylist()[i * 4:i * 4 + 4] == [xids[i]] * 4
        assert b.column("_txId").to_pylist()[i] == xids[i]
    lsns = [t["commit"] for t in txns]
    assert lsns == sorted(set(lsns))
    now = datetime.now(timezone.utc)
    assert all(now - timedelta(minutes=1) < ts <= now for ts in a.column("_commitTs").to_pylist())


def test_decoder_reports_the_last_commit_and_take_empties_it(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY)")
    cap.start("t")
    cap.sql("INSERT INTO $s.t VALUES (1)", "INSERT INTO $s.t VALUES (2)")
    decoder = cap.decoder()
    last = commits(cap.messages())[-1]
    assert decoder.last_commit[:2] == (last["commit"], last["end"])
    assert decoder.rows == 2
    taken = decoder.take()
    assert [c.ops for c in taken.values()] == [["c", "c"]]
    assert decoder.take() == {} and decoder.rows == 0


def test_a_truncate_is_a_t_row_for_each_table_it_empties(cap):
    cap.sql("CREATE TABLE $s.a (id int PRIMARY KEY, v text)", "CREATE TABLE $s.b (id int PRIMARY KEY)",
            "INSERT INTO $s.a VALUES (1, 'x')", "INSERT INTO $s.b VALUES (1)")
    cap.start("a", "b")
    cap.sql("INSERT INTO $s.a VALUES (2, 'y')", "TRUNCATE $s.a, $s.b", "INSERT INTO $s.b VALUES (5)")
    decoded = cap.decode()
    assert rows(decoded[cap.table("a")], "_op", "id", "v") == [("c", 2, "y"), ("t", None, None)]
    assert rows(decoded[cap.table("b")], "_op", "id") == [("t", None), ("c", 5)]


def test_skip_until_drops_transactions_at_or_before_it(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY)")
    cap.start("t")
    for i in range(4):
        cap.sql(f"INSERT INTO $s.t VALUES ({i})")
    lsns = [t["commit"] for t in commits(cap.messages())]
    assert cap.decode(skip_until=lsns[1])[cap.table("t")].column("id").to_pylist() == [2, 3]
    assert cap.decode(skip_until=lsns[1] - 1)[cap.table("t")].column("id").to_pylist() == [1, 2, 3]
    assert cap.decode(skip_until=lsns[3]) == {}


# --- schema changes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("old, new, using, value", [
    ("text", "int", "v::int", "7"),
    ("int", "bigint", "v", "7"),
])
def test_a_column_type_change_is_a_terminal_error_naming_table_and_column(cap, old, new, using, value):
    cap.sql(f"CREATE TABLE $s.t (id int PRIMARY KEY, v {old})")
    cap.start("t")
    cap.sql(f"INSERT INTO $s.t VALUES (1, '{value}')",
            f"ALTER TABLE $s.t ALTER COLUMN v TYPE {new} USING {using}",
            f"INSERT INTO $s.t VALUES (2, '{value}')")
    with pytest.raises(TerminalError) as caught:
        cap.decoder()
    message = str(caught.value)
    assert cap.table("t") in message and "'v'" in message
    assert caught.value.context.get("table") == cap.table("t") and caught.value.context.get("column") == "v"


def test_a_type_change_arrow_does_not_see_passes(cap):
    """varchar(10) -> varchar(20) is still text: the stream goes on."""
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, v varchar(10))")
    cap.start("t")
    cap.sql("INSERT INTO $s.t VALUES (1, 'a')", "ALTER TABLE $s.t ALTER COLUMN v TYPE varchar(20)",
            "INSERT INTO $s.t VALUES (2, 'bbbbbbbbbbbbbbb')")
    tables = cap.decode()
    assert sorted(v for t in tables.values() for v in t.column("v").to_pylist()) == ["a", "bbbbbbbbbbbbbbb"]


def test_add_column_gives_rows_with_the_new_column_after(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, name text)")
    cap.start("t")
    cap.sql("INSERT INTO $s.t VALUES (1, 'a')",
            "ALTER TABLE $s.t ADD COLUMN score numeric(5,1)",
            "INSERT INTO $s.t VALUES (2, 'b', 9.5)",
            "UPDATE $s.t SET score = 1.0 WHERE id = 1")
    tables = cap.decode()
    assert len(tables) == 2
    before, after = tables.values()                          # the earlier shape first
    assert before.column_names[5:] == ["id", "name"]
    assert rows(before, "_op", "id", "name") == [("c", 1, "a")]
    assert after.column_names[5:] == ["id", "name", "score"]
    assert after.schema.field("score").type == pa.decimal128(5, 1)
    assert rows(after, "_op", "id", "name", "score") == [("c", 2, "b", Decimal("9.5")), ("u", 1, "a", Decimal("1.0"))]
    assert set(before.column("_table").to_pylist()) == set(after.column("_table").to_pylist()) == {cap.table("t")}
    assert before.column("_lsn").to_pylist()[0] < after.column("_lsn").to_pylist()[0]


# --- a property: what is inserted is what is decoded ----------------------------------------------

TEXT = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    st.sampled_from(["'", "''", '"', "\\", "\\x00ff", "a\nb\r\nc", "\t", "NULL", "null", " ", "😀é中"]))
ROW = st.tuples(st.integers(-2**63, 2**63 - 1),
                st.none() | TEXT,
                st.none() | st.decimals(min_value=-10**9, max_value=10**9, places=3, allow_nan=False),
                st.none() | st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
                    lambda d: abs(d.adjusted()) < 100))


@pytest.fixture
def round_trip(cap):
    cap.sql("CREATE TABLE $s.t (id int PRIMARY KEY, big int8, note text, amount numeric(13,3), free numeric)")
    cap.start("t")
    cap.messages(consume=True)
    return cap


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ROW, min_size=1, max_size=12))
def test_random_rows_inserted_are_decoded_equal(round_trip, generated):
    cap = round_trip
    cap.sql("DELETE FROM $s.t")
    cap.messages(consume=True)
    with cap.conn.cursor() as cursor:
        cursor.executemany(f'INSERT INTO "{cap.schema}".t VALUES (%s, %s, %s, %s, %s)',
                           [(i, *row) for i, row in enumerate(generated)])
    table = cap.decode(consume=True)[cap.table("t")]
    decoded = [(r["big"], r["note"], r["amount"], None if r["free"] is None else Decimal(r["free"]))
               for r in table.to_pylist()]
    assert table.column("_op").to_pylist() == ["c"] * len(generated)
    assert table.column("id").to_pylist() == list(range(len(generated)))
    assert decoded == [(b, n, a, f) for b, n, a, f in generated]


def test_lsn_text_and_int_agree_with_postgresql(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for text in ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"]:
            number = int(conn.execute("SELECT (%s::pg_lsn - '0/0'::pg_lsn)::numeric", (text,)).fetchone()[0])
            assert pgoutput.lsn_int(text) == number
            assert pgoutput.lsn_text(number) == conn.execute("SELECT %s::pg_lsn::text", (text,)).fetchone()[0]
    assert pgoutput.lsn_text(None) is None
