"""A Kafka topic as a sink: every row one JSON message.

Each row is one message (orjson; timestamps and dates as ISO-8601 text, decimals as
text, durations as seconds, binary as hex, NaN and the infinities as null), keyed by
``str(row[keyField])`` when ``keyField`` is set (partitioned by its murmur2 hash, as
Java clients do); keyless rows of a batch go to one partition, the next batch's to the
next, and a large batch spreads over several. Every message carries the header
``etl-batch-id``. ``write`` returns only once the broker has acknowledged every message
(``acks=all``), so the runtime advances positions only past batches the broker holds.

Guarantee: at least once. A replayed batch (a crash between the broker's ack and the
commit of the position, or a retried write) is written again: duplicates are bounded by
the batches in flight at a crash, and consumers can drop them by their ``etl-batch-id``.
The producer is idempotent (``enable_idempotence``: no duplicates from the client's own
retries) where the broker supports it, else it falls back to plain ``acks=all`` and says
so once on stderr. Measured on Tansu 0.6 (``memory://``): InitProducerId fails with
UNKNOWN, so neither idempotence nor transactions work there (the fallback is used), and
a replayed batch appears twice.
"""
from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import ClassVar

import orjson
import pyarrow as pa

from ..batch import DeadLetter, LoadResult, jsonable
from ..errors import SpecError, TerminalError
from ..kafka_client import KafkaConnection, LoopThread, kafka_error, stop_quietly
from .base import Sink, SinkWriter

MAX_MESSAGE_BYTES = 1024 * 1024 - 1024   # the broker's default message.max.bytes, less the framing
REQUEST_TIMEOUT_MS = 30_000
ROWS_PER_PARTITION = 5_000               # keyless rows of a batch spread in runs of this many
HEADER = "etl-batch-id"
_idempotence: dict[tuple[str, ...], bool] = {}   # per broker set, learned by the first writer


@dataclass(frozen=True)
class KafkaSink(Sink):
    """Rows of each batch as JSON messages in ``topic``."""

    type: ClassVar[str] = "kafka"

    topic: str
    connection: KafkaConnection | None = None
    key_field: str | None = None

    def __post_init__(self):
        if not self.topic:
            raise SpecError("topic", "expected a topic name, got ''")

    @classmethod
    def from_spec(cls, section, ctx) -> "KafkaSink":
        section.get("type", types=str)
        given = section.has("bootstrap_servers") or section.has("connection")
        sink = cls(topic=section.get("topic", types=str, check=lambda v: None if v else "expected a topic name, got ''"),
                   connection=KafkaConnection.from_spec(section, ctx) if given else None,
                   key_field=section.get("key_field", None, types=str))
        section.done()
        return sink

    def open(self, pipeline: str) -> "KafkaWriter":
        if self.connection is None:
            raise TerminalError(f"the kafka sink of topic {self.topic!r} has no brokers: give it bootstrapServers "
                                "or connection (a stream reading a kafka source lends it the source's)")
        return KafkaWriter(self)

    def describe(self) -> dict:
        brokers = self.connection.describe() if self.connection is not None else {}
        return {"type": self.type, "topic": self.topic, "keyField": self.key_field, **brokers}


class KafkaWriter(SinkWriter):
    """An open producer on :attr:`KafkaSink.topic`; ``idempotent`` says which producer it got."""

    def __init__(self, sink: KafkaSink):
        self.sink = sink
        self._loop = LoopThread(f"etl-kafka-sink-{sink.topic}")
        self._producer, self._next = None, 0
        try:
            self._producer, self.idempotent = self._loop.run(_producer(sink.connection), timeout=60)
            self.partitions = self._loop.run(self._partitions(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - classified into transient / terminal
            self.close()
            raise kafka_error(exc, sink.connection, f"open a producer on topic {sink.topic!r}") from None

    async def _partitions(self) -> list[int]:
        """The topic's partitions (from all topics' metadata: asking for one by name
        makes brokers with auto-creation create it)."""
        cluster = await self._producer.client.fetch_all_metadata()
        found = cluster.partitions_for_topic(self.sink.topic)
        if not found:
            raise TerminalError(f"kafka at {self.sink.connection.servers}: topic {self.sink.topic!r} does not exist")
        return sorted(found)

    def write(self, table: pa.Table, batch_id: str) -> LoadResult:
        """Send every row and wait for the broker's acks; rows that cannot be sent as JSON
        are dead letters; a broker that does not answer is a TransientError."""
        if self.sink.key_field is not None and self.sink.key_field not in table.column_names:
            raise TerminalError(f"keyField {self.sink.key_field!r} is not a column of batch {batch_id!r} "
                                f"(columns: {', '.join(table.column_names)})", batch_id=batch_id)
        messages, dead = self._messages(table.to_pylist())
        if messages:
            try:
                self._loop.run(self._send(messages, batch_id), timeout=REQUEST_TIMEOUT_MS / 1000 + 30)
            except Exception as exc:  # noqa: BLE001 - classified into transient / terminal
                raise kafka_error(exc, self.sink.connection, f"write batch {batch_id!r} to topic "
                                  f"{self.sink.topic!r}", batch_id=batch_id) from None
        return LoadResult(loaded=len(messages), failed=len(dead), dead_letters=tuple(dead))

    def _messages(self, rows: list[dict]) -> tuple[list[tuple[int, bytes | None, bytes]], list[DeadLetter]]:
        """``(partition, key, value)`` per row that serializes, dead letters for the rest."""
        key_field, messages, dead, partitions = self.sink.key_field, [], [], {}
        for i, row in enumerate(rows):
            try:
                value = orjson.dumps(row, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
            except (orjson.JSONEncodeError, TypeError) as exc:
                dead.append(DeadLetter(f"cannot serialize as JSON: {exc}", jsonable(row)))
                continue
            key = None if key_field is None or row[key_field] is None else str(row[key_field]).encode()
            if len(value) + len(key or b"") > MAX_MESSAGE_BYTES:
                dead.append(DeadLetter(f"the message of {len(value)} bytes is larger than {MAX_MESSAGE_BYTES}",
                                       jsonable(row)))
                continue
            if key is None:
                partition = self._keyless(i, len(rows))
            else:
                partition = partitions.get(key)
                if partition is None:
                    partition = partitions[key] = _partition_of(key, self.partitions)
            messages.append((partition, key, value))
        self._next += 1
        return messages, dead

    def _keyless(self, row: int, rows: int) -> int:
        """Runs of ROWS_PER_PARTITION rows, from the partition after the last batch's."""
        return self.partitions[(self._next + row // ROWS_PER_PARTITION) % len(self.partitions)]

    async def _send(self, messages: list, batch_id: str) -> None:
        headers = [(HEADER, batch_id.encode())]
        builders, sent = {}, []
        for partition, key, value in messages:
            builder = builders.get(partition)
            if builder is None:
                builder = self._producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                sent.append(await self._producer.send_batch(builder, self.sink.topic, partition=partition))
                builder = self._producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)
            builders[partition] = builder
        for partition, builder in builders.items():
            sent.append(await self._producer.send_batch(builder, self.sink.topic, partition=partition))
        await asyncio.gather(*sent)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        if self._producer is not None:
            self._loop.run(stop_quietly([self._producer]), timeout=30)
        self._loop.close()


async def _producer(connection: KafkaConnection):
    """A started producer with ``acks=all``, idempotent when the brokers allow it;
    ``(producer, idempotent)``."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import BrokerResponseError

    options = dict(**connection.client_kwargs(), acks="all", linger_ms=0, max_batch_size=512 * 1024,
                   max_request_size=MAX_MESSAGE_BYTES + 1024, request_timeout_ms=REQUEST_TIMEOUT_MS)
    if _idempotence.get(connection.bootstrap, True):
        producer = AIOKafkaProducer(**options, enable_idempotence=True)
        try:
            await producer.start()
            _idempotence[connection.bootstrap] = True
            return producer, True
        except BrokerResponseError as exc:    # InitProducerId refused: the broker has no idempotence
            await stop_quietly([producer])
            _idempotence[connection.bootstrap] = False
            print(f"warning: kafka at {connection.servers} refuses idempotent producers ({type(exc).__name__}); "
                  "writing with acks=all without idempotence: a retried send may be duplicated", file=sys.stderr)
        except BaseException:
            await stop_quietly([producer])
            raise
    producer = AIOKafkaProducer(**options)
    try:
        await producer.start()
    except BaseException:
        await stop_quietly([producer])
        raise
    return producer, False


def _partition_of(key: bytes, partitions: list[int]) -> int:
    """The partition Java clients choose for ``key`` (murmur2, positive, modulo)."""
    from aiokafka.partitioner import murmur2

    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return jsonable(value)
