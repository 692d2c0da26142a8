"""A step the batch tests name by import path (``batch.steps:pause``; tests/ is on
every test process's PYTHONPATH)."""
import time

import pyarrow as pa


def pause(table: pa.Table) -> pa.Table:
    """Table mode: the batch unchanged, 50 ms later, so a test can kill a run halfway."""
    time.sleep(0.05)
    return table
