"""The function step: a user's callable over a table, or record by record."""
import pyarrow as pa
import pytest

from etl_actors.errors import SpecError, TerminalError
from etl_actors.spec import Section, SpecContext
from etl_actors.transforms.function import FunctionStep

HANDLERS = "transforms.handlers"  # tests/ is on sys.path (see conftest.py)
PEOPLE = pa.table({"name": ["ann", "test-bot", "bob"], "country": ["fr", "us", "de"], "amount": [1, 2, 3]})


def function_step(**spec) -> FunctionStep:
    return FunctionStep.from_spec(Section({"id": "enrich", "type": "function", **spec}, "pipeline.transformations[2]"),
                                  SpecContext())


def test_table_handler_transforms_the_whole_batch():
    result = function_step(handler=f"{HANDLERS}:double_amount").apply(PEOPLE)
    assert result.table["amount"].to_pylist() == [2, 4, 6]


def test_record_handler_drops_none_and_dead_letters_a_failing_record():
    result = function_step(handler=f"{HANDLERS}:add_region", mode="record").apply(PEOPLE)
    assert result.table.to_pylist() == [{"name": "ann", "country": "fr", "amount": 1, "region": "eu"}]
    assert [(d.reason, d.record["name"]) for d in result.rejects] == [("KeyError: 'de'", "bob")]


@pytest.mark.parametrize("handler, problem", [
    ("nope_module:run", "cannot import module 'nope_module'"),
    (f"{HANDLERS}:missing", f"module '{HANDLERS}' has no attribute 'missing'"),
    (f"{HANDLERS}:NOT_CALLABLE", "is not callable"),
    ("os.system", "expected 'module.path:callable'"),
    ("os:system('ls')", "expected 'module.path:callable'"),
])
def test_bad_handler_is_a_spec_error_at_handler(handler, problem):
    with pytest.raises(SpecError) as caught:
        function_step(handler=handler)
    assert str(caught.value).startswith("pipeline.transformations[2].handler: ")
    assert problem in str(caught.value)


def test_handler_returning_something_else_than_a_table_is_a_terminal_error_naming_the_step():
    with pytest.raises(TerminalError, match="step 'enrich': handler .*not_a_table returned list"):
        function_step(handler=f"{HANDLERS}:not_a_table").apply(PEOPLE)
