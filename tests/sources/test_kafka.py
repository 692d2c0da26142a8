import pickle

import pytest

from etl_actors.errors import SpecError, TerminalError, TransientError
from etl_actors.kafka_client import KafkaConnection
from etl_actors.redaction import redact_text
from etl_actors.sources.kafka import KafkaSource
from etl_actors.spec import Section, SpecContext, build_plugin


@pytest.fixture
def topic(kafka, uniq):
    return kafka.create_topic(f"events-{uniq}", partitions=3)


def source_of(kafka, *topics, **options) -> KafkaSource:
    options = {"start_from": "earliest", "poll_timeout_ms": 50, **options}
    return KafkaSource(topics=topics, consumer_group=f"g-{topics[0]}",
                       connection=KafkaConnection((kafka.bootstrap,)), **options)


def drain(reader, expected: int, max_records: int | None = None) -> dict[str, list]:
    """Poll until ``expected`` messages came, then once more (nothing else may come):
    ``{partition: [Polled, ...]}``."""
    polled, count = {}, 0
    for _ in range(200):
        got = reader.poll(max_records=max_records) if count < expected else reader.poll(timeout_ms=300)
        for partition, p in got.items():
            polled.setdefault(partition, []).append(p)
        if count >= expected:
            break
        count += sum(p.count for p in got.values())
    return polled


def ids(polled: dict) -> list:
    return sorted(i for ps in polled.values() for p in ps for i in p.table.column("id").to_pylist())


def test_reads_every_message_of_a_three_partition_topic_once_across_polls(kafka, topic):
    kafka.produce(topic, [{"id": i, "score": i / 2} for i in range(300)])
    source = source_of(kafka, topic)
    with source.open_reader({p: None for p in source.partitions({})}) as reader:
        polled = drain(reader, 300, max_records=40)
        assert ids(polled) == list(range(300))
        assert sum(len(ps) for ps in polled.values()) >= 8
        for partition, ps in polled.items():
            offsets = [int(o) for p in ps for o in p.offsets]
            assert offsets == list(range(100)), partition
            assert [p.next_offset for p in ps] == [int(p.offsets[-1]) + 1 for p in ps]
            assert all(p.timestamps.min() > 1_600_000_000_000 for p in ps)
        assert reader.highwater() == {f"{topic}:{i}": 100 for i in range(3)}


def test_partitions_are_every_topic_partition_in_order(kafka, uniq):
    wide, narrow = kafka.create_topic(f"b-{uniq}", partitions=11), kafka.create_topic(f"a-{uniq}")
    partitions = source_of(kafka, wide, narrow).partitions({})
    assert partitions == [f"{narrow}:0"] + [f"{wide}:{i}" for i in range(11)]


def test_resumes_from_given_offsets_without_loss_or_duplicates(kafka, topic):
    kafka.produce(topic, [{"id": i} for i in range(90)])
    source = source_of(kafka, topic)
    partitions = source.partitions({})
    with source.open_reader({p: None for p in partitions}) as reader:
        first = {}
        while sum(p.count for ps in first.values() for p in ps) < 40:
            for partition, p in reader.poll(max_records=7).items():
                first.setdefault(partition, []).append(p)
    positions = {p: first[p][-1].next_offset if p in first else None for p in partitions}
    with source.open_reader(positions) as reader:
        rest = drain(reader, 90 - len(ids(first)))
    assert sorted(ids(first) + ids(rest)) == list(range(90))


def test_start_from_latest_reads_only_what_comes_after_opening(kafka, topic):
    kafka.produce(topic, [{"id": i} for i in range(30)])
    source = source_of(kafka, topic, start_from="latest")
    with source.open_reader({p: None for p in source.partitions({})}) as reader:
        kafka.produce(topic, [{"id": i} for i in range(30, 36)])
        assert ids(drain(reader, 6)) == list(range(30, 36))


def test_start_from_committed_resumes_at_the_group_offsets_else_earliest(kafka, topic):
    kafka.produce(topic, [{"id": i} for i in range(30)], partition=0)
    kafka.produce(topic, [{"id": i} for i in range(30, 40)], partition=1)
    source = source_of(kafka, topic, start_from="committed")
    partitions = source.partitions({})
    with source.open_reader({p: None for p in partitions}) as reader:
        assert ids(drain(reader, 40)) == list(range(40))
        reader.commit_group({f"{topic}:0": 25})
    with source.open_reader({p: None for p in partitions}) as reader:
        assert ids(drain(reader, 15)) == list(range(25, 40))


def test_a_given_position_wins_over_the_committed_offset(kafka, topic):
    kafka.produce(topic, [{"id": i} for i in range(10)], partition=2)
    source = source_of(kafka, topic, start_from="committed")
    with source.open_reader({f"{topic}:2": None}) as reader:
        reader.commit_group({f"{topic}:2": 8})
    with source.open_reader({f"{topic}:2": 3}) as reader:
        assert ids(drain(reader, 7)) == list(range(3, 10))


def test_poison_messages_are_rejected_with_their_offset_while_the_rest_decodes(kafka, topic):
    values = [{"id": 0}, b"not json", {"id": 2}, b"[1, 2]", b'{\n  "id": 4\n}', {"id": "five"}, {"id": 6}]
    kafka.produce(topic, values, partition=1)
    source = source_of(kafka, topic)
    with source.open_reader({f"{topic}:1": None}) as reader:
        [polled] = drain(reader, 7)[f"{topic}:1"]
    assert polled.table.column("id").to_pylist() == [0, 2, 4, 6]
    assert polled.offsets.tolist() == [0, 2, 4, 6] and len(polled.timestamps) == 4
    assert (polled.count, polled.next_offset) == (7, 7)
    assert [offset for offset, _ in polled.rejects] == [1, 3, 5]
    reasons = [letter.reason for _, letter in polled.rejects]
    assert reasons[0].startswith("cannot parse JSON: ") and reasons[1] == "not a JSON object (got array)"
    assert reasons[2] == "does not match the types of the poll's earlier messages: id is string, earlier number"
    assert polled.rejects[0][1].record == {"topic": topic, "partition": 1, "offset": 1, "value": "not json"}


def test_raw_format_gives_keys_and_values_as_bytes(kafka, topic):
    kafka.produce(topic, [b"\x00\x01", b"plain text"], partition=0, keys=["k1", None])
    source = source_of(kafka, topic, format="raw")
    with source.open_reader({f"{topic}:0": None}) as reader:
        [polled] = drain(reader, 2)[f"{topic}:0"]
    assert polled.table.to_pylist() == [{"key": b"k1", "value": b"\x00\x01"}, {"key": None, "value": b"plain text"}]
    assert (polled.bytes, polled.rejects) == (12, [])


def test_a_missing_topic_is_a_terminal_error_naming_it(kafka, topic):
    source = source_of(kafka, topic, "no-such-topic")
    with pytest.raises(TerminalError, match="topic 'no-such-topic' does not exist"):
        source.partitions({})
    with pytest.raises(TerminalError, match="no-such-topic"):
        source.partitions({})       # asking did not create it


def test_an_unreachable_broker_is_a_transient_error_naming_it():
    source = KafkaSource(topics=("t",), consumer_group="g",
                         connection=KafkaConnection.from_url("kafka://svc:hunter22@127.0.0.1:1"))
    for attempt in (lambda: source.partitions({}), lambda: source.open_reader({"t:0": 5})):
        with pytest.raises(TransientError, match=r"^kafka at 127\.0\.0\.1:1: cannot ") as caught:
            attempt()
        assert "hunter22" not in str(caught.value)


# --- the spec -------------------------------------------------------------------------

def build(**fields):
    return build_plugin("source", Section({"type": "kafka", **fields}, "stream.source"),
                        SpecContext(connections={"events": "kafka://etl:s3cr3t-pw@k1:9093,k2"}))


def test_from_spec_reads_every_option():
    source = build(topic=["a", "b"], consumerGroup="g", bootstrapServers="k1:9092, k2", startFrom="latest",
                   format="raw", batchSize=500, pollTimeoutMs=20, parallelism=2)
    assert source == KafkaSource(topics=("a", "b"), consumer_group="g",
                                 connection=KafkaConnection(("k1:9092", "k2:9092")), start_from="latest",
                                 format="raw", batch_size=500, poll_timeout_ms=20, parallelism=2)


@pytest.mark.parametrize("fields, message", [
    ({"startFrom": "x"}, "stream.source.startFrom: 'x' is not one of committed, earliest, latest"),
    ({"consumerGroup": None}, "stream.source.consumerGroup: is required"),
    ({"bootstrapServers": None}, r"stream.source.bootstrapServers: is required \(or connection\)"),
    ({"connection": "events"}, "stream.source.connection: expected one of bootstrapServers or connection"),
    ({"batchSize": 0}, "stream.source.batchSize: expected a positive integer"),
    ({"format": "avro"}, "stream.source.format: 'avro' is not one of json, raw"),
    ({"topic": [1]}, r"stream.source.topic\[0\]: expected a string"),
    ({"pollTimeout": 5}, "stream.source.pollTimeout: unknown key; did you mean 'pollTimeoutMs'"),
])
def test_spec_errors_name_their_path(fields, message):
    spec = {"topic": "t", "consumerGroup": "g", "bootstrapServers": "k1:9092", **fields}
    with pytest.raises(SpecError, match=message):
        build(**{k: v for k, v in spec.items() if v is not None})


def test_sasl_credentials_never_show_in_describe_or_repr(monkeypatch):
    monkeypatch.setenv("KAFKA_PASSWORD", "env-pass-123")
    named = build(topic="t", consumerGroup="g", connection="events")
    direct = build(topic="t", consumerGroup="g", connection="kafkas://bob:${KAFKA_PASSWORD}@k3:9094")
    assert named.connection.client_kwargs()["sasl_plain_password"] == "s3cr3t-pw"
    assert (named.connection.bootstrap, named.connection.security_protocol) == (("k1:9093", "k2:9092"), "SASL_PLAINTEXT")
    assert (direct.connection.password, direct.connection.security_protocol) == ("env-pass-123", "SASL_SSL")
    for source, user, password in ((named, "etl:", "s3cr3t-pw"), (direct, "bob", "env-pass-123")):
        shown = repr(source) + str(source.describe()) + repr(pickle.loads(pickle.dumps(source)))
        assert password not in shown and user not in shown
        assert source.describe()["sasl"] is True
        assert redact_text(f"auth failed for {password}") == "auth failed for ***"
