"""An aiohttp app served on 127.0.0.1 (a free port) from a thread of this process: the
base of the test servers (tests/apiserver.py, the S3 fault proxy in tests/s3server.py).
Subclasses give the app (:meth:`ThreadedServer._app`) and, when they hold resources of
their own on the server's loop, open and close them in :meth:`_started` and
:meth:`_stopping`."""
from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web


class ThreadedServer:
    name = "test-server"

    port = 0
    _loop: asyncio.AbstractEventLoop | None = None

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def _started(self) -> None:
        """Runs on the server's loop before the app is served."""

    async def _stopping(self) -> None:
        """Runs on the server's loop once the app no longer serves."""

    def start(self) -> "ThreadedServer":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        ready.set()
        self._loop.run_forever()

    async def _open(self) -> None:
        await self._started()
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _close(self) -> None:
        await self._runner.cleanup()
        await self._stopping()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:           # slow answers still sleeping
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
