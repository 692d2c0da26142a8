"""The safe expression language of filter conditions, computed columns and converters.

An expression is parsed with :func:`ast.parse` in ``mode="eval"`` (it parses, it never
runs), checked against a whitelist of node kinds, and compiled to closures that
evaluate over a whole :class:`pyarrow.Table` with :mod:`pyarrow.compute`. Nothing is
ever passed to ``eval`` and nothing runs per row::

    >>> expr = compile_expression("status == 'active' and age >= 18")
    >>> expr.evaluate(pa.table({"status": ["active", "gone"], "age": [20, 40]})).to_pylist()
    [True, False]

The language:

- comparisons ``== != < <= > >=`` (chained: ``0 < x <= 10``; SQL's ``=`` and ``<>`` too),
  ``and`` / ``or`` / ``not``, ``x in ('a', 'b')``, ``x not in (1, 2)``,
  ``x is null``, ``x is not null``; the words may be written in capitals (``AND``);
- arithmetic ``+ - * / // %`` and unary ``-`` (``/`` always divides as real numbers;
  ``+`` of two strings concatenates);
- literals: strings, 64-bit integers, finite numbers, ``true``/``false``/``null`` (or
  ``True``/``False``/``None``);
- columns: bare names, ``a.b`` for field ``b`` of struct column ``a``, and
  ```odd name``` or ``col("odd name")`` for any other name; names are compared as
  written (``ｎａｍｅ`` is not ``name``);
- functions: see :data:`FUNCTIONS`; arguments that must be literals (the digits of
  ``round``, the start and length of ``substr``, patterns, formats) are checked here.

Null semantics are SQL's: a comparison with null is null, ``and``/``or`` use Kleene
logic, and a filter keeps only rows whose condition is true. A string literal
compared with a date or timestamp column is read as an ISO date/time of the column's
type (``l_shipdate <= '1998-09-02'``). Comparing a string with a number is an error.

Every problem the text alone shows is a SpecError at compile time, naming the path:
more than :data:`MAX_CHARS` characters or :data:`MAX_DEPTH` levels of nesting, a
literal out of range, and any part that reads no column and cannot be computed
(``null == null``). Problems that depend on the data are TerminalErrors at run time,
carrying the expression's ``path``.

An :class:`Expression` pickles as its text and is compiled again where it lands.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from ..errors import SpecError
from .compiler import Compiler, Fn
from .kernels import FUNCTIONS, cast_literal, coerce_literals
from .parser import MAX_CHARS, MAX_DEPTH, parse_expression, shown

__all__ = ["Expression", "compile_expression", "FUNCTIONS", "MAX_CHARS", "MAX_DEPTH",
           "cast_literal", "coerce_literals"]


@dataclass(frozen=True)
class Expression:
    """A compiled expression: ``evaluate(table)`` gives one value per row."""

    text: str
    columns: frozenset[str]
    path: str = ""
    _fn: Fn = field(default=None, repr=False, compare=False)

    def evaluate(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """One value per row of ``table``; a constant expression is repeated.

        Raises TerminalError (with ``path``) when the data does not fit: a missing
        column, a string compared with a number, a value that cannot be cast.
        """
        value = self._fn(table)
        if isinstance(value, pa.Scalar):
            return pa.repeat(value, table.num_rows)
        return value

    def __reduce__(self):
        return compile_expression, (self.text, self.path)


def compile_expression(text: str, path: str = "") -> Expression:
    """Parse and check ``text``; raise ``SpecError(path, ...)`` naming what is not
    allowed. Never raises anything else, whatever ``text`` holds."""
    parsed = parse_expression(text, path)
    compiler = Compiler(parsed, text, path)
    try:
        fn = compiler.compile(parsed.tree)
    except RecursionError:
        raise SpecError(path, f"expression {shown(text)} nests too deeply") from None
    return Expression(text=text, columns=frozenset(compiler.columns), path=path, _fn=fn)
