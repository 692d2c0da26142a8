"""A small CRM REST API for the customer_sync example (the seed's API shape).

    python examples/crm_api.py --port 8765            # serve until Ctrl-C
    CRM_API_TOKEN=... python examples/crm_api.py      # the bearer token it wants (default demo-token)

Routes (every one wants ``Authorization: Bearer <token>``; 401 otherwise):

- ``GET /v1/customers?page=&per_page=&updated_since=`` → ``{"results": [...], "has_more": bool}``,
  customers ordered by id, only those updated after ``updated_since`` (ISO 8601) when given;
- ``GET /v1/accounts/{account_id}`` → ``{"id", "profile": {"segment", "tier"}}`` or 404;
- ``POST /v1/admin/touch?n=N`` → marks the first N customers updated now (for an
  incremental rerun).

The data is deterministic: 1,000 customers, a few with a malformed or missing email, a
duplicate email, an age out of range, or an account the CRM does not know. With
``--flaky`` the API answers the third page once with 429 (Retry-After: 1) and the fifth
once with 500, as real ones do.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import threading
from datetime import datetime, timedelta, timezone

from aiohttp import web

SEGMENTS = ["consumer", "smb", "enterprise"]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def customers(n: int = 1000) -> list[dict]:
    rows = []
    for i in range(1, n + 1):
        email = f"  Customer{i}@Example.COM "
        if i % 97 == 0:
            email = f"customer{i}-at-example.com"          # breaks the format rule
        if i % 151 == 0:
            email = ""                                      # breaks completeness
        if i % 211 == 0:
            email = f"customer{i - 1}@example.com"          # a duplicate of the one before
        rows.append({"id": i, "email": email, "first_name": f"First{i}", "last_name": f"Last{i}",
                     "age": 200 if i % 89 == 0 else 18 + i % 60, "account_id": f"A{i % 50:03d}",
                     "created_at": (START + timedelta(hours=i)).isoformat(),
                     "updated_at": (START + timedelta(hours=i, minutes=30)).isoformat()})
    return rows


def accounts() -> dict[str, dict]:
    """Accounts A000..A044; A045..A049 are unknown to the CRM."""
    return {f"A{k:03d}": {"id": f"A{k:03d}", "profile": {"segment": SEGMENTS[k % 3], "tier": 1 + k % 4}}
            for k in range(45)}


class CrmApi:
    def __init__(self, token: str = "demo-token", flaky: bool = False):
        self.token, self.flaky = token, flaky
        self.customers, self.accounts = customers(), accounts()
        self.faults = {3: 429, 5: 500} if flaky else {}
        self.app = web.Application()
        self.app.add_routes([web.get("/v1/customers", self.list_customers),
                             web.get("/v1/accounts/{account_id}", self.account),
                             web.post("/v1/admin/touch", self.touch)])

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def list_customers(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "invalid token"}, status=401)
        page, per_page = int(request.query.get("page", 1)), min(int(request.query.get("per_page", 100)), 500)
        fault = self.faults.pop(page, None)
        if fault == 429:
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        if fault:
            return web.json_response({"error": "try again"}, status=fault)
        since = request.query.get("updated_since")
        rows = self.customers
        if since:
            cut = datetime.fromisoformat(since.replace("Z", "+00:00"))
            rows = [r for r in rows if datetime.fromisoformat(r["updated_at"]) > cut]
        chunk = rows[(page - 1) * per_page: page * per_page]
        return web.json_response({"results": chunk, "has_more": page * per_page < len(rows)})

    async def account(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "invalid token"}, status=401)
        found = self.accounts.get(request.match_info["account_id"])
        return web.json_response(found) if found else web.json_response({"error": "not found"}, status=404)

    async def touch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "invalid token"}, status=401)
        return web.json_response({"touched": self.touch_sync(int(request.query.get("n", 10)))})

    def touch_sync(self, n: int) -> int:
        """The first ``n`` customers change now (their first name is upper-cased)."""
        now = datetime.now(timezone.utc).isoformat()
        for row in self.customers[:n]:
            row["updated_at"] = now
            row["first_name"] = row["first_name"].upper()
        return n


class Running:
    """The API served on a thread of its own (``url``, ``stop()``)."""

    def __init__(self, api: CrmApi, port: int = 0):
        self.api, self.loop = api, asyncio.new_event_loop()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.api.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start(port: int = 0, token: str | None = None, flaky: bool = False) -> Running:
    return Running(CrmApi(token or os.environ.get("CRM_API_TOKEN", "demo-token"), flaky), port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--flaky", action="store_true")
    args = parser.parse_args()
    api = CrmApi(os.environ.get("CRM_API_TOKEN", "demo-token"), args.flaky)
    web.run_app(api.app, host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()
