"""``type: window``: aggregate a stream over event-time windows.

    - id: per_minute                         # default "window"
      type: window
      window: {type: tumbling, size: 1m}     # or {type: sliding, size: 1m, slide: 10s}
                                             # or {type: session, gap: 30s}
      keyBy: userId                          # a field or a list; none: one global window
      timestampField: timestamp              # none: processing time
      maxOutOfOrderness: 5s                  # default 0
      allowedLateness: 0                     # default 0
      idleTimeout: 30s                       # optional
      windowParallelism: 2                   # window actors (key-hash shards); default 1
      aggregations: {events: count, users: "count_distinct:userId", total: "sum:value"}

Durations are milliseconds (``60000``) or text (``500ms``, ``30s``, ``1m``, ``2h``,
``1d``). An aggregation is ``func`` or ``func:field`` with func one of count,
count_distinct, sum, avg, min, max. ``count`` counts events; ``count:field`` counts
the events whose field is not null (as the batch aggregate step does); the others
need a field. Each window emits one row per key: ``windowStart``, ``windowEnd``
(epoch ms), the keyBy fields, then the aggregations in the order given.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError, describe
from ..spec import REQUIRED

KINDS = ("tumbling", "sliding", "session")
FUNCS = ("count", "count_distinct", "sum", "avg", "min", "max")
BOUNDS = ("windowStart", "windowEnd")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {None: 1, "ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_ms(value: Any) -> int:
    """A duration in whole milliseconds: a number is milliseconds (``60000``), text
    has a unit (``500ms``, ``30s``, ``1m``, ``2h``, ``1d``; none means ms). Raises
    ValueError for a negative, a bool or anything else.

    >>> parse_ms("1.5s"), parse_ms(60000)
    (1500, 60000)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a duration of 0 or more, got {describe(value)}")
        return round(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("expected a duration: milliseconds (60000) or text such as '500ms', "
                         f"'30s', '1m', '2h', '1d', got {describe(value)}")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


class InvalidWindow(ValueError):
    """A WindowSpec that cannot work; ``key`` is the offending key's path within the
    processor's section (``window.slide``, ``aggregations.total``)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.reason = key, message


@dataclass(frozen=True)
class WindowSpec:
    """A validated window processor; see the module docstring for the spec it reads.

    ``aggregations`` holds ``(output name, func, field or None)`` in output order.
    """

    id: str
    kind: str
    size_ms: int | None
    slide_ms: int | None
    gap_ms: int | None
    key_by: tuple[str, ...] = ()
    timestamp_field: str | None = None
    max_out_of_orderness_ms: int = 0
    allowed_lateness_ms: int = 0
    idle_timeout_ms: int | None = None
    aggregations: tuple[tuple[str, str, str | None], ...] = ()
    parallelism: int = 1

    def __post_init__(self):
        for problem in (self._shape_problem(), self._timing_problem(), self._keys_problem(),
                        *map(self._aggregation_problem, self.aggregations), self._aggregations_problem()):
            if problem:
                raise InvalidWindow(*problem)

    @classmethod
    def from_spec(cls, section, ctx) -> "WindowSpec":
        window = section.section("window")
        kind = window.get("type", types=str, choices=KINDS)
        fields = {"size_ms": _duration(window, "size") if kind != "session" else None,
                  "slide_ms": _duration(window, "slide") if kind == "sliding" else None,
                  "gap_ms": _duration(window, "gap") if kind == "session" else None}
        window.done()
        fields.update(
            id=section.get("id", "window", types=str), kind=kind,
            key_by=section.str_list("key_by", ()),
            timestamp_field=section.get("timestamp_field", None, types=str),
            max_out_of_orderness_ms=_duration(section, "max_out_of_orderness", 0),
            allowed_lateness_ms=_duration(section, "allowed_lateness", 0),
            idle_timeout_ms=_duration(section, "idle_timeout", None),
            parallelism=section.positive_int("window_parallelism", 1),
            aggregations=_aggregations(section))
        section.get("type", types=str)
        section.get("description", None)
        section.done()
        try:
            return cls(**fields)
        except InvalidWindow as exc:
            raise SpecError(f"{section.path}.{exc.key}" if section.path else exc.key, exc.reason) from None

    @property
    def fields(self) -> tuple[str, ...]:
        """The input fields the aggregations read, each once."""
        return tuple(dict.fromkeys(field for _, _, field in self.aggregations if field))

    def _shape_problem(self) -> tuple[str, str] | None:
        if self.kind not in KINDS:
            return "window.type", f"{self.kind!r} is not one of {', '.join(KINDS)}"
        wanted = {"tumbling": ("size",), "sliding": ("size", "slide"), "session": ("gap",)}[self.kind]
        for name in ("size", "slide", "gap"):
            value = getattr(self, f"{name}_ms")
            if name in wanted and (not isinstance(value, int) or value <= 0):
                return f"window.{name}", f"expected a duration above 0, got {describe(value)}"
            if name not in wanted and value is not None:
                return f"window.{name}", f"a {self.kind} window has no {name}"
        if self.kind == "sliding" and self.slide_ms > self.size_ms:
            return "window.slide", f"a slide ({self.slide_ms} ms) longer than the size ({self.size_ms} ms) " \
                                   "would leave events in no window"
        return None

    def _timing_problem(self) -> tuple[str, str] | None:
        for key, value in (("maxOutOfOrderness", self.max_out_of_orderness_ms),
                           ("allowedLateness", self.allowed_lateness_ms)):
            if not isinstance(value, int) or value < 0:
                return key, f"expected a duration of 0 or more, got {describe(value)}"
        if self.idle_timeout_ms is not None and self.idle_timeout_ms <= 0:
            return "idleTimeout", f"expected a duration above 0, got {self.idle_timeout_ms}"
        if not isinstance(self.parallelism, int) or self.parallelism < 1:
            return "windowParallelism", f"expected a positive integer, got {describe(self.parallelism)}"
        return None

    def _keys_problem(self) -> tuple[str, str] | None:
        if len(set(self.key_by)) != len(self.key_by):
            return "keyBy", f"a field is listed twice: {list(self.key_by)}"
        clash = [k for k in self.key_by if k in BOUNDS]
        return ("keyBy", f"{clash[0]!r} is the name of a window column") if clash else None

    def _aggregation_problem(self, aggregation: tuple[str, str, str | None]) -> tuple[str, str] | None:
        name, func, field = aggregation
        key = f"aggregations.{name}"
        if func not in FUNCS:
            return key, f"{func!r} is not one of {', '.join(FUNCS)}"
        if func != "count" and not field:
            return key, f"{func} needs a field: '{func}:<field>'"
        if field in BOUNDS:
            return key, f"cannot aggregate {field!r}: the window's own column of that name would hide it"
        if name in BOUNDS or name in self.key_by:
            return key, f"{name!r} is already the name of a {'window' if name in BOUNDS else 'keyBy'} column"
        return None

    def _aggregations_problem(self) -> tuple[str, str] | None:
        names = [name for name, _, _ in self.aggregations]
        if not names:
            return "aggregations", "expected at least one aggregation, got none"
        twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
        return ("aggregations", f"{twice[0]!r} is named twice") if twice else None


def _duration(section, name: str, default: Any = REQUIRED) -> int | None:
    def problem(value: Any) -> str | None:
        try:
            parse_ms(value)
        except ValueError as exc:
            return str(exc)
        return None

    value = section.get(name, default, types=(int, float, str), check=problem)
    return value if value is default else parse_ms(value)


def _aggregations(section) -> tuple[tuple[str, str, str | None], ...]:
    raw = section.get("aggregations", types=dict,
                      check=lambda v: None if v else "expected at least one aggregation, got none")
    out = []
    for name, text in raw.items():
        if not isinstance(text, str):
            raise SpecError(f"{section.at('aggregations')}.{name}",
                            f"expected 'func' or 'func:field' ({', '.join(FUNCS)}), got {describe(text)}")
        func, _, field = (part.strip() for part in text.partition(":"))
        out.append((str(name), func, field or None))
    return tuple(out)
