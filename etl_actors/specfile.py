"""Reading a spec file into plain data, safely and within bounds.

A spec is composed into YAML's node graph first, then that graph is walked once and
bounded (size once aliases are expanded, nesting depth, cycles, duplicate keys)
before any Python object is built: a 661-byte alias bomb is refused, not expanded.
Every failure is a :class:`~etl_actors.errors.SpecError` (exit 2), never another
exception.
"""
from __future__ import annotations

import codecs
from typing import Any

import yaml

from .errors import SpecError, describe, first_line

MAX_SPEC_BYTES = 1 << 20       # a larger spec file is refused before it is parsed
MAX_SPEC_VALUES = 100_000      # values in a spec once YAML aliases are expanded
MAX_SPEC_DEPTH = 100           # levels of nesting, through aliases too

_MERGE_TAG = "tag:yaml.org,2002:merge"
_KINDS = {yaml.ScalarNode: "a value", yaml.SequenceNode: "a list", yaml.MappingNode: "a mapping"}


class _Refused(Exception):
    """A YAML text refused while it is composed (too deep, too many values)."""

    def __init__(self, problem: str, mark: yaml.Mark):
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """A safe YAML loader that bounds composing (nesting depth and node count are
    checked as each node is composed, so no recursion or memory limit is reached) and
    reads every mapping key as the text written: ``on``/``yes``/``off`` stay those
    words instead of YAML 1.1 booleans, and ``1`` is the key ``'1'``."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = self.nodes = 0

    def compose_node(self, parent, index):
        self.depth, self.nodes = self.depth + 1, self.nodes + 1
        if self.depth > MAX_SPEC_DEPTH:
            raise _Refused(f"nests deeper than {MAX_SPEC_DEPTH} levels", self.peek_event().start_mark)
        if self.nodes > MAX_SPEC_VALUES:
            raise _Refused(f"holds more than {MAX_SPEC_VALUES:,} values", self.peek_event().start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False):
        """A value the tag cannot read (``2024-13-01``, ``!!int x``) is a YAML error at its line."""
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, _Refused):
            raise
        except Exception as exc:  # noqa: BLE001 - any constructor failure is the text's fault
            what = repr(node.value)[:60] if isinstance(node, yaml.ScalarNode) else _KINDS[type(node)]
            why = f" ({exc})" if type(exc) is ValueError else ""
            raise _Refused(f"cannot read {what} as {node.tag.rsplit(':', 1)[-1]}{why}", node.start_mark) from None


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    result = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be text", key_node.start_mark)
        result[key_node.value] = loader.construct_object(value_node, deep=deep)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping_children(node: yaml.MappingNode, path: str, origin: str) -> list[tuple[yaml.Node, str]]:
    """The values of a mapping with their paths; raises on a duplicate or non-text key
    (``<<`` merge keys are not compared: explicit keys may override merged ones)."""
    children, seen = [], {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            children.append((value_node, path))
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise SpecError(path, f"a mapping key must be text, got {_KINDS[type(key_node)]} "
                                  f"at line {_line(key_node)} of {origin}")
        key_path = f"{path}.{key_node.value}" if path else key_node.value
        if key_node.value in seen:
            raise SpecError(key_path, f"duplicate key at line {_line(key_node)} of {origin} "
                                      f"(first at line {seen[key_node.value]})")
        seen[key_node.value] = _line(key_node)
        children.append((value_node, key_path))
    return children


def _children(node: yaml.Node, path: str, origin: str) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.MappingNode):
        return _mapping_children(node, path, origin)
    if isinstance(node, yaml.SequenceNode):
        return [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return []


def _child_nodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [value for _, value in node.value]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _measure(node: yaml.Node, path: str, measured: dict[int, tuple[int, int]], origin: str) -> tuple[int, int]:
    """``(values, depth)`` of ``node`` once expanded, from its children's (in ``measured``)."""
    kids = [measured[id(child)] for child in _child_nodes(node)]
    keys = len(node.value) if isinstance(node, yaml.MappingNode) else 0
    values, depth = 1 + keys + sum(v for v, _ in kids), 1 + max((d for _, d in kids), default=0)
    if values > MAX_SPEC_VALUES:
        raise SpecError(path, f"expands past {MAX_SPEC_VALUES:,} values through YAML aliases (anchors & and *) "
                              f"in {origin}; a spec this large is refused")
    if depth > MAX_SPEC_DEPTH:
        raise SpecError(path, f"nests deeper than {MAX_SPEC_DEPTH} levels through YAML aliases (anchors & and *) "
                              f"in {origin}")
    return values, depth


def _check_graph(root: yaml.Node, origin: str) -> None:
    """Walk the composed graph once, each node object once (an alias is its anchor's
    node): refuse duplicate keys, self-referring aliases, and expansions past the
    limits, each at the spec path where it is met. Iterative, so no recursion limit."""
    measured: dict[int, tuple[int, int]] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, leaving = stack.pop()
        if leaving:
            entered.discard(id(node))
            measured[id(node)] = _measure(node, path, measured, origin)
        elif id(node) in entered:
            raise SpecError(path, f"a YAML alias (anchors & and *) in {origin} refers to a value that contains it")
        elif id(node) not in measured:
            entered.add(id(node))
            stack.append((node, path, True))
            stack.extend((child, child_path, False) for child, child_path in reversed(_children(node, path, origin)))


def _yaml_problem(exc: Exception) -> tuple[str, str]:
    """``(where, problem)`` of a YAML error, for a one-line message."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None)
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    elif getattr(exc, "position", None) is not None:
        where = f" at character {exc.position}"
    else:
        where = ""
    return where, getattr(exc, "problem", None) or first_line(exc)


def _compose(text: str, origin: str) -> Any:
    """The data of ``text``: composed, checked by :func:`_check_graph`, then built."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, origin)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_text(text: str, origin: str = "<spec>") -> dict:
    """Parse YAML (a superset of JSON) into a plain dict, safely and within bounds.

    Raises SpecError, never another exception: for text that is not YAML (naming the
    line), over :data:`MAX_SPEC_BYTES` characters, over :data:`MAX_SPEC_VALUES` values
    or :data:`MAX_SPEC_DEPTH` levels once YAML aliases are expanded, with an alias that
    refers to itself, or with a duplicate key (naming its path). Keys are text.
    """
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError("", f"{origin}: longer than {MAX_SPEC_BYTES:,} characters; a spec this large is refused")
    try:
        data = _compose(text, origin)
    except _Refused as exc:
        raise SpecError("", f"{origin}: {exc.problem} at line {exc.mark.line + 1}") from None
    except yaml.YAMLError as exc:
        where, problem = _yaml_problem(exc)
        raise SpecError("", f"{origin}: not valid YAML or JSON{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError("", f"{origin}: expected a mapping at the top, got {describe(data)}")
    return data


def _decode_spec(raw: bytes, origin: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); raises SpecError naming the
    first byte that is not UTF-8 and its offset in the file."""
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        raise SpecError("", f"{origin}: not UTF-8 text: byte 0x{raw[offset]:02x} at offset {offset}") from None


def load_file(path: str) -> dict:
    """:func:`load_text` of a spec file; a file over :data:`MAX_SPEC_BYTES` is refused
    before it is parsed, and one that is not UTF-8 names the offending byte."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError("", f"cannot read spec {path!r}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError("", f"{path}: larger than {MAX_SPEC_BYTES:,} bytes; a spec this large is refused")
    return load_text(_decode_spec(raw, path), origin=path)
