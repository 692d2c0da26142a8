"""The map step: sources, converters, computed and nested targets, dead letters."""
import datetime as dt
import hashlib

import pyarrow as pa
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.spec import Section, SpecContext
from etl_actors.transforms.map import MapStep


def map_step(mappings: dict, **spec) -> MapStep:
    section = Section({"id": "normalize", "type": "map", "mappings": mappings, **spec}, "pipeline.transformations[0]")
    return MapStep.from_spec(section, SpecContext())


CUSTOMERS = pa.table({
    "id": [1, 2],
    "contact": [{"email": " Ann@X.com", "phone": "1"}, {"email": "BOB@y.org", "phone": None}],
    "city": ["Paris", "Lyon"],
})


def test_outputs_only_the_mapped_fields_in_mapping_order():
    table = map_step({"city_name": "city", "customer_id": "id"}).apply(CUSTOMERS).table
    assert table.to_pylist() == [{"city_name": "Paris", "customer_id": 1}, {"city_name": "Lyon", "customer_id": 2}]


def test_nested_source_path_reads_a_struct_field_and_converters_chain():
    table = map_step({"email": {"source": "contact.email", "converter": ["trim", "lowercase"]}}).apply(CUSTOMERS).table
    assert table["email"].to_pylist() == ["ann@x.com", "bob@y.org"]


def test_source_path_reads_json_objects_stored_as_text():
    events = pa.table({"payload": ['{"user": {"id": 7}}', '{"user": {}}']})
    assert map_step({"user_id": "payload.user.id"}).apply(events).table["user_id"].to_pylist() == [7, None]


def test_sha256_hashes_the_normalized_emails():
    step = map_step({"email_hash": {"source": "contact.email", "converter": ["trim", "lowercase", "sha256"]}})
    hashes = step.apply(CUSTOMERS).table["email_hash"].to_pylist()
    assert hashes == [hashlib.sha256(b"ann@x.com").hexdigest(), hashlib.sha256(b"bob@y.org").hexdigest()]


def test_dotted_targets_build_a_struct_column():
    step = map_step({"id": "id", "address.city": "city", "address.phone": "contact.phone"})
    assert step.apply(CUSTOMERS).table.to_pylist()[0] == {"id": 1, "address": {"city": "Paris", "phone": "1"}}


def test_bad_int_row_is_dead_lettered_with_its_reason_while_the_others_convert():
    orders = pa.table({"order_id": [1, 2, 3, 4], "amount": ["10", " 20", "abc", "40"]})
    result = map_step({"order_id": "order_id", "amount": {"source": "amount", "converter": "int"}}).apply(orders)
    assert result.table.to_pylist() == [{"order_id": 1, "amount": 10}, {"order_id": 2, "amount": 20},
                                        {"order_id": 4, "amount": 40}]
    assert [(d.reason, d.record) for d in result.rejects] == [
        ("amount: cannot convert 'abc' to int", {"order_id": 3, "amount": "abc"})]


def test_scattered_bad_values_in_a_large_column_are_all_found():
    amounts = [str(i) for i in range(3000)]
    for bad in (5, 1700, 2999):
        amounts[bad] = f"x{bad}"
    result = map_step({"amount": {"converter": "float"}}).apply(pa.table({"amount": amounts}))
    assert [d.record["amount"] for d in result.rejects] == ["x5", "x1700", "x2999"]
    assert result.table.num_rows == 2997 and result.table["amount"][5].as_py() == 6.0


def test_timestamps_parse_with_a_format_or_as_iso():
    raw = pa.table({"signup": ["02/01/2024", "31/12/2023"], "seen": ["2024-01-02T03:04:05", "2024-01-03"]})
    step = map_step({"signup": {"source": "signup", "converter": "date", "format": "%d/%m/%Y"},
                     "seen": {"source": "seen", "converter": "timestamp"}})
    assert step.apply(raw).table.to_pylist() == [
        {"signup": dt.date(2024, 1, 2), "seen": dt.datetime(2024, 1, 2, 3, 4, 5)},
        {"signup": dt.date(2023, 12, 31), "seen": dt.datetime(2024, 1, 3)}]


def test_expression_computes_a_column_rounded_to_digits():
    items = pa.table({"l_extendedprice": [100.0, 33.333], "l_discount": [0.1, 0.5]})
    step = map_step({"revenue": {"expression": "l_extendedprice * (1 - l_discount)", "digits": 2}})
    assert step.apply(items).table["revenue"].to_pylist() == [90.0, 16.67]


def test_keep_adds_mapped_columns_to_the_input_replacing_same_names_then_drops():
    step = map_step({"city": {"converter": "uppercase"}, "vip": {"expression": "id == 2"}}, keep=True, drop=["contact"])
    assert step.apply(CUSTOMERS).table.to_pylist() == [
        {"id": 1, "city": "PARIS", "vip": False}, {"id": 2, "city": "LYON", "vip": True}]


def test_default_fills_nulls_and_a_missing_source():
    step = map_step({"phone": {"source": "contact.phone", "default": "unknown"},
                     "tier": {"source": "tier", "default": "basic"}})
    assert step.apply(CUSTOMERS).table.to_pylist() == [{"phone": "1", "tier": "basic"},
                                                       {"phone": "unknown", "tier": "basic"}]


def test_missing_source_path_is_a_terminal_error_naming_it():
    with pytest.raises(TerminalError, match=r"source 'contact\.fax' not found: 'contact' has no field 'fax'"):
        map_step({"fax": "contact.fax"}).apply(CUSTOMERS)


def test_unknown_converter_is_a_spec_error_at_its_path():
    with pytest.raises(SpecError, match=r"^pipeline\.transformations\[0\]\.mappings\.email\.converter\[1\]: 'lower' is not"):
        map_step({"email": {"source": "contact.email", "converter": ["trim", "lower"]}})


def test_bad_expression_is_a_spec_error_at_its_path():
    with pytest.raises(SpecError, match=r"^pipeline\.transformations\[0\]\.mappings\.total\.expression: "):
        map_step({"total": {"expression": "price.__class__"}})
