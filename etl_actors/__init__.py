"""etl_actors: data-pipeline services on Ray, driven by an event log.

The public surface: :class:`Pipeline` to build and run pipelines, the plugin base
classes to write sources, transforms and sinks, and the error types.
"""
from .errors import ConcurrencyError, EtlError, SpecError, TerminalError, TransientError, UsageError
from .sinks.base import Sink, SinkWriter
from .sources.base import Source
from .transforms.base import Transform

__all__ = ["Pipeline", "Source", "Sink", "SinkWriter", "Transform", "EtlError", "SpecError",
           "TerminalError", "TransientError", "UsageError", "ConcurrencyError", "run"]


def __getattr__(name: str):
    if name == "Pipeline":
        from .pipeline import Pipeline
        return Pipeline
    raise AttributeError(name)


def run(spec, log: str | None = None, runtime: str = "ray") -> dict:
    """Run a spec (a path, a dict or a PipelineSpec) once and return its summary."""
    from .pipeline import Pipeline
    from .spec import parse_any

    return Pipeline(parse_any(spec)).run(log=log, runtime=runtime)
