"""The filter step: keep the rows whose condition is true."""
import datetime as dt

import pyarrow as pa
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.spec import Section, SpecContext, build_plugin
from etl_actors.transforms.filter import FilterStep


def filter_step(condition: str) -> FilterStep:
    section = Section({"id": "active", "type": "filter", "condition": condition}, "pipeline.transformations[1]")
    return build_plugin("transform", section, SpecContext())


def test_keeps_rows_where_condition_is_true_and_drops_null_results():
    table = pa.table({"id": [1, 2, 3, 4], "status": ["active", "gone", None, "active"], "age": [30, 40, 50, 12]})
    result = filter_step("status == 'active' and age >= 18").apply(table)
    assert result.table.to_pylist() == [{"id": 1, "status": "active", "age": 30}]
    assert result.rejects == ()


def test_filters_dates_against_an_iso_literal():
    shipdates = pa.array([dt.date(1998, 8, 30), dt.date(1998, 9, 2), dt.date(1998, 9, 3)], pa.date32())
    table = pa.table({"l_orderkey": [1, 2, 3], "l_shipdate": shipdates})
    result = filter_step("l_shipdate <= '1998-09-02'").apply(table)
    assert result.table["l_orderkey"].to_pylist() == [1, 2]


def test_bad_condition_fails_when_the_spec_is_read_with_its_path():
    with pytest.raises(SpecError) as caught:
        filter_step("status == 'active' and")
    assert str(caught.value).startswith("pipeline.transformations[1].condition: invalid expression")


def test_condition_that_is_not_true_or_false_is_a_terminal_error():
    with pytest.raises(TerminalError, match=r"condition 'age \+ 1' gives int64 values, expected true/false"):
        filter_step("age + 1").apply(pa.table({"age": [1]}))
