"""The window processor's spec: durations, defaults, and errors that name their path."""
import pytest

from etl_actors.errors import SpecError
from etl_actors.spec import Section, SpecContext
from etl_actors.windows import WindowSpec, parse_ms

PATH = "stream.processors[1]"
SEED = {"id": "aggregate", "type": "window", "description": "per user and minute",
        "window": {"type": "tumbling", "size": 60000}, "keyBy": "userId", "timestampField": "timestamp",
        "maxOutOfOrderness": "5s", "idleTimeout": "30s", "windowParallelism": 2,
        "aggregations": {"event_count": "count", "unique_users": "count_distinct:userId", "total_value": "sum:value",
                         "avg_v": "avg:value", "lo": "min:value", "hi": "max:value"}}


def window(**overrides) -> WindowSpec:
    return WindowSpec.from_spec(Section({**SEED, **overrides}, PATH), SpecContext())


def error(**overrides) -> str:
    with pytest.raises(SpecError) as caught:
        window(**overrides)
    return str(caught.value)


@pytest.mark.parametrize("text, ms", [(60000, 60000), (1.5, 2), ("500ms", 500), ("30s", 30_000), ("1.5s", 1500),
                                      ("1m", 60_000), ("2h", 7_200_000), ("1d", 86_400_000), (" 10 s ", 10_000),
                                      ("250", 250), (0, 0)])
def test_durations_are_milliseconds_or_text_with_a_unit(text, ms):
    assert parse_ms(text) == ms


@pytest.mark.parametrize("value, message", [(-1, "of 0 or more"), ("-5s", "expected a duration"),
                                            (True, "expected a duration"), ("5 weeks", "expected a duration"),
                                            (float("inf"), "of 0 or more"), (None, "expected a duration")])
def test_bad_durations_say_what_is_expected(value, message):
    with pytest.raises(ValueError, match=message):
        parse_ms(value)


def test_the_seed_example_parses():
    spec = window()
    assert (spec.id, spec.kind, spec.size_ms, spec.key_by, spec.timestamp_field) == (
        "aggregate", "tumbling", 60_000, ("userId",), "timestamp")
    assert (spec.max_out_of_orderness_ms, spec.allowed_lateness_ms, spec.idle_timeout_ms, spec.parallelism) == (
        5_000, 0, 30_000, 2)
    assert spec.aggregations[:2] == (("event_count", "count", None), ("unique_users", "count_distinct", "userId"))


def test_defaults():
    spec = WindowSpec.from_spec(Section({"type": "window", "window": {"type": "session", "gap": "30s"},
                                         "aggregations": {"n": "count"}}, PATH), SpecContext())
    assert (spec.id, spec.gap_ms, spec.key_by, spec.timestamp_field, spec.max_out_of_orderness_ms) == (
        "window", 30_000, (), None, 0)
    assert (spec.idle_timeout_ms, spec.parallelism) == (None, 1)


@pytest.mark.parametrize("overrides, message", [
    ({"window": {"type": "hopping", "size": 5}}, f"{PATH}.window.type: 'hopping' is not one of tumbling"),
    ({"window": {"type": "tumbling", "size": "1 minute"}}, f"{PATH}.window.size: expected a duration"),
    ({"window": {"type": "tumbling", "size": 0}}, f"{PATH}.window.size: expected a duration above 0, got 0"),
    ({"window": {"type": "sliding", "size": "1m"}}, f"{PATH}.window.slide: is required"),
    ({"window": {"type": "sliding", "size": "1m", "slide": "2m"}}, f"{PATH}.window.slide: a slide (120000 ms) longer"),
    ({"window": {"type": "session", "gap": 0}}, f"{PATH}.window.gap: expected a duration above 0"),
    ({"window": {"type": "tumbling", "size": 5, "gap": 5}}, f"{PATH}.window.gap: unknown key"),
    ({"maxOutOfOrderness": "-1s"}, f"{PATH}.maxOutOfOrderness: expected a duration"),
    ({"idleTimeout": 0}, f"{PATH}.idleTimeout: expected a duration above 0"),
    ({"windowParallelism": 0}, f"{PATH}.windowParallelism: expected a positive integer"),
    ({"keyBy": ["userId", 3]}, f"{PATH}.keyBy[1]: expected a string"),
    ({"keyBy": "windowStart"}, f"{PATH}.keyBy: 'windowStart' is the name of a window column"),
    ({"aggregations": {}}, f"{PATH}.aggregations: expected at least one aggregation"),
    ({"aggregations": {"m": "median:value"}}, f"{PATH}.aggregations.m: 'median' is not one of count, count_distinct"),
    ({"aggregations": {"s": "sum"}}, f"{PATH}.aggregations.s: sum needs a field"),
    ({"aggregations": {"s": 3}}, f"{PATH}.aggregations.s: expected 'func' or 'func:field'"),
    ({"aggregations": {"windowEnd": "count"}}, f"{PATH}.aggregations.windowEnd: 'windowEnd' is already the name"),
    ({"aggregations": {"userId": "count"}}, f"{PATH}.aggregations.userId: 'userId' is already the name of a keyBy"),
    ({"aggregations": {"first": "min:windowStart"}}, f"{PATH}.aggregations.first: cannot aggregate 'windowStart'"),
    ({"windowSize": 5}, f"{PATH}.windowSize: unknown key"),
])
def test_errors_name_the_offending_path(overrides, message):
    assert error(**overrides).startswith(message)


def test_an_impossible_spec_built_in_code_fails_at_construction():
    with pytest.raises(ValueError, match="window.slide: a slide"):
        WindowSpec("w", "sliding", 10, 20, None, aggregations=(("n", "count", None),))
