"""The aggregate step: groups, named outputs, and partials that combine exactly."""
import pyarrow as pa
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.spec import Section, SpecContext
from etl_actors.transforms.aggregate import AggregateStep

ORDERS = pa.table({
    "country": ["fr", "de", "fr", None, "fr", "de", "us"],
    "customer_id": ["a", "b", "a", "c", "d", "b", "e"],
    "amount": [10, 20, 30, 40, None, 60, 5],
})


def aggregate_step(**spec) -> AggregateStep:
    return AggregateStep.from_spec(Section({"type": "aggregate", **spec}, "pipeline.transformations[3]"), SpecContext())


def test_groups_rows_and_names_outputs_func_field():
    step = aggregate_step(groupBy=["country"], aggregations={"amount": ["sum", "avg", "count"], "customer_id": "count_distinct"})
    rows = step.apply(ORDERS).table.to_pylist()
    assert rows[0] == {"country": "fr", "sum_amount": 40, "avg_amount": 20.0, "count_amount": 2,
                       "count_distinct_customer_id": 2}
    assert [r["country"] for r in rows] == ["fr", "de", None, "us"]
    assert rows[1]["sum_amount"] == 80 and rows[1]["count_distinct_customer_id"] == 1


def test_combining_partials_of_three_slices_equals_aggregating_the_whole_table():
    step = aggregate_step(groupBy=["country"], aggregations={
        "amount": ["sum", "avg", "min", "max", "count"], "customer_id": "count_distinct", "*": "count"})
    slices = [ORDERS.slice(0, 2), ORDERS.slice(2, 3), ORDERS.slice(5)]
    combined = step.combine([step.partial(s) for s in slices])
    assert combined.equals(step.apply(ORDERS).table)
    assert combined.column("count").to_pylist() == [3, 2, 1, 1]


def test_without_group_by_gives_one_global_row_even_for_no_input():
    step = aggregate_step(aggregations={"amount": ["sum", "max"], "customer_id": "count_distinct", "*": "count"})
    assert step.apply(ORDERS).table.to_pylist() == [
        {"sum_amount": 165, "max_amount": 60, "count_distinct_customer_id": 5, "count": 7}]
    empty = step.combine([step.partial(ORDERS.slice(0, 0))]).to_pylist()
    assert empty == [{"sum_amount": None, "max_amount": None, "count_distinct_customer_id": 0, "count": 0}]


def test_unknown_function_is_a_spec_error_at_its_field():
    with pytest.raises(SpecError, match=r"^pipeline\.transformations\[3\]\.aggregations\.amount: 'median' is not one of"):
        aggregate_step(aggregations={"amount": "median"})


def test_missing_input_column_is_a_terminal_error_naming_it():
    step = aggregate_step(groupBy=["region"], aggregations={"amount": "sum"})
    with pytest.raises(TerminalError, match="'region' not found"):
        step.apply(ORDERS)
