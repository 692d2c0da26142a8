"""Expressions that attack the parser: whatever text a condition or computed column
holds, compiling it gives an Expression or a SpecError naming the path, and
evaluating a compiled one on a small table gives one value per row or a
TerminalError; nothing else, within a bounded time and amount of memory.

Texts come from a grammar (names as Python would fold them, full-width and odd
ones; literals out of every range; every operator, the forbidden ones too; calls of
known and unknown functions with random arguments; deep nesting) and at random.
"""
from __future__ import annotations

import tracemalloc

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etl_actors.errors import SpecError, TerminalError
from etl_actors.expressions import FUNCTIONS, compile_expression

PATH = "pipeline.transformations[0].condition"
MEMORY_LIMIT = 64 * 2 ** 20
FUZZ = settings(max_examples=1000, deadline=2000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TABLE = pa.table({"age": [17, None, 40], "status": ["active", None, "gone"], "ｎａｍｅ": ["a", "b", "c"],
                  "price": [1.5, 2.0, None], "c": [{"city": "Lyon"}, None, {"city": "Paris"}],
                  "unit price": [1, 2, 3], "day": pa.array([0, 1, None], pa.date32())})

NAMES = st.sampled_from(["age", "status", "name", "ｎａｍｅ", "ａｇｅ", "price", "c", "c.city", "c.ｃｉｔｙ", "c.x.y",
                         "day", "__class__", "a.__class__", "true", "false", "null", "None", "True", "Ｔｒｕｅ",
                         "`unit price`", "`age`", "col('unit price')", "col(age)", "x", "é", "ℌ", "x²", "ﬁ"])
LITERALS = st.one_of(
    st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=8).map(repr),
    st.sampled_from(["1e999", "-1e999", "99999999999999999999999999", "-9223372036854775808", "9223372036854775807",
                     "0x10", "1_000", "'2024-01-01'", "'1998-09-02T12:00:00'", "'\\q'", "b'x'", "1j", "...",
                     "'abc'", "''", "0", "-0.0", "2"]))
# three in four pieces are of the language, so that many texts compile and evaluate
BINARY = st.one_of(*[st.sampled_from(["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "=", "<>",
                                      "and", "or", "AND", "OR"])] * 3,
                   st.sampled_from(["**", "in", "not in", "is", "is not", "IS NOT", "&", "|", "@", "<<", ":=", ",",
                                    "if", "."]))
UNARY = st.one_of(*[st.sampled_from(["-", "+", "not ", "NOT "])] * 3, st.sampled_from(["~", "- -", "*"]))
FUNCTION_NAMES = st.one_of(*[st.sampled_from([*FUNCTIONS, "col"])] * 3,
                           st.sampled_from(["open", "ｌｏｗｅｒ", "__import__", "median", "eval", "a.b"]))


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, BINARY, inner).map(" ".join),
        st.tuples(UNARY, inner).map("".join),
        inner.map(lambda e: f"({e})"),
        st.tuples(FUNCTION_NAMES, st.lists(st.one_of(inner, LITERALS), max_size=4))
        .map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        st.tuples(inner, st.sampled_from(["in", "not in", "IN"]), st.lists(LITERALS, max_size=4))
        .map(lambda t: f"{t[0]} {t[1]} ({', '.join(t[2])},)"),
        inner.map(lambda e: f"{e} is null"),
        st.tuples(inner, inner, inner).map(lambda t: f"if_else({t[0]}, {t[1]}, {t[2]})"),
    )


GRAMMAR = st.recursive(st.one_of(NAMES, LITERALS), _grow, max_leaves=25)
DEEP = st.builds(lambda piece, n, leaf: piece[0] * n + leaf + piece[1] * n,
                 st.sampled_from([("- ", ""), ("not ", ""), ("abs(", ")"), ("(", ")"), ("lower(", ")"),
                                  ("1 + ", ""), ("-(", ")"), ("[", "]"), ("x.", "")]),
                 st.integers(1, 4000), st.sampled_from(["age", "1", "'a'", "null"]))
TEXTS = st.one_of(GRAMMAR, DEEP, st.text(max_size=60),
                  st.lists(st.sampled_from(list("()[]'\"`.,=<>!-+*/%&|~ \\\n#:") + ["age", "AND", "in", "1"]),
                           max_size=40).map("".join))


def outcome(text: str) -> str:
    """``"refused"``, ``"failed"`` (a TerminalError) or ``"evaluated"``; anything else fails."""
    try:
        expression = compile_expression(text, PATH)
    except SpecError as exc:
        assert str(exc).startswith(f"{PATH}: ") and exc.reason.strip(), repr(exc)
        return "refused"
    try:
        result = expression.evaluate(TABLE)
    except TerminalError as exc:
        assert getattr(exc, "path", None) == PATH, repr(exc)
        return "failed"
    assert len(result) == TABLE.num_rows
    return "evaluated"


@FUZZ
@given(text=TEXTS)
@example(text="timestamp('x', '')")  # found: Arrow's strptime crashes the process on an empty format
def test_any_text_compiles_or_is_a_spec_error_and_evaluates_or_is_a_terminal_error(figures, text):
    tracemalloc.start()
    try:
        outcome(text)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{peak:,} bytes"
    figures["inputs fuzzed: expressions"] = 1


def test_the_grammar_reaches_every_outcome():
    texts = ["age > 18 and status == 'active'", "status == 5", "- " * 325 + "age"]
    assert [outcome(t) for t in texts] == ["evaluated", "failed", "refused"]
