"""The replication connection killed by the server mid-stream (a failover, an admin's
pg_terminate_backend, a restart) is a transient error: the stream retries from its
last checkpoint and the destination still equals the source."""
from __future__ import annotations

from etl_actors import Pipeline
from etl_actors import events as ev

from .kit import cdc, wait_for  # noqa: F401


def test_a_replication_connection_killed_mid_stream_is_retried_and_loses_nothing(ray_local, cdc):
    cdc.create_items(3_000)
    pipeline = Pipeline.from_dict(cdc.spec(["items"]))
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=4)
        wait_for(cdc.streaming, 60, "the snapshot committed")
        cdc.execute("UPDATE {src}.items SET version = version + 1 WHERE id <= 500")
        wait_for(lambda: any(active for _, active in cdc.slots()), 30, "the slot read")
        killed = cdc.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                             "WHERE slot_name = %s AND active", (cdc.slot,))
        cdc.execute("UPDATE {src}.items SET version = version + 1 WHERE id > 2500")
        cdc.execute("DELETE FROM {src}.items WHERE id % 100 = 0")
        result = pipeline.wait(timeout=120)
    assert killed == [(True,)]
    assert result["status"] == "success", result.get("error")
    retries = cdc.events(ev.RetryScheduled)
    assert retries and "replication" in retries[0].error
    assert cdc.assert_mirrored("items") == 3_000 - 30
