"""Children in this process: the same stage classes, called on worker threads.

For fast tests and small jobs without a Ray cluster. A "lost" child cannot happen
here except by a test asking for it (:meth:`LocalChildren.lose`).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from .stages import Extractor, Loader, Transformer
from .supervisor import ChildLost


class LocalChildren:
    """Implements :class:`~.supervisor.Children` with in-process objects."""

    def __init__(self, spec, log_url: str):
        self.spec, self.log_url = spec, log_url
        self.extractors: list[Extractor] = []
        self.transformers: list[Transformer] = []
        self.loader: Loader | None = None
        self._lose: set[str] = set()
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.generations: dict[tuple[str, int], int] = {}

    def cpus(self) -> int:
        return os.cpu_count() or 1

    def lose(self, kind: str) -> None:
        """Make the next call to a ``kind`` child fail as if its process died (tests)."""
        self._lose.add(kind)

    async def _serial(self, kind: str, index: int, fn, *args):
        """Call ``fn`` on a worker thread, one call per child at a time (as an actor)."""
        lock = self._locks.setdefault((kind, index), asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(fn, *args)

    def _check(self, kind: str, index: int) -> None:
        if kind in self._lose:
            self._lose.discard(kind)
            raise ChildLost(f"{kind}#{index}", "lost on request")

    async def start(self, extractors: int, transformers: int) -> None:
        name = self.spec.name
        self.extractors = [Extractor(name, self.spec.source, self.log_url, i) for i in range(extractors)]
        self.transformers = [Transformer(name, self.spec.transformations, self.log_url, i)
                             for i in range(transformers)]
        self.loader = Loader(name, self.spec.destination, self.log_url)

    async def open(self, index: int, partition: str, position: Any) -> None:
        await self._serial("extractor", index, self.extractors[index].open, partition, position)

    async def next_batch(self, index: int, run_id: str):
        self._check("extractor", index)
        return await self._serial("extractor", index, self.extractors[index].next_batch, run_id)

    async def transform(self, index: int, ref, batch_id: str, run_id: str):
        self._check("transformer", index)
        return await self._serial("transformer", index, self.transformers[index].apply, ref, batch_id, run_id)

    async def finish_transform(self, refs: list, batch_id: str, run_id: str):
        return await self._serial("transformer", 0, self.transformers[0].finish, refs, batch_id, run_id)

    async def load(self, ref, batch_id: str, run_id: str) -> dict:
        self._check("loader", 0)
        return await self._serial("loader", 0, self.loader.load, ref, batch_id, run_id)

    async def finish_load(self) -> None:
        await self._serial("loader", 0, self.loader.finish)

    def generation(self, kind: str, index: int) -> int:
        """How many times the child was replaced; calls made before a restart fail."""
        return self.generations.get((kind, index), 0)

    async def restart(self, kind: str, index: int) -> None:
        name = self.spec.name
        self.generations[(kind, index)] = self.generation(kind, index) + 1
        if kind == "extractor":
            self.extractors[index] = Extractor(name, self.spec.source, self.log_url, index)
        elif kind == "transformer":
            self.transformers[index] = Transformer(name, self.spec.transformations, self.log_url, index)
        else:
            self.loader.close()
            self.loader = Loader(name, self.spec.destination, self.log_url)

    async def stop(self) -> None:
        if self.loader is not None:
            await self._serial("loader", 0, self.loader.close)

    async def shutdown(self) -> None:
        await self.stop()
