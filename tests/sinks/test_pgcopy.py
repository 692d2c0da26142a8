"""COPY into PostgreSQL from Arrow: what SELECT returns is what the batch held, whether
the sink sent it in binary or, where the types do not allow binary, as CSV."""
import math
import sys
from datetime import date, datetime, timezone
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given, settings, strategies as st

from etl_actors.db import engine_for
from etl_actors.sinks import pgcopy
from etl_actors.sinks.database import DatabaseSink
from etl_actors.sinks.warehouse import WarehouseSink

UTC = timezone.utc
TEXTS = ["", "plain", "tab\there", "new\nline\r\n", 'quote " and \'', "back\\slash \\N", "comma, semicolon;",
         "ünïcødé ✓ 🎉", "NULL", "  spaces  ", None]
WHEN = datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=UTC)
OLD = datetime(1, 1, 1, tzinfo=UTC)


def rows(url: str, sql: str) -> list:
    with engine_for(url).connect() as conn:
        return [row[0] for row in conn.execute(sa.text(sql))]


def load_column(url: str, sql_type: str, values: pa.Array, **options):
    """Write ``values`` as column ``v`` of a table created with ``sql_type``; return the
    writer, its LoadResult and the values SELECT reads back, in batch order."""
    with engine_for(url).begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE typed (i integer, v {sql_type})"))
    writer = DatabaseSink(url=url, table="typed", **options).open("p1")
    result = writer.write(pa.table({"i": pa.array(range(len(values)), pa.int32()), "v": values}), "b1")
    return writer, result, rows(url, "SELECT v FROM typed ORDER BY i")


def same(got: list, expected: list) -> bool:
    """Equal, NaN equal to NaN and -0.0 told from 0.0."""
    def key(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else (value, math.copysign(1, value))
        return value
    return [key(v) for v in got] == [key(v) for v in expected]


BINARY = [
    ("bigint", pa.array([0, -1, 2**63 - 1, -2**63, None], pa.int64()), None),
    ("integer", pa.array([-2**31, 2**31 - 1, None], pa.int64()), None),
    ("smallint", pa.array([-128, 127, None], pa.int8()), None),
    ("bigint", pa.array([0, 2**32 - 1, None], pa.uint32()), None),
    ("double precision", pa.array([1.5, -0.0, 1e308, 5e-324, math.inf, -math.inf, math.nan, None]), None),
    ("double precision", pa.array([2**53, -7, None], pa.int64()), [2.0**53, -7.0, None]),
    ("real", pa.array([1.5, math.inf, math.nan, None], pa.float32()), None),
    ("numeric(10,2)", pa.array([Decimal("12.34"), Decimal("-0.05"), Decimal("99999999.99"), Decimal("0.00"), None],
                               pa.decimal128(10, 2)), None),
    ("numeric", pa.array([Decimal("0.123456789012345678"), Decimal("-0.000000000000000001")], pa.decimal128(18, 18)),
     None),
    ("numeric", pa.array([Decimal("999999999999999999"), Decimal("-1"), Decimal("10000")], pa.decimal128(18, 0)),
     None),
    ("numeric", pa.array([Decimal("1234.567"), Decimal("-0.001"), Decimal("0.000")], pa.decimal128(7, 3)), None),
    ("numeric", pa.array([2**63 - 1, -2**63, 0, 10_000, None], pa.int64()),
     [Decimal(2**63 - 1), Decimal(-2**63), Decimal(0), Decimal(10_000), None]),
    ("numeric(6,2)", pa.array([Decimal("1.235"), Decimal("-1.234")], pa.decimal128(7, 3)),
     [Decimal("1.24"), Decimal("-1.23")]),
    ("text", pa.array(TEXTS), None),
    ("text", pa.array(TEXTS, pa.large_string()), None),
    ("varchar(20)", pa.array(["short", "", None]), None),
    ("char(3)", pa.array(["ab", "abc", None]), ["ab ", "abc", None]),
    ("timestamp with time zone", pa.array([WHEN, OLD, datetime(1969, 12, 31, 23, 59, 59, 999999, UTC), None],
                                          pa.timestamp("us", "UTC")), None),
    ("timestamp with time zone", pa.array([datetime(2024, 3, 31, 2, 30, tzinfo=UTC), None],
                                          pa.timestamp("ms", "Europe/Berlin")), None),
    ("timestamp with time zone", pa.array([WHEN], pa.timestamp("ns", "UTC")), None),
    ("timestamp without time zone", pa.array([datetime(2024, 5, 1, 12, 30, 5), datetime(1, 1, 1), None],
                                             pa.timestamp("s")), None),
    ("date", pa.array([date(2024, 5, 1), date(1970, 1, 1), date(1999, 12, 31), date(1, 1, 1), date(9999, 12, 31),
                       None], pa.date32()), None),
    ("date", pa.array([date(2024, 2, 29), None], pa.date64()), None),
    ("boolean", pa.array([True, False, None]), None),
    ("text", pa.nulls(3), [None, None, None]),
]


@pytest.mark.parametrize("sql_type, values, expected", BINARY, ids=[f"{t}<-{v.type}" for t, v, _ in BINARY])
def test_types_that_allow_it_go_in_binary_and_read_back_as_written(pg_schema, sql_type, values, expected):
    writer, _, got = load_column(pg_schema, sql_type, values)
    assert writer.binary_copies == writer.copies == 1
    assert same(got, values.to_pylist() if expected is None else expected)


CSV = [
    ("timestamp with time zone", pa.array([1_714_566_600_123_456_789], pa.timestamp("ns", "UTC")),
     [datetime(2024, 5, 1, 12, 30, 0, 123457, UTC)]),  # nanoseconds: the server rounds
    ("real", pa.array([0.1]), [0.1]),  # a double into real: the server rounds the text
    ("double precision", pa.array([0.1], pa.float32()), [0.1]),  # float32's shortest text, as before
    ("numeric", pa.array([0.25]), [Decimal("0.25")]),
    ("numeric", pa.array([Decimal("1.5")], pa.decimal128(30, 1)), [Decimal("1.5")]),
    ("jsonb", pa.array(['{"a": [1, "x"]}']), [{"a": [1, "x"]}]),
]


@pytest.mark.parametrize("sql_type, values, expected", CSV, ids=[f"{t}<-{v.type}" for t, v, _ in CSV])
def test_other_types_and_values_go_as_csv_with_the_same_meaning(pg_schema, sql_type, values, expected):
    writer, _, got = load_column(pg_schema, sql_type, values)
    assert (writer.copies, writer.binary_copies) == (1, 0)
    assert got == expected


@pytest.mark.parametrize("sql_type, values", [("integer", [1, 2**40, 3]), ("real", [1.0, 1e300, 3.0])])
def test_a_value_too_wide_for_its_column_is_a_dead_letter_and_the_rest_loads(pg_schema, sql_type, values):
    _, result, got = load_column(pg_schema, sql_type, pa.array(values), error_handling="continue")
    assert (result.loaded, result.failed) == (2, 1) and got == [values[0], values[2]]
    assert result.dead_letters[0].record["v"] == values[1] and "out of range" in result.dead_letters[0].reason


def test_text_with_a_nul_byte_is_refused_as_csv_would_be_and_dead_lettered(pg_schema):
    _, result, got = load_column(pg_schema, "text", pa.array(["ok", "a\x00b"]), error_handling="continue")
    assert (result.loaded, result.failed) == (1, 1) and got == ["ok"]


@pytest.mark.parametrize("mode", ["insert", "upsert"])
def test_a_100k_row_batch_loads_without_per_row_python(pg_schema, mode):
    """The Python calls made for a batch hardly grow with its rows (psycopg hands the
    COPY data to libpq in pieces of a fixed size): one call per row would add 99,000."""
    sink = DatabaseSink(url=pg_schema, table="wide", mode=mode, key_fields=("id",) if mode == "upsert" else (),
                        batch_size=1_000_000)
    writer = sink.open("p1")
    writer.write(_wide(0, 10), "warm-up")
    small, large = (_python_calls(lambda: writer.write(_wide(start, n), f"b{n}")) for start, n in
                    ((10, 1_000), (10_000, 100_000)))
    assert large - small < 1_000, (small, large)
    assert (writer.copies, writer.binary_copies) == (3, 3)
    assert rows(pg_schema, "SELECT count(*) FROM wide") == [101_010]
    assert rows(pg_schema, "SELECT sum(id) FROM wide") == [sum(range(1_010)) + sum(range(10_000, 110_000))]


def test_the_warehouse_stages_its_batches_in_binary(pg_schema):
    writer = WarehouseSink(url=pg_schema, table="people", key_fields=("id",)).open("p1")
    writer.write(_wide(0, 100), "b1")
    writer.write(_wide(50, 100), "b2")
    assert (writer.copies, writer.binary_copies) == (2, 2)
    assert rows(pg_schema, "SELECT count(*) FROM people") == [150]


def _wide(start: int, n: int) -> pa.Table:
    ids = np.arange(start, start + n, dtype=np.int64)
    at = pa.array(int(WHEN.timestamp() * 1e6) + ids * 1_000_000, pa.timestamp("us", "UTC"))
    return pa.table({"id": ids, "name": pa.array(ids).cast(pa.string()), "at": at,
                     "ok": pa.array(ids % 3 == 0, mask=ids % 7 == 0)})


def _python_calls(action) -> int:
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"
    sys.setprofile(count)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


# --- binary against CSV, for any values ------------------------------------------------

COLUMNS = "a bigint, b text, c double precision, d timestamp with time zone, e date, f numeric(15,3), g boolean"


@pytest.fixture(scope="module")
def conn(pg_url):
    with psycopg.connect(pg_url) as connection:
        yield connection


def _copied(conn, table: pa.Table, binary: bool) -> list[tuple]:
    with conn.transaction(force_rollback=True), conn.cursor() as cursor:
        cursor.execute(f"CREATE TEMP TABLE t (i integer, {COLUMNS}) ON COMMIT DROP")
        wire = pgcopy.wire_table(table, pgcopy.column_types(cursor, "t", ", ".join(table.column_names)))
        assert wire is not None
        data = pgcopy.binary_chunks(wire, 7) if binary else pgcopy.csv_chunks(table, 7)
        format_ = "binary" if binary else "csv"
        with cursor.copy(f"COPY t ({', '.join(table.column_names)}) FROM STDIN (FORMAT {format_})") as copy:
            for chunk in data:
                copy.write(chunk)
        cursor.execute("SELECT a, b, c, d, e, f, g FROM t ORDER BY i")
        return cursor.fetchall()


def _column(values, strategy):
    return st.lists(st.one_of(st.none(), strategy), min_size=values, max_size=values)


@st.composite
def batches(draw):
    """Tables of every type above with nulls, in one chunk, a slice of one, or two chunks."""
    n = draw(st.integers(0, 25))
    table = pa.table({
        "i": pa.array(range(n), pa.int32()),
        "a": pa.array(draw(_column(n, st.integers(-2**63, 2**63 - 1))), pa.int64()),
        "b": pa.array(draw(_column(n, st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")))),
                      pa.string()),
        "c": pa.array(draw(_column(n, st.floats())), pa.float64()),
        "d": pa.array(draw(_column(n, st.datetimes(timezones=st.just(UTC)))), pa.timestamp("us", "UTC")),
        "e": pa.array(draw(_column(n, st.dates())), pa.date32()),
        "f": pa.array(draw(_column(n, st.decimals(-10**12 + 1, 10**12 - 1, places=3))), pa.decimal128(15, 3)),
        "g": pa.array(draw(_column(n, st.booleans())), pa.bool_()),
    })
    cut = draw(st.integers(0, n))
    return pa.concat_tables([table.slice(0, cut), table.slice(cut)]) if draw(st.booleans()) else table.slice(cut)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_binary_copy_reads_back_the_batch_exactly_as_csv_copy_does(conn, batch):
    written = [v for row in zip(*(batch.column(c).to_pylist() for c in "abcdefg")) for v in row]
    binary = [v for row in _copied(conn, batch, binary=True) for v in row]
    assert same(binary, written)
    assert same(binary, [v for row in _copied(conn, batch, binary=False) for v in row])
