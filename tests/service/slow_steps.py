"""A deliberately slow function step: a request that runs for a few seconds and reports
its progress batch by batch, so the status page's test can watch the progress move.
Named from specs as ``service.slow_steps:pause`` (tests/ is on sys.path and on the Ray
workers' PYTHONPATH, see tests/conftest.py)."""
import time

import pyarrow as pa

PAUSE_S = 0.2


def pause(table: pa.Table) -> pa.Table:
    """Table mode: the batch unchanged, ``PAUSE_S`` later."""
    time.sleep(PAUSE_S)
    return table
