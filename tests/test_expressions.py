"""The safe expression language: what users write, what it computes, what it refuses."""
import datetime as dt
import pickle

import pyarrow as pa
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.expressions import compile_expression

PATH = "pipeline.transformations[1].condition"


def values(text: str, table: pa.Table) -> list:
    return compile_expression(text).evaluate(table).to_pylist()


PEOPLE = pa.table({
    "status": ["active", "active", "gone", None],
    "age": [17, 30, 40, 50],
    "country": ["fr", "us", "de", "fr"],
})


def test_condition_combines_comparisons_with_and_or_not():
    assert values("status == 'active' and age >= 18", PEOPLE) == [False, True, False, None]
    assert values("age < 18 or country == 'de'", PEOPLE) == [True, False, True, False]
    assert values("not (age > 35)", PEOPLE) == [True, True, False, False]
    assert values("18 <= age < 45", PEOPLE) == [False, True, True, False]


def test_sql_spellings_and_backquoted_names_are_accepted():
    table = pa.table({"unit price": [5, 20], "status": ["active", "x"]})
    assert values("status = 'active' AND `unit price` <> 20", table) == [True, False]
    assert values("col('unit price') * 2", table) == [10, 40]


def test_words_inside_string_literals_are_left_alone():
    table = pa.table({"note": ["x is null AND `y` = 1", "other"]})
    assert values("note == 'x is null AND `y` = 1'", table) == [True, False]


def test_iso_string_literal_compares_with_date_and_timestamp_columns():
    days = [dt.date(1998, 9, 1), dt.date(1998, 9, 2), dt.date(1998, 9, 3)]
    table = pa.table({
        "l_shipdate": pa.array(days, pa.date32()),
        "shipped_at": pa.array([dt.datetime(d.year, d.month, d.day, 12) for d in days], pa.timestamp("us")),
        "shipped_utc": pa.array([dt.datetime(d.year, d.month, d.day) for d in days], pa.timestamp("ms", "UTC")),
    })
    assert values("l_shipdate <= '1998-09-02'", table) == [True, True, False]
    assert values("shipped_at < '1998-09-02T12:00:00'", table) == [True, False, False]
    assert values("shipped_utc >= '1998-09-02'", table) == [False, True, True]
    assert values("l_shipdate in ('1998-09-01', '1998-09-03')", table) == [True, False, True]


def test_in_not_in_and_comparisons_follow_sql_null_semantics():
    assert values("status in ('active', 'gone')", PEOPLE) == [True, True, True, None]
    assert values("status not in ('gone',)", PEOPLE) == [True, True, False, None]
    assert values("status != 'gone'", PEOPLE) == [True, True, False, None]
    assert values("status is null", PEOPLE) == [False, False, False, True]
    assert values("status IS NOT NULL", PEOPLE) == [True, True, True, False]


def test_arithmetic_computes_columns():
    table = pa.table({"l_extendedprice": [100.0, 200.0], "l_discount": [0.1, 0.25], "n": [7, -7]})
    assert values("l_extendedprice * (1 - l_discount)", table) == [90.0, 150.0]
    assert values("n / 2", table) == [3.5, -3.5]
    assert values("n // 2", table) == [3, -4]
    assert values("n % 3", table) == [1, 2]
    assert values("-n + 1", table) == [-6, 8]


def test_functions_over_strings_numbers_and_dates():
    table = pa.table({"email": [" Ann@X.COM ", None], "n": [-2.345, 1.0],
                      "day": pa.array([dt.date(2024, 3, 9), None], pa.date32())})
    assert values("lower(trim(email))", table) == ["ann@x.com", None]
    assert values("coalesce(email, 'none')", table) == [" Ann@X.COM ", "none"]
    assert values("concat(substr(trim(email), 1, 3), '-', year(day))", table) == ["Ann-2024", "-"]
    assert values("round(abs(n), 1)", table) == [2.3, 1.0]
    assert values("if_else(contains(email, 'X'), 'x', 'other')", table) == ["x", None]
    assert values("month(day) == 3 and starts_with(trim(email), 'Ann')", table) == [True, None]


def test_dotted_name_reads_a_struct_field():
    table = pa.table({"contact": [{"email": "a@x", "city": "Paris"}, {"email": "b@y", "city": "Lyon"}]})
    expression = compile_expression("contact.city == 'Lyon'")
    assert expression.evaluate(table).to_pylist() == [False, True]
    assert expression.columns == frozenset({"contact"})


def test_columns_are_the_top_level_columns_read():
    expression = compile_expression("lower(name) == 'x' and `unit price` > 2 and a.b is null and true")
    assert expression.columns == frozenset({"name", "unit price", "a"})


def test_constant_expression_gives_one_value_per_row():
    assert values("1 + 2", PEOPLE) == [3, 3, 3, 3]


def test_expression_pickles_as_its_text_and_still_evaluates():
    expression = pickle.loads(pickle.dumps(compile_expression("age > 35", PATH)))
    assert expression.text == "age > 35"
    assert expression.evaluate(PEOPLE).to_pylist() == [False, False, True, True]


@pytest.mark.parametrize("text, piece", [
    ("__import__('os')", "names starting with '__'"),
    ("a.b()", "method calls"),
    ("x[0]", "subscripts"),
    ("lambda: 1", "lambda"),
    ("a.__class__", "names starting with '__'"),
    ("[c for c in x]", "comprehensions"),
    ("x if y else z", "if_else"),
    ("open('/etc/passwd')", "unknown function 'open'"),
])
def test_forbidden_constructs_are_rejected_at_compile_time(text, piece):
    with pytest.raises(SpecError) as caught:
        compile_expression(text, PATH)
    assert str(caught.value).startswith(f"{PATH}: ")
    assert piece in str(caught.value)


def test_unknown_function_error_lists_the_allowed_ones():
    with pytest.raises(SpecError, match=r"unknown function 'median'.*lower.*upper"):
        compile_expression("median(x) > 1", PATH)


def test_syntax_error_names_the_path_and_the_text():
    with pytest.raises(SpecError, match=r"^pipeline\.transformations\[1\]\.condition: invalid expression 'age >'"):
        compile_expression("age >", PATH)


def test_missing_column_is_a_terminal_error_naming_column_and_expression():
    with pytest.raises(TerminalError, match=r"expression 'salary > 10': column 'salary' not found") as caught:
        compile_expression("salary > 10").evaluate(PEOPLE)
    assert caught.value.column == "salary"


def test_comparing_a_string_column_with_a_number_is_a_clear_error():
    with pytest.raises(TerminalError, match="cannot compare a string with a number in 'status == 5'"):
        compile_expression("status == 5").evaluate(PEOPLE)


# --- expressions that attack the parser: spec errors with the path, never a traceback ---

def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        compile_expression(text, PATH)
    assert str(caught.value).startswith(f"{PATH}: ")
    return str(caught.value)


@pytest.mark.parametrize("text", ["- " * 325 + "age", "not " * 150 + "age", "abs(" * 120 + "age" + ")" * 120,
                                  "(" * 300 + "age" + ")" * 300, "age" + " + age" * 120])
def test_deep_chains_are_spec_errors_not_recursion_errors(text):
    message = spec_error(text)
    assert "nests deeper than 100 levels" in message or "too many nested parentheses" in message


def test_an_expression_longer_than_the_limit_is_refused():
    assert "has 10,001 characters; at most 10,000 are allowed" in spec_error("a" * 10_001)


@pytest.mark.parametrize("text", ["age == 99999999999999999999999999", "age in (1, 99999999999999999999999999)",
                                  "age in (-99999999999999999999999999,)", "age > 9223372036854775808"])
def test_integer_literals_must_fit_in_64_bits(text):
    assert "does not fit in 64 bits" in spec_error(text)


def test_the_extreme_64_bit_integers_are_still_literals():
    table = pa.table({"n": [-(2 ** 63), 0]})
    assert values("n == -9223372036854775808", table) == [True, False]
    assert values("n < 9223372036854775807", table) == [True, True]


def test_number_literals_must_be_finite():
    assert "the number inf is not finite" in spec_error("age > 1e999")


@pytest.mark.parametrize("text, problem", [
    ("round(age, 99999999999)", "argument 2 of round(): expected an integer from -18 to 18, got 99999999999"),
    ("round(age, 1.5)", "argument 2 of round(): expected an integer from -18 to 18, got 1.5"),
    ("substr(status, 0, 2)", "argument 2 of substr(): expected an integer from 1 to 9223372036854775807, got 0"),
    ("substr(status, 1, -1)", "argument 3 of substr(): expected an integer from 0 to 9223372036854775807, got -1"),
    ("starts_with(status, 1)", "argument 2 of starts_with(): expected a string, got 1"),
    ("contains(status, null)", "argument 2 of contains(): expected a string, got None"),
    ("timestamp(status, 5)", "argument 2 of timestamp(): expected a string, got 5"),
    ("timestamp(status, '')", "argument 2 of timestamp(): expected a strptime format such as '%d/%m/%Y', got ''"),
])
def test_literal_arguments_of_functions_are_checked_at_compile_time(text, problem):
    assert problem in spec_error(text)


def test_identifiers_are_compared_as_written_not_as_python_folds_them():
    table = pa.table({"name": ["plain"], "ｎａｍｅ": ["full width"], "c": [{"city": "Lyon"}]})
    expression = compile_expression("ｎａｍｅ")
    assert expression.evaluate(table).to_pylist() == ["full width"]
    assert expression.columns == frozenset({"ｎａｍｅ"})
    assert "unknown function 'ｌｏｗｅｒ'" in spec_error("ｌｏｗｅｒ(name)")
    with pytest.raises(TerminalError, match="has no field 'ｃｉｔｙ'"):
        compile_expression("c.ｃｉｔｙ").evaluate(table)


@pytest.mark.parametrize("text, problem", [
    ("null == null", "no kernel matching input types (null, null)"),
    ("status == 'a' or 'a' < 1", "cannot compare a string with a number in \"'a' < 1\""),
    ("age + 1 // 0", "cannot evaluate '1 // 0'"),
    ("- -9223372036854775808", "overflow"),
])
def test_a_part_that_reads_no_column_and_cannot_be_computed_fails_at_compile_time(text, problem):
    assert problem in spec_error(text)


def test_a_part_that_reads_a_column_fails_only_with_the_data():
    expression = compile_expression("if_else(age > 1, 1, 'one')", PATH)
    with pytest.raises(TerminalError, match="no kernel matching input types"):
        expression.evaluate(PEOPLE)


def test_constant_parts_are_computed_once_with_the_same_values():
    assert values("concat('a', lower('B')) == 'ab' and age > 20 - 3", PEOPLE) == [False, True, True, True]
    assert values("year('2024-03-09') + 0 * age", PEOPLE) == [2024] * 4


def test_run_time_errors_carry_the_expression_path():
    with pytest.raises(TerminalError) as caught:
        compile_expression("status == 5", PATH).evaluate(PEOPLE)
    assert caught.value.path == PATH
    with pytest.raises(TerminalError) as caught:
        compile_expression("salary > 10", PATH).evaluate(PEOPLE)
    assert (caught.value.path, caught.value.column) == (PATH, "salary")


def test_timestamp_reads_epoch_seconds_and_zoned_text_as_the_map_converter_does():
    table = pa.table({"s": [1_700_000_000, None], "t": ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05+02:00"]})
    seconds = compile_expression("timestamp(s)").evaluate(table).to_pylist()
    zoned = compile_expression("timestamp(t)").evaluate(table).to_pylist()
    assert seconds[0].isoformat() == "2023-11-14T22:13:20" and seconds[1] is None
    assert [v.isoformat() for v in zoned] == ["2026-01-02T03:04:05+00:00", "2026-01-02T01:04:05+00:00"]
