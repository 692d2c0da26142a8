"""Malformed records go to the dead-letter store with their reason; the rest load."""
import pytest
import sqlalchemy as sa

from etl_actors import Pipeline
from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog

pytestmark = pytest.mark.ray


def test_bad_csv_rows_are_dead_lettered_and_every_other_row_loads(ray_local, tmp_path, uniq):
    lines = ["order_id,amount"] + [f"{i},{i * 10}" for i in range(1, 5001)]
    lines[4000] = "4000,lots"            # an int column's bad value, far past the first batch
    lines[4500] = "4500"                 # a short row
    (tmp_path / "orders.csv").write_text("\n".join(lines) + "\n")
    log, wh = f"sqlite:///{tmp_path}/events.db", f"sqlite:///{tmp_path}/wh.db"
    name = f"dlq-{uniq}"
    result = Pipeline.from_dict({"name": name, "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 1000},
        "destination": {"type": "database", "connection": wh, "table": "orders", "mode": "upsert",
                        "keyFields": ["order_id"]}}}).run(log=log)
    assert (result["status"], result["recordsExtracted"], result["recordsLoaded"], result["recordsRejected"]) == \
        ("success", 5000, 4998, 2)
    with engine_for(wh).connect() as conn:
        ids = {r[0] for r in conn.execute(sa.text("SELECT order_id FROM orders"))}
    assert ids == set(range(1, 5001)) - {4000, 4500}
    letters = EventLog(log).dead_letters(name)
    assert [(d["stage"], d["runId"]) for d in letters] == [("extract", result["runId"])] * 2
    reasons = " | ".join(d["reason"] for d in letters)
    assert "amount" in reasons and "lots" in reasons
