"""Pipeline specs: parse, validate, fill defaults, resolve connections and secrets.

A spec is YAML, JSON or a dict, in camelCase or snake_case. Everything is validated
before any actor starts; every error names its path, what was expected and what was
got::

    pipeline.destination.mode: 'upsrt' is not one of insert, upsert, replace

Connection URLs may hold secrets (``${WAREHOUSE_URL}``); they are resolved here and
never appear in errors, logs or events.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from .checks import check_pipeline
from .errors import SpecError, SpecErrors, describe
from .events import pipeline_stream
from .specfile import MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_VALUES, load_file, load_text  # noqa: F401 - re-exported
from .redaction import ConnectionUrl

REQUIRED = object()
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


class Section:
    """A mapping of the spec at ``path``, read key by key.

    ``get`` accepts the snake_case name or its camelCase form; ``done`` raises on any key
    that was never read, suggesting the nearest known one.
    """

    def __init__(self, data: Any, path: str):
        if not isinstance(data, Mapping):
            raise SpecError(path, f"expected a mapping, got {describe(data)}")
        self.data = dict(data)
        self.path = path
        self._known: set[str] = set()

    def _key(self, name: str) -> str | None:
        for key in (name, camel(name)):
            if key in self.data:
                return key
        return None

    def at(self, name: str) -> str:
        return f"{self.path}.{camel(name)}" if self.path else camel(name)

    def has(self, name: str) -> bool:
        self._known.update((name, camel(name)))
        return self._key(name) is not None

    def get(self, name: str, default: Any = REQUIRED, *, types: tuple[type, ...] | type | None = None,
            choices: Iterable[str] | None = None, check: Callable[[Any], str | None] | None = None) -> Any:
        """The value at ``name``; ``check`` returns an error message or None."""
        self._known.update((name, camel(name)))
        key = self._key(name)
        if key is None or self.data[key] is None:
            if default is REQUIRED:
                raise SpecError(self.at(name), "is required")
            return default
        value = self.data[key]
        path = self.at(name)
        if types is not None:
            types = types if isinstance(types, tuple) else (types,)
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise SpecError(path, f"expected {_type_name(types)}, got {describe(value)}")
        if choices is not None:
            choices = list(choices)
            if value not in choices:
                raise SpecError(path, f"{value!r} is not one of {', '.join(map(str, choices))}")
        if check is not None and (problem := check(value)):
            raise SpecError(path, problem)
        return value

    def positive_int(self, name: str, default: Any = REQUIRED) -> Any:
        return self.get(name, default, types=int, check=lambda v: None if v > 0 else f"expected a positive integer, got {v}")

    def str_list(self, name: str, default: Any = REQUIRED) -> tuple[str, ...]:
        value = self.get(name, default, types=(list, str))
        if value is default and not isinstance(value, (list, str)):
            return value
        items = [value] if isinstance(value, str) else value
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise SpecError(f"{self.at(name)}[{i}]", f"expected a string, got {describe(item)}")
        return tuple(items)

    def section(self, name: str, default: Any = REQUIRED) -> "Section | Any":
        value = self.get(name, default)
        if value is default and default is not REQUIRED:
            return default
        return Section(value, self.at(name))

    def sections(self, name: str, default: Any = REQUIRED) -> list["Section"]:
        value = self.get(name, default, types=list)
        if value is default and default is not REQUIRED:
            return default
        return [Section(item, f"{self.at(name)}[{i}]") for i, item in enumerate(value)]

    def done(self, also_allowed: Iterable[str] = ()) -> None:
        allowed = self._known | set(also_allowed) | {camel(a) for a in also_allowed}
        for key in self.data:
            if key not in allowed:
                near = difflib.get_close_matches(key, sorted(k for k in allowed if k != snake(k) or "_" not in k), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise SpecError(f"{self.path}.{key}" if self.path else key, f"unknown key{hint}")


# --- connections and secrets -----------------------------------------------------

def anchor_sqlite(url: str, base_dir: str) -> str:
    """A SQLite URL with a relative path made absolute against ``base_dir``; other
    URLs unchanged (so every process opens the same file)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or ":memory:" in url:
        return url
    path, query = url[len(prefix):], ""
    if "?" in path:
        path, query = path.split("?", 1)
        query = "?" + query
    if path.startswith("file:"):   # a SQLite URI filename (with ?mode=ro&uri=true)
        inner = path[len("file:"):]
        return url if inner.startswith("/") else f"{prefix}file:{os.path.normpath(os.path.join(base_dir, inner))}{query}"
    return prefix + os.path.normpath(os.path.join(base_dir, os.path.expanduser(path))) + query


def substitute_env(value: str, path: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` (or ``${NAME:-default}``) with the environment's value."""
    env = os.environ if env is None else env

    def replace(match: re.Match) -> str:
        name, fallback = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if fallback is not None:
            return fallback
        raise SpecError(path, f"environment variable {name} is not set")

    return _ENV_REF.sub(replace, value)


@dataclass(frozen=True)
class SpecContext:
    """What plugins need while building from a spec: resolved connections and the
    folder relative paths are read from."""

    connections: Mapping[str, str] = field(default_factory=dict, repr=False)
    base_dir: str = "."
    destination_url: str | None = field(default=None, repr=False)   # the first sink's, for steps defaulting to it
    pipeline: str = ""           # the pipeline's name (default names: a postgres-cdc slot)

    def connection(self, section: Section, name: str = "connection") -> str:
        """The URL for a ``connection`` key: a name from ``connections:`` or a URL."""
        ref = section.get(name, types=str)
        path = section.at(name)
        if ref in self.connections:
            return ConnectionUrl(self._anchor(self.connections[ref]))
        if "://" in ref or ref.startswith("${"):
            return ConnectionUrl(self._anchor(substitute_env(ref, path)))
        known = ", ".join(sorted(self.connections)) or "none defined"
        raise SpecError(path, f"unknown connection {ref!r} (known: {known})")

    def _anchor(self, url: str) -> str:
        """Relative SQLite paths are read from the spec's folder, like file paths."""
        return anchor_sqlite(url, self.base_dir)

    def resolve_path(self, path: str) -> str:
        path = os.path.expanduser(path)
        if "://" in path or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))


def _connections(root: Section) -> dict[str, str]:
    section = root.section("connections", {})
    if not isinstance(section, Section):
        return {}
    result = {}
    for name, value in section.data.items():
        path = f"connections.{name}"
        if isinstance(value, Mapping) and "url" in value:
            value = value["url"]
        if not isinstance(value, str):
            raise SpecError(path, f"expected a URL string, got {describe(value)}")
        result[str(name)] = substitute_env(value, path)
    return result


# --- the pipeline spec -------------------------------------------------------------

@dataclass(frozen=True)
class RuntimeOptions:
    """How the runtime runs a pipeline: pool sizes, backpressure, CPU per actor."""

    parallelism: int | None = None      # transformer pool; None = the cluster's CPUs
    max_in_flight: int = 4              # batches between extraction and commit
    extractors: int | None = None       # extractor actors sharing the partitions; None = the CPUs
    num_cpus: float = 0.0               # CPUs each stage actor reserves
    max_child_restarts: int = 5         # per child per run before the run fails
    lease_timeout: float = 30.0         # seconds without a heartbeat before a run's lease expires
    checkpoint_interval: float = 1.0    # streams: seconds between committed positions (and window state)
    max_retries: int = 8                # transient errors retried (with backoff) before the run fails


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: plugins built, connections resolved, defaults filled."""

    name: str
    source: Any
    transformations: tuple[Any, ...]
    destination: Any                    # the first of ``sinks``
    runtime: RuntimeOptions = RuntimeOptions()
    schedule: Mapping[str, Any] | None = None
    pricing: Mapping[str, Any] | None = None
    digest: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    sinks: tuple[Any, ...] = ()         # every destination; each gets every result
    kind: str = "batch"                 # batch | stream
    window: Any = None                  # streams: the window processor (a WindowSpec), if any
    after: tuple[Any, ...] = ()         # streams: the processors after the window, run on its results
    spec_file: str = ""                 # the file the spec was read from (recorded with each run)
    alerts: Any = None                  # AlertOptions: failures per sliding window, threshold, webhook

    def __post_init__(self):
        if not self.sinks:
            object.__setattr__(self, "sinks", (self.destination,))

    @property
    def is_stream(self) -> bool:
        return self.kind == "stream"

    @property
    def stream(self) -> str:
        """The event stream this pipeline's supervisor writes."""
        return pipeline_stream(self.name)


def _digest(data: Mapping[str, Any]) -> str:
    """A short hash of the spec as given (keys as text, so a dict with keys of mixed
    types hashes too)."""
    return hashlib.sha256(json.dumps(_text_keys(data), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _text_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text_keys(v) for v in value]
    return value


_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(value: Any) -> float:
    """A duration as seconds: a number, or text such as ``30s``, ``500ms``, ``2m``, ``1h``;
    raises ValueError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _SECONDS.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a duration such as 30, '30s', '500ms', '2m' or '1h', got {describe(value)}")
    return float(match.group(1)) * _SECONDS_UNITS[match.group(2)]


def positive_duration_problem(value: Any) -> str | None:
    """A ``check`` for a duration that must be more than 0 seconds."""
    try:
        seconds = parse_seconds(value)
    except ValueError as exc:
        return str(exc)
    return None if seconds > 0 else f"expected more than 0 seconds, got {value!r}"


def _duration_problem(minimum: float):
    def check(value: Any) -> str | None:
        try:
            seconds = parse_seconds(value)
        except ValueError as exc:
            return str(exc)
        return None if seconds >= minimum else f"expected at least {minimum:g} seconds, got {value!r}"
    return check


def _runtime(section: Section) -> RuntimeOptions:
    lease = section.get("lease_timeout", 30.0, types=(int, float, str), check=_duration_problem(1.0))
    checkpoint = section.get("checkpoint_interval", 1.0, types=(int, float, str), check=_duration_problem(0.05))
    return RuntimeOptions(
        parallelism=section.positive_int("parallelism", None),
        max_in_flight=section.positive_int("max_in_flight", 4),
        extractors=section.positive_int("extractors", None),
        num_cpus=float(section.get("num_cpus", 0.0, types=(int, float),
                                   check=lambda v: None if v >= 0 else f"expected >= 0, got {v}")),
        max_child_restarts=section.get("max_child_restarts", 5, types=int),
        lease_timeout=parse_seconds(lease),
        checkpoint_interval=parse_seconds(checkpoint),
        max_retries=section.get("max_retries", 8, types=int,
                                check=lambda v: None if v >= 0 else f"expected >= 0, got {v}"),
    )


_RUNTIME_KEYS = ("parallelism", "max_in_flight", "extractors", "num_cpus", "max_child_restarts", "lease_timeout",
                 "checkpoint_interval", "max_retries")


def build_plugin(kind: str, section: Section, ctx: SpecContext) -> Any:
    """Build a source, sink or transform from its section, by its ``type``."""
    from .registry import lookup

    type_name = section.get("type", types=str)
    cls = lookup(kind, type_name, section.at("type"))
    return cls.from_spec(section, ctx)


class _Collected:
    """Spec errors gathered across independent parts (the source, each step, the
    destination, ...), so one ``validate`` names every one of them."""

    def __init__(self):
        self.errors: list[SpecError] = []

    def __call__(self, build, *args):
        try:
            return build(*args)
        except SpecErrors as exc:
            self.errors.extend(exc.errors)
        except SpecError as exc:
            self.errors.append(exc)
        return None

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecErrors(self.errors)


def _pipeline_body(root: Section, ctx: SpecContext,
                   collect: _Collected) -> tuple[Any, tuple, Any, Section | None, dict[str, str]]:
    # the seed's Data Quality Checker declares validation: rules between a source and its sinks
    name = "pipeline" if root.has("pipeline") else "validation" if root.has("validation") and not root.has("batch") \
        else None
    if name is not None:
        body = root.section(name)
        ctx = _with_destination(body, ctx)
        source = collect(build_plugin, "source", body.section("source"), ctx)
        steps = _transformations(body, "transformations", ctx, collect)
        destination = _destinations(body, ctx, collect)
        paths = {"source": body.at("source"), "transformations": body.at("transformations"),
                 "destination": body.at("destinations" if body.has("destinations") else "destination")}
        return source, steps, destination, body, paths
    if root.has("batch"):
        body = root.section("batch")
        ctx = _with_destination(body, ctx)
        source = collect(build_plugin, "source", body.section("source"), ctx)
        processing = body.section("processing", None)
        steps: tuple = ()
        if processing is not None:
            steps = _transformations(processing, "transformations", ctx, collect)
            chunk = collect(processing.positive_int, "chunk_size", None)
            if chunk is not None and source is not None and hasattr(source, "batch_size"):
                source = replace(source, batch_size=chunk)   # the seed's chunkSize: rows per batch
            collect(processing.done, ("chunk_size", *_RUNTIME_KEYS))
        destination = _destinations(body, ctx, collect)
        paths = {"source": body.at("source"), "transformations": f"{body.at('processing')}.transformations",
                 "destination": body.at("destinations" if body.has("destinations") else "destination")}
        from .sinks.per_file import check_spec   # here: the per-file sink reads specs

        collect(check_spec, source, steps, destination, paths["destination"])
        return source, steps, destination, processing if processing is not None else body, paths
    raise SpecError("pipeline", "is required (a spec declares 'pipeline', 'batch', 'stream' or 'validation')")


def _with_destination(body: Section, ctx: SpecContext) -> SpecContext:
    """``ctx`` knowing the (first) destination's connection URL, when it has one: a
    foreign-key rule's reference table defaults to that database."""
    raw = body.data.get("destination") or next(iter(body.data.get("destinations") or []), None)
    if not isinstance(raw, Mapping) or "connection" not in raw:
        return ctx
    try:
        url = ctx.connection(Section(raw, body.at("destination")))
    except SpecError:
        return ctx   # the sink reports its own bad connection
    return replace(ctx, destination_url=url)


def _destinations(body: Section, ctx: SpecContext, collect: _Collected) -> Any:
    """``destination`` (one sink) or ``destinations`` (a list; each gets every batch):
    a tuple of sinks when a list was given, else the one sink."""
    if body.has("destinations"):
        if body.has("destination"):
            raise SpecError(body.at("destination"), "give either destination or destinations, not both")
        sections = body.sections("destinations")
        if not sections:
            raise SpecError(body.at("destinations"), "expected at least one sink")
        return tuple(collect(build_plugin, "sink", s, ctx) for s in sections)
    return collect(build_plugin, "sink", body.section("destination"), ctx)


def _transformations(section: Section, name: str, ctx: SpecContext, collect: _Collected) -> tuple[Any, ...]:
    steps = [collect(build_plugin, "transform", s, ctx) for s in (collect(section.sections, name, []) or [])]
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step is not None and step.id in seen:
            collect.errors.append(SpecError(f"{section.at(name)}[{i}].id",
                                            f"duplicate step id {step.id!r} (also at [{seen[step.id]}])"))
        elif step is not None:
            seen[step.id] = i
    return tuple(steps)


def parse(data: Mapping[str, Any], base_dir: str = ".") -> PipelineSpec:
    """Validate a spec given as a dict and build the pipeline it declares."""
    root = Section(data, "")
    name = root.get("name", types=str, check=lambda v: None if _NAME.match(v) else
                    f"{v!r} is not a valid pipeline name (letters, digits, '.', '_', '-'; 128 at most)")
    ctx = SpecContext(connections=_connections(root), base_dir=base_dir, pipeline=name)
    collect = _Collected()
    stream = None
    if root.has("stream"):
        from .streamspec import stream_body

        stream = stream_body(root, ctx, collect)
        source, steps, destination, body, paths = stream.source, stream.before, stream.sinks, stream.body, stream.paths
    else:
        source, steps, destination, body, paths = _pipeline_body(root, ctx, collect)
    runtime = collect(_runtime, root.section("runtime")) if root.has("runtime") else RuntimeOptions()
    if body is not None and any(body.has(key) for key in _RUNTIME_KEYS):
        runtime = collect(_runtime, body)
    rules = ("rules", "actions") if body is not None and body.path == "validation" else ()
    body and collect(body.done, ("source", "transformations", "destination", "destinations", "processors",
                                 "sinks", "chunk_size", *rules, *_RUNTIME_KEYS))
    if root.has("validation") and body is not None:
        ctx = _with_destination(body, ctx)
    steps = _with_validation(root, steps, ctx, collect)
    sinks = destination if isinstance(destination, tuple) else (destination,)
    alerts = _alerts(root, collect)
    schedule = collect(lambda: root.get("schedule", None, types=dict))
    if schedule is not None:
        from .schedules import Schedule   # here: schedules read specs

        collect(Schedule.from_spec, root.section("schedule"))
    pricing = collect(lambda: root.get("pricing", None, types=dict))
    if pricing is not None:
        from .pricing import check_pricing   # here: pricing reads specs

        collect(check_pricing, root.section("pricing"))
    collect(root.done, ("version", "description", "metadata", "pipeline", "batch", "stream", "validation",
                        "alerts"))
    if not collect.errors and stream is None:
        for i, sink in enumerate(sinks):
            if getattr(sink, "mode", None) == "mirror":
                at = paths["destination"] + (f"[{i}]" if paths["destination"].endswith("destinations") else "")
                collect.errors.append(SpecError(f"{at}.mode", "mode mirror applies change rows: it is for stream "
                                                "sinks fed by a postgres-cdc source"))
    if not collect.errors:
        for sink in sinks:
            collect.errors.extend(check_pipeline(source, steps, sink, paths))
    collect.raise_any()
    return PipelineSpec(name=name, source=source, transformations=steps, destination=sinks[0], sinks=sinks,
                        runtime=runtime, schedule=schedule, pricing=pricing, digest=_digest(data), raw=data,
                        kind="stream" if stream else "batch", window=stream.window if stream else None,
                        after=stream.after if stream else (), alerts=alerts)


def _with_validation(root: Section, steps: tuple, ctx: SpecContext, collect: _Collected) -> tuple:
    """The seed's top-level ``validation: {rules, actions}`` is a validation step (id
    ``validation``) after the transformations, beside ``pipeline:`` / ``batch:`` /
    ``stream:`` or as the spec's body (``validation: {source, rules, actions,
    destination}``)."""
    if not root.has("validation"):
        return steps
    if root.has("stream"):
        raise SpecError("validation", "validation rules run in batch pipelines (pipeline:, batch:); a stream's "
                                      "processors are map, filter, function, join and enrich")
    from .transforms.validate import ValidateStep

    section = root.section("validation")
    rules = Section({k: v for k, v in section.data.items() if k in ("rules", "actions")}, section.path)
    step = collect(ValidateStep.from_validation, rules, ctx)
    collect(section.done, ("source", "transformations", "destination", "destinations", "rules", "actions",
                           *_RUNTIME_KEYS))
    return steps if step is None else (*steps, step)


def _alerts(root: Section, collect: _Collected):
    from .alerts import AlertOptions   # here: alerts reads specs

    if not root.has("alerts"):
        return AlertOptions()
    return collect(lambda: AlertOptions.from_spec(root.section("alerts"))) or AlertOptions()


def parse_file(path: str) -> PipelineSpec:
    spec = parse(load_file(path), base_dir=os.path.dirname(os.path.abspath(path)))
    return replace(spec, spec_file=os.path.abspath(path))


def parse_any(spec: "str | os.PathLike | Mapping[str, Any] | PipelineSpec") -> PipelineSpec:
    if isinstance(spec, PipelineSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse(spec)
    return parse_file(os.fspath(spec))
