"""Compiling a parsed expression: every node checked against the language, then
turned into a closure that evaluates over a whole :class:`pyarrow.Table`."""
from __future__ import annotations

import ast
import struct
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SpecError, TerminalError
from .kernels import BINARY, FUNCTIONS, UNARY, Function, Mismatch, Value, compare, is_in, literal_problem
from .parser import Parsed, shown

Fn = Callable[[pa.Table], Value]

_NO_ROWS = pa.table({})
_EVALUATION_ERRORS = (pa.ArrowException, TypeError, ValueError, ArithmeticError)
_LITERAL_NAMES = {"true": True, "false": False, "null": None}
_OP_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}

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


class Compiler:
    """Turns checked AST nodes into closures over a table; collects the columns read.

    Names are read as written (:meth:`Parsed.name`). A sub-expression that reads no
    column is evaluated once here, over an empty table, and replaced by its value, so
    what can only fail (``null == null``, ``'a' < 1``, ``1 // 0``) is a SpecError at
    ``path`` now instead of a failure of every batch. A TerminalError raised while
    evaluating carries ``path`` as context.
    """

    def __init__(self, parsed: Parsed, text: str, path: str):
        self.parsed, self.path, self.shown = parsed, path, shown(text)
        self.columns: set[str] = set()
        self.reads = 0

    def reject(self, node: ast.AST, problem: str, hint: str = "") -> SpecError:
        """A SpecError: ``problem`` at ``node``, then ``hint`` (default: what is allowed)."""
        hint = hint or f"allowed: {_ALLOWED}"
        return SpecError(self.path, f"{problem} in expression {self.shown} (at {self.piece(node)}); {hint}")

    def piece(self, node: ast.AST) -> str:
        return shown(self.parsed.source(node))

    def compile(self, node: ast.AST) -> Fn:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.reject(node, _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed"))
        reads = self.reads
        fn = method(node)
        return self.folded(fn) if self.reads == reads and not isinstance(fn, Literal) else fn

    def folded(self, fn: Fn) -> Fn:
        """``fn`` reads no column: its value now, or the SpecError it can only end in."""
        try:
            value = fn(_NO_ROWS)
        except TerminalError as exc:
            raise SpecError(self.path, str(exc)) from None
        return (lambda table: value) if isinstance(value, pa.Scalar) else fn

    def guarded(self, node: ast.AST, fn: Fn) -> Fn:
        """Turn Arrow's type and cast errors into a TerminalError naming the piece and
        carrying the expression's ``path``."""
        text, piece, path = self.shown, self.piece(node), self.path

        def run(table: pa.Table) -> Value:
            try:
                return fn(table)
            except Mismatch as exc:
                raise TerminalError(f"expression {text}: {exc}", path=path) from None
            except _EVALUATION_ERRORS as exc:
                raise TerminalError(f"expression {text}: cannot evaluate {piece}: {exc}", path=path) from None
        return run

    # leaves

    def _Constant(self, node: ast.Constant) -> Fn:
        return self.constant(node, node.value)

    def constant(self, node: ast.AST, value: Any) -> Fn:
        if problem := literal_problem(value):
            raise self.reject(node, problem, "write a string, a 64-bit integer, a finite number, true, false or null")
        return Literal(value)

    def _Name(self, node: ast.Name) -> Fn:
        name = self.parsed.name(node)
        if name in _LITERAL_NAMES:
            return self.constant(node, _LITERAL_NAMES[name])
        return self.column(node, name, ())

    def _Attribute(self, node: ast.Attribute) -> Fn:
        fields: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            fields.insert(0, self.parsed.name(base))
            base = base.value
        if not isinstance(base, ast.Name):
            raise self.reject(node, "attributes of computed values are not allowed")
        return self.column(node, self.parsed.name(base), tuple(fields))

    def column(self, node: ast.AST, name: str, fields: tuple[str, ...]) -> Fn:
        if any(part.startswith("__") for part in (name, *fields)):
            raise self.reject(node, "names starting with '__' are not allowed")
        self.columns.add(name)
        self.reads += 1
        text, path = self.shown, self.path

        def read(table: pa.Table) -> Value:
            if name not in table.column_names:
                raise TerminalError(f"expression {text}: column {name!r} not found "
                                    f"(columns: {', '.join(table.column_names)})", column=name, path=path)
            value, where = table.column(name), name
            for part in fields:
                if not pa.types.is_struct(value.type) or value.type.get_field_index(part) < 0:
                    raise TerminalError(f"expression {text}: {where!r} ({value.type}) has no field {part!r}",
                                        column=name, path=path)
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
        if type(node.op) not in UNARY:
            raise self.reject(node, "the operator '~' is not allowed")
        if isinstance(node.op, ast.USub) and _is_number(node.operand):
            return self.constant(node, -node.operand.value)
        operand, kernel = self.compile(node.operand), UNARY[type(node.op)]
        return self.guarded(node, lambda table: kernel(operand(table)))

    def _BinOp(self, node: ast.BinOp) -> Fn:
        if type(node.op) not in BINARY:
            raise self.reject(node, f"the operator {type(node.op).__name__} is not allowed")
        kernel, left, right = BINARY[type(node.op)], self.compile(node.left), self.compile(node.right)
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
        what = f"{self.parsed.source(a)} {_OP_TEXT.get(type(op), '?')} {self.parsed.source(b)}"
        if isinstance(op, (ast.Is, ast.IsNot)):
            if not self.is_null(b):
                raise self.reject(node, "'is' compares only with null", "write 'x is null' or 'x is not null'")
            kernel = pc.is_null if isinstance(op, ast.Is) else pc.is_valid
            return lambda table: kernel(left(table))
        if isinstance(op, (ast.In, ast.NotIn)):
            choices, negate = self.literal_list(b), isinstance(op, ast.NotIn)
            return lambda table: (pc.invert if negate else _identity)(is_in(left(table), choices(table), what))
        right = self.compile(b)
        return lambda table: compare(type(op), left(table), right(table), what)

    def is_null(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Constant) and node.value is None) or \
            (isinstance(node, ast.Name) and self.parsed.name(node) == "null")

    def literal_list(self, node: ast.AST) -> "Literal":
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise self.reject(node, "'in' needs a list of literals", "write x in ('a', 'b')")
        values = [self.literal(item) for item in node.elts]
        kinds = {"text" if isinstance(v, str) else "bool" if isinstance(v, bool) else "number"
                 for v in values if v is not None}
        if len(kinds) > 1:
            raise self.reject(node, "a list mixes strings and numbers", "use one type of value")
        return Literal(values, many=True)

    def literal(self, node: ast.AST) -> Any:
        """The Python value of a literal (a constant, a negated number, true/false/null)."""
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_number(node.operand):
            value = -node.operand.value
        elif isinstance(node, ast.Constant):
            value = node.value
        elif isinstance(node, ast.Name) and self.parsed.name(node) in _LITERAL_NAMES:
            value = _LITERAL_NAMES[self.parsed.name(node)]
        else:
            raise self.reject(node, "expected a literal", "write a string, a number, true, false or null here")
        if problem := literal_problem(value):
            raise self.reject(node, problem, "write a string, a 64-bit integer, a finite number, true, false or null")
        return value

    def _Call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name):
            raise self.reject(node, "method calls like a.b() are not allowed")
        name = self.parsed.name(node.func)
        if name.startswith("__"):
            raise self.reject(node, "names starting with '__' are not allowed")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.reject(node, "keyword and * arguments are not allowed")
        if name == "col":
            return self.col(node)
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise self.reject(node, f"unknown function {name!r}")
        self.check_count(name, spec, len(node.args))
        args = [self.argument(name, spec, i, a) if i in spec.literals else self.compile(a)
                for i, a in enumerate(node.args)]
        literals = spec.literals
        return self.guarded(node, lambda table: spec.fn(
            *[a if i in literals else a(table) for i, a in enumerate(args)]))

    def check_count(self, name: str, spec: Function, count: int) -> None:
        if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
            most = "any number" if spec.max_args is None else spec.max_args
            raise SpecError(self.path, f"in expression {self.shown}: {name}() takes {spec.min_args} to {most} "
                                       f"arguments, got {count}")

    def argument(self, name: str, spec: Function, i: int, node: ast.AST) -> Any:
        """Argument ``i`` of ``name()``, which must be a literal that passes its check."""
        value = self.literal(node)
        if problem := spec.literals[i](value):
            raise SpecError(self.path, f"in expression {self.shown}: argument {i + 1} of {name}(): {problem}")
        return value

    def col(self, node: ast.Call) -> Fn:
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            raise self.reject(node, "col() takes one string", "write col('unit price')")
        return self.column(node, node.args[0].value, ())


def _identity(value: Value) -> Value:
    return value


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def arrow_array(values: list) -> pa.Array:
    """Literal values (of one kind, as :meth:`Compiler.literal_list` checks) as an Arrow
    array, the type ``pa.array`` would give, built from buffers: ``pa.array`` makes
    pyarrow import pandas (0.2 s of a process's start) to recognise pandas' missing
    values, which literals never are."""
    present = [v for v in values if v is not None]
    n = len(values)
    if not present:
        return pa.nulls(n)
    validity = None if len(present) == n else pa.py_buffer(_bits([v is not None for v in values]))
    if isinstance(present[0], str):
        data = [v.encode("utf-8") if v is not None else b"" for v in values]
        offsets = [0]
        for item in data:
            offsets.append(offsets[-1] + len(item))
        return pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(struct.pack("<%di" % (n + 1), *offsets)),
                                                      pa.py_buffer(b"".join(data))])
    if isinstance(present[0], bool):
        return pa.Array.from_buffers(pa.bool_(), n, [validity, pa.py_buffer(_bits([bool(v) for v in values]))])
    if all(isinstance(v, int) for v in present):
        return pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(
            struct.pack("<%dq" % n, *[v or 0 for v in values]))])
    return pa.Array.from_buffers(pa.float64(), n, [validity, pa.py_buffer(
        struct.pack("<%dd" % n, *[float(v or 0) for v in values]))])


def _bits(flags: list[bool]) -> bytes:
    """Arrow's bit-packed booleans (least significant bit first)."""
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


class Literal:
    """A literal of an expression (a value, or with ``many`` a list of them), turned
    into its Arrow scalar (array) on first use in the process that evaluates it. So a
    compiled spec holds no Arrow object: the processes that only carry it (the driver,
    the supervisor, a loader) never convert Python values to Arrow, which makes pyarrow
    import pandas (0.2 s of a worker's start)."""

    def __init__(self, value: Any, many: bool = False):
        self.value, self.many = value, many
        self._arrow = None

    def __call__(self, table: pa.Table | None = None):
        if self._arrow is None:
            self._arrow = arrow_array(self.value) if self.many else arrow_array([self.value])[0]
        return self._arrow

    def __getstate__(self) -> dict:
        return {"value": self.value, "many": self.many}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["value"], state["many"])

