"""PostgreSQL change-data-capture mirrored into a destination, against the real server
and the local Ray: a 100k-row snapshot with 10k changes committed while it streams, a
multi-row transaction never half-visible to a concurrent reader, a column added
mid-stream, a column type change that stops the stream, ``cdc drop``, and a filter that
turns a row leaving the condition into a delete."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from etl_actors import Pipeline

from .kit import ITEM_COLUMNS, Churn, assert_same_rows, cdc, sqlite_rows, summary_of, wait_for  # noqa: F401

ETL = [sys.executable, "-m", "etl_actors"]


def cli_env(ray_local) -> dict:
    return {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}


@pytest.mark.slow
def test_a_100k_snapshot_then_10k_changes_while_streaming_leave_the_destination_equal_to_the_source(
        ray_local, cdc):
    cdc.create_items(100_000)
    churn = Churn(cdc, first_rows=100_000, changes=10_000, seed=10, pause=0.01)
    pipeline = Pipeline.from_dict(cdc.spec(["items"], chunk_size=25_000, batch_size=5_000))
    started = time.monotonic()
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=3)
        churn.start()              # while the snapshot is read, then on into the stream
        churn.finish()
        result = pipeline.wait(timeout=180)
    elapsed = time.monotonic() - started

    assert result["status"] == "success", result.get("error")
    rows = cdc.assert_mirrored("items")
    assert rows == 100_000 + churn.counts["insert"] - churn.counts["delete"]
    assert min(churn.counts.values()) > 1_000          # every kind of change was made, many times
    # the snapshot's rows plus the changes after its consistent point: at least 100k,
    # at most every row there ever was and every change, once each
    assert 100_000 <= result["recordsExtracted"] <= 100_000 + churn.counts["insert"] + churn.done, result
    wait_for(lambda: cdc.slots() == [(cdc.slot, False)], 15,
             "the pipeline's slot released and the temporary snapshot slots gone")
    print(f"100k snapshot + 10k changes mirrored in {elapsed:.1f} s, summary {result['recordsExtracted']} "
          f"extracted")


def test_a_multi_row_transaction_is_never_half_visible_to_a_concurrent_reader(ray_local, cdc):
    accounts, start, total = 50, 1_000, 50 * 1_000
    cdc.execute("CREATE TABLE {src}.accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
    cdc.execute("INSERT INTO {src}.accounts SELECT g, %s FROM generate_series(1, %s) g", (start, accounts))
    seen: list[tuple] = []
    stop = threading.Event()

    def transfers() -> None:
        rng = random.Random(4)
        with cdc.connect(autocommit=False) as conn:
            for _ in range(400):
                ids = rng.sample(range(1, accounts + 1), rng.randint(2, 10))
                amounts = [rng.randint(1, 50) for _ in ids[1:]]
                with conn.transaction():
                    for key, amount in zip(ids[1:], amounts):
                        conn.execute(f"UPDATE {cdc.src}.accounts SET balance = balance - %s WHERE id = %s",
                                     (amount, key))
                    conn.execute(f"UPDATE {cdc.src}.accounts SET balance = balance + %s WHERE id = %s",
                                 (sum(amounts), ids[0]))
                time.sleep(0.01)

    def reader() -> None:
        with cdc.connect() as conn:
            while not stop.is_set():
                try:
                    seen.append(conn.execute(f"SELECT count(*), sum(balance), sum(balance * id) "
                                             f"FROM {cdc.dst}.accounts").fetchone())
                except psycopg.errors.UndefinedTable:
                    pass
                time.sleep(0.002)

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    pipeline = Pipeline.from_dict(cdc.spec(["accounts"], batch_size=20))   # many small destination transactions
    try:
        with pipeline:
            pipeline.start(log=cdc.log, until_idle=2)
            cdc.wait_for_rows("accounts", accounts)
            mover = threading.Thread(target=transfers, daemon=True)
            mover.start()
            mover.join(120)
            result = pipeline.wait(timeout=120)
    finally:
        stop.set()
        watcher.join(10)

    assert result["status"] == "success", result.get("error")
    cdc.assert_mirrored("accounts", columns=("id", "balance"))
    landed = next((i for i, (n, s, _) in enumerate(seen) if n == accounts and s == total), None)
    assert landed is not None, f"the reader never saw the snapshot's {accounts} accounts summing to {total}"
    after = seen[landed:]
    torn = [(n, s) for n, s, _ in after if (n, s) != (accounts, total)]
    assert not torn, f"the reader saw a half-applied transaction: {torn[:5]} (of {len(after)} reads)"
    states = {weighted for _, _, weighted in after}
    assert len(states) > 20, f"the reader saw only {len(states)} destination states: it did not watch the stream"


def test_a_column_added_mid_stream_reaches_the_destination(ray_local, cdc):
    cdc.create_items(1_000)
    pipeline = Pipeline.from_dict(cdc.spec(["items"]))
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=3)
        cdc.wait_for_rows("items", 1_000)
        cdc.execute("UPDATE {src}.items SET version = version + 1, name = 'before ' || id WHERE id <= 50")
        cdc.execute("ALTER TABLE {src}.items ADD COLUMN note text")
        cdc.execute("UPDATE {src}.items SET version = version + 1, note = 'note ' || id WHERE id BETWEEN 26 AND 100")
        cdc.execute("INSERT INTO {src}.items (id, name, amount, seen_at, active, version, note) "
                    "SELECT g, 'late ' || g, g, now(), true, 0, 'new ' || g FROM generate_series(1001, 1050) g")
        cdc.execute("UPDATE {src}.items SET version = version + 1 WHERE id BETWEEN 101 AND 110")   # note stays NULL
        cdc.execute("DELETE FROM {src}.items WHERE id BETWEEN 991 AND 1000")
        result = pipeline.wait(timeout=120)

    assert result["status"] == "success", result.get("error")
    assert "note" in cdc.columns(cdc.dst, "items")
    assert cdc.assert_mirrored("items", columns=ITEM_COLUMNS + ("note",)) == 1_040
    notes = dict(cdc.execute("SELECT id, note FROM {dst}.items WHERE id IN (1, 30, 1001, 500)"))
    assert notes == {1: None, 30: "note 30", 1001: "new 1001", 500: None}


def test_a_column_type_change_stops_the_stream_with_an_error_naming_the_table_and_column(ray_local, cdc):
    cdc.create_items(500)
    spec = cdc.write_spec(cdc.spec(["items"]))
    run = subprocess.Popen(ETL + ["run", str(spec), "--log", cdc.log, "--until-idle", "10", "--json"],
                           env=cli_env(ray_local), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cdc.wait_for_rows("items", 500, timeout=90)
        cdc.execute("UPDATE {src}.items SET version = version + 1 WHERE id <= 5")
        wait_for(lambda: cdc.execute("SELECT version FROM {dst}.items WHERE id = 1") == [(1,)], 60,
                 "the update before the type change in the destination")
        cdc.execute("ALTER TABLE {src}.items ALTER COLUMN version TYPE bigint")
        cdc.execute("UPDATE {src}.items SET version = 5000000000 WHERE id = 7")
        out, err = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)

    summary = summary_of(out)
    assert run.returncode == 1, (out, err[-2000:])
    assert summary["status"] == "failed"
    assert f"{cdc.src}.items" in summary["error"] and "version" in summary["error"], summary["error"]
    assert "Traceback" not in err, err[-3000:]
    versions = dict(cdc.execute("SELECT id, version FROM {dst}.items WHERE id IN (1, 7)"))
    assert versions == {1: 1, 7: 0}        # the changes before the type change landed, none after


def test_cdc_drop_leaves_no_slot_and_no_publication(ray_local, cdc):
    cdc.create_items(100)
    spec = cdc.write_spec(cdc.spec(["items"]))
    with Pipeline.from_file(str(spec)) as pipeline:
        result = pipeline.run(log=cdc.log, until_idle=1)
    assert result["status"] == "success", result.get("error")
    assert cdc.count(cdc.dst, "items") == 100
    wait_for(lambda: cdc.slots() == [(cdc.slot, False)], 15, "the pipeline's slot released")
    assert cdc.publications() == [cdc.slot]

    dropped = subprocess.run(ETL + ["cdc", "drop", cdc.name, "--spec", str(spec), "--log", cdc.log],
                             env=cli_env(ray_local), capture_output=True, text=True, timeout=60)

    assert dropped.returncode == 0, dropped.stderr[-2000:]
    assert cdc.slots() == []
    assert cdc.publications() == []


def test_a_row_updated_out_of_the_filter_disappears_from_the_destination(ray_local, cdc):
    cdc.execute("CREATE TABLE {src}.customers (id int PRIMARY KEY, name text, tier text)")
    cdc.execute("INSERT INTO {src}.customers SELECT g, 'c' || g, (ARRAY['gold', 'silver', 'basic'])[g % 3 + 1] "
                "FROM generate_series(1, 300) g")          # gold: ids divisible by 3
    db = cdc.tmp / "dst.db"
    sink = {"type": "database", "connection": f"sqlite:///{db}", "mode": "mirror", "keyFields": ["id"]}
    pipeline = Pipeline.from_dict(cdc.spec(["customers"], sink=sink,
                                           processors=[{"type": "filter", "condition": "tier == 'gold'"}]))
    columns = ("id", "name", "tier")
    with pipeline:
        pipeline.start(log=cdc.log, until_idle=3)
        wait_for(lambda: len(sqlite_rows(db, "customers", columns)) == 100, 60, "the gold customers in SQLite")
        assert 3 in sqlite_rows(db, "customers", columns)
        cdc.execute("UPDATE {src}.customers SET tier = 'basic' WHERE id IN (3, 6, 9)")        # gold -> basic
        cdc.execute("UPDATE {src}.customers SET tier = 'gold' WHERE id IN (1, 2)")             # -> gold
        cdc.execute("UPDATE {src}.customers SET name = 'renamed' WHERE id = 12")              # stays gold
        cdc.execute("INSERT INTO {src}.customers VALUES (301, 'n301', 'gold'), (302, 'n302', 'silver')")
        cdc.execute("DELETE FROM {src}.customers WHERE id IN (15, 16)")                      # a gold, a basic
        with cdc.connect(autocommit=False) as conn:            # gold -> basic -> gold in one transaction
            conn.execute(f"UPDATE {cdc.src}.customers SET tier = 'basic' WHERE id = 18")
            conn.execute(f"UPDATE {cdc.src}.customers SET tier = 'gold', name = 'back' WHERE id = 18")
        result = pipeline.wait(timeout=120)

    assert result["status"] == "success", result.get("error")
    gold = {k: v for k, v in cdc.rows(cdc.src, "customers", columns).items() if v[2] == "gold"}
    mirrored = sqlite_rows(db, "customers", columns)
    assert not {3, 6, 9, 15} & set(mirrored)
    assert {1, 2, 12, 18, 301} <= set(mirrored)
    assert_same_rows(gold, mirrored)
