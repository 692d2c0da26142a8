"""The validate step: each rule type, severities and actions, the quality report,
run-wide uniqueness in the event log's database, foreign keys in one query per batch."""
import math
import multiprocessing
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_actors.db import engine_for
from etl_actors.errors import SpecError
from etl_actors.spec import Section, SpecContext, load_text
from etl_actors.transforms.base import StepContext
from etl_actors.transforms.validate import FLAGS, ValidateStep

EMAIL = r"^[^@]+@[^@]+\.[^@]+$"


def validate(rules: list, actions: Optional[dict] = None, ctx=None) -> ValidateStep:
    spec = {"id": "validate", "type": "validate", "rules": rules, **({"actions": actions} if actions else {})}
    return ValidateStep.from_spec(Section(spec, "pipeline.transformations[1]"), ctx or SpecContext())


def broken(rule: dict, table: pa.Table) -> list:
    """The ids of the rows the rule rejects (severity error, action reject)."""
    return [letter.record["id"] for letter in validate([rule]).apply(table).rejects]


def seen_rows(url: str) -> int:
    with engine_for(url).connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM etl_quality_seen")).scalar_one()


# --- each rule type ----------------------------------------------------------------------

def test_required_fields_misses_nulls_and_blank_text_but_not_zero_or_false():
    table = pa.table({"id": [1, 2, 3, 4, 5], "email": ["a@x.io", None, "", "  ", "b@y.io"],
                      "score": [0, 1, 2, 3, None], "active": [False, True, True, True, True]})
    rule = {"id": "completeness", "type": "required-fields", "fields": ["email", "score", "active"]}
    letters = validate([rule]).apply(table).rejects
    assert [(l.record["id"], l.reason) for l in letters] == [
        (2, "completeness: missing required field email"), (3, "completeness: missing required field email"),
        (4, "completeness: missing required field email"), (5, "completeness: missing required field score")]


def test_required_field_absent_from_the_batch_or_its_struct_is_missing_for_every_row():
    table = pa.table({"id": [1, 2], "contact": [{"email": "a@x.io"}, {"email": None}]})
    assert broken({"type": "required-fields", "fields": ["contact.email"]}, table) == [2]
    letters = validate([{"type": "required-fields", "fields": ["id", "phone", "contact.phone"]}]).apply(table).rejects
    assert [l.reason for l in letters] == ["required-fields: missing required fields phone, contact.phone"] * 2


def test_regex_rejects_non_matching_text_passes_nulls_and_matches_numbers_as_text():
    table = pa.table({"id": [1, 2, 3, 4], "email": ["a@x.io", "x", None, "b@y"]})
    letters = validate([{"id": "format", "type": "regex", "field": "email", "pattern": EMAIL}]).apply(table).rejects
    assert [l.reason for l in letters] == [f"format: email 'x' does not match {EMAIL}",
                                           f"format: email 'b@y' does not match {EMAIL}"]
    zips = pa.table({"id": [1, 2], "zip": [75001, 123]})
    assert broken({"type": "regex", "field": "zip", "pattern": r"^\d{5}$"}, zips) == [2]


def test_numeric_range_rejects_out_of_range_and_non_numeric_values_but_not_nulls():
    table = pa.table({"id": list(range(1, 9)), "age": ["30", "-1", "151", "abc", None, " 150 ", "nan", ""]})
    letters = validate([{"id": "range", "type": "numeric-range", "field": "age", "min": 0, "max": 150}]).apply(table).rejects
    assert [(l.record["id"], l.reason) for l in letters] == [
        (2, "range: age '-1' is below the minimum 0"), (3, "range: age '151' is above the maximum 150"),
        (4, "range: age 'abc' is not a number"), (7, "range: age 'nan' is not a number")]
    numbers = pa.table({"id": [1, 2, 3, 4], "age": [1.5, math.nan, 200.0, None]})
    assert broken({"type": "numeric-range", "field": "age", "min": 0}, numbers) == [2]
    assert broken({"type": "numeric-range", "field": "age", "max": 100}, numbers) == [2, 3]
    flags = pa.table({"id": [1], "age": [True]})
    assert broken({"type": "numeric-range", "field": "age", "min": 0}, flags) == [1]


def test_allowed_values_max_length_and_type_rules():
    table = pa.table({"id": [1, 2, 3, 4], "status": ["active", "gone", None, "inactive"],
                      "name": ["ann", "a" * 11, None, "bob"], "tags": [["a"], ["a", "b", "c"], None, []],
                      "code": [1, 2, 3, 9]})
    assert broken({"type": "allowed-values", "field": "status", "values": ["active", "inactive"]}, table) == [2]
    assert broken({"type": "allowed-values", "field": "code", "values": [1, 2, 3]}, table) == [4]
    assert broken({"type": "allowed-values", "field": "code", "values": ["1", "2", "3"]}, table) == [4]
    letters = validate([{"type": "max-length", "field": "name", "max": 10}]).apply(table).rejects
    assert [l.reason for l in letters] == ["max-length: name has 11 characters, more than 10"]
    assert broken({"type": "max-length", "field": "tags", "max": 2}, table) == [2]


@pytest.mark.parametrize("data_type, values, bad", [
    ("integer", ["1", " 2 ", "1.5", "x", None], [3, 4]),
    ("integer", [1.0, 2.5, None, 4.0, math.nan], [2, 5]),
    ("number", ["1e3", "-2.5", "one", None, ""], [3]),
    ("boolean", ["yes", "False", "maybe", "1", None], [3]),
    ("timestamp", ["2024-01-01T10:00:00", "2024-01-01 10:00:00Z", "noon", "2024-13-01", None], [3, 4]),
    ("date", ["2024-02-29", "2023-02-29", "2024-01-01", "x", None], [2, 4]),
    ("string", [1, 2, None, 4, 5], []),
])
def test_type_rule_passes_values_of_or_castable_to_the_type(data_type, values, bad):
    table = pa.table({"id": [1, 2, 3, 4, 5], "v": values})
    assert broken({"type": "type", "field": "v", "dataType": data_type}, table) == bad


def test_type_rule_on_typed_columns():
    table = pa.table({"id": [1, 2], "n": [1, 2], "flag": [True, None], "s": [{"a": 1}, {"a": 2}]})
    assert broken({"type": "type", "field": "n", "dataType": "number"}, table) == []
    assert broken({"type": "type", "field": "n", "dataType": "boolean"}, table) == [1, 2]
    assert broken({"type": "type", "field": "flag", "dataType": "boolean"}, table) == []
    assert broken({"type": "type", "field": "s", "dataType": "string"}, table) == [1, 2]


def test_unique_within_one_batch_keeps_the_first_and_never_pairs_nulls_or_blanks():
    table = pa.table({"id": [1, 2, 3, 4, 5, 6], "email": ["a@x.io", None, "a@x.io", None, "", ""]})
    letters = validate([{"id": "uniqueness", "type": "unique", "field": "email"}]).apply(table).rejects
    assert [(l.record["id"], l.reason) for l in letters] == [
        (3, "uniqueness: email 'a@x.io' is not unique: another record in this batch has it")]


# --- actions and the quality report ----------------------------------------------------------

SEED_RULES = [
    {"id": "completeness", "type": "required-fields", "fields": ["id", "email"], "severity": "error"},
    {"id": "format", "type": "regex", "field": "email", "pattern": EMAIL, "severity": "error"},
    {"id": "range", "type": "numeric-range", "field": "age", "min": 0, "max": 150, "severity": "warning"},
    {"id": "tld", "type": "regex", "field": "email", "pattern": r"\.com$", "severity": "warning"},
    {"id": "status", "type": "allowed-values", "field": "status", "values": ["active"], "severity": "info"},
]
PEOPLE = pa.table({"id": [1, 2, 3, 4, 5], "email": ["a@x.com", "bad", "c@x.io", None, "e@x.com"],
                   "age": [30, 200, 151, 40, 20], "status": ["active", "gone", "active", "gone", "gone"]})


def test_reject_makes_one_dead_letter_per_record_listing_every_rule_it_broke():
    result = validate(SEED_RULES).apply(PEOPLE)
    assert [(l.record, l.reason) for l in result.rejects] == [
        ({"id": 2, "email": "bad", "age": 200, "status": "gone"},
         f"format: email 'bad' does not match {EMAIL}; range: age 200 is above the maximum 150; "
         "tld: email 'bad' does not match \\.com$; status: status 'gone' is not one of active"),
        ({"id": 4, "email": None, "age": 40, "status": "gone"},
         "completeness: missing required field email; status: status 'gone' is not one of active")]


def test_flag_lists_the_flag_rules_broken_and_is_null_elsewhere_log_only_counts():
    result = validate(SEED_RULES).apply(PEOPLE)
    assert result.table.column_names == [*PEOPLE.column_names, FLAGS]
    assert result.table.select(["id", FLAGS]).to_pylist() == [
        {"id": 1, FLAGS: None}, {"id": 3, FLAGS: ["range", "tld"]}, {"id": 5, FLAGS: None}]
    assert result.flagged == 1
    assert result.quality["rules"]["status"]["violations"] == 3       # logged: counted, row 5 still loads


def test_flags_column_is_present_and_null_when_nothing_is_flagged():
    result = validate([{"type": "regex", "field": "email", "pattern": "@"}]).apply(PEOPLE.slice(0, 1))
    assert result.table[FLAGS].type == pa.list_(pa.string())
    assert result.table[FLAGS].to_pylist() == [None] and result.flagged == 0


def test_actions_override_the_severity_mapping():
    result = validate(SEED_RULES, actions={"error": "flag", "warning": "reject", "info": "log"}).apply(PEOPLE)
    assert [l.record["id"] for l in result.rejects] == [2, 3]
    assert result.table.select(["id", FLAGS]).to_pylist() == [
        {"id": 1, FLAGS: None}, {"id": 4, FLAGS: ["completeness"]}, {"id": 5, FLAGS: None}]
    assert result.quality["rules"]["range"]["action"] == "reject"


def test_quality_report_counts_rows_and_every_rule_with_at_most_five_examples():
    table = pa.table({"id": list(range(8)), "email": ["bad"] * 7 + ["a@x.com"], "age": [1] * 8,
                      "status": ["active"] * 8})
    quality = validate(SEED_RULES).apply(table).quality
    assert {k: quality[k] for k in ("total", "passed", "failed", "warnings")} == \
        {"total": 8, "passed": 1, "failed": 7, "warnings": 7}
    assert quality["rules"]["format"]["violations"] == 7
    assert quality["rules"]["format"]["examples"] == [
        {"record": "bad", "message": f"email 'bad' does not match {EMAIL}"}] * 5
    assert quality["rules"]["completeness"] == {"violations": 0, "severity": "error", "action": "reject", "examples": []}
    assert set(quality["rules"]) == {"completeness", "format", "range", "tld", "status"}


def test_a_rule_message_replaces_the_explanation():
    rule = {"id": "format", "type": "regex", "field": "email", "pattern": EMAIL, "message": "email looks wrong"}
    result = validate([rule]).apply(PEOPLE)
    assert result.rejects[0].reason == "format: email looks wrong"
    assert result.quality["rules"]["format"]["examples"][0] == {"record": "bad", "message": "email looks wrong"}


def test_a_second_validate_step_adds_to_the_flags_of_the_first():
    first = validate([{"id": "tld", "type": "regex", "field": "email", "pattern": r"\.com$", "severity": "warning"}])
    second = validate([{"id": "old", "type": "numeric-range", "field": "age", "max": 35, "severity": "warning"}])
    result = second.apply(first.apply(PEOPLE).table)
    assert result.table[FLAGS].to_pylist() == [None, ["tld", "old"], ["tld", "old"], ["old"], None]
    assert result.flagged == 3


# --- unique across a run -------------------------------------------------------------------------

UNIQUE = [{"id": "uniqueness", "type": "unique", "field": "email"},
          {"id": "format", "type": "regex", "field": "email", "pattern": EMAIL}]


def ctx(log_url: str, batch_id: str, run_id: str = "r1") -> StepContext:
    return StepContext(pipeline="people", run_id=run_id, batch_id=batch_id, log_url=log_url)


def test_unique_across_batches_rejects_the_later_duplicate_and_a_replay_gives_the_same_answer(tmp_path):
    log = f"sqlite:///{tmp_path}/events.db"
    step = validate(UNIQUE)
    first = pa.table({"id": [1, 2, 3], "email": ["a@x.io", None, "b@x.io"]})
    second = pa.table({"id": [4, 5, 6, 7], "email": ["b@x.io", None, "c@x.io", "c@x.io"]})
    assert step.apply_batch(first, ctx(log, "b1")).rejects == ()
    letters = step.apply_batch(second, ctx(log, "b2")).rejects
    assert [(l.record["id"], l.reason) for l in letters] == [
        (4, "uniqueness: email 'b@x.io' is not unique: another record in this run has it"),
        (7, "uniqueness: email 'c@x.io' is not unique: another record in this run has it")]
    replayed = step.apply_batch(first, ctx(log, "b1"))
    assert replayed.rejects == () and replayed.table["id"].to_pylist() == [1, 2, 3]
    assert [l.record["id"] for l in step.apply_batch(second, ctx(log, "b2")).rejects] == [4, 7]


def test_unique_is_shared_by_two_step_instances_over_the_same_log(tmp_path):
    log = f"sqlite:///{tmp_path}/events.db"
    one, other = validate(UNIQUE), pickle.loads(pickle.dumps(validate(UNIQUE)))
    one.apply_batch(pa.table({"id": [1], "email": ["a@x.io"]}), ctx(log, "b1"))
    letters = other.apply_batch(pa.table({"id": [2, 3], "email": ["a@x.io", "z@x.io"]}), ctx(log, "b2")).rejects
    assert [l.record["id"] for l in letters] == [2]


def test_a_record_rejected_by_another_rule_does_not_claim_its_value(tmp_path):
    log = f"sqlite:///{tmp_path}/events.db"
    rules = [*UNIQUE, {"id": "adult", "type": "numeric-range", "field": "age", "min": 18}]
    step = validate(rules)
    letters = step.apply_batch(pa.table({"id": [1], "email": ["a@x.io"], "age": [5]}), ctx(log, "b1")).rejects
    assert [l.reason for l in letters] == ["adult: age 5 is below the minimum 18"]
    kept = step.apply_batch(pa.table({"id": [2], "email": ["a@x.io"], "age": [30]}), ctx(log, "b2"))
    assert kept.rejects == () and kept.table["id"].to_pylist() == [2]


def test_a_new_run_starts_with_no_seen_values_and_keeps_only_the_latest_runs(tmp_path):
    from etl_actors.quality_store import KEEP_RUNS

    log = f"sqlite:///{tmp_path}/events.db"
    step = validate(UNIQUE)
    batch = pa.table({"id": [1, 2], "email": ["a@x.io", "b@x.io"]})
    step.apply_batch(batch, ctx(log, "b1", run_id="r1"))
    assert step.apply_batch(batch, ctx(log, "b9", run_id="r2")).rejects == ()
    assert seen_rows(log) == 4                  # r1's values stay: a redrive of r1's letters is judged by them
    for n in range(3, KEEP_RUNS + 4):
        step.apply_batch(batch, ctx(log, "b1", run_id=f"r{n}"))
    assert seen_rows(log) == 2 * (KEEP_RUNS + 1)   # the run claiming and the latest others


def _validate_in_a_process(log: str, batch_id: str, emails: list) -> list:
    table = pa.table({"id": emails, "email": [f"u{i}@x.io" for i in emails]})
    return validate(UNIQUE).apply_batch(table, ctx(log, batch_id)).table["id"].to_pylist()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_validating_at_once_load_each_value_once(backend, tmp_path, request):
    log = f"sqlite:///{tmp_path}/events.db" if backend == "sqlite" else request.getfixturevalue("pg_schema")
    batches = {"b1": list(range(0, 2000)), "b2": list(range(1000, 3000)), "b3": list(range(2500, 0, -1))}
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("fork")) as pool:
        loaded = list(pool.map(_validate_in_a_process, [log] * 3, batches, batches.values()))
    everything = sorted(sum(loaded, []))
    assert everything == list(range(3000))


def test_unique_across_batches_with_the_log_on_postgres(pg_schema):
    step = validate(UNIQUE)
    step.apply_batch(pa.table({"id": [1, 2], "email": ["a@x.io", "a@x.io"]}), ctx(pg_schema, "b1"))
    letters = step.apply_batch(pa.table({"id": [3, 4], "email": ["b@x.io", "a@x.io"]}), ctx(pg_schema, "b2")).rejects
    assert [l.record["id"] for l in letters] == [4]
    again = step.apply_batch(pa.table({"id": [1, 2], "email": ["a@x.io", "a@x.io"]}), ctx(pg_schema, "b1")).rejects
    assert [l.record["id"] for l in again] == [2]


# --- foreign keys ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DestinationContext(SpecContext):
    """A spec context that knows the destination's connection (see the report)."""

    destination_url: Optional[str] = None


class Statements:
    """Counts the statements an engine runs."""

    def __init__(self, url: str):
        self.engine, self.count = engine_for(url), 0

    def __enter__(self):
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, *args):
        self.count += 1


def customers(url: str) -> str:
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (id integer PRIMARY KEY, name text)"))
        conn.execute(sa.text("INSERT INTO customers VALUES (1, 'ann'), (2, 'bob'), (42, 'eve')"))
    return url


ORDERS = [pa.table({"id": [10, 11, 12, 13], "customer_id": [1, 7, None, 42]}),
          pa.table({"id": [14, 15, 16], "customer_id": ["2", "x", " 42 "]})]


def check_foreign_keys(step: ValidateStep, url: str) -> None:
    step.open()
    with Statements(url) as statements:
        results = [step.apply(orders) for orders in ORDERS]
    assert statements.count == len(ORDERS)
    assert [[(l.record["id"], l.reason) for l in r.rejects] for r in results] == [
        [(11, "referential: customer_id 7 not found in customers.id")],
        [(15, "referential: customer_id 'x' not found in customers.id")]]


def test_foreign_key_against_a_sqlite_table_in_one_query_per_batch(tmp_path):
    url = customers(f"sqlite:///{tmp_path}/crm.db")
    rule = {"id": "referential", "type": "foreign-key", "field": "customer_id",
            "reference": {"table": "customers", "field": "id", "connection": "crm"}}
    check_foreign_keys(validate([rule], ctx=SpecContext(connections={"crm": url})), url)


def test_foreign_key_against_a_postgres_table_defaults_to_the_destination(pg_schema):
    url = customers(pg_schema)
    rule = {"id": "referential", "type": "foreign-key", "field": "customer_id",
            "reference": {"table": "customers", "field": "id"}}
    step = validate([rule], ctx=DestinationContext(destination_url=url))
    check_foreign_keys(step, url)


def test_describe_and_repr_never_show_the_reference_password():
    rule = {"type": "foreign-key", "field": "customer_id",
            "reference": {"table": "customers", "field": "id", "connection": "postgresql://crm:s3cret-pw@db/crm"}}
    step = validate([rule])
    assert "s3cret-pw" not in str(step.describe()) + repr(step) + repr(pickle.loads(pickle.dumps(step)))
    assert step.describe()["rules"][0]["reference"]["connection"].startswith("postgresql+psycopg://crm:***@db")


def test_foreign_key_chunks_a_huge_batch_into_bounded_in_lists(tmp_path):
    url = customers(f"sqlite:///{tmp_path}/crm.db")
    rule = {"id": "referential", "type": "foreign-key", "field": "customer_id",
            "reference": {"table": "customers", "field": "id", "connection": url}}
    step = validate([rule])
    step.open()
    with Statements(url) as statements:
        result = step.apply(pa.table({"id": np.arange(12_000), "customer_id": np.arange(12_000)}))
    assert statements.count == 3
    assert result.table["id"].to_pylist() == [1, 2, 42]


# --- the spec ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rules, actions, path, words", [
    ([{"type": "regex", "field": "email", "pattern": "(?<=@)x"}], None,
     "pipeline.transformations[1].rules[0].pattern", "RE2"),
    ([{"type": "regex", "field": "email", "pattern": "(a"}], None,
     "pipeline.transformations[1].rules[0].pattern", "missing )"),
    ([{"type": "not-null", "field": "email"}], None, "pipeline.transformations[1].rules[0].type",
     "is not one of required-fields, regex"),
    ([{"type": "unique", "field": "a"}, {"type": "unique", "field": "b"}], None,
     "pipeline.transformations[1].rules[1].id", "duplicate rule id 'unique' (also at [0])"),
    ([{"type": "unique", "field": "a", "severity": "fatal"}], None,
     "pipeline.transformations[1].rules[0].severity", "'fatal' is not one of error, warning, info"),
    ([{"type": "unique", "field": "a"}], {"warning": "drop"}, "pipeline.transformations[1].actions.warning",
     "'drop' is not one of reject, flag, log"),
    ([{"type": "unique", "field": "a", "pattern": "x"}], None, "pipeline.transformations[1].rules[0].pattern",
     "unknown key"),
    ([{"type": "numeric-range", "field": "a"}], None, "pipeline.transformations[1].rules[0]", "min"),
    ([{"type": "foreign-key", "field": "a", "reference": {"table": "t", "field": "id"}}], None,
     "pipeline.transformations[1].rules[0].reference.connection", "is required"),
    ([], None, "pipeline.transformations[1].rules", "at least one rule"),
])
def test_spec_errors_name_their_path(rules, actions, path, words):
    with pytest.raises(SpecError) as error:
        validate(rules, actions)
    assert error.value.path == path and words in str(error.value)


def test_the_seed_validation_section_builds_the_step():
    section = load_text("""
        rules:
          - {id: completeness, type: required-fields, fields: [id, email, created_at], severity: error}
          - {id: format, type: regex, field: email, pattern: '^[^@]+@[^@]+\\.[^@]+$', severity: error}
          - {id: range, type: numeric-range, field: age, min: 0, max: 150, severity: warning}
          - {id: uniqueness, type: unique, field: email, severity: error}
        actions: {error: reject, warning: flag, info: log}
        """)
    step = ValidateStep.from_validation(Section(section, "validation"), SpecContext())
    assert step.id == "validation" and [r.id for r in step.rules] == ["completeness", "format", "range", "uniqueness"]
    assert step.apply(pa.table({"id": [1], "email": ["a@x.io"], "created_at": ["2024-01-01"], "age": [3]})).rejects == ()


# --- properties and performance --------------------------------------------------------------------

ROWS = st.lists(st.fixed_dictionaries({
    "email": st.one_of(st.none(), st.sampled_from(["a@x.io", "b@y.com", "bad", "", " "])),
    "age": st.one_of(st.none(), st.integers(-10, 200)),
    "status": st.one_of(st.none(), st.sampled_from(["active", "gone"])),
}), max_size=30)
ACTIONS = st.fixed_dictionaries({s: st.sampled_from(["reject", "flag", "log"]) for s in ("error", "warning", "info")})


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, actions=ACTIONS)
def test_every_row_is_loaded_or_in_exactly_one_dead_letter_and_flags_only_on_loaded_rows(rows, actions):
    table = pa.table({"id": list(range(len(rows))), "email": [r["email"] for r in rows],
                      "age": pa.array([r["age"] for r in rows], pa.int64()),
                      "status": pa.array([r["status"] for r in rows], pa.string())})
    rules = [{"id": "req", "type": "required-fields", "fields": ["email"]},
             {"id": "fmt", "type": "regex", "field": "email", "pattern": EMAIL, "severity": "warning"},
             {"id": "age", "type": "numeric-range", "field": "age", "min": 0, "max": 150, "severity": "info"},
             {"id": "uniq", "type": "unique", "field": "email", "severity": "warning"},
             {"id": "st", "type": "allowed-values", "field": "status", "values": ["active"]}]
    result = validate(rules, actions).apply(table)
    loaded = result.table["id"].to_pylist()
    rejected = [letter.record["id"] for letter in result.rejects]
    assert sorted(loaded + rejected) == list(range(len(rows)))
    flagged = [i for i, f in zip(loaded, result.table[FLAGS].to_pylist()) if f is not None]
    assert set(flagged) <= set(loaded) and result.flagged == len(flagged)
    assert result.quality["passed"] + result.quality["failed"] == len(rows)


def test_a_hundred_thousand_rows_through_five_rules_take_well_under_a_second():
    n = 100_000
    rng = np.random.default_rng(7)
    table = pa.table({"id": np.arange(n), "email": [f"u{i}@x.com" if i % 100 else "bad" for i in range(n)],
                      "created_at": ["2024-01-01"] * n, "age": rng.integers(-5, 160, n),
                      "status": rng.choice(["active", "inactive", "gone"], n)})
    step = validate([SEED_RULES[0], SEED_RULES[1], SEED_RULES[2], {"type": "unique", "field": "email"},
                     {"type": "allowed-values", "field": "status", "values": ["active", "inactive"], "severity": "info"}])
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        result = step.apply(table)
        timings.append(time.perf_counter() - started)
    assert len(result.rejects) == 1000 and result.table.num_rows == 99_000
    assert min(timings) < 0.5, timings
