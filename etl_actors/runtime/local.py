"""Children in this process: the same stage classes, called on worker threads.

For fast tests and small jobs without a Ray cluster. A "lost" child cannot happen
here except by a test asking for it (:meth:`LocalChildren.lose`).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Mapping

from .graph import build
from .supervisor import ChildLost


class LocalChildren:
    """Implements :class:`~.supervisor.Children` with in-process objects."""

    def __init__(self, spec, log_url: str):
        self.spec, self.log_url = spec, log_url
        self.children: dict[tuple[str, int], Any] = {}
        self._lose: set[str] = set()
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.generations: dict[tuple[str, int], int] = {}

    def cpus(self) -> int:
        return os.cpu_count() or 1

    def lose(self, kind: str) -> None:
        """Make the next call to a ``kind`` child fail as if its process died (tests)."""
        self._lose.add(kind)

    def _check(self, kind: str, index: int) -> None:
        if kind in self._lose:
            self._lose.discard(kind)
            raise ChildLost(f"{kind}#{index}", "lost on request")

    async def start(self, counts: Mapping[str, int]) -> None:
        self.children = {(kind, i): build(kind, self.spec, self.log_url, i)
                         for kind, n in counts.items() for i in range(n)}

    async def call(self, kind: str, index: int, method: str, *args, returns: int = 1, resolve: int = 0) -> Any:
        """Call ``method`` on a worker thread, one call per child at a time (as an actor)."""
        self._check(kind, index)
        child = self.children[(kind, index)]
        lock = self._locks.setdefault((kind, index), asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(getattr(child, method), *args)

    def generation(self, kind: str, index: int) -> int:
        """How many times the child was replaced; calls made before a restart fail."""
        return self.generations.get((kind, index), 0)

    async def restart(self, kind: str, index: int) -> None:
        self.generations[(kind, index)] = self.generation(kind, index) + 1
        old = self.children.get((kind, index))
        if old is not None:
            old.close()
        self.children[(kind, index)] = build(kind, self.spec, self.log_url, index)

    async def stop(self) -> None:
        for (kind, index), child in list(self.children.items()):
            lock = self._locks.setdefault((kind, index), asyncio.Lock())
            async with lock:
                await asyncio.to_thread(child.close)

    async def shutdown(self) -> None:
        await self.stop()
