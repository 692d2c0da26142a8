"""The long chaos scenario: 100,000 records (62,000, then 2,000 new and 5,000 changed
per run) into a PostgreSQL upsert while 20 kill -9s land on random children, the
supervisor and the driver (in turn) at random moments; each kill is followed by a rerun. At the end: 0 records missing, 0 duplicated, every row at its
latest version, and the committed watermark never went backwards.

It runs against both plans (:func:`etl_actors.runtime.graph.chained`): the transformer
pool (``parallelism: 2``, 20 kills) and the chained plan, whose extractors run the
steps themselves (12 kills, of extractors, the loader, the supervisor and the driver)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest
import ray
import sqlalchemy as sa
import yaml

from etl_actors import events as ev
from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog

pytestmark = [pytest.mark.slow]

INITIAL, PER_ROUND_NEW, PER_ROUND_UPDATED = 62_000, 2_000, 5_000
T0 = datetime(2026, 1, 1)
PLANS = {   # plan: (kills, victims)
    "pooled": (int(os.environ.get("CHAOS_KILLS", 20)),
               ("extractor:0", "transformer:0", "transformer:1", "loader", "supervisor", "driver")),
    "chained": (int(os.environ.get("CHAOS_KILLS_CHAINED", 12)),
                ("extractor:0", "loader", "supervisor", "driver")),
}


class Source:
    """The CRM table the pipeline syncs from; each change gets a later ``updated_at``."""

    def __init__(self, url: str):
        self.engine, self.clock, self.next_id = engine_for(url), 0, 1
        self.table = sa.Table("customers", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                              sa.Column("email", sa.Text), sa.Column("age", sa.Integer),
                              sa.Column("updated_at", sa.DateTime))
        self.table.create(self.engine)

    def _tick(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(milliseconds=self.clock)

    def insert(self, n: int) -> None:
        rows = [{"id": i, "email": f"User{i}@Example.COM", "age": i % 90, "updated_at": self._tick()}
                for i in range(self.next_id, self.next_id + n)]
        self.next_id += n
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    def update(self, ids: list[int]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("UPDATE customers SET age = age + 1, updated_at = :at WHERE id = :id"),
                         [{"id": i, "at": self._tick()} for i in sorted(ids)])

    def rows(self) -> list[tuple]:
        with self.engine.connect() as conn:
            return sorted((r.id, r.email.lower(), r.age) for r in conn.execute(
                sa.text("SELECT id, email, age FROM customers")))


def spec(name: str, url: str, plan: str) -> dict:
    pool = {"parallelism": 2} if plan == "pooled" else {}
    return {"name": name, "connections": {"pg": url},
            "pipeline": {"source": {"type": "database", "connection": "pg", "incremental": True,
                                    "query": "SELECT id, email, age, updated_at FROM customers WHERE updated_at > ?",
                                    "cursorField": "updated_at", "batchSize": 500},
                         "transformations": [{"id": "normalize", "type": "map", "keep": True,
                                              "mappings": {"email": {"source": "email", "converter": "lowercase"}}}],
                         "destination": {"type": "database", "connection": "pg", "table": "customers_copy",
                                         "mode": "upsert", "keyFields": ["id"]},
                         **pool, "extractors": 2, "maxInFlight": 3, "maxChildRestarts": 50}}


def pid_of(actor_name: str) -> int | None:
    try:
        handle = ray.get_actor(actor_name, namespace="etl_actors")
        return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=5)
    except Exception:  # noqa: BLE001 - not there (yet, or any more)
        return None


def commits(log: EventLog, stream: str) -> list:
    return [r.event.position["cursor"] for r in log.read(stream) if isinstance(r.event, ev.WatermarkCommitted)]


@pytest.mark.parametrize("plan", list(PLANS))
def test_kill_minus_nines_lose_nothing_and_double_nothing(plan, ray_local, pg_schema, tmp_path, uniq, figures):
    rng = random.Random(20261201)
    kills_wanted, victims = PLANS[plan]
    source = Source(pg_schema)
    source.insert(INITIAL)
    name, log = f"chaos-{uniq}", EventLog(pg_schema)
    stream = f"pipeline:{name}"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(name, pg_schema, plan)))
    plans = {"pooled": ["extractor", "transformer", "loader"], "chained": ["extractor", "loader"]}
    validated = subprocess.run([sys.executable, "-m", "etl_actors", "validate", str(path), "--json"],
                               capture_output=True, text=True)
    assert [s["kind"] for s in json.loads(validated.stdout)["plan"]] == plans[plan]
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}
    cli = [sys.executable, "-m", "etl_actors", "run", str(path), "--json", "--log", pg_schema]
    kills, outcomes, rounds = [], [], 0
    while len(kills) < kills_wanted:
        rounds += 1
        assert rounds <= 3 * kills_wanted, f"only {len(kills)} kills landed in {rounds - 1} runs: {outcomes}"
        if rounds > 1:   # new and changed rows for every run after the first
            source.insert(PER_ROUND_NEW)
            source.update(rng.sample(range(1, source.next_id), PER_ROUND_UPDATED))
        before = len(commits(log, stream))
        driver = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wanted = before + rng.randint(1, 8)
        deadline = time.time() + 120
        while len(commits(log, stream)) < wanted and driver.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        victim = victims[len(kills) % len(victims)]     # every kind of process, in turn
        pid = driver.pid if victim == "driver" else pid_of(f"etl:{name}" + ("" if victim == "supervisor" else f":{victim}"))
        if driver.poll() is None and pid is not None:
            os.kill(pid, signal.SIGKILL)
            kills.append(victim)
        print(f"round {rounds}: {victim} pid {pid} alive {driver.poll() is None} commits {len(commits(log, stream))}")
        out, err = driver.communicate(timeout=300)
        assert "Traceback" not in err, err[-3000:]
        outcomes.append((victim, driver.returncode))
        if victim != "driver" and driver.poll() is not None and driver.returncode != 0:
            pytest.fail(f"a run failed after its {victim} was killed: {err[-2000:]}")
    final = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0 and json.loads(final.stdout.strip().splitlines()[-1])["status"] == "success"

    expected = source.rows()
    with engine_for(pg_schema).connect() as conn:
        loaded = sorted((r.id, r.email, r.age) for r in conn.execute(sa.text("SELECT id, email, age FROM customers_copy")))
        distinct = conn.execute(sa.text("SELECT count(DISTINCT id) FROM customers_copy")).scalar()
    assert len(expected) == INITIAL + PER_ROUND_NEW * (rounds - 1)
    missing = {r[0] for r in expected} - {r[0] for r in loaded}
    assert missing == set() and distinct == len(loaded)          # 0 missing, 0 duplicated
    assert loaded == expected                                     # every row at its latest version
    cursors = commits(log, stream)
    assert cursors == sorted(cursors)                             # the watermark never went backwards
    interrupted = [r.event for r in log.read(stream) if isinstance(r.event, ev.RunFailed)]
    assert len(interrupted) >= kills.count("driver")
    figures[f"chaos ({plan}): kill -9s survived"] = len(kills)
    figures[f"chaos ({plan}): records checked"] = len(expected)
    for kind in sorted({v.split(":")[0] for v in victims}):
        figures[f"chaos ({plan}): kills of the {kind}"] = sum(1 for k in kills if k.split(":")[0] == kind)
