"""Dead-letter redrive: after the cause is fixed, `dlq PIPELINE redrive` sends the pending
letters through the current spec from the stage where they failed; those that load leave
the store, those that fail again stay with the new reason, and a redrive is a run."""
import json
import subprocess
import sys

import sqlalchemy as sa

from etl_actors import Pipeline
from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog


def _spec(tmp_path, name, fmt):
    signup = {"source": "signup", "converter": "timestamp"}
    if fmt:
        signup["format"] = fmt
    return {"name": name, "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 100,
                   "columns": {"signup": "string"}},
        "transformations": [{"id": "normalize", "type": "map", "keep": True, "mappings": {"signup": signup}}],
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "orders",
                        "mode": "upsert", "keyFields": ["order_id"], "errorHandling": "continue"}}}


def _rows(tmp_path):
    with engine_for(f"sqlite:///{tmp_path}/wh.db").connect() as conn:
        return dict(conn.execute(sa.text("SELECT order_id, qty FROM orders")).all())


def _write_orders(tmp_path):
    lines = ["order_id,qty,signup"] + [f"{i},{i % 7},05/01/2024" for i in range(1, 301)]
    for i in (5, 150, 299):                    # another format: the fix reads it
        lines[i] = f"{i},{i % 7},2024-01-05"
    lines[200] = "200,3,soon"                  # bad whatever the fix
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")


def test_a_redrive_after_a_fix_loads_what_was_rejected_and_keeps_what_fails_again(tmp_path, uniq):
    _write_orders(tmp_path)
    name, log = f"redrive-{uniq}", f"sqlite:///{tmp_path}/events.db"
    first = Pipeline.from_dict(_spec(tmp_path, name, "%d/%m/%Y")).run(log=log, runtime="local")
    assert (first["status"], first["recordsLoaded"], first["recordsRejected"]) == ("success", 296, 4)
    store = EventLog(log)
    assert {d["stage"] for d in store.dead_letters(name)} == {"transform:normalize"}
    assert {int(d["record"]["order_id"]) for d in store.dead_letters(name, pending=True)} == {5, 150, 200, 299}

    fixed = Pipeline.from_dict(_spec(tmp_path, name, None))
    again = fixed.redrive(log=log, runtime="local")
    assert (again["status"], again["trigger"], again["recordsExtracted"], again["recordsLoaded"],
            again["recordsRejected"]) == ("success", "redrive", 4, 3, 1)
    rows = _rows(tmp_path)
    assert len(rows) == 299 and rows[150] == 150 % 7 and 200 not in rows
    with engine_for(f"sqlite:///{tmp_path}/wh.db").connect() as conn:
        signups = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT substr(signup, 1, 10) FROM orders"))}
    assert signups == {"2024-01-05"}
    pending = store.dead_letters(name, pending=True)
    assert [(int(d["record"]["order_id"]), d["runId"]) for d in pending] == [(200, again["runId"])]
    assert "soon" in pending[0]["reason"]
    history = store.dead_letters(name)
    assert sum(1 for d in history if d["redrivenBy"] == again["runId"]) == 4

    # a second redrive has only the one that still fails; a normal run reads nothing new
    third = fixed.redrive(log=log, runtime="local")
    assert (third["recordsExtracted"], third["recordsLoaded"], third["recordsRejected"]) == (1, 0, 1)
    assert fixed.run(log=log, runtime="local")["recordsExtracted"] == 0


def test_letters_refused_by_the_sink_are_redriven_to_the_sink_alone(tmp_path, uniq):
    wh = f"sqlite:///{tmp_path}/wh.db"
    with engine_for(wh).begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, qty BIGINT, "
                             "note TEXT CHECK (note <> 'held'))"))
    lines = ["order_id,qty,note"] + [f"{i},{i},{'held' if i % 50 == 0 else 'ok'}" for i in range(1, 201)]
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    spec = {"name": f"redrive-load-{uniq}", "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 100,
                   "columns": {"note": "string"}},
        "destination": {"type": "database", "connection": wh, "table": "orders", "mode": "upsert",
                        "keyFields": ["order_id"], "errorHandling": "continue"}}}
    log = f"sqlite:///{tmp_path}/events.db"
    first = Pipeline.from_dict(spec).run(log=log, runtime="local")
    assert (first["recordsLoaded"], first["recordsRejected"]) == (196, 4)
    assert {d["stage"] for d in EventLog(log).dead_letters(spec["name"])} == {"load"}
    with engine_for(wh).begin() as conn:       # the fix: the check goes
        conn.execute(sa.text("ALTER TABLE orders RENAME TO old"))
        conn.execute(sa.text("CREATE TABLE orders (order_id BIGINT PRIMARY KEY, qty BIGINT, note TEXT)"))
        conn.execute(sa.text("INSERT INTO orders SELECT * FROM old"))
    out = subprocess.run([sys.executable, "-m", "etl_actors", "dlq", spec["name"], "redrive", "--log", log,
                          "--json", "--spec", _write(tmp_path, spec), "--local"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["trigger"], summary["recordsLoaded"], summary["recordsRejected"]) == ("redrive", 4, 0)
    with engine_for(wh).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 200
    assert EventLog(log).dead_letters(spec["name"], pending=True) == []


def _write(tmp_path, spec) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)
