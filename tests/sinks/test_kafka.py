import datetime as dt
from collections import Counter
from decimal import Decimal

import pyarrow as pa
import pytest

from etl_actors.errors import SpecError, TerminalError, TransientError
from etl_actors.kafka_client import KafkaConnection
from etl_actors.sinks.kafka import KafkaSink
from etl_actors.spec import Section, SpecContext, build_plugin

from .kit import SinkContract, load, people


@pytest.fixture
def topic(kafka, uniq):
    return kafka.create_topic(f"out-{uniq}", partitions=3)


def sink_of(kafka, topic, **options) -> KafkaSink:
    return KafkaSink(topic=topic, connection=KafkaConnection((kafka.bootstrap,)), **options)


class TestKafkaSinkContract(SinkContract):
    """The kit, less what a topic cannot promise: no schema, and replays duplicate."""

    @pytest.fixture
    def sink(self, kafka, topic):
        self.kafka = kafka
        return sink_of(kafka, topic)

    def rows(self, sink):
        return self.kafka.consume_all(sink.topic)

    def test_idempotent_write_of_a_replayed_batch(self, sink):
        load(sink, (people(range(10)), "b1"), (people(range(10)), "b1"))
        load(sink, (people(range(10)), "b1"))
        assert Counter(self.ids(sink)) == {i: 3 for i in range(10)}   # one copy per write: at least once

    def test_a_type_change_is_refused_naming_the_column_and_the_batch(self, sink):
        changed = people([2]).set_column(2, "score", pa.array(["high"]))
        load(sink, (people([1]), "a.csv#0"), (changed, "b.csv#0"))
        assert [r["score"] for r in self.rows(sink)] == [1.5, "high"]    # a topic has no schema to keep


def test_rows_arrive_as_json_keyed_by_the_key_field_with_the_batch_id(kafka, topic):
    table = pa.table({"user": ["ann", "bob", None, "ann"], "clicks": [1, 2, 3, 4]})
    [result] = load(sink_of(kafka, topic, key_field="user"), (table, "w-7"))
    records = kafka.records(topic)
    assert result.loaded == 4 and sorted(r.value for r in records) == sorted(
        b'{"user":%s,"clicks":%d}' % (u, c) for u, c in ((b'"ann"', 1), (b'"bob"', 2), (b"null", 3), (b'"ann"', 4)))
    by_key = {r.key: r.partition for r in records if r.key is not None}
    assert sorted(r.key or b"" for r in records) == [b"", b"ann", b"ann", b"bob"]
    assert {r.partition for r in records if r.key == b"ann"} == {by_key[b"ann"]}
    assert {r.headers for r in records} == {(("etl-batch-id", b"w-7"),)}


def test_a_key_goes_to_the_partition_the_default_partitioner_chooses_every_time(kafka, topic):
    from aiokafka.partitioner import DefaultPartitioner

    load(sink_of(kafka, topic, key_field="id"), (people(range(12)), "b1"), (people(range(12)), "b2"))
    chosen = {r.key: r.partition for r in kafka.records(topic)}
    assert len(kafka.records(topic)) == 24 and len(set(chosen.values())) == 3
    assert chosen == {k: DefaultPartitioner()(k, [0, 1, 2], [0, 1, 2]) for k in chosen}     # murmur2, as Java's


def test_keyless_batches_take_turns_over_the_partitions(kafka, topic):
    load(sink_of(kafka, topic), *((people([i]), f"b{i}") for i in range(3)))
    assert sorted(r.partition for r in kafka.records(topic)) == [0, 1, 2]


def test_values_are_converted_to_json_sensibly(kafka, topic):
    table = pa.table({"at": pa.array([dt.datetime(2024, 5, 1, 12, 30)], pa.timestamp("ms", tz="UTC")),
                      "day": [dt.date(2024, 5, 1)], "price": pa.array([Decimal("12.30")], pa.decimal128(6, 2)),
                      "took": pa.array([dt.timedelta(seconds=90)], pa.duration("s")), "nan": [float("nan")],
                      "blob": [b"\x01\xff"], "tags": [["a", "b"]], "geo": [{"lat": 1.5, "lon": -2.0}]})
    load(sink_of(kafka, topic), (table, "b1"))
    assert kafka.consume_all(topic) == [{"at": "2024-05-01T12:30:00+00:00", "day": "2024-05-01", "price": "12.30",
                                         "took": 90.0, "nan": None, "blob": "01ff", "tags": ["a", "b"],
                                         "geo": {"lat": 1.5, "lon": -2.0}}]


def test_a_row_too_large_for_a_message_is_a_dead_letter(kafka, topic):
    table = pa.table({"id": [1, 2, 3], "text": ["a", "x" * (2 * 2**20), "c"]})
    [result] = load(sink_of(kafka, topic), (table, "b1"))
    assert (result.loaded, result.failed) == (2, 1)
    assert result.dead_letters[0].record["id"] == 2 and "larger than" in result.dead_letters[0].reason
    assert sorted(r["id"] for r in kafka.consume_all(topic)) == [1, 3]


def test_a_missing_key_field_is_a_terminal_error_naming_the_batch(kafka, topic):
    with pytest.raises(TerminalError, match=r"keyField 'user' is not a column of batch 'b1' \(columns: id, name"):
        load(sink_of(kafka, topic, key_field="user"), (people([1]), "b1"))


def test_a_missing_topic_is_refused_at_open_and_not_created(kafka, uniq):
    for _ in range(2):
        with pytest.raises(TerminalError, match=f"topic 'nope-{uniq}' does not exist"):
            sink_of(kafka, f"nope-{uniq}").open("p1")


def test_a_sink_without_brokers_cannot_open():
    with pytest.raises(TerminalError, match="kafka sink of topic 'out' has no brokers"):
        KafkaSink(topic="out").open("p1")


def test_an_unreachable_broker_is_a_transient_error():
    sink = KafkaSink(topic="out", connection=KafkaConnection.from_url("kafka://svc:pa55word@127.0.0.1:1"))
    with pytest.raises(TransientError, match=r"^kafka at 127\.0\.0\.1:1: cannot open a producer") as caught:
        sink.open("p1")
    assert "pa55word" not in str(caught.value)


def build(**fields):
    return build_plugin("sink", Section({"type": "kafka", **fields}, "stream.sinks[0]"), SpecContext())


def test_from_spec_leaves_the_connection_to_the_runtime_when_none_is_given():
    assert build(topic="out", keyField="user") == KafkaSink(topic="out", connection=None, key_field="user")
    assert build(topic="out", bootstrapServers=["k1:9092"]).connection == KafkaConnection(("k1:9092",))
    assert build(topic="out", connection="kafka://u:secret-1@k1").describe() == {
        "type": "kafka", "topic": "out", "keyField": None, "bootstrapServers": "k1:9092", "sasl": True}


@pytest.mark.parametrize("fields, message", [
    ({}, r"stream.sinks\[0\].topic: is required"),
    ({"topic": "out", "keyfield": "id"}, r"stream.sinks\[0\].keyfield: unknown key; did you mean 'keyField'"),
    ({"topic": ""}, r"stream.sinks\[0\].topic: expected a topic name"),
])
def test_spec_errors_name_their_path(fields, message):
    with pytest.raises(SpecError, match=message):
        build(**fields)
