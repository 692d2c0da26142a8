"""The schema evolution rule, without a database or a file."""
import re
from datetime import datetime

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from etl_actors.errors import TerminalError
from etl_actors.sinks.schema import Column, arrow_columns, canonical, columns_to_add, conform, evolved
from etl_actors.sinks.sql_table import batch_columns, sql_family

WHERE = "table 'people'"


def schema(**types) -> pa.Schema:
    return pa.schema(list(types.items()))


def added(destination: pa.Schema, batch: pa.Schema, keys=()) -> list[str]:
    return [c.name for c in columns_to_add(arrow_columns(destination), arrow_columns(batch), "b.csv#0", WHERE, keys)]


def test_a_new_column_is_added_and_a_missing_one_is_not_an_addition():
    held = schema(id=pa.int64(), v=pa.int64(), old=pa.string())
    assert added(held, schema(extra=pa.string(), id=pa.int64(), more=pa.float64())) == ["extra", "more"]
    assert added(held, schema(id=pa.int64())) == []


def test_either_order_gives_the_same_columns():
    a, b = schema(id=pa.int64(), v=pa.int64()), schema(id=pa.int64(), v=pa.int64(), extra=pa.string())
    empty = pa.schema([])
    first_a = evolved(evolved(empty, a, "a.csv#0", WHERE), b, "b.csv#0", WHERE)
    first_b = evolved(evolved(empty, b, "b.csv#0", WHERE), a, "a.csv#0", WHERE)
    assert first_a == first_b == schema(id=pa.int64(), v=pa.int64(), extra=pa.string())


def test_a_type_change_is_refused_naming_column_batch_and_both_types():
    with pytest.raises(TerminalError) as caught:
        added(schema(id=pa.int64(), v=pa.int64()), schema(id=pa.int64(), v=pa.string()))
    assert str(caught.value) == ("column 'v' of batch 'b.csv#0' is string, but table 'people' has it as int64; "
                                 "type changes are refused (schema evolution only adds nullable columns)")
    assert (caught.value.column, caught.value.batch_id, caught.value.retryable) == ("v", "b.csv#0", False)


@pytest.mark.parametrize("held, batch", [
    (pa.int64(), pa.int8()), (pa.int32(), pa.uint64()), (pa.float64(), pa.float32()),
    (pa.float64(), pa.int64()), (pa.decimal128(10, 2), pa.int32()), (pa.float64(), pa.decimal128(10, 2)),
    (pa.string(), pa.large_string()), (pa.large_string(), pa.string()),
    (pa.string(), pa.dictionary(pa.int32(), pa.string())), (pa.binary(), pa.large_binary()),
    (pa.timestamp("us"), pa.timestamp("s")), (pa.timestamp("us", "UTC"), pa.timestamp("ns", "Europe/Berlin")),
    (pa.date32(), pa.date64()), (pa.time64("us"), pa.time32("s")), (pa.bool_(), pa.bool_()),
    (pa.int64(), pa.null()), (pa.string(), pa.null()), (pa.list_(pa.float64()), pa.list_(pa.int32())),
    (pa.list_(pa.string()), pa.list_(pa.null())),
    (pa.struct([("a", pa.int64())]), pa.struct([("a", pa.int16())])),
])
def test_types_of_one_family_and_widening_are_not_a_change(held, batch):
    assert added(schema(v=held), schema(v=batch)) == []


@pytest.mark.parametrize("held, batch", [
    (pa.int64(), pa.float64()), (pa.int64(), pa.string()), (pa.string(), pa.int64()), (pa.bool_(), pa.int64()),
    (pa.timestamp("us"), pa.timestamp("us", "UTC")), (pa.timestamp("us", "UTC"), pa.timestamp("us")),
    (pa.timestamp("us"), pa.date32()), (pa.date32(), pa.string()), (pa.binary(), pa.string()),
    (pa.list_(pa.int64()), pa.list_(pa.string())), (pa.list_(pa.int64()), pa.int64()),
    (pa.struct([("a", pa.int64())]), pa.struct([("b", pa.int64())])),
])
def test_other_types_are_a_change(held, batch):
    with pytest.raises(TerminalError, match=re.escape(f"is {batch}, but table 'people' has it as {held};")):
        added(schema(v=held), schema(v=batch))


def test_a_column_without_values_is_not_added_until_one_has_values():
    assert added(schema(id=pa.int64()), schema(id=pa.int64(), note=pa.null())) == []
    assert added(schema(id=pa.int64()), schema(id=pa.int64(), note=pa.int64())) == ["note"]


def test_a_new_column_is_never_a_key():
    with pytest.raises(TerminalError, match=r"key fields \['id'\] are not columns of table 'people'; a new column "
                                            r"is never a key"):
        added(schema(v=pa.int64()), schema(id=pa.int64(), v=pa.int64()), keys=("id",))


def test_a_destination_column_of_unknown_family_takes_any_batch_type():
    held = [Column("doc", None, "JSONB")]
    assert columns_to_add(held, arrow_columns(schema(doc=pa.string())), "b#0", WHERE) == ()


def test_new_columns_take_the_widest_type_of_their_family():
    assert [canonical(t) for t in (pa.int8(), pa.uint32(), pa.float32(), pa.large_string(),
                                   pa.dictionary(pa.int8(), pa.string()), pa.timestamp("s"),
                                   pa.timestamp("ns", "Europe/Berlin"), pa.list_(pa.int16()))] == [
        pa.int64(), pa.int64(), pa.float64(), pa.string(), pa.string(), pa.timestamp("us"),
        pa.timestamp("us", "UTC"), pa.list_(pa.int64())]
    assert canonical(pa.decimal128(10, 2)) == pa.decimal128(10, 2)


def test_evolved_keeps_the_same_schema_object_when_nothing_is_added():
    held = schema(id=pa.int64())
    assert evolved(held, schema(id=pa.int32(), note=pa.null()), "b#0", WHERE) is held
    assert evolved(held, schema(x=pa.int8()), "b#0", WHERE) == schema(id=pa.int64(), x=pa.int64())


def test_conform_orders_fills_and_casts_to_the_destination_schema():
    held = schema(id=pa.int64(), name=pa.string(), score=pa.float64(), at=pa.timestamp("us"))
    batch = pa.table({"score": pa.array([1, 2], pa.int32()), "id": pa.array([1, 2], pa.int8()),
                      "name": pa.array(["a", "b"]).dictionary_encode(), "at": pa.nulls(2), "new": [None, None]})
    out = conform(batch, held, "b#0", WHERE)
    assert out.schema == held
    assert out.to_pylist() == [{"id": 1, "name": "a", "score": 1.0, "at": None},
                               {"id": 2, "name": "b", "score": 2.0, "at": None}]
    assert conform(pa.table({"id": [3]}), held, "b#0", WHERE).to_pylist() == [
        {"id": 3, "name": None, "score": None, "at": None}]


def test_conform_refuses_a_value_that_does_not_convert():
    batch = pa.table({"at": pa.array([datetime(2024, 1, 1), None], pa.timestamp("ns"))})
    out = conform(batch, schema(at=pa.timestamp("us")), "b#0", WHERE)
    assert out.column("at").to_pylist() == [datetime(2024, 1, 1), None]
    batch = pa.table({"at": pa.array([1_000_000_001], pa.timestamp("ns"))})
    with pytest.raises(TerminalError, match=r"column 'at' of batch 'b#0' is timestamp\[ns\], and a value does not "
                                            r"convert to timestamp\[us\] as table 'people' has it: "):
        conform(batch, schema(at=pa.timestamp("us")), "b#0", WHERE)


@pytest.mark.parametrize("sql_type, family", [
    (sa.BigInteger(), "integer"), (sa.SmallInteger(), "integer"), (sa.Float(), "number"),
    (sa.Numeric(10, 2), "number"), (postgresql.DOUBLE_PRECISION(), "number"), (sa.Text(), "text"),
    (sa.String(20), "text"), (sa.Boolean(), "boolean"), (sa.Date(), "date"), (sa.Time(), "time"),
    (sa.DateTime(), "timestamp"), (sa.DateTime(timezone=True), "timestamp with time zone"),
    (postgresql.BYTEA(), "binary"), (postgresql.JSONB(), None), (sa.JSON(), None), (sa.Uuid(), None),
    (sa.types.NullType(), None),
])
def test_a_reflected_sql_type_decides_the_family(sql_type, family):
    assert sql_family(sql_type, zones=True) == family


def test_databases_without_zones_see_one_timestamp_family():
    zoned = schema(at=pa.timestamp("us", "UTC"))
    assert sql_family(sa.DateTime(timezone=True), zones=False) == "timestamp"
    assert [c.family for c in batch_columns(zoned, zones=False)] == ["timestamp"]
    assert [c.family for c in batch_columns(zoned, zones=True)] == ["timestamp with time zone"]


def test_batch_columns_take_the_family_of_their_sql_type():
    batch = schema(id=pa.int32(), tags=pa.list_(pa.string()), kind=pa.dictionary(pa.int8(), pa.string()),
                   note=pa.null(), price=pa.decimal128(10, 2))
    assert [(c.family, c.shown) for c in batch_columns(batch, zones=True)] == [
        ("integer", "int32"), ("text", "list<item: string>"), ("text", "dictionary<values=string, indices=int8, "
                                                                          "ordered=0>"),
        ("null", "null"), ("number", "decimal128(10, 2)")]
