"""kill -9 in the middle of a change-data-capture stream, while the source keeps
changing: the driver (then a rerun), the loader actor (replaced in the run). Afterwards
the destination equals the source, and a trigger on the destination table, which
records ``(id, version)`` of every row written, shows no change applied twice (each
source update increments ``version``; the mirror keeps only a batch's last change per
key, so not every version appears, but none may appear twice)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import ray

from etl_actors import Pipeline
from etl_actors import events as ev

from .kit import Churn, cdc, summary_of, wait_for  # noqa: F401

pytestmark = [pytest.mark.slow]

ROWS, CHANGES = 20_000, 10_000


def mirror_lsn(cdc) -> int:
    """The greatest source commit LSN the destination has applied (0: none yet)."""
    rows = cdc.execute("SELECT lsn FROM {dst}.etl_mirror_positions WHERE pipeline = %s", (cdc.name,))
    return rows[0][0] if rows else 0


def checkpoint_commit(cdc) -> int:
    """The commit LSN of the last checkpoint in the log."""
    position = cdc.checkpoints()[-1].positions[cdc.partition]
    return int(position.get("commit") or 0)


def ahead_of_checkpoint(cdc, churn: Churn) -> bool:
    """Streaming, changes applied in the destination that no checkpoint holds yet, and
    more still to come: a kill now makes the next run read applied changes again."""
    try:
        return (churn.is_alive() and churn.done > 2_000 and cdc.streaming()
                and mirror_lsn(cdc) > checkpoint_commit(cdc))
    except Exception:  # noqa: BLE001 - the positions table or the log not there yet
        return False


def assert_applied_once(cdc) -> None:
    duplicates = cdc.audit_duplicates("items")
    assert not duplicates, f"changes applied twice (id, version, times, ops): {duplicates}"
    assert cdc.audit_count("items", changed=True) > 1_000      # the trigger saw the stream's updates


def test_a_killed_driver_then_a_rerun_leaves_the_destination_equal_with_nothing_applied_twice(
        ray_local, cdc):
    cdc.create_items(ROWS)
    cdc.create_audited_destination("items")
    spec = cdc.write_spec(cdc.spec(["items"], checkpoint=2, batch_size=300))
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}
    command = [sys.executable, "-m", "etl_actors", "run", str(spec), "--log", cdc.log, "--json"]
    churn = Churn(cdc, first_rows=ROWS, changes=CHANGES, seed=20, pause=0.03)
    driver = subprocess.Popen(command + ["--until-idle", "5"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(cdc.streaming, 90, "a checkpoint after the snapshot")
        churn.start()
        wait_for(lambda: ahead_of_checkpoint(cdc, churn), 60, "changes applied past the last checkpoint",
                 every=0.02)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    killed_at = churn.done
    churn.finish()
    assert killed_at < CHANGES, "the churn ended before the kill: it would not land mid-stream"
    assert mirror_lsn(cdc) > checkpoint_commit(cdc)   # the rerun reads changes the destination has

    rerun = subprocess.run(command + ["--until-idle", "2"], env=env, capture_output=True, text=True, timeout=180)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = summary_of(rerun.stdout)
    assert summary["status"] == "success", summary.get("error")
    assert 0 < summary["recordsExtracted"] <= CHANGES, summary    # from the checkpoint: no snapshot again
    cdc.assert_mirrored("items")
    assert_applied_once(cdc)


def test_a_killed_loader_is_replaced_and_the_stream_recovers_from_its_checkpoint(ray_local, cdc):
    cdc.create_items(ROWS)
    cdc.create_audited_destination("items")
    churn = Churn(cdc, first_rows=ROWS, changes=CHANGES, seed=30, pause=0.02)
    pipeline = Pipeline.from_dict(cdc.spec(["items"], checkpoint=2, batch_size=300))
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=3)
        wait_for(cdc.streaming, 90, "a checkpoint after the snapshot")
        churn.start()
        wait_for(lambda: ahead_of_checkpoint(cdc, churn), 60, "changes applied past the last checkpoint",
                 every=0.02)
        ray.kill(ray.get_actor(f"etl:{cdc.name}:loader", namespace="etl_actors"))
        killed_at = churn.done
        churn.finish()
        result = pipeline.wait(timeout=180)

    assert killed_at < CHANGES, "the churn ended before the kill: it would not land mid-stream"
    assert result["status"] == "success", result.get("error")
    assert [e.child for e in cdc.events(ev.ChildRestarted)] == ["loader#0"]
    cdc.assert_mirrored("items")
    assert_applied_once(cdc)
