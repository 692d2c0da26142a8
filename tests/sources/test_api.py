"""The REST API source against a real HTTP server (tests/apiserver.py): every pagination
style, incremental syncs, resume at the next page, retries, failures naming the page,
and no token anywhere it could leak."""
import asyncio
import base64
import json
import pickle
import time

import pytest
import sqlalchemy as sa
from hypothesis import given, settings, strategies as st

from apiserver import ApiServer, make_records
from etl_actors import Pipeline
from etl_actors.db import engine_for
from etl_actors.errors import SpecError, TerminalError
from etl_actors.eventlog import EventLog
from etl_actors.http import Auth, HttpClient, HttpError, HttpOptions, run_sync
from etl_actors.projections import watermarks
from etl_actors.redaction import redact_text
from etl_actors.sources.api import ApiSource, to_table
from etl_actors.spec import Section, SpecContext

from .kit import SourceContract, ids

TOKEN = "tok-SECRET-9f8e7d6c"


def source(**spec) -> ApiSource:
    section = Section({"type": "api", "apiKey": TOKEN, "rateLimitDelay": 0, **spec}, "pipeline.source")
    section.get("type")
    return ApiSource.from_spec(section, SpecContext())


def record_ids(batches) -> list:
    return ids(batches, "id")


@pytest.fixture
def api():
    with ApiServer(make_records(95), token=TOKEN) as server:
        yield server


STYLES = {
    "page": ("/page", {"pagination": {"type": "page", "size": 10}}),
    "offset": ("/offset", {"pagination": {"type": "offset", "size": 10}, "recordsPath": "data.items"}),
    "cursor": ("/cursor", {"pagination": {"type": "cursor", "sizeParam": "limit", "size": 10,
                                          "nextCursorPath": "meta.next"}, "recordsPath": "items"}),
    "link": ("/link", {"pagination": {"type": "link", "sizeParam": "per_page", "size": 10}}),
}


@pytest.mark.parametrize("style", STYLES)
def test_every_pagination_style_reads_every_record_once_one_page_per_batch(api, style):
    path, spec = STYLES[style]
    batches = list(source(endpoint=api.url_for(path), **spec).read("api", None))
    assert record_ids(batches) == list(range(1, 96))
    assert [b.table.num_rows for b in batches] == [10] * 9 + [5]
    assert len(api.requests_to(path)) == 10
    assert [b.position["complete"] for b in batches] == [False] * 9 + [True]


def test_an_empty_page_that_ends_a_sync_is_an_empty_batch_that_completes_it(api):
    api.records = make_records(30)
    src = source(endpoint=api.url_for("/offset"), recordsPath="data.items",
                 pagination={"type": "offset", "size": 10, "totalPath": "count"})      # no such field: short page
    batches = list(src.read("api", None))
    assert [b.table.num_rows for b in batches] == [10, 10, 10, 0]
    assert batches[-1].table.schema == batches[0].table.schema and batches[-1].position["complete"]
    assert pickle.loads(pickle.dumps(src)) == src


def test_the_seed_shape_sends_bearer_auth_page_and_per_page_100_spaced_by_100_ms(api):
    api.records = make_records(250)
    batches = list(source(endpoint=api.url_for("/page"), rateLimitDelay=None).read("api", None))
    sent = api.requests_to("/page")
    assert record_ids(batches) == list(range(1, 251))
    assert [r.query for r in sent] == [{"page": str(n), "per_page": "100"} for n in (1, 2, 3)]
    assert {r.headers["Authorization"] for r in sent} == {f"Bearer {TOKEN}"}
    gaps = [b.time - a.time for a, b in zip(sent, sent[1:])]
    assert min(gaps) >= 0.09


def test_nested_objects_stay_structs_and_a_mixed_type_field_becomes_text(api):
    api.records = [{"id": 1, "code": 7, "profile": {"tier": "gold"}, "updated_at": "2024-01-01T00:00:00Z"},
                   {"id": 2, "code": "A7", "profile": {"tier": "basic"}, "extra": True,
                    "updated_at": "2024-01-02T00:00:00Z"}]
    (batch,) = source(endpoint=api.url_for("/page")).read("api", None)
    assert batch.table.column("profile").combine_chunks().field("tier").to_pylist() == ["gold", "basic"]
    assert batch.table.column("code").to_pylist() == ["7", "A7"]
    assert batch.table.column("extra").to_pylist() == [None, True]      # a key only the second record has


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
                           | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3), min_size=1, max_size=6))
def test_any_page_of_json_records_becomes_a_table_with_every_key_and_row(records):
    table = to_table(records)
    assert table.num_rows == len(records)
    assert set(table.column_names) == {k for r in records for k in r}


# --- incremental syncs and resume --------------------------------------------------------

def test_an_incremental_rerun_sends_the_committed_watermark_and_fetches_only_changed_records(api):
    src = source(endpoint=api.url_for("/page"), incremental=True, pagination={"size": 10})
    first = list(src.read("api", None))
    committed = first[-1].position
    assert committed["complete"] and committed["max"] == api.records[-1]["updated_at"]
    assert src.view_watermark({"api": committed})["updatedSince"] == committed["max"]
    for record in api.records[4:7]:
        record["updated_at"] = "2025-06-01T00:00:00+00:00"
    api.records.append({"id": 96, "updated_at": "2025-06-02T00:00:00+00:00", "email": "new@example.com"})
    api.clear()
    second = list(src.read("api", committed))
    assert record_ids(second) == [5, 6, 7, 96]
    assert api.requests_to("/page")[0].query["updated_since"] == committed["max"]
    assert second[-1].position["max"] == "2025-06-02T00:00:00+00:00"
    api.clear()
    assert list(src.read("api", second[-1].position)) == []          # nothing changed since


def test_a_sync_resumed_from_a_mid_sync_position_starts_at_the_next_page_with_the_same_since(api):
    src = source(endpoint=api.url_for("/page"), incremental=True, pagination={"size": 10},
                 initialWatermark="2024-01-01T00:10:00+00:00")
    batches = list(src.read("api", None))
    api.clear()
    resumed = list(src.read("api", batches[3].position))
    assert [r.query["page"] for r in api.requests_to("/page")][:1] == ["5"]
    assert {r.query["updated_since"] for r in api.requests_to("/page")} == {"2024-01-01T00:10:00+00:00"}
    assert record_ids(batches[:4] + resumed) == record_ids(batches) == list(range(12, 96))
    assert [b.batch_id for b in resumed] == [b.batch_id for b in batches[4:]]


def test_a_full_refresh_after_a_complete_sync_starts_at_page_1_and_a_changed_page_gets_a_new_id(api):
    src = source(endpoint=api.url_for("/page"), pagination={"size": 50})
    first = list(src.read("api", None))
    api.records[0]["email"] = "changed@example.com"
    api.clear()
    second = list(src.read("api", first[-1].position))
    assert api.requests_to("/page")[0].query["page"] == "1"
    assert second[0].batch_id != first[0].batch_id and second[1].batch_id == first[1].batch_id


# --- failures ------------------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", ["1", "date"])
def test_a_429_with_retry_after_in_seconds_or_as_a_date_is_waited_out(api, retry_after):
    api.throttle("/page", times=1, retry_after=ApiServer.http_date(2) if retry_after == "date" else retry_after,
                 when={"page": 2})
    started = time.monotonic()
    batches = list(source(endpoint=api.url_for("/page"), pagination={"size": 50}).read("api", None))
    assert record_ids(batches) == list(range(1, 96))
    assert [r.query["page"] for r in api.requests_to("/page")] == ["1", "2", "2"]
    assert time.monotonic() - started >= 0.95


def test_500s_are_retried_until_the_page_comes(api):
    api.fail("/page", 500, times=2, when={"page": 1})
    batches = list(source(endpoint=api.url_for("/page"), maxRetries=2, pagination={"size": 50}).read("api", None))
    assert record_ids(batches) == list(range(1, 96))
    assert [r.query["page"] for r in api.requests_to("/page")] == ["1", "1", "1", "2"]


def test_answers_slower_than_the_timeout_are_retried_then_fail_naming_the_page(api):
    api.slow("/page", 2.0, times=None, when={"page": 2})
    reader = source(endpoint=api.url_for("/page"), timeout="200ms", maxRetries=1, pagination={"size": 10}) \
        .read("api", None)
    assert next(reader).table.num_rows == 10
    with pytest.raises(TerminalError) as caught:
        next(reader)
    assert str(caught.value) == f"page 2 of {api.url_for('/page')}: no answer within 0.2 s after 1 retry"
    assert caught.value.partition == "api"
    assert [r.query["page"] for r in api.requests_to("/page")] == ["1", "2", "2"]


def test_a_dropped_connection_is_retried_and_a_dead_server_fails_naming_the_page(api):
    api.die("/page", times=1, when={"page": 2})
    batches = list(source(endpoint=api.url_for("/page"), pagination={"size": 50}).read("api", None))
    assert record_ids(batches) == list(range(1, 96))
    assert [r.query["page"] for r in api.requests_to("/page")] == ["1", "2", "2"]
    endpoint = api.url_for("/page")
    api.stop()
    with pytest.raises(TerminalError, match=r"^page 1 of .*/page: connection failed \(.*\) after 1 retry$"):
        list(source(endpoint=endpoint, maxRetries=1).read("api", None))


def test_retries_running_out_on_500_fail_naming_the_page_and_the_status(api):
    api.fail("/page", 503, times=None, when={"page": 3})
    with pytest.raises(TerminalError, match=r"^page 3 of http://127\.0\.0\.1:\d+/page: HTTP 503 after 1 retry$"):
        list(source(endpoint=api.url_for("/page"), maxRetries=1, pagination={"size": 10}).read("api", None))


def test_malformed_json_fails_naming_the_page(api):
    api.malformed("/page", when={"page": 3})
    with pytest.raises(TerminalError, match=r"^page 3 of http://127\.0\.0\.1:\d+/page: malformed JSON") as caught:
        list(source(endpoint=api.url_for("/page"), pagination={"size": 10}).read("api", None))
    assert caught.value.partition == "api"


def test_a_records_path_that_is_not_there_fails_instead_of_reading_nothing(api):
    with pytest.raises(TerminalError, match="expected a list of records at 'data.rows', got keys results, has_more"):
        list(source(endpoint=api.url_for("/page"), recordsPath="data.rows").read("api", None))


def test_a_wrong_token_is_authentication_refused_and_the_echoed_token_is_hidden(api):
    wrong = "tok-WRONG-1234abcd"
    src = ApiSource.from_spec(_section(endpoint=api.url_for("/page"), apiKey=wrong), SpecContext())
    with pytest.raises(TerminalError) as caught:
        list(src.read("api", None))
    assert "page 1 of" in str(caught.value) and "authentication refused (HTTP 401)" in str(caught.value)
    assert api.requests_to("/page")[0].headers["Authorization"] == f"Bearer {wrong}"
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.__dict__)


@pytest.mark.parametrize("style", ["page", "link"])
def test_the_token_appears_in_no_error_description_position_or_repr(api, style):
    path, spec = STYLES[style]
    api.fail(path, 500, times=None, when={"page": 2}, body=f'{{"echo": "Authorization: Bearer {TOKEN}"}}')
    src = source(endpoint=api.url_for(path), maxRetries=0, incremental=True, params={"api_key": TOKEN, "region": "eu"},
                 **spec)
    reader = src.read("api", None)
    first = next(reader)
    with pytest.raises(TerminalError) as caught:
        next(reader)
    assert [r.query["api_key"] for r in api.requests_to(path)] == [TOKEN, TOKEN]      # it was sent
    shown = [str(caught.value), repr(caught.value.__dict__), json.dumps(src.describe()), repr(src),
             json.dumps(first.position), first.batch_id, json.dumps(src.view_watermark({"api": first.position}))]
    assert not [text for text in shown if TOKEN in text]
    assert "HTTP 500 after 0 retries" in str(caught.value)


def _section(**spec) -> Section:
    section = Section({"type": "api", "rateLimitDelay": 0, **spec}, "pipeline.source")
    section.get("type")
    return section


@pytest.mark.parametrize("spec, path", [
    ({"pagination": {"type": "pages"}}, "pipeline.source.pagination.type"),
    ({"pagination": "scroll"}, "pipeline.source.pagination"),
    ({"pagination": {"type": "cursor", "nextCursor": "x"}}, "pipeline.source.pagination.nextCursor"),
    ({"auth": {"type": "bearer"}}, "pipeline.source.auth.token"),
    ({"errorHandling": "skip"}, "pipeline.source.errorHandling"),
    ({"timeout": "soon"}, "pipeline.source.timeout"),
])
def test_a_bad_spec_is_an_error_naming_its_path(spec, path):
    with pytest.raises(SpecError) as caught:
        Pipeline.from_dict({"name": "bad", "pipeline": {
            "source": {"type": "api", "endpoint": "https://api.example.com/v1/items", **spec},
            "destination": {"type": "file", "path": "/tmp/out", "format": "jsonl"}}})
    assert caught.value.path == path


# --- through a pipeline ------------------------------------------------------------------

def api_pipeline(name: str, endpoint: str, wh: str, **source_spec) -> Pipeline:
    return Pipeline.from_dict({"name": name, "pipeline": {
        "source": {"type": "api", "endpoint": endpoint, "apiKey": TOKEN, "incremental": True,
                   "rateLimitDelay": 0, "pagination": {"size": 20}, **source_spec},
        "transformations": [{"id": "flatten", "type": "map", "keep": True,
                             "mappings": {"tier": "profile.tier"}, "drop": ["profile"]}],
        "destination": {"type": "database", "connection": wh, "table": "users", "mode": "upsert",
                        "keyFields": ["id"]}}})


def rows(wh: str) -> dict:
    with engine_for(wh).connect() as conn:
        return {r.id: (r.email, r.tier) for r in conn.execute(sa.text("SELECT id, email, tier FROM users"))}


def test_a_pipeline_syncs_the_api_into_sqlite_then_loads_only_what_changed(api, tmp_path, uniq):
    log, wh = f"sqlite:///{tmp_path}/events.db", f"sqlite:///{tmp_path}/wh.db"
    pipeline = api_pipeline(f"api-{uniq}", api.url_for("/page"), wh)
    first = pipeline.run(log=log, runtime="local")
    assert (first["status"], first["recordsExtracted"], first["recordsLoaded"]) == ("success", 95, 95)
    assert rows(wh)[7] == ("user7@example.com", "gold")
    api.records[9].update(email="ten@example.com", updated_at="2025-01-01T00:00:00+00:00")
    api.clear()
    second = pipeline.run(log=log, runtime="local")
    assert (second["status"], second["recordsExtracted"]) == ("success", 1)
    assert api.requests_to("/page")[0].query["updated_since"] == api.records[-1]["updated_at"]
    assert len(rows(wh)) == 95 and rows(wh)[10] == ("ten@example.com", "basic")
    assert second["watermark"]["updatedSince"] == "2025-01-01T00:00:00+00:00"


def test_with_error_handling_continue_a_failed_page_is_a_dead_letter_and_the_next_run_starts_there(
        api, tmp_path, uniq):
    log, wh = f"sqlite:///{tmp_path}/events.db", f"sqlite:///{tmp_path}/wh.db"
    name = f"api-{uniq}"
    pipeline = api_pipeline(name, api.url_for("/page"), wh, errorHandling="continue", maxRetries=0)
    api.fail("/page", 500, times=None, when={"page": 3})
    first = pipeline.run(log=log, runtime="local")
    assert first["status"] == "success" and len(rows(wh)) == 40
    (letter,) = EventLog(log).dead_letters(name)
    assert letter["stage"] == "extract"
    assert letter["reason"] == f"page 3 of {api.url_for('/page')}: HTTP 500 after 0 retries"
    committed = watermarks.project(EventLog(log).read(f"pipeline:{name}"))["api"]
    assert (committed["page"], committed["next"], committed["complete"]) == (2, 3, False)
    api.clear()
    second = pipeline.run(log=log, runtime="local")
    assert second["status"] == "success" and len(rows(wh)) == 95
    assert api.requests_to("/page")[0].query["page"] == "3"


# --- the generic source contract ------------------------------------------------------------

@pytest.fixture(scope="module")
def thousand():
    records = [{**r, "id": r["id"] - 1} for r in make_records(1000)]
    with ApiServer(records, token=TOKEN) as server:
        yield server


class TestApiSourceContract(SourceContract):
    expected = 1000

    @pytest.fixture
    def source(self, thousand):
        return source(endpoint=thousand.url_for("/cursor"), incremental=True, recordsPath="items",
                      pagination={"type": "cursor", "sizeParam": "limit", "size": 100})

    @pytest.fixture
    def empty_source(self):
        with ApiServer([], token=TOKEN) as server:
            yield source(endpoint=server.url_for("/page"), incremental=True)



# --- the HTTP client underneath (etl_actors/http.py) -----------------------------------------

def test_concurrent_requests_of_one_client_share_its_rate_limit(api):
    client = HttpClient(HttpOptions(auth=Auth("bearer", token=TOKEN), requests_per_second=20))

    async def burst():
        try:
            return await asyncio.gather(*(client.request("GET", api.url_for("/page")) for _ in range(6)))
        finally:
            await client.close()

    assert [r.status for r in run_sync(burst())] == [200] * 6
    times = sorted(r.time for r in api.requests_to("/page"))
    assert times[-1] - times[0] >= 0.24                  # 5 gaps of 50 ms at 20 requests a second


def test_an_answer_larger_than_max_response_bytes_is_refused(api):
    api.respond("/page", 200, body=b"[" + b"1," * 5000 + b"1]")
    client = HttpClient(HttpOptions(auth=Auth("bearer", token=TOKEN), max_response_bytes=1000))
    with pytest.raises(HttpError, match=r"response larger than maxResponseBytes \(1000 bytes\)"):
        run_sync(client.request("GET", api.url_for("/page")))
    run_sync(client.close())


def test_basic_and_header_auth_send_their_headers_and_keep_their_secrets_out_of_sight(api):
    api.token = None
    options = [HttpOptions(auth=Auth("basic", username="etl", password="pw-SECRET-77")),
               HttpOptions(auth=Auth("header", token="key-SECRET-88", header="X-API-Key"))]
    for option in options:
        client = HttpClient(option)
        run_sync(client.request("GET", api.url_for("/page")))
        run_sync(client.close())
    first, second = (r.headers for r in api.requests_to("/page"))
    assert first["Authorization"] == "Basic " + base64.b64encode(b"etl:pw-SECRET-77").decode()
    assert second["X-API-Key"] == "key-SECRET-88"
    shown = " ".join(repr(o) + json.dumps(o.describe()) for o in options)
    assert "SECRET" not in shown and "X-API-Key" in shown
    assert redact_text(f"echo {first['Authorization']} pw-SECRET-77") == "echo Basic *** ***"


def test_a_spec_reads_its_token_from_the_environment_and_it_is_redacted_from_then_on(api, monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", "env-SECRET-4242")
    options = HttpOptions.from_spec(Section({"apiKey": "${CRM_TOKEN}", "headers": {"X-Tenant": "acme"},
                                             "timeout": "500ms", "rateLimitDelay": 250}, "s"), SpecContext())
    assert (options.auth.headers(), options.headers, options.timeout, options.rate_limit_delay) == \
        ({"Authorization": "Bearer env-SECRET-4242"}, (("X-Tenant", "acme"),), 0.5, 0.25)
    assert redact_text("token env-SECRET-4242 leaked") == "token *** leaked"


def test_run_sync_works_from_a_thread_that_already_runs_an_event_loop(api):
    client = HttpClient(HttpOptions(auth=Auth("bearer", token=TOKEN)))

    async def inside_a_loop():
        return run_sync(client.request("GET", api.url_for("/page"))).status

    assert asyncio.run(inside_a_loop()) == 200
    run_sync(client.close())


def test_an_api_repeating_the_same_page_while_saying_more_follow_fails_the_sync_naming_the_pages(api):
    api.respond("/page", 200, body=json.dumps({"results": [{"id": 1}, {"id": 2}], "has_more": True}).encode(),
                times=None)
    with pytest.raises(TerminalError) as caught:
        list(source(endpoint=api.url_for("/page")).read("api", None))
    assert "pages 1 to 6" in str(caught.value) and "does not move on" in str(caught.value)
    assert caught.value.partition == "api"            # a partition failure: the position stays before it


def test_identical_records_on_a_few_pages_in_a_row_are_still_read(api):
    api.records = [{"id": 1, "updated_at": "2024-01-01T00:00:00+00:00"}] * 4
    batches = list(source(endpoint=api.url_for("/page"), pagination={"type": "page", "size": 1}).read("api", None))
    assert [b.table.num_rows for b in batches] == [1, 1, 1, 1] and len({b.batch_id for b in batches}) == 4
