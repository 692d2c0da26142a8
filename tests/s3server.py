"""A real S3-compatible store for tests: moto's server mode in a subprocess on
127.0.0.1:<free port>, spoken to over HTTP by pyarrow's S3 client, and a proxy in
front of it that can answer some requests with errors.

    from s3server import MotoServer, FaultProxy   # tests/ is on sys.path (see conftest.py)

    with MotoServer() as s3:
        s3.connection("KEY", "SECRET")      # "s3://KEY:SECRET@127.0.0.1:<port>?scheme=http&region=us-east-1"
        s3.put("raw-data/daily-exports/a.csv", b"id\\n1\\n")   # the bucket is made on first use
        s3.get("raw-data/daily-exports/a.csv")                 # b"id\\n1\\n"
        s3.files("raw-data/daily-exports")                     # {"a.csv": 7}: relative path -> size
        with FaultProxy(s3) as proxy:
            proxy.fail("daily-exports/a.csv", times=2, method="GET")   # 503 to requests whose path ends so
            proxy.connection("KEY", "SECRET")                       # the same store, through the proxy
            proxy.failed                                           # [(method, path), ...] answered with errors

moto accepts any credentials (it checks none), so tests choose secrets freely and
look for them in what the code under test prints, logs and records.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import pyarrow.fs as pafs
from aiohttp import ClientSession, web

from threaded import ThreadedServer

REGION = "us-east-1"
_HOP_BY_HOP = {"transfer-encoding", "connection", "keep-alive", "content-encoding"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on a free port, up until :meth:`stop`."""

    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        self.fs = pafs.S3FileSystem(access_key="test", secret_key="test", region=REGION, scheme="http",
                                    endpoint_override=f"127.0.0.1:{self.port}", allow_bucket_creation=True)

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"moto's server did not answer on {self.url} within {timeout} s")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def connection(self, key: str, secret: str, **options: str) -> str:
        """A connection URL for the store, as a spec's ``connection`` takes it."""
        query = "&".join(f"{k}={v}" for k, v in {"scheme": "http", "region": REGION, **options}.items())
        return f"s3://{key}:{secret}@{self.endpoint}?{query}"

    def put(self, key: str, data: bytes) -> None:
        """Write the object ``bucket/key...`` (making the bucket if needed)."""
        self.fs.create_dir(key.split("/", 1)[0])
        with self.fs.open_output_stream(key) as stream:
            stream.write(data)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(key) as stream:
            return stream.read()

    def files(self, folder: str) -> dict[str, int]:
        """``{path relative to folder: size}`` of every object below ``folder``."""
        found = self.fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
        return {f.path[len(folder.rstrip("/")) + 1:]: f.size for f in found if f.type == pafs.FileType.File}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> "MotoServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class _Fault:
    suffix: str
    status: int
    times: int
    method: str | None


class FaultProxy(ThreadedServer):
    """An HTTP proxy in front of a :class:`MotoServer`, in a thread of this process,
    that answers scripted requests with an error instead of forwarding them."""

    name = "s3-fault-proxy"

    def __init__(self, store: MotoServer):
        self.store = store
        self.faults: list[_Fault] = []
        self.failed: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.start()

    def connection(self, key: str, secret: str, **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"scheme": "http", "region": REGION, **options}.items())
        return f"s3://{key}:{secret}@127.0.0.1:{self.port}?{query}"

    def fail(self, suffix: str, status: int = 503, times: int = 1, method: str | None = None) -> None:
        """Answer the next ``times`` requests whose path ends with ``suffix`` (and whose
        method is ``method``, when given) with ``status`` (503 as S3 says it: ``SlowDown``)."""
        with self._lock:
            self.faults.append(_Fault(suffix, status, times, method))

    def _fault_for(self, request: web.Request) -> _Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and request.path.endswith(fault.suffix) \
                        and fault.method in (None, request.method):
                    fault.times -= 1
                    self.failed.append((request.method, request.path))
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        fault = self._fault_for(request)
        if fault is not None:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return web.Response(status=fault.status, body=b"" if request.method == "HEAD" else body,
                                content_type="application/xml")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
        async with self._session.request(request.method, f"{self.store.url}{request.path_qs}", headers=headers,
                                         data=body, allow_redirects=False) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP
                    and (request.method == "HEAD" or k.lower() != "content-length")}
            return web.Response(status=answer.status, body=data, headers=kept)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _started(self) -> None:
        self._session = ClientSession(auto_decompress=False)

    async def _stopping(self) -> None:
        await self._session.close()

    def __enter__(self) -> "FaultProxy":
        return self      # started when made
