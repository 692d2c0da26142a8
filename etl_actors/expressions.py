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
- literals: strings, numbers, ``true``/``false``/``null`` (or ``True``/``False``/``None``);
- columns: bare names, ``a.b`` for field ``b`` of struct column ``a``, and
  ```odd name``` or ``col("odd name")`` for any other name;
- functions: see :data:`FUNCTIONS`.

Null semantics are SQL's: a comparison with null is null, ``and``/``or`` use Kleene
logic, and a filter keeps only rows whose condition is true. A string literal
compared with a date or timestamp column is read as an ISO date/time of the column's
type (``l_shipdate <= '1998-09-02'``). Comparing a string with a number is an error.

An :class:`Expression` pickles as its text and is compiled again where it lands.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from .errors import SpecError, TerminalError

Value = pa.Array | pa.ChunkedArray | pa.Scalar
Fn = Callable[[pa.Table], Value]

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


@dataclass(frozen=True)
class Expression:
    """A compiled expression: ``evaluate(table)`` gives one value per row."""

    text: str
    columns: frozenset[str]
    path: str = ""
    _fn: Fn = field(default=None, repr=False, compare=False)

    def evaluate(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """One value per row of ``table``; a constant expression is repeated.

        Raises TerminalError when the data does not fit: a missing column, a string
        compared with a number, a value that cannot be cast.
        """
        value = self._fn(table)
        if isinstance(value, pa.Scalar):
            return pa.repeat(value, table.num_rows)
        return value

    def __reduce__(self):
        return compile_expression, (self.text, self.path)


def compile_expression(text: str, path: str = "") -> Expression:
    """Parse and check ``text``; raise ``SpecError(path, ...)`` naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(path, f"expected a non-empty expression, got {text!r}")
    try:
        tree = ast.parse(_preprocess(text.strip(), path), mode="eval")
    except SyntaxError as exc:
        raise SpecError(path, f"invalid expression {text!r}: {exc.msg} (at character {exc.offset})") from None
    compiler = _Compiler(text, path)
    fn = compiler.compile(tree.body)
    return Expression(text=text, columns=frozenset(compiler.columns), path=path, _fn=fn)


# --- preprocessing: SQL habits and backquoted names, outside string literals ----------

_SQL_WORDS = re.compile(r"\b(AND|OR|NOT|IN|IS|NULL|TRUE|FALSE)\b")
_SQL_EQUALS = re.compile(r"(?<![=!<>])=(?!=)")


def _preprocess(text: str, path: str) -> str:
    """Rewrite ```name``` to ``col('name')``, ``AND`` to ``and``, ``=`` to ``==`` and
    ``<>`` to ``!=``, leaving string literals untouched."""
    out, i = [], 0
    while i < len(text):
        if text[i] in "'\"":
            end = _string_end(text, i)
            out.append(text[i:end])
        elif text[i] == "`":
            end = text.find("`", i + 1) + 1
            if end == 0:
                raise SpecError(path, f"invalid expression {text!r}: unclosed backquote")
            out.append(f"col({text[i + 1:end - 1]!r})")
        else:
            end = min([j for j in (text.find(q, i) for q in "'\"`") if j >= 0] or [len(text)])
            plain = _SQL_WORDS.sub(lambda m: m.group(0).lower(), text[i:end])
            out.append(_SQL_EQUALS.sub("==", plain.replace("<>", "!=")))
        i = end
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    quote, i = text[start], start + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return min(i + 1, len(text))


# --- type helpers ------------------------------------------------------------------

def _is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_temporal(t)


def _is_stringy(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def cast_literal(value: pa.Scalar, target: pa.DataType) -> pa.Scalar:
    """A string literal read as ``target`` (a date or timestamp, naive or zoned)."""
    if pa.types.is_timestamp(target) and target.tz is not None:
        try:
            return value.cast(target)
        except pa.ArrowInvalid:
            naive = pa.array([value.as_py()]).cast(pa.timestamp(target.unit))
            return pc.assume_timezone(naive, timezone=target.tz)[0]
    return value.cast(target)


def coerce_literals(values: list[Value]) -> list[Value]:
    """Cast string literals to the type of a temporal column among ``values``."""
    temporal = next((v.type for v in values if not isinstance(v, pa.Scalar) and _is_temporal(v.type)), None)
    if temporal is None:
        return values
    return [cast_literal(v, temporal) if isinstance(v, pa.Scalar) and _is_stringy(v.type) else v
            for v in values]


class _Mismatch(TypeError):
    """Two values that the language refuses to compare."""


def _check_comparable(left: pa.DataType, right: pa.DataType, what: str) -> None:
    if (_is_stringy(left) and _is_numeric(right)) or (_is_numeric(left) and _is_stringy(right)):
        raise _Mismatch(f"cannot compare a string with a number in {what!r} ({left} vs {right}); "
                        f"convert one side with int(...), float(...) or str(...)")


# --- operators -----------------------------------------------------------------------

_COMPARE = {ast.Eq: pc.equal, ast.NotEq: pc.not_equal, ast.Lt: pc.less, ast.LtE: pc.less_equal,
            ast.Gt: pc.greater, ast.GtE: pc.greater_equal}


def _compare(op: type, left: Value, right: Value, what: str) -> Value:
    left, right = coerce_literals([left, right])
    _check_comparable(left.type, right.type, what)
    return _COMPARE[op](left, right)


def _is_in(value: Value, choices: pa.Array, what: str) -> Value:
    if _is_temporal(value.type) and _is_stringy(choices.type):
        choices = pa.array([cast_literal(pa.scalar(c), value.type).as_py() for c in choices.to_pylist()],
                           type=value.type)
    _check_comparable(value.type, choices.type, what)
    found = pc.is_in(value, value_set=choices)
    return pc.if_else(pc.is_valid(value), found, pa.scalar(None, pa.bool_()))


def _as_float(*values: Value) -> list[Value]:
    return [pc.cast(v, pa.float64()) if pa.types.is_integer(v.type) else v for v in values]


def _both_int(a: Value, b: Value) -> bool:
    return pa.types.is_integer(a.type) and pa.types.is_integer(b.type)


def _add(a: Value, b: Value) -> Value:
    if _is_stringy(a.type) and _is_stringy(b.type):
        return pc.binary_join_element_wise(a, b, "")
    return pc.add_checked(a, b)


def _true_divide(a: Value, b: Value) -> Value:
    if _both_int(a, b):
        a, b = _as_float(a, b)
    return pc.divide(a, b)


def _floor_divide(a: Value, b: Value) -> Value:
    result = pc.floor(pc.divide(*_as_float(a, b)))
    return pc.cast(result, pa.int64()) if _both_int(a, b) else result


def _modulo(a: Value, b: Value) -> Value:
    fa, fb = _as_float(a, b)
    result = pc.subtract(fa, pc.multiply(fb, pc.floor(pc.divide(fa, fb))))
    return pc.cast(result, pa.int64()) if _both_int(a, b) else result


_BINARY = {ast.Add: _add, ast.Sub: pc.subtract_checked, ast.Mult: pc.multiply_checked,
           ast.Div: _true_divide, ast.FloorDiv: _floor_divide, ast.Mod: _modulo}


# --- functions -------------------------------------------------------------------------

def _strings(v: Value) -> Value:
    return v if _is_stringy(v.type) else pc.cast(v, pa.string())


def _to_int(v: Value) -> Value:
    if pa.types.is_floating(v.type) or pa.types.is_decimal(v.type):
        v = pc.trunc(v)
    elif _is_stringy(v.type):
        v = pc.utf8_trim_whitespace(v)
    return pc.cast(v, pa.int64())


def _to_timestamp(v: Value, fmt: str | None = None) -> Value:
    if fmt is not None:
        return pc.strptime(_strings(v), format=fmt, unit="us")
    if _is_stringy(v.type):
        try:
            return pc.cast(v, pa.timestamp("us"))
        except pa.ArrowInvalid:
            return pc.cast(v, pa.timestamp("us", "UTC"))
    return v if pa.types.is_timestamp(v.type) else pc.cast(v, pa.timestamp("us"))


def _to_date(v: Value) -> Value:
    return v if pa.types.is_date(v.type) else pc.cast(v if _is_stringy(v.type) else _to_timestamp(v), pa.date32())


def _date_part(kernel: Callable) -> Callable[[Value], Value]:
    return lambda v: kernel(_to_timestamp(v) if _is_stringy(v.type) else v)


def _length(v: Value) -> Value:
    return pc.list_value_length(v) if pa.types.is_list(v.type) else pc.utf8_length(_strings(v))


def _substr(v: Value, start: int, length: int | None = None) -> Value:
    begin = max(start - 1, 0)
    stop = None if length is None else begin + length
    return pc.utf8_slice_codeunits(_strings(v), start=begin, stop=stop)


def _concat(*values: Value) -> Value:
    return pc.binary_join_element_wise(*[_strings(v) for v in values], "",
                                       null_handling="replace", null_replacement="")


def _coalesce(*values: Value) -> Value:
    return pc.coalesce(*coerce_literals(list(values)))


def _if_else(cond: Value, yes: Value, no: Value) -> Value:
    yes, no = coerce_literals([yes, no])
    return pc.if_else(cond, yes, no)


@dataclass(frozen=True)
class _Function:
    """``fn`` takes the evaluated arguments; ``literals`` are the positions that must
    be constants in the text (they are passed as Python values)."""

    fn: Callable[..., Value]
    min_args: int
    max_args: int | None
    literals: tuple[int, ...] = ()


FUNCTIONS: dict[str, _Function] = {
    "lower": _Function(lambda v: pc.utf8_lower(_strings(v)), 1, 1),
    "upper": _Function(lambda v: pc.utf8_upper(_strings(v)), 1, 1),
    "trim": _Function(lambda v: pc.utf8_trim_whitespace(_strings(v)), 1, 1),
    "length": _Function(_length, 1, 1),
    "abs": _Function(pc.abs_checked, 1, 1),
    "round": _Function(lambda v, digits=0: pc.round(v, ndigits=digits), 1, 2, (1,)),
    "coalesce": _Function(_coalesce, 1, None),
    "concat": _Function(_concat, 1, None),
    "substr": _Function(_substr, 2, 3, (1, 2)),
    "starts_with": _Function(lambda v, p: pc.starts_with(_strings(v), pattern=p), 2, 2, (1,)),
    "startswith": _Function(lambda v, p: pc.starts_with(_strings(v), pattern=p), 2, 2, (1,)),
    "ends_with": _Function(lambda v, p: pc.ends_with(_strings(v), pattern=p), 2, 2, (1,)),
    "contains": _Function(lambda v, p: pc.match_substring(_strings(v), pattern=p), 2, 2, (1,)),
    "year": _Function(_date_part(pc.year), 1, 1),
    "month": _Function(_date_part(pc.month), 1, 1),
    "day": _Function(_date_part(pc.day), 1, 1),
    "date": _Function(_to_date, 1, 1),
    "timestamp": _Function(_to_timestamp, 1, 2, (1,)),
    "int": _Function(_to_int, 1, 1),
    "float": _Function(lambda v: pc.cast(v, pa.float64()), 1, 1),
    "str": _Function(_strings, 1, 1),
    "if_else": _Function(_if_else, 3, 3),
}

_LITERAL_NAMES = {"true": True, "false": False, "null": None}

_FORBIDDEN = {
    ast.Subscript: "subscripts like x[0] are not allowed", ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed", ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed", ast.GeneratorExp: "generators are not allowed",
    ast.IfExp: "'a if c else b' is not allowed (use if_else(c, a, b))",
    ast.NamedExpr: "assignments are not allowed", ast.Dict: "dict literals are not allowed",
    ast.JoinedStr: "f-strings are not allowed", ast.Starred: "* arguments are not allowed",
}

_ALLOWED = ("comparisons, and/or/not, in (...), is null, arithmetic, literals, column names "
            "and the functions " + ", ".join(sorted(FUNCTIONS)) + ", col")


class _Compiler:
    """Turns checked AST nodes into closures over a table; collects the columns read."""

    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.columns: set[str] = set()

    def reject(self, node: ast.AST, problem: str, hint: str = "") -> SpecError:
        """A SpecError: ``problem`` at ``node``, then ``hint`` (default: what is allowed)."""
        hint = hint or f"allowed: {_ALLOWED}"
        return SpecError(self.path, f"{problem} in expression {self.text!r} (at {ast.unparse(node)!r}); {hint}")

    def compile(self, node: ast.AST) -> Fn:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.reject(node, _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed"))
        return method(node)

    def guarded(self, node: ast.AST, fn: Callable[[pa.Table], Value]) -> Fn:
        """Turn Arrow's type and cast errors into a TerminalError naming the piece."""
        text, piece = self.text, ast.unparse(node)

        def run(table: pa.Table) -> Value:
            try:
                return fn(table)
            except _Mismatch as exc:
                raise TerminalError(f"expression {text!r}: {exc}") from None
            except (*_ARROW_ERRORS, TypeError) as exc:
                raise TerminalError(f"expression {text!r}: cannot evaluate {piece!r}: {exc}") from None
        return run

    # leaves

    def _Constant(self, node: ast.Constant) -> Fn:
        if node.value is not None and not isinstance(node.value, (str, int, float, bool)):
            raise self.reject(node, f"{type(node.value).__name__} literals are not allowed")
        scalar = pa.scalar(node.value)
        return lambda table: scalar

    def _Name(self, node: ast.Name) -> Fn:
        if node.id in _LITERAL_NAMES:
            scalar = pa.scalar(_LITERAL_NAMES[node.id])
            return lambda table: scalar
        return self.column(node, node.id, ())

    def _Attribute(self, node: ast.Attribute) -> Fn:
        fields: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            fields.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name):
            raise self.reject(node, "attributes of computed values are not allowed")
        return self.column(node, base.id, tuple(fields))

    def column(self, node: ast.AST, name: str, fields: tuple[str, ...]) -> Fn:
        if any(part.startswith("__") for part in (name, *fields)):
            raise self.reject(node, "names starting with '__' are not allowed")
        self.columns.add(name)
        text = self.text

        def read(table: pa.Table) -> Value:
            if name not in table.column_names:
                raise TerminalError(f"expression {text!r}: column {name!r} not found "
                                    f"(columns: {', '.join(table.column_names)})", column=name)
            value, where = table.column(name), name
            for part in fields:
                if not pa.types.is_struct(value.type) or value.type.get_field_index(part) < 0:
                    raise TerminalError(f"expression {text!r}: {where!r} ({value.type}) has no field {part!r}",
                                        column=name)
                value, where = pc.struct_field(value, part), f"{where}.{part}"
            return value
        return read

    # operators

    def _BoolOp(self, node: ast.BoolOp) -> Fn:
        kernel = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
        parts = [self.compile(v) for v in node.values]

        def run(table: pa.Table) -> Value:
            result = parts[0](table)
            for part in parts[1:]:
                result = kernel(result, part(table))
            return result
        return self.guarded(node, run)

    def _UnaryOp(self, node: ast.UnaryOp) -> Fn:
        operand = self.compile(node.operand)
        kernels = {ast.Not: pc.invert, ast.USub: pc.negate_checked, ast.UAdd: lambda v: v}
        if type(node.op) not in kernels:
            raise self.reject(node, "the operator '~' is not allowed")
        kernel = kernels[type(node.op)]
        return self.guarded(node, lambda table: kernel(operand(table)))

    def _BinOp(self, node: ast.BinOp) -> Fn:
        if type(node.op) not in _BINARY:
            raise self.reject(node, f"the operator {type(node.op).__name__} is not allowed")
        kernel, left, right = _BINARY[type(node.op)], self.compile(node.left), self.compile(node.right)
        return self.guarded(node, lambda table: kernel(left(table), right(table)))

    def _Compare(self, node: ast.Compare) -> Fn:
        operands = [node.left, *node.comparators]
        checks = [self.comparison(node, op, a, b) for op, a, b in zip(node.ops, operands, operands[1:])]

        def run(table: pa.Table) -> Value:
            result = checks[0](table)
            for check in checks[1:]:
                result = pc.and_kleene(result, check(table))
            return result
        return self.guarded(node, run)

    def comparison(self, node: ast.AST, op: ast.cmpop, a: ast.AST, b: ast.AST) -> Fn:
        left = self.compile(a)
        what = f"{ast.unparse(a)} {_OP_TEXT.get(type(op), '?')} {ast.unparse(b)}"
        if isinstance(op, (ast.Is, ast.IsNot)):
            if not _is_null_literal(b):
                raise self.reject(node, "'is' compares only with null", "write 'x is null' or 'x is not null'")
            kernel = pc.is_null if isinstance(op, ast.Is) else pc.is_valid
            return lambda table: kernel(left(table))
        if isinstance(op, (ast.In, ast.NotIn)):
            choices = self.literal_list(b)
            negate = isinstance(op, ast.NotIn)
            return lambda table: (pc.invert if negate else _identity)(_is_in(left(table), choices, what))
        right = self.compile(b)
        return lambda table: _compare(type(op), left(table), right(table), what)

    def literal_list(self, node: ast.AST) -> pa.Array:
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise self.reject(node, "'in' needs a list of literals", "write x in ('a', 'b')")
        values = [self.literal(item) for item in node.elts]
        try:
            return pa.array(values)
        except _ARROW_ERRORS:
            raise self.reject(node, "a list mixes strings and numbers", "use one type of value") from None

    def literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            value = node.operand.value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
            return node.value
        if isinstance(node, ast.Name) and node.id in _LITERAL_NAMES:
            return _LITERAL_NAMES[node.id]
        raise self.reject(node, "expected a literal", "write a string, a number, true, false or null here")

    def _Call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name):
            raise self.reject(node, "method calls like a.b() are not allowed")
        name = node.func.id
        if name.startswith("__"):
            raise self.reject(node, "names starting with '__' are not allowed")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.reject(node, "keyword and * arguments are not allowed")
        if name == "col":
            return self.col(node)
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise self.reject(node, f"unknown function {name!r}")
        count = len(node.args)
        if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
            most = "any number" if spec.max_args is None else spec.max_args
            raise SpecError(self.path, f"in expression {self.text!r}: {name}() takes {spec.min_args} to {most} "
                                       f"arguments, got {count}")
        args = [self.literal(a) if i in spec.literals else self.compile(a) for i, a in enumerate(node.args)]
        literals = spec.literals
        return self.guarded(node, lambda table: spec.fn(
            *[a if i in literals else a(table) for i, a in enumerate(args)]))

    def col(self, node: ast.Call) -> Fn:
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            raise self.reject(node, "col() takes one string", "write col('unit price')")
        return self.column(node, node.args[0].value, ())


_OP_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def _identity(value: Value) -> Value:
    return value


def _is_null_literal(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and node.value is None) or (isinstance(node, ast.Name) and node.id == "null")
