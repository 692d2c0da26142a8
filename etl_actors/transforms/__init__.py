"""Transforms: one module per step type, applied in the declared order.
Registered by ``type`` in :mod:`etl_actors.registry`."""
from .base import Transform

__all__ = ["Transform"]
