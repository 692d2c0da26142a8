"""Windows only assign events to windows (and sessions merge); they hold no state.

Every window is half-open, ``[start, end)`` in epoch milliseconds. An assignment
also gives the *bound* lateness is judged by: the assignment is late once
``bound + allowed lateness <= watermark``. For fixed windows the bound is the
window's end. For sessions it is ``t + 1``: an event behind the watermark (by more
than the allowed lateness) could belong to a session already emitted, so it is late
whatever its own window; this keeps replays deterministic (see ``assign.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Assignment:
    """Window ``j`` is ``[starts[j], ends[j])`` for event ``rows[j]``."""

    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    bounds: np.ndarray


@dataclass(frozen=True)
class FixedWindows:
    """Tumbling (``slide == size``) and sliding windows: an event at ``t`` belongs to
    every ``[s, s + size)`` with ``s`` a multiple of ``slide`` and ``s <= t``.

    >>> FixedWindows(10, 5).assign(np.array([12])).starts.tolist()
    [10, 5]
    """

    size: int
    slide: int

    merges = False

    def assign(self, times: np.ndarray) -> Assignment:
        latest = times // self.slide * self.slide
        per_event = -(-self.size // self.slide)
        if per_event == 1:
            rows, starts = np.arange(len(times)), latest
        else:
            candidates = latest[:, None] - np.arange(per_event) * self.slide
            covers = candidates + self.size > times[:, None]
            rows, starts = np.nonzero(covers)[0], candidates[covers]
        ends = starts + self.size
        return Assignment(rows, starts, ends, ends)


@dataclass(frozen=True)
class Sessions:
    """An event at ``t`` opens ``[t, t + gap)``; windows of one key that overlap merge
    into one session ``[first event, last event + gap)``. Windows that only touch
    (an event exactly ``gap`` after the last) do not merge.

    >>> Sessions(10).merge(np.array([0, 5, 14, 40]), np.array([10, 15, 24, 50]), np.zeros(4, np.int64)).tolist()
    [0, 0, 0, 1]
    """

    gap: int

    merges = True

    def assign(self, times: np.ndarray) -> Assignment:
        return Assignment(np.arange(len(times)), times, times + self.gap, times + 1)

    def merge(self, starts: np.ndarray, ends: np.ndarray, key_ids: np.ndarray) -> np.ndarray:
        """Per window, the number of the session it merges into (``key_ids`` tell the
        keys apart; sessions never merge across keys)."""
        order = np.lexsort((starts, key_ids))
        keys, begin = key_ids[order], starts[order]
        reach = _running_max_per_key(ends[order], keys)
        opens = np.ones(len(order), dtype=bool)
        opens[1:] = (keys[1:] != keys[:-1]) | (begin[1:] >= reach[:-1])
        sessions = np.empty(len(order), dtype=np.int64)
        sessions[order] = np.cumsum(opens) - 1
        return sessions


def _running_max_per_key(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The running maximum of ``values`` restarting at each key, for ``keys`` sorted
    and numbered from 0: one ``maximum.accumulate`` over ``key * n + rank(value)``,
    which orders by key first."""
    distinct, rank = np.unique(values, return_inverse=True)
    coded = keys.astype(np.int64) * len(distinct) + rank
    return distinct[np.maximum.accumulate(coded) % max(len(distinct), 1)]


def assigner(spec) -> FixedWindows | Sessions:
    if spec.kind == "session":
        return Sessions(spec.gap_ms)
    return FixedWindows(spec.size_ms, spec.slide_ms or spec.size_ms)
