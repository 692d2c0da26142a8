"""Sources: each reads one kind of system and yields Arrow batches with positions.
Registered by ``type`` in :mod:`etl_actors.registry`."""
from .base import Source

__all__ = ["Source"]
