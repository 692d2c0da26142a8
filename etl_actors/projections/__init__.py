"""Projections: pure folds ``evolve(state, event) -> state`` over the event log.

No I/O: each can be tested with a list of events and rebuilt from the log at any time.
"""
from . import progress, runs, watermarks

__all__ = ["progress", "runs", "watermarks"]
