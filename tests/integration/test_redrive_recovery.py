"""Redrive recovery. A redrive on Ray loads the letters of a step and of the sink into
the database and empties the pending store. A driver killed with SIGKILL in the middle
of a redrive of 20,000 letters, then a second redrive: every letter's record is in the
destination exactly once, none that loaded is still pending, and the counts add up (the
killed run's loaded and the second's sum to the letters; the log's LettersRedriven
agree with the store's marks), whether the kill comes at a random batch or while a
batch is loaded and the transaction recording it (its event and its letters' marks,
one transaction) is under way (see MOMENTS).

The orders come from files of 600 rows of two shapes (every other one has a
``coupon``): a redrive batch is a chunk of one original batch's letters, so about 34."""
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
import sqlalchemy as sa
import yaml

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog
from etl_actors.projections import runs as runs_projection

LETTERS, PER_FILE = 20_000, 600


def orders_spec(name: str, folder, wh: str, signup_format: str | None, mode: str = "insert") -> dict:
    signup = {"source": "signup", "converter": "timestamp", **({"format": signup_format} if signup_format else {})}
    return {"name": name, "pipeline": {
        "source": {"type": "file", "path": str(folder), "format": "csv", "batchSize": PER_FILE,
                   "columns": {"signup": "string", "note": "string"}},
        "transformations": [{"id": "normalize", "type": "map", "keep": True, "mappings": {"signup": signup}}],
        "destination": {"type": "database", "connection": wh, "table": "orders", "mode": mode,
                        "errorHandling": "continue", **({"keyFields": ["order_id"]} if mode == "upsert" else {})},
        "leaseTimeout": 5}}


def rows(wh: str) -> tuple[int, int]:
    """(rows, distinct order ids) in the destination."""
    try:
        with engine_for(wh).connect() as conn:
            return tuple(conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM orders")).one())
    except sa.exc.OperationalError:      # the sink has not created the table yet
        return (0, 0)


# --- (a) on Ray ---------------------------------------------------------------------------

@pytest.mark.ray
def test_a_redrive_on_ray_loads_the_letters_of_a_step_and_of_the_sink_and_empties_the_pending_store(
        ray_local, tmp_path, uniq):
    lines = ["order_id,qty,signup,note"] + [f"{i},{i % 7},05/01/2024,{'held' if i % 50 == 0 else 'ok'}"
                                            for i in range(1, 301)]
    for i in (5, 150, 299):                    # another date format: the fixed spec reads it
        lines[i] = f"{i},{i % 7},2024-01-05,ok"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders.csv").write_text("\n".join(lines) + "\n")
    wh, log, name = f"sqlite:///{tmp_path}/wh.db", f"sqlite:///{tmp_path}/events.db", f"redrive-ray-{uniq}"
    with engine_for(wh).begin() as conn:       # the sink refuses the held orders
        conn.execute(sa.text("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, qty BIGINT, signup TIMESTAMP, "
                             "note TEXT CHECK (note <> 'held'))"))
    first = Pipeline.from_dict(orders_spec(name, tmp_path / "in", wh, "%d/%m/%Y", "upsert")).run(
        log=log, runtime="local")
    assert (first["recordsLoaded"], first["recordsRejected"]) == (292, 8)
    pending = EventLog(log).dead_letters(name, pending=True)
    by_stage = {s: sorted(int(d["record"]["order_id"]) for d in pending if d["stage"] == s)
                for s in ("transform:normalize", "load")}
    assert by_stage == {"transform:normalize": [5, 150, 299], "load": [50, 100, 200, 250, 300]}

    with engine_for(wh).begin() as conn:       # the fixes: any date format; held orders are welcome
        conn.execute(sa.text("ALTER TABLE orders RENAME TO old"))
        conn.execute(sa.text("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, qty BIGINT, signup TIMESTAMP, "
                             "note TEXT)"))
        conn.execute(sa.text("INSERT INTO orders SELECT * FROM old"))
    fixed = Pipeline.from_dict(orders_spec(name, tmp_path / "in", wh, None, "upsert"))
    try:
        summary = fixed.redrive(log=log, runtime="ray")
    finally:
        fixed.close()
    assert (summary["status"], summary["trigger"], summary["recordsExtracted"], summary["recordsLoaded"],
            summary["recordsRejected"]) == ("success", "redrive", 8, 8, 0)
    with engine_for(wh).connect() as conn:
        loaded = dict(conn.execute(sa.text("SELECT order_id, note FROM orders")).all())
        signups = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT substr(signup, 1, 10) FROM orders"))}
    assert sorted(loaded) == list(range(1, 301)) and loaded[50] == "held" and signups == {"2024-01-05"}
    assert EventLog(log).dead_letters(name, pending=True) == []
    history = EventLog(log).dead_letters(name)
    assert sorted((d["stage"], d["redrivenBy"]) for d in history) == sorted(
        [("transform:normalize", summary["runId"])] * 3 + [("load", summary["runId"])] * 5)


# --- (b) a driver killed mid-redrive ---------------------------------------------------------

def write_orders(folder) -> None:
    """LETTERS orders in files of PER_FILE rows; every other file has a ``coupon`` too.
    Every signup is ISO, which the first spec's format refuses."""
    folder.mkdir()
    for n, start in enumerate(range(1, LETTERS + 1, PER_FILE)):
        coupon = n % 2 == 1
        ids = range(start, min(start + PER_FILE, LETTERS + 1))
        body = "".join(f"{i},{i % 7},2024-01-05,ok" + (",SPRING\n" if coupon else "\n") for i in ids)
        (folder / f"orders-{n:03}.csv").write_text("order_id,qty,signup,note" + (",coupon" if coupon else "")
                                                   + "\n" + body)


def run_history(log: str, name: str) -> list:
    return runs_projection.project(EventLog(log).read(ev.pipeline_stream(name))).of(name)


def redriven_letters(log: str, name: str, run_id: str) -> int:
    return sum(len(r.event.letter_ids) for r in EventLog(log).read(ev.pipeline_stream(name))
               if isinstance(r.event, ev.LettersRedriven) and r.event.run_id == run_id)


def recorded(store: EventLog, name: str, letter: int) -> bool:
    """Whether the log holds a LettersRedriven naming ``letter``."""
    return any(isinstance(r.event, ev.LettersRedriven) and letter in r.event.letter_ids
               for r in store.read(ev.pipeline_stream(name)))


def slow_mark(events_db, letter: int) -> None:
    """Make the transaction that records ``letter``'s batch (its event and the marks)
    take seconds: a slow event log."""
    with sqlite3.connect(str(events_db)) as conn:
        conn.execute(f"CREATE TRIGGER slow_mark BEFORE UPDATE ON etl_dead_letters WHEN OLD.id = {letter} BEGIN "
                     "SELECT count(*) FROM etl_dead_letters a, etl_dead_letters b, etl_dead_letters c "
                     "WHERE a.id <= 15000 AND b.id <= 200; END")


def loaded(wh: str, order_id: int) -> bool:
    try:
        with engine_for(wh).connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM orders WHERE order_id = :i"), {"i": order_id}).scalar() > 0
    except sa.exc.OperationalError:
        return False


# When the SIGKILL comes, and the letter (by id) whose batch it must catch there:
MOMENTS = {
    "mid-way": None,                                  # once 7,000 of the records are in the destination
    "loaded, its record under way": 4_500,            # its rows are in; the transaction recording it is slow
    "loaded, a later record under way": 10_000,
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_driver_killed_mid_redrive_then_a_second_redrive_loads_every_letter_exactly_once(tmp_path, uniq, moment):
    """20,000 letters of ``transform:normalize``; the fixed spec redriven by a driver
    process killed at ``moment``; then a second redrive, to the end."""
    write_orders(tmp_path / "in")
    wh, log, name = f"sqlite:///{tmp_path}/wh.db", f"sqlite:///{tmp_path}/events.db", f"redrive-kill-{uniq}"
    first = Pipeline.from_dict(orders_spec(name, tmp_path / "in", wh, "%d/%m/%Y")).run(log=log, runtime="local")
    assert (first["recordsRejected"], first["recordsLoaded"]) == (LETTERS, 0)
    store = EventLog(log)
    assert store.dead_letter_count(name, pending=True) == LETTERS
    letter = MOMENTS[moment]
    if letter is not None:
        slow_mark(tmp_path / "events.db", letter)
        order_of_letter = int(next(d for d in store.dead_letters(name) if d["id"] == letter)["record"]["order_id"])

    spec = tmp_path / "fixed.yaml"
    spec.write_text(yaml.safe_dump(orders_spec(name, tmp_path / "in", wh, None)))
    cli = [sys.executable, "-m", "etl_actors", "dlq", name, "redrive", "--local", "--json", "--log", log,
           "--spec", str(spec)]
    driver = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60

        def waiting() -> bool:
            return time.time() < deadline and driver.poll() is None

        if letter is not None:
            while not loaded(wh, order_of_letter) and waiting():
                time.sleep(0.01)
            time.sleep(0.5)                             # the recording transaction is in the slow trigger
        else:
            while rows(wh)[0] < 7_000 and waiting():
                time.sleep(0.005)
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL, "the redrive ended before it was killed"
    if letter is not None:
        with sqlite3.connect(str(tmp_path / "events.db")) as conn:
            conn.execute("DROP TRIGGER slow_mark")

    killed = next(r for r in run_history(log, name) if r.trigger == "redrive")
    loaded_before = rows(wh)[0]
    marked_before = sum(1 for d in store.dead_letters(name) if d["redrivenBy"] == killed.run_id)
    assert 0 < loaded_before < LETTERS, loaded_before
    if letter is not None:                              # loaded, and neither recorded nor marked: one fact, undone
        assert loaded(wh, order_of_letter) and marked_before < loaded_before, (loaded_before, marked_before)
        assert not recorded(store, name, letter) and letter in {d["id"] for d in store.dead_letters(name, pending=True)}

    again = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert (second["status"], second["trigger"], second["recordsExtracted"], second["recordsRejected"]) == \
        ("success", "redrive", LETTERS - marked_before, 0)

    assert rows(wh) == (LETTERS, LETTERS)              # every record once: none missing, none twice
    assert store.dead_letters(name, pending=True) == []
    marks = Counter(d["redrivenBy"] for d in store.dead_letters(name))
    assert marks == {killed.run_id: marked_before, second["runId"]: LETTERS - marked_before}
    statuses = {r.run_id: r for r in run_history(log, name)}
    assert statuses[killed.run_id].status == "failed" and statuses[second["runId"]].status == "success"
    # the summaries add up, and the log's account of the letters agrees with the store's
    assert statuses[killed.run_id].loaded + second["recordsLoaded"] == LETTERS
    assert {run: redriven_letters(log, name, run) for run in marks} == dict(marks)
