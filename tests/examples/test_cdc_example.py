"""examples/customer_sync_cdc.yaml runs as shipped: the CRM database's customers
mirrored into the warehouse (SQLite here), the test accounts left out, then retired
with ``cdc drop``."""
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def crm_db(pg_url, uniq):
    """A database of its own (the example reads public.customers), dropped afterwards."""
    name = f"crm_{uniq}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True, env=env,
                          timeout=240)


def mirrored(path: Path) -> dict:
    with sqlite3.connect(path) as conn:
        return {row[0]: row[1:] for row in conn.execute("SELECT id, email, name FROM crm_customers")}


def test_the_customer_sync_cdc_example_mirrors_changes_and_drops_its_slot(crm_db, tmp_path):
    with psycopg.connect(crm_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.customers (id int PRIMARY KEY, name text, email text, "
                     "updated_at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO public.customers (id, name, email) SELECT g, 'name ' || g, "
                     "CASE WHEN g % 10 = 0 THEN 'qa' || g || '@example.test' ELSE ' User' || g || '@Mail.io ' END "
                     "FROM generate_series(1, 500) g")
    spec = Path(shutil.copy(EXAMPLES / "customer_sync_cdc.yaml", tmp_path / "customer_sync_cdc.yaml"))
    (tmp_path / "data").mkdir()
    env = {**os.environ, "CRM_DB_URL": crm_db}
    env.pop("WAREHOUSE_URL", None)
    log = f"sqlite:///{tmp_path}/events.db"
    warehouse = tmp_path / "data" / "warehouse_cdc.db"

    first = cli("run", str(spec), "--log", log, "--until-idle", "2", "--json", env=env)
    assert first.returncode == 0, first.stderr
    rows = mirrored(warehouse)
    assert len(rows) == 450 and rows[1] == ("user1@mail.io", "name 1")      # normalized; test accounts left out

    with psycopg.connect(crm_db, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("UPDATE public.customers SET name = 'renamed' WHERE id = 2")
            conn.execute("UPDATE public.customers SET email = 'gone@example.test' WHERE id = 3")   # stops passing
            conn.execute("DELETE FROM public.customers WHERE id = 4")
            conn.execute("INSERT INTO public.customers (id, name, email) VALUES (501, 'new', 'New@Mail.io')")
    second = cli("run", str(spec), "--log", log, "--until-idle", "2", env=env)
    assert second.returncode == 0, second.stderr
    rows = mirrored(warehouse)
    assert rows[2] == ("user2@mail.io", "renamed") and 3 not in rows and 4 not in rows
    assert rows[501] == ("new@mail.io", "new") and len(rows) == 449

    status = cli("status", "customer-sync-cdc", "--log", log, "--json", env=env)
    assert '"slot": "etl_customer_sync_cdc"' in status.stdout and '"lagBytes"' in status.stdout
    dropped = cli("cdc", "drop", "customer-sync-cdc", "--log", log, env=env)
    assert dropped.returncode == 0, dropped.stderr
    with psycopg.connect(crm_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'etl_customer_sync_cdc'"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
