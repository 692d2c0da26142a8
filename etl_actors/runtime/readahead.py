"""Reading ahead: an iterator run on a thread of its own, a few items ahead of the
one consuming it, so an extractor parses and transforms the next batch while the
supervisor ships the current one to a loader."""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

_END = object()


class ReadAhead:
    """Items of ``items``, produced on a daemon thread at most ``depth`` ahead of
    :meth:`next`. An exception the iterator raises is raised by :meth:`next` in its
    turn, after the items before it; :meth:`stop` ends the thread (the iterator is
    closed on it, so its files and threads are released)."""

    def __init__(self, items: Iterator, depth: int = 2, name: str = "etl-read-ahead"):
        self._queue: queue.Queue = queue.Queue(max(1, depth))
        self._stopped = threading.Event()
        self._ended: tuple[bool, Any] | None = None
        self._thread = threading.Thread(target=self._produce, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((True, item)):
                    return
            self._put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order
            self._put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _put(self, entry: tuple[bool, Any]) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Any:
        """The next item; None once the iterator is exhausted (and ever after)."""
        if self._ended is None:
            ok, item = self._queue.get()
            if ok and item is not _END:
                return item
            self._ended = (ok, item)
        ok, item = self._ended
        if not ok:
            raise item
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread, dropping what it read ahead."""
        self._stopped.set()
        self._thread.join(timeout)
