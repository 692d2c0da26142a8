"""A TRUNCATE in the source empties the mirrored table in its place among the changes:
what was inserted before it is gone, what came after it is there."""
from __future__ import annotations

import time

from etl_actors import Pipeline

from .kit import cdc, wait_for  # noqa: F401


def test_a_truncate_mid_stream_empties_the_destination_then_later_rows_arrive(ray_local, cdc):
    cdc.create_items(2_000)
    pipeline = Pipeline.from_dict(cdc.spec(["items"]))
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=3)
        wait_for(lambda: cdc.count(cdc.dst, "items") == 2_000, 60, "the snapshot in the destination")
        with cdc.connect(autocommit=False) as conn:        # one transaction: a change, the truncate, new rows
            conn.execute(f"UPDATE {cdc.src}.items SET version = version + 1 WHERE id <= 10")
            conn.execute(f"TRUNCATE {cdc.src}.items")
            conn.execute(f"INSERT INTO {cdc.src}.items (id, name, version) VALUES (5001, 'after', 1)")
        time.sleep(0.5)
        cdc.execute("INSERT INTO {src}.items (id, name, version) VALUES (5002, 'later', 1)")
        result = pipeline.wait(timeout=120)
    assert result["status"] == "success", result.get("error")
    assert cdc.assert_mirrored("items") == 2
