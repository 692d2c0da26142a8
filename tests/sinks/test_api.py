"""The REST API sink against a real HTTP server (tests/apiserver.py): chunks with
Idempotency-Keys, NDJSON, one record per request, refused records as dead letters,
retries, and no token in any error."""
import json
import pickle
from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from apiserver import ApiServer, make_records
from etl_actors import Pipeline
from etl_actors.errors import SpecError, TerminalError, TransientError
from etl_actors.eventlog import EventLog
from etl_actors.sinks.api import ApiSink
from etl_actors.spec import Section, SpecContext

from .kit import SinkContract, load, people

TOKEN = "tok-SINK-5e4d3c2b1a"


def sink(endpoint: str, **spec) -> ApiSink:
    return ApiSink.from_spec(Section({"type": "api", "endpoint": endpoint, "apiKey": TOKEN, **spec},
                                     "pipeline.destination"), SpecContext())


@pytest.fixture
def api():
    with ApiServer(token=TOKEN) as server:
        yield server


def received_ids(api) -> list:
    return sorted(r["id"] for r in api.received_records())


class TestApiSinkContract(SinkContract):
    """The kit, at an API that honours Idempotency-Key (replays are not stored twice)
    and keeps no schema."""

    @pytest.fixture
    def sink(self, api):
        self.api = api
        return sink(api.url_for("/receive"), batchSize=20)

    def rows(self, sink) -> list[dict]:
        return self.api.received_records()

    def test_a_type_change_is_refused_naming_the_column_and_the_batch(self, sink):
        changed = people([2]).set_column(2, "score", pa.array(["high"]))
        load(sink, (people([1]), "a.csv#0"), (changed, "b.csv#0"))
        assert [r["score"] for r in self.rows(sink)] == [1.5, "high"]    # an API has no schema to keep


def test_a_batch_arrives_in_json_chunks_of_batch_size_each_with_its_idempotency_key(api):
    (result,) = load(sink(api.url_for("/receive"), batchSize=100), (people(range(250)), "b1"), pipeline="crm")
    assert (result.loaded, result.failed) == (250, 0)
    sent = api.requests_to("/receive")
    assert [r.headers["Idempotency-Key"] for r in sent] == ["crm:b1:0", "crm:b1:1", "crm:b1:2"]
    assert [len(json.loads(r.body)) for r in sent] == [100, 100, 50]
    assert {(r.headers["Content-Type"], r.headers["Authorization"]) for r in sent} == \
        {("application/json", f"Bearer {TOKEN}")}
    assert received_ids(api) == list(range(250))


def test_ndjson_sends_one_object_per_line(api):
    load(sink(api.url_for("/receive/events"), format="ndjson", batchSize=4), (people(range(6)), "b7"))
    sent = api.requests_to("/receive/events")
    assert [r.headers["Content-Type"] for r in sent] == ["application/x-ndjson"] * 2
    assert [json.loads(line)["id"] for line in sent[0].body.decode().splitlines()] == [0, 1, 2, 3]
    assert received_ids(api) == list(range(6))


def test_mode_record_posts_each_record_alone_with_a_key_per_row(api):
    (result,) = load(sink(api.url_for("/receive"), mode="record"), (people([5, 6, 7]), "b2"))
    sent = api.requests_to("/receive")
    assert [json.loads(r.body) for r in sent] == [{"id": i, "name": f"p{i}", "score": i * 1.5} for i in (5, 6, 7)]
    assert [r.headers["Idempotency-Key"] for r in sent] == ["p1:b2:0", "p1:b2:1", "p1:b2:2"]
    assert result.loaded == 3


@pytest.mark.parametrize("mode", ["batch", "record"])
def test_refused_records_become_dead_letters_with_status_and_excerpt_and_the_rest_land(api, mode):
    api.refuse("name", "p3", "p57")
    (result,) = load(sink(api.url_for("/receive"), batchSize=50, mode=mode), (people(range(100)), "b1"))
    assert (result.loaded, result.failed) == (98, 2)
    assert received_ids(api) == sorted(set(range(100)) - {3, 57})
    assert [letter.record["id"] for letter in result.dead_letters] == [3, 57]
    reason = result.dead_letters[0].reason
    assert reason.startswith(f"refused by {api.url_for('/receive')}: HTTP 422: ") and '"unprocessable record"' in reason
    if mode == "batch":      # each record of a refused chunk was resent alone, under its own key
        keys = [r.headers["Idempotency-Key"] for r in api.requests_to("/receive")]
        assert keys[:2] == ["p1:b1:0", "p1:b1:0:0"] and "p1:b1:1:57" in keys


def test_429_and_500_are_retried_and_the_batch_lands_once(api):
    api.throttle("/receive", times=1, retry_after="0")
    api.fail("/receive", 500, times=1)
    (result,) = load(sink(api.url_for("/receive"), maxRetries=3), (people(range(10)), "b1"))
    assert result.loaded == 10 and received_ids(api) == list(range(10))
    assert [r.headers["Idempotency-Key"] for r in api.requests_to("/receive")] == ["p1:b1:0"] * 3


def test_retries_running_out_raise_a_transient_error_naming_the_endpoint_and_status(api):
    api.fail("/receive", 503, times=None)
    with pytest.raises(TransientError) as caught:
        load(sink(api.url_for("/receive"), maxRetries=1), (people(range(10)), "b1"))
    assert str(caught.value) == f"api sink: POST {api.url_for('/receive')}: HTTP 503 after 1 retry"
    assert caught.value.retryable and caught.value.status == 503


def test_a_wrong_token_stops_the_load_without_showing_the_token(api):
    wrong = "tok-WRONG-0f9e8d7c"
    writer = ApiSink.from_spec(Section({"type": "api", "endpoint": api.url_for("/receive"), "auth": {
        "type": "bearer", "token": wrong}}, "pipeline.destination"), SpecContext()).open("p1")
    with pytest.raises(TerminalError, match="authentication refused") as caught:
        writer.write(people([1]), "b1")
    writer.close()
    assert wrong not in str(caught.value) and api.received == []
    assert TOKEN not in json.dumps(sink(api.url_for("/receive")).describe())


def test_dates_decimals_and_nan_are_sent_as_json(api):
    table = pa.table({"id": [1], "at": pa.array([datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)]),
                      "day": pa.array([date(2024, 5, 1)]), "price": pa.array([Decimal("12.50")]),
                      "ratio": [float("nan")], "tags": [["a", "b"]], "address": [{"city": "Oslo"}]})
    load(sink(api.url_for("/receive")), (table, "b1"))
    assert api.received_records() == [{"id": 1, "at": "2024-05-01T12:30:00+00:00", "day": "2024-05-01",
                                       "price": "12.50", "ratio": None, "tags": ["a", "b"],
                                       "address": {"city": "Oslo"}}]


@pytest.mark.parametrize("spec, path", [
    ({"format": "xml"}, "pipeline.destination.format"),
    ({"mode": "bulk"}, "pipeline.destination.mode"),
    ({"batchSize": 0}, "pipeline.destination.batchSize"),
    ({"endpoint": "ftp://x"}, "pipeline.destination.endpoint"),
    ({"retries": 3}, "pipeline.destination.retries"),
])
def test_a_bad_spec_is_an_error_naming_its_path(spec, path):
    with pytest.raises(SpecError) as caught:
        Pipeline.from_dict({"name": "bad", "pipeline": {
            "source": {"type": "file", "path": "/tmp/in.csv"},
            "destination": {"type": "api", "endpoint": "https://api.example.com/in", **spec}}})
    assert caught.value.path == path


def test_a_pipeline_from_the_api_source_to_the_api_sink_dead_letters_refused_records(api, tmp_path, uniq):
    api.records = make_records(30)
    api.refuse("email", "user4@example.com")
    name, log = f"api2api-{uniq}", f"sqlite:///{tmp_path}/events.db"
    result = Pipeline.from_dict({"name": name, "pipeline": {
        "source": {"type": "api", "endpoint": api.url_for("/page"), "apiKey": TOKEN, "rateLimitDelay": 0,
                   "pagination": {"size": 10}},
        "destination": {"type": "api", "endpoint": api.url_for("/receive"), "apiKey": TOKEN, "batchSize": 5}}}) \
        .run(log=log, runtime="local")
    assert (result["status"], result["recordsLoaded"]) == ("success", 29)
    assert received_ids(api) == [i for i in range(1, 31) if i != 4]
    (letter,) = EventLog(log).dead_letters(name)
    assert (letter["stage"], letter["record"]["id"]) == ("load", 4) and "HTTP 422" in letter["reason"]
    assert all(r.idempotency_key.startswith(f"{name}:api:") for r in api.received)


def test_the_sink_pickles_to_a_loader_and_back():
    original = sink("https://api.example.com/in?token=q-SECRET-31", format="ndjson", timeout=5)
    assert pickle.loads(pickle.dumps(original)) == original
    assert "q-SECRET-31" not in repr(original) + json.dumps(original.describe())
