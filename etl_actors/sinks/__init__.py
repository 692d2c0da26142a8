"""Sinks: each writes batches to one kind of system and states its guarantee.
Registered by ``type`` in :mod:`etl_actors.registry`."""
from .base import Sink, SinkWriter

__all__ = ["Sink", "SinkWriter"]
