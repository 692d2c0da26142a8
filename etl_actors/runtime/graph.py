"""The stage kinds, as data: which class each kind of child is and what it is built
with. The supervisor, both :class:`~.supervisor.Children` implementations and the
actor names read this table; a new kind of stage is a new row.

=============  ==========================================  =============================
kind           class                                       one per
=============  ==========================================  =============================
extractor      Extractor (batch) / StreamExtractor (stream) group of source partitions
transformer    Transformer                                 worker of the pool (batch)
window         WindowOperator                              key-hash shard of a window
loader         Loader                                      sink
=============  ==========================================  =============================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .stages import Extractor, Loader, Transformer


@dataclass(frozen=True)
class StageKind:
    """How to build a child of one kind for a pipeline: its class and its arguments."""

    cls: Callable[[Any], type]
    args: Callable[[Any, str, int], tuple]


def _extractor_class(spec) -> type:
    if spec.is_stream:
        from .streaming import StreamExtractor

        return StreamExtractor
    return Extractor


def _extractor_args(spec, log_url: str, index: int) -> tuple:
    if spec.is_stream:
        return (spec.name, spec.source, spec.transformations, spec.window, log_url, index)
    return (spec.name, spec.source, log_url, index, spec.transformations if chained(spec) else ())


def chained(spec) -> bool:
    """Whether a batch pipeline's extractors run its transformation chain themselves
    (as Flink chains operators), with no transformer actors: so unless a step needs
    the pool, namely an aggregate (its partials meet in one transformer) or a user
    function (may be heavy: the pool spreads it over the cluster's CPUs), or
    ``parallelism`` asks for transformers explicitly. Decided when the spec is read,
    shown by ``validate`` and recorded in ``PipelineDefined``."""
    if spec.is_stream or spec.runtime.parallelism:
        return False
    return not any(step.blocking or step.pooled for step in spec.transformations)


def _window_class(spec) -> type:
    from .streaming import WindowOperator

    return WindowOperator


STAGES: dict[str, StageKind] = {
    "extractor": StageKind(_extractor_class, _extractor_args),
    "transformer": StageKind(lambda spec: Transformer,
                             lambda spec, log_url, i: (spec.name, spec.transformations, log_url, i)),
    "window": StageKind(_window_class, lambda spec, log_url, i: (spec.name, spec.window, spec.after, log_url, i)),
    "loader": StageKind(lambda spec: Loader, lambda spec, log_url, i: (spec.name, spec.sinks[i], log_url, i)),
}


def build(kind: str, spec, log_url: str, index: int) -> Any:
    """A new child of ``kind`` in this process."""
    stage = STAGES[kind]
    return stage.cls(spec)(*stage.args(spec, log_url, index))


def child_name(pipeline: str, kind: str, index: int) -> str:
    """The actor name of a child: ``etl:<pipeline>:<kind>:<i>`` (the first loader is
    ``etl:<pipeline>:loader``)."""
    suffix = kind if kind == "loader" and index == 0 else f"{kind}:{index}"
    return f"etl:{pipeline}:{suffix}"


def first_children(spec, cpus: Callable[[], int]) -> dict[str, int]:
    """The children every run of a batch pipeline starts with, whatever its source
    lists: one extractor, the transformer pool unless :func:`chained` (``parallelism``
    or the cluster's CPUs), a loader per sink. The driver starts them beside the
    supervisor, so their processes boot while its does; a run adds extractors for more
    partitions. None for a stream (its extractors follow its partitions)."""
    if spec.is_stream:
        return {}
    transformers = 0 if chained(spec) else spec.runtime.parallelism or cpus()
    return {"extractor": 1, "transformer": transformers, "loader": len(spec.sinks)}


def plan(spec) -> list[dict]:
    """The stages a run of ``spec`` starts, in data order, as ``validate`` shows them and
    ``PipelineDefined`` records them: ``[{"kind", "actors", "runs": [...]}]`` (the
    extractor of a stream runs the processors before its window, chained; a batch
    pipeline's runs its steps when :func:`chained`)."""
    if spec.is_stream:
        stages = [{"kind": "extractor", "actors": getattr(spec.source, "parallelism", None) or "cpus",
                   "runs": [f"read {spec.source.type}", *[s.id for s in spec.transformations],
                            *([f"pre-aggregate {spec.window.id}"] if spec.window is not None else [])]}]
        if spec.window is not None:
            stages.append({"kind": "window", "actors": spec.window.parallelism,
                           "runs": [f"{spec.window.id} ({spec.window.kind})", *[s.id for s in spec.after]]})
    elif chained(spec):
        stages = [{"kind": "extractor", "actors": spec.runtime.extractors or "cpus",
                   "runs": [f"read {spec.source.type}", *[s.id for s in spec.transformations]]}]
    else:
        runtime = spec.runtime
        stages = [{"kind": "extractor", "actors": runtime.extractors or "cpus", "runs": [f"read {spec.source.type}"]},
                  {"kind": "transformer", "actors": runtime.parallelism or "cpus",
                   "runs": [s.id for s in spec.transformations]}]
    return stages + [{"kind": "loader", "actors": 1, "runs": [f"write {sink.type}"]} for sink in spec.sinks]
