"""Kafka topics as a stream source.

A partition of the pipeline is a topic-partition, named ``"topic:partition"``; its
position is the next offset to read. The pipeline's event log holds the truth about
positions: a :class:`KafkaReader` is handed them, assigns its partitions by hand (never
``subscribe``: no group rebalancing moves them) and seeks there. The consumer group
only mirrors the committed positions (:meth:`KafkaReader.commit_group`) so that lag
tools see them, and gives ``startFrom: committed`` its start.

Guarantee: a reader returns every message after its handed positions once, in offset
order per partition (poison ones as dead letters). A message is read again only by a
reader handed a position before it: the runtime's retries after a failure, before the
message's batch was committed.

JSON messages are decoded a poll at a time by
:func:`~etl_actors.sources.json_messages.decode_json`, with pyarrow's type inference per
poll: a key absent from a poll is absent from its table, an integer column is int64 in
polls without a fraction and double in polls with one, ISO-8601 strings become
``timestamp[s]`` (text again in a poll where one is not a date). A message that is not
valid JSON, not an object, or does not fit the types of the poll's earlier messages is
a poison message: left out of the table, returned as a dead letter with its topic,
partition and offset. ``format: raw`` gives ``key`` and ``value`` as binary columns.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa

from ..batch import DeadLetter
from ..errors import SpecError, TerminalError, first_line
from ..kafka_client import KafkaConnection, LoopThread, kafka_error, stop_quietly
from .base import Source
from .json_messages import decode_json

START_FROM = ("committed", "earliest", "latest")
FORMATS = ("json", "raw")
OPEN_TIMEOUT = 30.0          # seconds to connect, assign and seek
PROBE_AFTER = 5.0            # seconds without a message before asking the broker whether it is there
PROBE_TIMEOUT = 10.0
COMMIT_TIMEOUT = 30.0
FETCH_MAX_BYTES = 64 * 2**20
PARTITION_FETCH_BYTES = 16 * 2**20
PREVIEW_CHARS = 1000         # of a poison message's value, in its dead letter

_OFFSET, _TIMESTAMP, _KEY, _VALUE = (attrgetter(a) for a in ("offset", "timestamp", "key", "value"))


def partition_name(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def topic_partition(name: str):
    from aiokafka import TopicPartition

    topic, _, number = name.rpartition(":")
    return TopicPartition(topic, int(number))


def _order(name: str) -> tuple[str, int]:
    topic, _, number = name.rpartition(":")
    return topic, int(number)


@dataclass(frozen=True)
class KafkaSource(Source):
    """Messages of ``topics``, read by ``parallelism`` extractors sharing their partitions
    (None: one per CPU of the cluster, at most one per partition)."""

    type: ClassVar[str] = "kafka"

    topics: tuple[str, ...]
    consumer_group: str
    connection: KafkaConnection
    start_from: str = "committed"
    format: str = "json"
    batch_size: int = 50_000
    poll_timeout_ms: int = 200
    parallelism: int | None = None

    def __post_init__(self):
        if not self.topics or not all(self.topics):
            raise SpecError("topic", f"expected one or more topic names, got {list(self.topics)!r}")
        if not self.consumer_group:
            raise SpecError("consumerGroup", "expected a consumer group name, got ''")
        if self.start_from not in START_FROM:
            raise SpecError("startFrom", f"{self.start_from!r} is not one of {', '.join(START_FROM)}")
        if self.format not in FORMATS:
            raise SpecError("format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        for key, value in (("batchSize", self.batch_size), ("pollTimeoutMs", self.poll_timeout_ms),
                           ("parallelism", self.parallelism or 1)):
            if not isinstance(value, int) or value < 1:
                raise SpecError(key, f"expected a positive integer, got {value!r}")

    @classmethod
    def from_spec(cls, section, ctx) -> "KafkaSource":
        section.get("type", types=str)
        try:
            source = cls(topics=section.str_list("topic"),
                         consumer_group=section.get("consumer_group", types=str),
                         connection=KafkaConnection.from_spec(section, ctx),
                         start_from=section.get("start_from", "committed", types=str, choices=START_FROM),
                         format=section.get("format", "json", types=str, choices=FORMATS),
                         batch_size=section.positive_int("batch_size", 50_000),
                         poll_timeout_ms=section.positive_int("poll_timeout_ms", 200),
                         parallelism=section.positive_int("parallelism", None))
        except SpecError as exc:
            raise exc if exc.path.startswith(section.path) else SpecError(section.at(exc.path), exc.reason) from None
        section.done()
        return source

    def partitions(self, watermark: Mapping[str, Any]) -> list[str]:
        """Every ``topic:partition`` of every topic, in (topic, partition) order; a topic
        that does not exist is a TerminalError naming it."""
        with LoopThread("etl-kafka-metadata") as loop:
            try:
                found = loop.run(_partitions_of(self.connection, self.topics), timeout=OPEN_TIMEOUT + 5)
            except Exception as exc:  # noqa: BLE001 - classified into transient / terminal
                raise kafka_error(exc, self.connection, "list the partitions of " + ", ".join(self.topics)) from None
        missing = [t for t in self.topics if not found.get(t)]
        if missing:
            raise TerminalError(f"kafka at {self.connection.servers}: topic {', '.join(map(repr, missing))} "
                                f"does not exist (found {len(found)} topics)", topics=missing)
        return sorted((partition_name(t, p) for t in self.topics for p in found[t]), key=_order)

    def open_reader(self, assignments: Mapping[str, int | None]) -> "KafkaReader":
        """A reader of the assigned partitions, each at its next offset (None: by ``start_from``)."""
        return KafkaReader(self, assignments)

    def view_watermark(self, watermark: Mapping[str, Any]) -> dict:
        """``{"topic:partition": next offset}`` in (topic, partition) order."""
        return {name: watermark[name] for name in sorted(watermark, key=_order)}

    def schema(self) -> None:
        return None

    def describe(self) -> dict:
        return {"type": self.type, "topics": list(self.topics), "consumerGroup": self.consumer_group,
                "startFrom": self.start_from, "format": self.format, **self.connection.describe()}


async def _partitions_of(connection: KafkaConnection, topics) -> dict[str, set[int]]:
    """Partitions per existing topic, from a metadata request for *all* topics (asking
    for one by name makes brokers with auto-creation create it)."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(**connection.client_kwargs(), request_timeout_ms=int(OPEN_TIMEOUT * 1000))
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
        return {t: cluster.partitions_for_topic(t) or set() for t in cluster.topics() if t in topics}
    finally:
        await client.close()


@dataclass
class Polled:
    """What one poll returned for one topic-partition; see the module docstring."""

    table: pa.Table
    offsets: np.ndarray
    timestamps: np.ndarray
    next_offset: int
    count: int
    bytes: int
    rejects: list[tuple[int, DeadLetter]]


class KafkaReader:
    """An open consumer of some partitions of a :class:`KafkaSource`; one per extractor."""

    def __init__(self, source: KafkaSource, assignments: Mapping[str, int | None]):
        self.source = source
        self.partitions = {topic_partition(name): name for name in assignments}
        self._loop = LoopThread(f"etl-kafka-{source.consumer_group}")
        self._consumer = None
        self._end_offsets: dict = {}
        self._heard = time.monotonic()
        self._pending_commit: dict | None = None
        self._committing: asyncio.Task | None = None
        self._warned = False
        self._ahead = None            # the next fetch, under way while the last one is decoded
        self.returned: dict[str, int] = {}   # per partition, the offset after the last message poll returned
        try:
            self._consumer = self._loop.run(self._open(assignments), timeout=OPEN_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - classified into transient / terminal
            self.close()
            raise kafka_error(exc, source.connection, f"open a consumer of {', '.join(assignments)}") from None

    async def _open(self, assignments: Mapping[str, int | None]):
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            **self.source.connection.client_kwargs(), group_id=self.source.consumer_group,
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
            fetch_max_bytes=FETCH_MAX_BYTES, max_partition_fetch_bytes=PARTITION_FETCH_BYTES)
        try:
            await consumer.start()
            consumer.assign(list(self.partitions))
            await self._seek(consumer, {topic_partition(n): p for n, p in assignments.items()})
        except BaseException:
            await stop_quietly([consumer])
            raise
        return consumer

    async def _seek(self, consumer, positions: dict) -> None:
        earliest, latest = [], []
        for tp, offset in positions.items():
            if offset is None and self.source.start_from == "committed":
                offset = await consumer.committed(tp)
            if offset is not None:
                consumer.seek(tp, offset)
            else:
                (latest if self.source.start_from == "latest" else earliest).append(tp)
        if earliest:
            await consumer.seek_to_beginning(*earliest)
        if latest:
            await consumer.seek_to_end(*latest)
            await _settle_at_end(consumer, latest)

    def poll(self, timeout_ms: int | None = None, max_records: int | None = None) -> dict[str, Polled]:
        """The messages fetched within ``timeout_ms``, per partition that has some. A
        broker that has not answered since PROBE_AFTER seconds is asked for its end
        offsets; no answer is a TransientError (aiokafka itself only retries, silently)."""
        timeout_ms = self.source.poll_timeout_ms if timeout_ms is None else timeout_ms
        ahead, self._ahead = self._ahead, None
        fetch = ahead if ahead is not None and (timeout_ms, max_records) == ahead.wanted else \
            self._fetch(timeout_ms, max_records)
        try:
            fetched = fetch.result(timeout=timeout_ms / 1000 + OPEN_TIMEOUT)
            if fetched:
                self._heard = time.monotonic()
                self._ahead = self._fetch(timeout_ms, max_records)   # the next fetch runs while this one decodes
            elif time.monotonic() - self._heard > PROBE_AFTER:
                self._end_offsets = self._loop.run(self._consumer.end_offsets(list(self.partitions)), PROBE_TIMEOUT)
                self._heard = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - classified into transient / terminal
            raise kafka_error(exc, self.source.connection, "fetch messages") from None
        polled = {self.partitions[tp]: self._decoded(tp, records) for tp, records in fetched.items() if records}
        self.returned.update((name, batch.next_offset) for name, batch in polled.items())
        return polled

    def _fetch(self, timeout_ms: int, max_records: int | None):
        """A getmany under way on the loop's thread (a concurrent future)."""
        fetch = self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records or self.source.batch_size)
        future = asyncio.run_coroutine_threadsafe(fetch, self._loop.loop)
        future.wanted = (timeout_ms, max_records)
        return future

    def _decoded(self, tp, records) -> Polled:
        count = len(records)
        first, last = records[0].offset, records[-1].offset
        offsets = np.arange(first, last + 1, dtype=np.int64) if last - first == count - 1 \
            else np.fromiter(map(_OFFSET, records), np.int64, count)    # gaps: compacted, or transaction markers
        timestamps = np.fromiter(map(_TIMESTAMP, records), np.int64, count)
        values = list(map(_VALUE, records))
        size = sum(map(len, filter(None, values)))
        if self.source.format == "raw":
            table = pa.table({"key": pa.array(list(map(_KEY, records)), pa.binary()),
                              "value": pa.array(values, pa.binary())})
            return Polled(table, offsets, timestamps, last + 1, count, size, [])
        table, kept, problems = decode_json(values)
        rejects = [(int(offsets[i]), _letter(tp, int(offsets[i]), values[i], reason)) for i, reason in problems]
        if kept is not None:
            offsets, timestamps = offsets[kept], timestamps[kept]
        return Polled(table, offsets, timestamps, last + 1, count, size, rejects)

    def highwater(self) -> dict[str, int]:
        """The end offset of each partition as last seen in a fetch (before any fetch: as
        the broker lists it, which some brokers under-report)."""
        known = {name: self._consumer.highwater(tp) for tp, name in self.partitions.items()}
        if any(v is None for v in known.values()) and not self._end_offsets:
            try:
                self._end_offsets = self._loop.run(self._consumer.end_offsets(list(self.partitions)), timeout=10)
            except Exception:  # noqa: BLE001 - lag is best effort
                self._end_offsets = {}
        return {name: v if v is not None else self._end_offsets.get(tp)
                for (tp, name), v in zip(self.partitions.items(), known.values())
                if v is not None or tp in self._end_offsets}

    def commit_group(self, positions: Mapping[str, int]) -> None:
        """Commit ``positions`` (next offsets) as the consumer group's, in the background
        (the latest positions win; :meth:`close` waits for them); never raises."""
        offsets = {topic_partition(name): int(offset) for name, offset in positions.items()}
        self._loop.loop.call_soon_threadsafe(self._request_commit, offsets)

    def _request_commit(self, offsets: dict) -> None:     # on the loop's thread, as _commit
        self._pending_commit = {**(self._pending_commit or {}), **offsets}
        if self._committing is None:
            self._committing = asyncio.ensure_future(self._commit())

    async def _commit(self) -> None:
        while self._pending_commit:
            offsets, self._pending_commit = self._pending_commit, None
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), COMMIT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - lag tools only; the event log holds the truth
                self._warn_once(exc)
        self._committing = None

    def _warn_once(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: kafka at {self.source.connection.servers}: cannot commit the offsets of consumer "
                  f"group {self.source.consumer_group!r} (lag tools will show older positions): "
                  f"{first_line(exc, with_type=True)}", file=sys.stderr)

    async def _stop(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:       # what it fetched is read again by the next reader, from its positions
            ahead.cancel()
        if self._committing is not None:
            await asyncio.wait([self._committing], timeout=5)
        await stop_quietly([self._consumer])

    def close(self) -> None:
        """Wait (5 s at most) for a commit under way, then stop the consumer."""
        if self._loop.loop.is_closed():
            return
        try:
            if self._consumer is not None:
                self._loop.run(self._stop(), timeout=20)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        self._loop.close()

    def __enter__(self) -> "KafkaReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _settle_at_end(consumer, partitions, timeout_ms: int = 5000) -> None:
    """Move ``partitions`` (just sought to their listed end) to the end a fetch reports:
    some brokers list the last batch's first offset as the end (Tansu 0.6 does), which
    would re-read that batch."""
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    while any(consumer.highwater(tp) is None for tp in partitions) and asyncio.get_running_loop().time() < deadline:
        await consumer.getmany(*partitions, timeout_ms=50, max_records=1)
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is not None:
            consumer.seek(tp, max(end, await consumer.position(tp)))


def _letter(tp, offset: int, value: bytes | None, reason: str) -> DeadLetter:
    preview = None if value is None else value[:4 * PREVIEW_CHARS].decode("utf-8", "replace")[:PREVIEW_CHARS]
    return DeadLetter(reason, {"topic": tp.topic, "partition": tp.partition, "offset": offset, "value": preview})
