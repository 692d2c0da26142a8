"""Reading an expression's text: SQL habits rewritten, the text parsed with
:func:`ast.parse` within bounds, and each name read as the user wrote it.

Bounds: at most :data:`MAX_CHARS` characters and :data:`MAX_DEPTH` levels of nesting,
the depth measured without recursion before anything walks the tree recursively, so
no input reaches a recursion limit. Python folds identifiers by NFKC (``ｎａｍｅ``
parses as ``name``); :meth:`Parsed.name` gives the name as written instead, so a
full-width name never silently reads another column.
"""
from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError

MAX_CHARS = 10_000     # characters in one expression
MAX_DEPTH = 100        # levels of nested sub-expressions

_SQL_WORDS = re.compile(r"\b(AND|OR|NOT|IN|IS|NULL|TRUE|FALSE)\b")
_SQL_EQUALS = re.compile(r"(?<![=!<>])=(?!=)")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_IDENTIFIER_END = re.compile(r"(?:[A-Za-z0-9_]|[^\x00-\x7f])+\Z")


def shown(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, shortened past ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


@dataclass(frozen=True)
class Parsed:
    """An expression's tree and the UTF-8 lines of the text its offsets count in
    (:mod:`ast` offsets are byte offsets)."""

    tree: ast.expr
    lines: tuple[bytes, ...]

    def source(self, node: ast.AST) -> str:
        """The text of ``node`` as written (after the SQL rewrites)."""
        if getattr(node, "end_col_offset", None) is None:
            return ast.unparse(node)
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:
            piece = self.lines[first][node.col_offset:node.end_col_offset]
        else:
            piece = b"\n".join([self.lines[first][node.col_offset:], *self.lines[first + 1:last],
                                self.lines[last][:node.end_col_offset]])
        return piece.decode("utf-8", "replace")

    def name(self, node: ast.Name | ast.Attribute) -> str:
        """The identifier of a Name, or the field of an Attribute, as written."""
        text = self.source(node)
        if isinstance(node, ast.Name):
            return text
        match = _IDENTIFIER_END.search(text)
        return match.group(0) if match else node.attr


def parse_expression(text: Any, path: str) -> Parsed:
    """Parse ``text`` (an expression, not yet checked); raise ``SpecError(path, ...)``
    if it is not text, too long, not an expression, or nested too deeply."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(path, f"expected a non-empty expression, got {repr(text)[:80]}")
    if len(text) > MAX_CHARS:
        raise SpecError(path, f"expression {shown(text)} has {len(text):,} characters; at most {MAX_CHARS:,} "
                              "are allowed")
    source = preprocess(text.strip(), path)
    tree = _parse(source, text, path)
    if _deeper_than(tree, MAX_DEPTH):
        raise SpecError(path, f"expression {shown(text)} nests deeper than {MAX_DEPTH} levels")
    return Parsed(tree.body, tuple(line.encode() for line in _NEWLINE.split(source)))


def _parse(source: str, text: str, path: str) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in string literals: Python's business
            return ast.parse(source, mode="eval")
    except SyntaxError as exc:
        at = f" (at character {exc.offset})" if exc.offset else ""
        raise SpecError(path, f"invalid expression {shown(text)}: {exc.msg}{at}") from None
    except (RecursionError, MemoryError):
        raise SpecError(path, f"expression {shown(text)} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise SpecError(path, f"invalid expression {shown(text)}: {exc}") from None


def _deeper_than(tree: ast.AST, limit: int) -> bool:
    """Whether sub-expressions nest past ``limit`` levels; iterative."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + isinstance(child, ast.expr)) for child in ast.iter_child_nodes(node))
    return False


# --- preprocessing: SQL habits and backquoted names, outside string literals ----------

def preprocess(text: str, path: str) -> str:
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
                raise SpecError(path, f"invalid expression {shown(text)}: unclosed backquote")
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
