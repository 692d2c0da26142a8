"""``etl-actors serve`` as a user starts it: one line saying where, answers with a key,
stops cleanly on SIGTERM. (It joins the test session's Ray through RAY_ADDRESS.)"""
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.ray


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lines_of(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def get(url: str, key: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_says_where_it_serves_answers_and_stops_on_sigterm(log_url, keys, ray_local):
    import ray

    from etl_actors.scheduler import scheduler_name

    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["gcs_address"]}
    server = subprocess.Popen([sys.executable, "-m", "etl_actors", "serve", "--port", str(port), "--log", log_url],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines, said = lines_of(server.stderr), []
        while not any(line.startswith("etl-actors: serving") for line in said):
            line = lines.get(timeout=60)
            assert line is not None, "".join(said)
            said.append(line)
        assert said[-1] == f"etl-actors: serving on http://127.0.0.1:{port} (log {log_url})\n"
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/status", None)[0] == 401
        status, body = get(f"{base}/status", keys["admin"])
        assert status == 200 and body["requests"] == [] and len(body["recordsPerMinute"]) == 30
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        assert "Traceback" not in "".join(rest)
    finally:
        if server.poll() is None:
            server.kill()
        try:
            ray.kill(ray.get_actor(scheduler_name(log_url), namespace="etl_actors"))
        except ValueError:
            pass
