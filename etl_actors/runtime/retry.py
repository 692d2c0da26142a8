"""Retries of transient errors: exponential backoff with full jitter, honouring a
``retry_after`` the error carries, up to ``runtime.maxRetries`` attempts in a row.

What counts as transient: a :class:`~etl_actors.errors.TransientError` (sources and
sinks raise it for a broker or database that went away, a timeout, a 429), or any
error whose ``retryable`` is true.
"""
from __future__ import annotations

import random

BASE_S = 0.5
CAP_S = 30.0


def is_transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def delay(attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1): at
    least ``retry_after`` when the error gave one, else a random share of
    ``BASE_S * 2**(attempt-1)``, capped at ``CAP_S``."""
    ceiling = min(CAP_S, BASE_S * 2 ** max(0, attempt - 1))
    jittered = ceiling * (0.5 + 0.5 * (rng or random).random())
    if retry_after is not None and retry_after > 0:
        return min(max(float(retry_after), jittered), 15 * 60.0)
    return jittered
