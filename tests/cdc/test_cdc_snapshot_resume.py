"""The initial snapshot of a change-data-capture stream, read in chunks by primary key:
a driver killed mid-table resumes after the last committed chunk (not from the start),
in a new snapshot session (a second segment), and the destination ends equal to the
source although the source changed throughout, including rows deleted between the two
sessions in a range the killed run had loaded but not checkpointed (the chunk's key
range, ``_chunk``, makes the mirror delete them). With ``snapshot: never`` only the
changes committed after the slot was made arrive."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from etl_actors import Pipeline

from .kit import Churn, cdc, summary_of, wait_for  # noqa: F401

pytestmark = [pytest.mark.slow]

ROWS, CHUNK = 120_000, 5_000
VICTIMS = 40        # rows deleted after the kill, just after the last checkpointed key


# --- what the log and the servers say ---------------------------------------------------

def position(checkpoint, cdc) -> dict:
    return checkpoint.positions.get(cdc.partition) or {}


def mid_table(checkpoint, cdc) -> int | None:
    """The key the next chunk of ``items`` starts after, when the checkpoint is in the
    middle of the table (None otherwise)."""
    snapshot = position(checkpoint, cdc).get("snapshot") or {}
    after = snapshot.get("after")
    if after is None or snapshot.get("tables", [None])[0] != f"{cdc.src}.items":
        return None
    return int(after[0])


def loaded_between(cdc, low: int, high: int) -> int:
    """Destination rows with ``low < id <= high`` (0 before the table exists)."""
    try:
        return cdc.execute("SELECT count(*) FROM {dst}.items WHERE id > %s AND id <= %s", (low, high))[0][0]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def chunk_loaded_past_checkpoint(cdc, at_least: int) -> bool:
    """The last checkpoint is mid-table, at least ``at_least`` keys in, and the chunk
    after it is already in the destination (loaded, not checkpointed)."""
    checkpoints = cdc.checkpoints()
    after = mid_table(checkpoints[-1], cdc) if checkpoints else None
    return after is not None and after >= at_least and loaded_between(cdc, after, after + CHUNK) > 0


def snapshot_slots(cdc) -> list[str]:
    """The temporary snapshot slots of this test's pipeline still on the server."""
    return [r[0] for r in cdc.execute("SELECT slot_name FROM pg_replication_slots WHERE starts_with(slot_name, %s)",
                                      (cdc.slot[:40] + "_snap_",))]


def actors_gone(cdc) -> bool:
    """The killed driver's supervisor has ended (Ray ends the actors a dead driver owned)."""
    try:
        ray.get_actor(f"etl:{cdc.name}", namespace="etl_actors")
    except ValueError:
        return True
    return False


def stop(churn: Churn) -> None:
    """End the churn after its current transaction."""
    churn.changes = churn.done
    churn.finish(30)


def touched(cdc, low: int, high: int) -> tuple[int, int]:
    """``(deleted, updated)`` original rows (ids 1..ROWS) with ``low < id <= high``."""
    present, updated = cdc.execute("SELECT count(*), count(*) FILTER (WHERE version > 0) FROM {src}.items "
                                   "WHERE id > %s AND id <= %s", (low, high))[0]
    return (high - low) - present, updated


# --- the scenarios ------------------------------------------------------------------------

def test_a_driver_killed_mid_snapshot_resumes_mid_table_and_rows_deleted_between_sessions_do_not_linger(
        ray_local, cdc):
    cdc.create_items(ROWS)
    spec = cdc.write_spec(cdc.spec(["items"], checkpoint=0.5, chunk_size=CHUNK, batch_size=5_000))
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}
    command = [sys.executable, "-m", "etl_actors", "run", str(spec), "--log", cdc.log, "--json"]
    churn = Churn(cdc, first_rows=ROWS, changes=10**7, seed=41, max_tx=20, pause=0.02)
    started = time.monotonic()
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        churn.start()
        wait_for(lambda: chunk_loaded_past_checkpoint(cdc, 25_000) or cdc.streaming(), 90,
                 "a checkpoint 25k keys into the table", every=0.02)
    except BaseException:
        stop(churn)
        raise
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    killed = time.monotonic()
    wait_for(lambda: actors_gone(cdc) and not snapshot_slots(cdc), 30,
             "the killed run's actors and its snapshot slot gone", every=0.1)
    gone = time.monotonic()
    time.sleep(1.0)                            # the source keeps changing while nothing runs
    stop(churn)

    first_run = {c.run_id for c in cdc.checkpoints()}
    last = cdc.checkpoints()[-1]
    after = mid_table(last, cdc)
    assert after is not None, f"the kill did not land mid-table: {position(last, cdc)}"
    at_kill = position(last, cdc)["snapshot"]["at"]
    # the killed run loaded the chunk after the checkpoint: the rerun reads its range again
    loaded = [r[0] for r in cdc.execute("SELECT id FROM {dst}.items WHERE id > %s AND id <= %s ORDER BY id",
                                        (after, after + CHUNK))]
    assert loaded, f"nothing loaded past the checkpoint at key {after}: the reconcile path is not exercised"
    # the churn deleted and updated rows on both sides of the resume key
    before_deleted, before_updated = touched(cdc, 0, after)
    beyond_deleted, beyond_updated = touched(cdc, after, ROWS)
    assert min(before_deleted, before_updated, beyond_deleted, beyond_updated) > 0, \
        (before_deleted, before_updated, beyond_deleted, beyond_updated)
    # rows of the range read again, deleted between the sessions: no change of theirs will be
    # streamed (they committed before the new session's consistent point)
    victims = [r[0] for r in cdc.execute(
        "DELETE FROM {src}.items WHERE id IN (SELECT id FROM {src}.items WHERE id = ANY(%s) ORDER BY id LIMIT %s) "
        "RETURNING id", (loaded, VICTIMS))]
    assert len(victims) == VICTIMS

    rerun = subprocess.run(command + ["--until-idle", "3"], env=env, capture_output=True, text=True, timeout=180)
    ended = time.monotonic()

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = summary_of(rerun.stdout)
    assert summary["status"] == "success", summary.get("error")
    rows = cdc.assert_mirrored("items")
    assert cdc.execute("SELECT id FROM {dst}.items WHERE id = ANY(%s)", (victims,)) == []
    # resumed after the checkpointed key: the rows from there on, not the whole table again
    beyond = cdc.execute("SELECT count(*) FROM {src}.items WHERE id > %s", (after,))[0][0]
    assert beyond <= summary["recordsExtracted"] < ROWS, (summary["recordsExtracted"], after, beyond)
    # two snapshot sessions: the killed run's from the start, the rerun's from the resume key
    segments = [position(c, cdc).get("segments", {}).get(f"{cdc.src}.items") for c in cdc.checkpoints()
                if c.run_id not in first_run]
    two = [s for s in segments if s and len(s) == 2]
    assert two, f"no checkpoint of the rerun has two segments: {segments}"
    (first_after, first_at), (second_after, second_at) = two[-1]
    assert first_after is None and first_at == at_kill, two[-1]
    assert [int(v) for v in second_after] == [after] and second_at != at_kill, two[-1]
    assert all(len(s) <= 2 for s in segments if s), segments
    assert snapshot_slots(cdc) == []
    print(f"\nkilled at key {after} after {killed - started:.1f} s (actors gone {gone - killed:.1f} s later); "
          f"{churn.done} changes; rerun {ended - gone:.1f} s, extracted {summary['recordsExtracted']}; "
          f"{rows} rows mirrored; {len(loaded)} rows loaded past the checkpoint")


def test_snapshot_never_mirrors_only_the_changes_after_the_slot_was_made(ray_local, cdc):
    cdc.create_items(1_000)
    cdc.execute("UPDATE {src}.items SET version = version + 1, name = 'before the slot' WHERE id <= 10")
    pipeline = Pipeline.from_dict(cdc.spec(["items"], snapshot="never"))
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=3)
        wait_for(lambda: any(name == cdc.slot for name, _ in cdc.slots()), 60, "the pipeline's slot")
        cdc.execute("INSERT INTO {src}.items (id, name, version) SELECT g, 'after ' || g, 0 "
                    "FROM generate_series(2001, 2050) g")
        cdc.execute("UPDATE {src}.items SET version = version + 1, name = 'updated after' "
                    "WHERE id BETWEEN 101 AND 120")
        cdc.execute("DELETE FROM {src}.items WHERE id BETWEEN 201 AND 230 OR id BETWEEN 2041 AND 2050")
        result = pipeline.wait(timeout=90)

    assert result["status"] == "success", result.get("error")
    expected = set(range(2001, 2041)) | set(range(101, 121))   # inserted, and updated, after the slot
    mirrored = cdc.rows(cdc.dst, "items")
    assert set(mirrored) == expected, sorted(set(mirrored) ^ expected)[:10]
    source = cdc.rows(cdc.src, "items")
    assert all(mirrored[k] == source[k] for k in expected)
    assert result["recordsExtracted"] == 50 + 20 + 40       # the changes only; no row read as a snapshot
