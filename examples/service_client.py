"""A client of the service API: create a service, send a request, follow its progress
live, print the result and the charge, then the customer's invoice for the month.

Against a running server (``etl-actors serve``; a key from ``etl-actors keys create --admin``)::

    ETL_ACTORS_URL=http://127.0.0.1:8080 ETL_ACTORS_KEY=eak_... python examples/service_client.py

Self-contained (no ``ETL_ACTORS_URL``): the script serves the API itself, in this
process, with the runs on the Ray cluster it runs on, and makes its own admin key::

    python examples/service_client.py
    ray job submit --working-dir . -- python examples/service_client.py

The service is the seed's Customer Data ETL Pipeline over the demo CRM database
(``make demo`` or ``python examples/make_data.py`` creates it), priced per GB with a
minimum charge, so the charge printed is the seed's minimum: 0.10 USD. Relative paths
in the service's connections are read where the server runs, from its working folder.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SERVICE = {
    "name": "Customer Data ETL Pipeline",
    "type": "automation",
    "subtype": "data-pipeline",
    "connections": {
        "crm-database": f"sqlite:///{os.path.join(HERE, 'data', 'crm.db')}",
        "analytics-warehouse": f"sqlite:///{os.path.join(HERE, 'data', 'service_warehouse.db')}",
    },
    "pipeline": {
        "source": {"type": "database", "connection": "crm-database",
                   "query": "SELECT * FROM customers WHERE updated_at > ?", "incremental": True,
                   "cursorField": "updated_at", "batchSize": 500},
        "transformations": [
            {"id": "normalize", "type": "map", "keep": True,
             "mappings": {"email": {"source": "email", "converter": ["trim", "lowercase"]}}},
            {"id": "validate", "type": "validate",
             "rules": [{"id": "email", "type": "regex", "field": "email", "pattern": "^[^@]+@[^@]+$",
                        "severity": "error"}]},
        ],
        "destination": {"type": "data-warehouse", "connection": "analytics-warehouse", "table": "customers",
                        "mode": "upsert", "keyFields": ["id"]},
    },
    "schedule": {"type": "cron", "expression": "0 */6 * * *", "timezone": "UTC"},
    "pricing": {"model": "per-gb", "rate": 1.0, "minimumCharge": 0.1},
}
CUSTOMER = "acme"


async def client(url: str, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(url, headers=headers) as http:
        async with http.post("/services", json=SERVICE) as answer:
            body = await answer.json()
            if answer.status != 201:
                print(f"the service was refused ({answer.status}): {json.dumps(body)}", file=sys.stderr)
                return 1
        service = body["id"]
        print(f"service {service}: {SERVICE['name']}")

        async with http.post(f"/services/{service}/requests", json={"customerId": CUSTOMER}) as answer:
            request = (await answer.json())["requestId"]
        print(f"request {request} for customer {CUSTOMER}")

        view = await follow(http, request)
        outputs = view.get("outputs") or {}
        print(f"status {view['status']}: {outputs.get('recordsProcessed')} records, "
              f"{outputs.get('bytesProcessed')} bytes in {outputs.get('duration')} ms")
        if view.get("error"):
            print(f"error: {view['error']}")
        charge = view.get("charge")
        print(f"charged: {charge['amount']} {charge['currency']}" if charge else "charged: nothing")

        period = datetime.now(timezone.utc).strftime("%Y-%m")
        async with http.get(f"/customers/{CUSTOMER}/invoice", params={"period": period}) as answer:
            invoice = await answer.json()
        print(f"invoice {invoice['customerId']} {invoice['period']}: {len(invoice['lines'])} line(s), "
              f"total {invoice['total']}")
        return 0 if view["status"] == "success" else 1


async def follow(http: aiohttp.ClientSession, request: str) -> dict:
    """The request's views as server-sent events, printed as they come; the last one."""
    view: dict = {}
    async with http.get(f"/requests/{request}/events", timeout=aiohttp.ClientTimeout(total=None)) as stream:
        async for line in stream.content:
            text = line.decode().strip()
            if not text.startswith("data:"):
                continue
            view = json.loads(text[len("data:"):])
            progress = view.get("progress") or {}
            percent = progress.get("percent")
            print(f"  {view['status']:8} {progress.get('phase', ''):10} {progress.get('records', 0):>8} records"
                  + (f" {percent:5.1f}%" if isinstance(percent, (int, float)) else ""), flush=True)
            if view["status"] in ("success", "failed"):
                break
    return view


def serve_here() -> tuple[str, str, "asyncio.AbstractEventLoop"]:
    """Serve the API in this process (a thread of its own) on a free port, with a
    temporary event log and a fresh admin key."""
    import threading

    from aiohttp import web

    from etl_actors.eventlog import EventLog
    from etl_actors.pipeline import ensure_ray
    from etl_actors.service.app import make_app
    from etl_actors.service.keys import create_key

    if not os.path.exists(os.path.join(HERE, "data", "crm.db")):
        subprocess.check_call([sys.executable, os.path.join(HERE, "make_data.py")])
    log_url = f"sqlite:///{tempfile.mkdtemp(prefix='etl-service-')}/events.db"
    ensure_ray()
    key = create_key(EventLog(log_url), "admin")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(make_app(log_url))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(60)
    print(f"serving the API here on http://127.0.0.1:{port} (log {log_url})")
    return f"http://127.0.0.1:{port}", key, loop


def main() -> int:
    url, key = os.environ.get("ETL_ACTORS_URL"), os.environ.get("ETL_ACTORS_KEY")
    if not url:
        url, key, _ = serve_here()
    elif not key:
        print("ETL_ACTORS_KEY is required with ETL_ACTORS_URL (etl-actors keys create --admin)", file=sys.stderr)
        return 2
    return asyncio.run(client(url, key))


if __name__ == "__main__":
    raise SystemExit(main())
