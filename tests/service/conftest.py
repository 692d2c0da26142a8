"""The service API on a real port: ``serving(log_url)`` starts the aiohttp app on a free
port of 127.0.0.1 and yields an :class:`Api` (aiohttp client sessions per key);
``orders_service(tmp_path, rows, pricing)`` is a service body that loads a CSV of
``rows`` orders into SQLite."""
import asyncio
import csv
import json
from contextlib import asynccontextmanager

import pytest
import sqlalchemy as sa
from aiohttp import ClientSession, web

from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog
from etl_actors.service.app import make_app
from etl_actors.service.keys import create_key

PER_GB = {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1, "additionalCosts": {"enrichment": 0.5}}
PER_RECORD = {"model": "per-record", "rate": 0.001, "minimumCharge": 0.1}


class Api:
    """A running app: ``base`` URL and a client per key (``as_(key)``)."""

    def __init__(self, base: str):
        self.base = base
        self._sessions: list[ClientSession] = []

    def as_(self, key: str | None) -> ClientSession:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        session = ClientSession(self.base, headers=headers)
        self._sessions.append(session)
        return session

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()


@asynccontextmanager
async def serving(log_url: str, runtime: str = "ray"):
    runner = web.AppRunner(make_app(log_url, runtime=runtime))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    api = Api(f"http://{host}:{port}")
    try:
        yield api
    finally:
        await api.close()
        await runner.cleanup()


@pytest.fixture
def log_url(tmp_path):
    return f"sqlite:///{tmp_path}/events.db"


@pytest.fixture
def keys(log_url):
    """An admin key and the keys of customers ``acme`` and ``globex``."""
    log = EventLog(log_url)
    return {"admin": create_key(log, "admin"), "acme": create_key(log, "customer", "acme"),
            "globex": create_key(log, "customer", "globex")}


def orders_service(tmp_path, rows: int = 2000, pricing: dict | None = None, title: str = "Orders ETL",
                   batch_size: int = 250) -> dict:
    """The seed's ``$.Service.create`` shape: ``rows`` orders from a CSV upserted into
    ``warehouse.db``'s ``orders`` table."""
    source = tmp_path / f"orders-{rows}.csv"
    if not source.exists():
        with open(source, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["order_id", "customer", "amount"])
            writer.writerows((i, f"customer {i % 97}", f"{i * 1.25:.2f}") for i in range(1, rows + 1))
    return {"name": title, "type": "Automation", "subtype": "data-pipeline",
            "connections": {"warehouse": f"sqlite:///{tmp_path}/warehouse.db"},
            "pipeline": {"source": {"type": "file", "path": str(source), "format": "csv", "batchSize": batch_size},
                         "destination": {"type": "database", "connection": "warehouse", "table": "orders",
                                         "mode": "upsert", "keyFields": ["order_id"]}},
            "runtime": {"parallelism": 1},
            "pricing": pricing or PER_GB}


def log_bytes(tmp_path) -> bytes:
    """Everything the SQLite log holds on disk (its write-ahead log too)."""
    return b"".join(path.read_bytes() for path in sorted(tmp_path.glob("events.db*")))


def rows_in(tmp_path, table: str = "orders") -> int:
    with engine_for(f"sqlite:///{tmp_path}/warehouse.db").connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


async def create(http: ClientSession, body: dict) -> str:
    async with http.post("/services", json=body) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["id"]


async def request(http: ClientSession, service_id: str, body: dict | None = None) -> str:
    async with http.post(f"/services/{service_id}/requests", json=body or {}) as response:
        assert response.status == 202, await response.text()
        return (await response.json())["requestId"]


async def finished(http: ClientSession, request_id: str, timeout: float = 60.0, charged: bool = True) -> dict:
    """The request's view once it finished (and, with ``charged``, its charge is in)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with http.get(f"/requests/{request_id}") as response:
            assert response.status == 200, await response.text()
            view = await response.json()
        if view["status"] in ("success", "failed") and (view["charge"] or not charged):
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"request {request_id} did not finish in {timeout} s: {json.dumps(view)}")
