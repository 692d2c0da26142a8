"""Shared fixtures: one local Ray per session, a real PostgreSQL, a Kafka broker, unique names.

PostgreSQL comes from ``ETL_TEST_PG_URL`` (``make test`` starts the server and sets
it). A test that needs it and cannot reach it fails; it does not quietly pass.
"""
import os
import uuid

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))

import pytest
import sqlalchemy as sa

# The last non-empty line of ETL_TEST_PG_URL: a start script that printed something
# before the URL still gives the URL; an empty value gives the default.
PG_URL = ([line.strip() for line in os.environ.get("ETL_TEST_PG_URL", "").splitlines() if line.strip()]
          or ["postgresql://etl:etl@localhost:5432/etl_test"])[-1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(items):
    """Tests that use PostgreSQL, Ray or Kafka carry its marker, whether or not they say
    so (so ``-m "not postgres"`` runs without a server)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if fixtures & {"pg_url", "pg_schema"} or "postgresql" in params.values():
            item.add_marker(pytest.mark.postgres)
        if "ray_local" in fixtures:
            item.add_marker(pytest.mark.ray)
        if "kafka" in fixtures:
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session; its Prometheus endpoint is ``ctx.metrics_port``."""
    import ray

    port = _free_port()
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=port,
                   object_store_memory=512 * 2**20, namespace="etl_actors", log_to_driver=False)
    ctx.metrics_port = port
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def kafka():
    """A Kafka-protocol broker (Tansu, in memory) for the session: ``.bootstrap``,
    ``create_topic``, ``produce``, ``consume_all``, ``end_offsets``; see tests/kafka_broker.py."""
    from kafka_broker import Broker

    broker = Broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def uniq():
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def pg_url():
    """The test PostgreSQL server's URL; fails the test when it is not reachable."""
    from etl_actors.db import engine_for

    try:
        with engine_for(PG_URL).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - the message names the fix
        pytest.fail(f"PostgreSQL not reachable at ETL_TEST_PG_URL ({exc.__class__.__name__}); "
                    "run scripts/start_postgres.sh or `make test`")
    return PG_URL


@pytest.fixture
def pg_schema(pg_url, uniq):
    """A fresh PostgreSQL schema for one test, dropped afterwards; yields a URL whose
    connections use it as their search_path."""
    from etl_actors.db import engine_for

    schema = f"t_{uniq}"
    with engine_for(pg_url).begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{pg_url}?options=-csearch_path%3D{schema}"
    with engine_for(pg_url).begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
