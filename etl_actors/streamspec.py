"""The ``stream:`` shape of a spec: a Kafka source, processors in order, every sink.

    stream:
      source: {type: kafka, topic: user-events, consumerGroup: analytics}
      processors:
        - {id: enrich, type: map, keep: true, mappings: {...}}
        - {id: minute, type: window, window: {type: tumbling, size: 60000}, aggregations: {...}}
      sinks:
        - {type: database, connection: analytics-db, table: event_aggregates}
        - {type: kafka, topic: processed-events}

Processors before the window run on the events; those after it run on the window's
results. A database sink after a window without a ``mode`` upserts on
``[windowStart, *keyBy]`` (a replayed window overwrites itself), and a Kafka sink
without a broker writes to the source's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .spec import Section, SpecContext, _Collected, build_plugin

_STREAM_STEPS = ("map", "filter", "function", "join", "enrich", "validate")


@dataclass(frozen=True)
class StreamBody:
    source: Any
    before: tuple
    window: Any
    after: tuple
    sinks: tuple
    body: Section
    paths: dict


def stream_body(root: Section, ctx: SpecContext, collect: _Collected) -> StreamBody:
    body = root.section("stream")
    source = collect(build_plugin, "source", body.section("source"), ctx)
    path = body.at("processors")
    before, window, after = [], None, []
    for i, section in enumerate(collect(body.sections, "processors", []) or []):
        step = collect(_processor, section, ctx, window is not None)
        if step is None:
            continue
        if getattr(step, "kind", None) in ("tumbling", "sliding", "session"):
            window = step
        else:
            (after if window is not None else before).append(step)
    _check_ids(before + ([window] if window else []) + after, path, collect)
    sinks = tuple(collect(_sink, s, ctx, window, source) for s in (collect(body.sections, "sinks") or []))
    if not sinks and not collect.errors:
        collect.errors.append(SpecError(body.at("sinks"), "expected at least one sink"))
    paths = {"source": body.at("source"), "transformations": path, "destination": body.at("sinks")}
    return StreamBody(source, tuple(before), window, tuple(after), sinks, body, paths)


def _processor(section: Section, ctx: SpecContext, after_window: bool) -> Any:
    kind = section.get("type", types=str)
    if kind == "window":
        if after_window:
            raise SpecError(section.at("type"), "a stream has at most one window processor")
        from .windows.spec import WindowSpec

        return WindowSpec.from_spec(section, ctx)
    if kind not in _STREAM_STEPS:
        raise SpecError(section.at("type"), f"{kind!r} is not one of {', '.join(_STREAM_STEPS + ('window',))}")
    section.data.pop("description", None)
    return build_plugin("transform", section, ctx)


def _check_ids(steps: list, path: str, collect: _Collected) -> None:
    seen: set[str] = set()
    for i, step in enumerate(steps):
        if step.id in seen:
            collect.errors.append(SpecError(f"{path}[{i}].id", f"duplicate processor id {step.id!r}"))
        seen.add(step.id)


def _sink(section: Section, ctx: SpecContext, window: Any, source: Any) -> Any:
    kind = section.get("type", types=str)
    if window is not None and kind in ("database", "data-warehouse") and not section.has("mode"):
        section.data["mode"] = "upsert"
        section.data.setdefault("keyFields", ["windowStart", *window.key_by])
    sink = build_plugin("sink", section, ctx)
    if getattr(sink, "mode", None) == "mirror" and source is not None and getattr(source, "type", None) != "postgres-cdc":
        raise SpecError(section.at("mode"), "mode mirror applies change rows: it needs a postgres-cdc source")
    if kind == "kafka" and getattr(sink, "connection", "") is None and source is not None:
        sink = dataclasses.replace(sink, connection=getattr(source, "connection", None))
    return sink
