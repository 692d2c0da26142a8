"""The service API under load: ``GET /requests/{id}`` at 200 concurrent and
``POST /services/{id}/requests`` at 20 concurrent (and the status page's ``GET /status``
at 10), against ``etl-actors serve``.

The server is a separate process: ``etl-actors serve`` on a free port of 127.0.0.1 with a
temporary SQLite log (it starts its own local Ray), and an admin key made by
``etl-actors keys create --admin`` on the same log. One service is created over HTTP (a
CSV of ``--rows`` orders upserted into SQLite, priced per record), then:

1. warm-up: 20 concurrent POSTs, and a wait until those 20 runs have finished, so the
   GET figures are of a server at rest (not competing with its own runs for the cores);
2. GET: ``--gets`` requests (default 20,000) over ``--get-concurrency`` (200) connections,
   each asking for one of the warm-up requests in turn; an answer counts as right when it
   is 200 and its body's ``requestId`` is the id asked for;
3. status: ``--status-gets`` (default 1,000) ``GET /status`` over 10 connections (ten open
   status pages poll once a second each); right when 200 and it lists the service;
4. POST: ``--posts`` requests (default 1,000) over ``--post-concurrency`` (20)
   connections; right when 202 with a ``requestId``. Their runs queue behind each other
   on the service (one at a time) and run while the POSTs go on, so this measures
   acceptance beside runs; the server is stopped before they all finish.

Each phase prints one line and the script ends with one JSON line of every figure.
Measured on the 2-core machine (other work running beside it), three runs (GET /status in two)::

    GET /requests/{id}: 200 concurrent, 20,000 requests, 2,198-2,890 req/s, p50 69-86 ms, p99 113-241 ms, 0 errors
    GET /status: 10 concurrent, 1,000 requests, 161-179 req/s, p50 52-57 ms, p99 168-195 ms, 0 errors
    POST /services/{id}/requests: 20 concurrent, 1,000 requests, 160-190 req/s, p50 97-120 ms, p99 215-344 ms

The client (aiohttp) runs on the same machine as the server: both share the cores, so
the figures are a lower bound for the server alone. ``GET /status`` folds the alerts of
every service's pipeline from its whole stream on each call, so it slows as those
streams grow (about 25 ms per 1,000 events).

The exit status is 1 when any answer was wrong::

    .venv/bin/python benchmarks/service_load.py
    .venv/bin/python benchmarks/service_load.py --gets 5000 --posts 200 --keep
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

START_TIMEOUT_S = 120
FINISHED = ("success", "failed")
STATUS_CONCURRENCY = 10
REQUEST_BODY = {"customerId": "bench"}     # charged, so each run's end settles billing too


def main() -> int:
    args = _arguments()
    folder = Path(tempfile.mkdtemp(prefix="service_load_", dir=args.dir))
    try:
        return asyncio.run(_benchmark(args, folder))
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets", type=int, default=20_000, help="GET /requests/{id} requests in all")
    parser.add_argument("--get-concurrency", type=int, default=200)
    parser.add_argument("--status-gets", type=int, default=1_000, help="GET /status requests in all")
    parser.add_argument("--posts", type=int, default=1_000, help="POST /services/{id}/requests in all")
    parser.add_argument("--post-concurrency", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1_000, help="rows of the service's CSV input")
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the log, data and server output")
    return parser.parse_args()


async def _benchmark(args: argparse.Namespace, folder: Path) -> int:
    log_url = f"sqlite:///{folder}/events.db"
    key = _admin_key(log_url)
    with _Server(log_url, folder) as server:
        async with aiohttp.ClientSession(
                base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                connector=aiohttp.TCPConnector(limit=max(args.get_concurrency, args.post_concurrency))) as http:
            service_id = await _create_service(http, folder, args.rows)
            create_request = f"/services/{service_id}/requests"
            warm = await _load("POST", http, [create_request] * 20, 20, _accepted, REQUEST_BODY)
            if warm.errors:
                print(f"warm-up: {warm.errors} of 20 POSTs failed: {warm.first_error}", file=sys.stderr)
                return 1
            ids = warm.request_ids
            seconds, failed = await _wait_finished(http, ids)
            print(f"warm-up: 20 concurrent requests accepted and run in {seconds:.1f} s, {failed} failed",
                  file=sys.stderr)
            gets = await _load("GET", http, [f"/requests/{ids[i % len(ids)]}" for i in range(args.gets)],
                               args.get_concurrency, _same_request)
            pages = await _load("GET", http, ["/status"] * args.status_gets, STATUS_CONCURRENCY,
                                _lists(service_id))
            posts = await _load("POST", http, [create_request] * args.posts, args.post_concurrency, _accepted,
                                REQUEST_BODY)
    print(gets.line("GET /requests/{id}", args.get_concurrency))
    print(pages.line("GET /status", STATUS_CONCURRENCY))
    print(posts.line("POST /services/{id}/requests", args.post_concurrency))
    print(json.dumps({"get": gets.figures(args.get_concurrency), "status": pages.figures(STATUS_CONCURRENCY),
                      "post": posts.figures(args.post_concurrency)}))
    return 1 if failed or gets.errors or pages.errors or posts.errors else 0


# --- the server -----------------------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "etl_actors", *args]


def _admin_key(log_url: str) -> str:
    """A new admin key: the last line of ``etl-actors keys create --admin``'s stdout."""
    done = subprocess.run(_cli("keys", "create", "--admin", "--log", log_url), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        sys.exit(f"etl-actors keys create failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """``etl-actors serve`` in a subprocess, its output in ``server.log``; stopped with
    SIGTERM (then SIGKILL after 30 s) on exit."""

    def __init__(self, log_url: str, folder: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = folder / "server.log"
        self.command = _cli("serve", "--host", "127.0.0.1", "--port", str(self.port), "--log", log_url)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "_Server":
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.output.parent)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"etl-actors serve exited ({self.process.returncode}):\n{self.output.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        sys.exit(f"etl-actors serve did not listen within {START_TIMEOUT_S} s")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the service ----------------------------------------------------------------------

async def _create_service(http: aiohttp.ClientSession, folder: Path, rows: int) -> str:
    source = folder / "orders.csv"
    with open(source, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["order_id", "customer", "amount"])
        writer.writerows((i, f"c{i % 97}", f"{(i * 7919) % 10000 / 100:.2f}") for i in range(rows))
    body = {
        "name": "Load test orders", "type": "Automation", "subtype": "data-pipeline",
        "connections": {"warehouse": f"sqlite:///{folder}/warehouse.db"},
        "pipeline": {
            "source": {"type": "file", "path": str(source), "format": "csv"},
            "destination": {"type": "database", "connection": "warehouse", "table": "orders",
                            "mode": "upsert", "keyFields": ["order_id"]},
        },
        "pricing": {"model": "per-record", "rate": 0.001},
    }
    async with http.post("/services", json=body) as response:
        if response.status != 201:
            sys.exit(f"POST /services answered {response.status}: {await response.text()}")
        return (await response.json())["id"]


async def _wait_finished(http: aiohttp.ClientSession, ids: list[str], timeout: float = 600) -> tuple[float, int]:
    """Seconds until every request finished, and how many failed."""
    started, failed = time.monotonic(), 0
    for request_id in ids:
        while True:
            async with http.get(f"/requests/{request_id}") as response:
                status = (await response.json())["status"]
            if status in FINISHED:
                failed += status == "failed"
                break
            if time.monotonic() - started > timeout:
                sys.exit(f"the warm-up requests did not finish within {timeout:.0f} s")
            await asyncio.sleep(0.25)
    return time.monotonic() - started, failed


# --- the load -------------------------------------------------------------------------

class _Result:
    """One phase's answers: latencies of the right ones, the wrong ones counted."""

    def __init__(self):
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.request_ids: list[str] = []
        self.seconds = 0.0

    def succeed(self, seconds: float, answer: dict) -> None:
        self.latencies.append(seconds)
        if "requestId" in answer:
            self.request_ids.append(answer["requestId"])

    def fail(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text

    def figures(self, concurrency: int) -> dict:
        ordered = sorted(self.latencies) or [0.0]
        count = len(self.latencies) + self.errors
        return {"concurrency": concurrency, "requests": count, "errors": self.errors,
                "rps": round(count / self.seconds, 1) if self.seconds else 0.0,
                "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)}

    def line(self, name: str, concurrency: int) -> str:
        f = self.figures(concurrency)
        text = (f"{name}: {concurrency} concurrent, {f['requests']:,} requests, {f['rps']:,.0f} req/s, "
                f"p50 {f['p50_ms']:,.0f} ms, p99 {f['p99_ms']:,.0f} ms, {f['errors']} errors")
        return text + (f" (first: {self.first_error})" if self.errors else "")


def _accepted(status: int, body: dict, _path: str) -> str | None:
    """The problem with a POST's answer, if any: right is 202 with a ``requestId``."""
    return None if status == 202 and body.get("requestId") else f"{status} {str(body)[:200]}"


def _same_request(status: int, body: dict, path: str) -> str | None:
    """Right is 200 with the request asked for."""
    return None if status == 200 and f"/requests/{body.get('requestId')}" == path else f"{status} {str(body)[:200]}"


def _lists(service_id: str):
    """Right is 200 with the service among the status's services."""
    def check(status: int, body: dict, _path: str) -> str | None:
        if status == 200 and service_id in [s.get("id") for s in body.get("services", ())]:
            return None
        return f"{status} {str(body)[:200]}"
    return check


async def _load(method: str, http: aiohttp.ClientSession, paths: list[str], concurrency: int, check,
                body: dict | None = None) -> _Result:
    """Send one request per path with at most ``concurrency`` in flight; the latencies
    of the right answers (``check(status, body, path)`` returns no problem), the wrong
    ones counted."""
    result, cursor = _Result(), iter(paths)

    async def worker():
        for path in cursor:
            sent = time.perf_counter()
            try:
                async with http.request(method, path, json=body) as response:
                    answer = await response.json(content_type=None)
                    problem = check(response.status, answer, path)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                result.fail(problem)
            else:
                result.succeed(time.perf_counter() - sent, answer)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result

if __name__ == "__main__":
    sys.exit(main())
