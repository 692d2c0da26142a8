"""The enrich step: per-key and bulk HTTP lookups, database lookups, dedup, cache,
missing keys, retries, and secrets kept out of everything it shows."""
import json
import pickle
import time
from collections import Counter

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given, strategies as st

from apiserver import ApiServer

from etl_actors import Pipeline
from etl_actors.db import engine_for
from etl_actors.errors import SpecError, TerminalError
from etl_actors.spec import Section, SpecContext
from etl_actors.transforms import enrich
from etl_actors.transforms.enrich import EnrichStep, LookupCache

TOKEN = "tok-enrich-5ecret-77"
ACCOUNTS = {f"a{i}": {"id": f"a{i}", "tier": i % 3, "profile": {"segment": "gold" if i % 2 else "silver"}}
            for i in range(1, 1001)}


def asked(api) -> Counter:
    """How many times the server was asked for each key (per-key and bulk routes)."""
    seen = Counter()
    for request in api.requests:
        if request.path.startswith("/accounts/") and request.path != "/accounts/bulk":
            seen[request.path.rsplit("/", 1)[1]] += 1
        elif request.path == "/accounts":
            seen.update(request.query["ids"].split(","))
        elif request.path == "/accounts/bulk":
            seen.update(json.loads(request.body)["keys"])
    return seen


@pytest.fixture(scope="module")
def server():
    with ApiServer(lookup_delay=0.0) as running:
        yield running


@pytest.fixture
def api(server):
    server.clear()
    server.accounts, server.lookup_delay, server.token = dict(ACCOUNTS), 0.0, None
    enrich.CACHE.clear()
    return server


def step(spec: dict, connections=None) -> EnrichStep:
    section = Section({"id": "crm", "type": "enrich", **spec}, "pipeline.transformations[1]")
    return EnrichStep.from_spec(section, SpecContext(connections=connections or {}))


def per_key(api, **spec) -> EnrichStep:
    return step({"key": "account_id", "endpoint": f"{api.url}/accounts/{{key}}", "apiKey": TOKEN, **spec})


def orders(*keys) -> pa.Table:
    return pa.table({"order_id": list(range(1, len(keys) + 1)), "account_id": list(keys)})


# --- HTTP per key ---------------------------------------------------------------------------

def test_per_key_lookup_adds_selected_nested_fields_and_counts_enriched_rows(api):
    crm = per_key(api, select={"segment": "profile.segment", "tier": "tier"})
    result = crm.apply(orders("a1", "a2", "zz", None, "a1"))
    assert result.table.to_pylist() == [
        {"order_id": 1, "account_id": "a1", "segment": "gold", "tier": 1},
        {"order_id": 2, "account_id": "a2", "segment": "silver", "tier": 2},
        {"order_id": 3, "account_id": "zz", "segment": None, "tier": None},
        {"order_id": 4, "account_id": None, "segment": None, "tier": None},
        {"order_id": 5, "account_id": "a1", "segment": "gold", "tier": 1}]
    assert result.enriched == 3
    assert sorted(asked(api)) == ["a1", "a2", "zz"]
    assert {r.headers["Authorization"] for r in api.requests} == {f"Bearer {TOKEN}"}


def test_key_in_a_query_parameter_and_at_a_dotted_path_into_a_struct(api):
    crm = step({"key": "customer.account", "endpoint": f"{api.url}/accounts?ids={{key}}", "recordPath": "results",
                "select": ["tier"]})
    table = pa.table({"customer": [{"account": "a4"}, {"account": "a5"}, {"account": "zz"}]})
    assert crm.apply(table).table["tier"].to_pylist() == [1, 2, None]      # zz: {"results": []}
    assert sorted(r.query["ids"] for r in api.requests) == ["a4", "a5", "zz"]


def test_without_select_every_top_level_field_is_added_but_existing_ones_are_not_overwritten(api):
    table = pa.table({"account_id": ["a3", "nope"], "tier": ["mine", "mine too"]})
    result = per_key(api).apply(table)
    assert result.table.column_names == ["account_id", "tier", "id", "profile"]
    assert result.table.to_pylist() == [
        {"account_id": "a3", "tier": "mine", "id": "a3", "profile": {"segment": "gold"}},
        {"account_id": "nope", "tier": "mine too", "id": None, "profile": None}]


def test_a_selected_field_replaces_the_existing_column(api):
    table = pa.table({"account_id": ["a3"], "tier": [99]})
    assert per_key(api, select=["tier"]).apply(table).table.to_pylist() == [{"account_id": "a3", "tier": 0}]


def test_a_batch_where_nothing_is_found_gets_all_null_columns(api):
    result = per_key(api, select=["tier"]).apply(orders("x1", "x2"))
    assert result.table["tier"].to_pylist() == [None, None]
    assert result.enriched == 0


# --- dedup, concurrency, cache ------------------------------------------------------------

def test_10k_records_over_1k_keys_ask_each_key_once_concurrently_and_then_from_the_cache(api):
    api.lookup_delay = 0.02                                  # 1000 keys one by one: 20 s
    keys = [f"a{1 + i % 1000}" for i in range(10_000)]
    crm = per_key(api, select={"segment": "profile.segment"})
    started = time.monotonic()
    first = crm.apply(orders(*keys))
    elapsed = time.monotonic() - started
    assert elapsed < 8.0, f"took {elapsed:.1f} s"
    assert first.enriched == 10_000
    assert first.table["segment"].to_pylist()[:2] == ["gold", "silver"]
    assert len(asked(api)) == 1000 and set(asked(api).values()) == {1}
    again = per_key(api, select={"segment": "profile.segment"}).apply(orders(*keys[:5000]))   # a new instance
    assert again.enriched == 5000
    assert len(api.requests) == 1000


def test_no_more_than_concurrency_requests_are_in_flight(api):
    api.lookup_delay = 0.1
    started = time.monotonic()
    per_key(api, select=["tier"], concurrency=4).apply(orders(*[f"a{i}" for i in range(1, 13)]))
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.2, f"12 keys, 4 at a time, 0.1 s each took {elapsed:.2f} s"


def test_answers_expire_after_cache_ttl(api):
    crm = per_key(api, select=["tier"], cacheTtl="200ms")
    crm.apply(orders("a1", "zz"))
    crm.apply(orders("a1", "zz"))
    assert asked(api) == {"a1": 1, "zz": 1}             # "not found" is cached too
    time.sleep(0.25)
    crm.apply(orders("a1"))
    assert asked(api)["a1"] == 2


def test_cache_ttl_zero_asks_again_every_batch(api):
    crm = per_key(api, select=["tier"], cacheTtl=0)
    crm.apply(orders("a1", "a1"))
    crm.apply(orders("a1"))
    assert asked(api) == {"a1": 2}


def test_steps_with_another_api_key_do_not_share_answers(api):
    per_key(api, select=["tier"]).apply(orders("a1"))
    per_key(api, select=["tier"], apiKey="another-key-123").apply(orders("a1"))
    assert asked(api) == {"a1": 2}


@given(st.lists(st.integers(0, 30), max_size=200), st.integers(1, 10))
def test_the_cache_keeps_the_most_recently_used_keys_up_to_its_bound(keys, bound):
    cache = LookupCache(max_entries=bound)
    for key in keys:
        cache.put_many("ns", {str(key): {"k": key}}, expires=float("inf"))
    recent = list(dict.fromkeys(reversed([str(k) for k in keys])))[:bound]
    assert len(cache) == len(recent)
    assert cache.get_many("ns", recent, now=0.0) == {k: {"k": int(k)} for k in recent}


# --- missing keys --------------------------------------------------------------------------

@pytest.mark.parametrize("on_missing, tiers, kept", [
    ("keep", [0, 7], 2),          # an existing column keeps its value where the key is missing
    ("null", [0, None], 2),
    ("reject", [0], 1),
])
def test_on_missing(api, on_missing, tiers, kept):
    table = pa.table({"account_id": ["a3", "gone"], "tier": [5, 7]})
    result = per_key(api, select=["tier"], onMissing=on_missing).apply(table)
    assert result.table["tier"].to_pylist() == tiers
    assert (result.table.num_rows, result.enriched) == (kept, 1)


def test_rejected_rows_are_dead_letters_naming_the_step_and_the_key(api):
    result = per_key(api, select=["tier"], onMissing="reject").apply(orders("a1", "acct-404", None))
    assert result.table["account_id"].to_pylist() == ["a1"]
    assert [(d.reason, d.record) for d in result.rejects] == [
        ("step 'crm': key 'acct-404' (account_id) not found", {"order_id": 2, "account_id": "acct-404"}),
        ("step 'crm': key null (account_id) not found", {"order_id": 3, "account_id": None})]
    assert "None" not in asked(api)


# --- failures and secrets -------------------------------------------------------------------

def test_a_429_is_waited_out_and_retried(api):
    api.throttle("/accounts/a2", retry_after="0")
    result = per_key(api, select=["tier"]).apply(orders("a2"))
    assert result.table["tier"].to_pylist() == [2]
    assert asked(api)["a2"] == 2


def test_a_persistent_500_fails_the_step_naming_the_key_and_the_status_never_the_token(api):
    api.token = TOKEN
    api.fail("/accounts/a9", 500, times=None, body=f"boom; you sent Bearer {TOKEN}")
    crm = per_key(api, select=["tier"], maxRetries=1)
    with pytest.raises(TerminalError, match=r"step 'crm': looking up key 'a9' failed \(HTTP 500\)") as caught:
        crm.apply(orders("a1", "a9"))
    assert (caught.value.key, caught.value.status) == ("a9", 500)
    assert asked(api)["a9"] == 2
    assert "you sent" in str(caught.value) and TOKEN not in str(caught.value)
    assert enrich.CACHE.get_many(crm._namespace, ["a9"], time.monotonic()) == {}


def test_a_refused_api_key_fails_without_showing_the_key_the_server_echoes(api):
    api.token = TOKEN
    with pytest.raises(TerminalError, match=r"failed \(HTTP 401\).*authentication refused") as caught:
        per_key(api, apiKey="wrong-key-4242").apply(orders("a1"))
    assert "wrong-key-4242" not in str(caught.value) and "invalid token" in str(caught.value)


def test_the_api_key_is_in_neither_repr_describe_nor_pickle_text(api):
    crm = per_key(api, select=["tier"], endpoint=f"{api.url}/accounts/{{key}}?token={TOKEN}")
    assert TOKEN not in repr(crm) and TOKEN not in json.dumps(crm.describe())
    assert crm.describe()["endpoint"].endswith("?token=***")
    assert pickle.loads(pickle.dumps(crm)) == crm


# --- bulk -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, route, param", [("GET", "/accounts", "ids"), ("POST", "/accounts/bulk", "keys")])
def test_bulk_endpoint_asks_max_keys_per_request(api, method, route, param):
    bulk = {"endpoint": api.url_for(route), "method": method, "param": param, "maxKeys": 2, "recordsPath": "results"}
    crm = step({"key": "account_id", "bulk": bulk, "select": {"segment": "profile.segment"}, "concurrency": 2})
    result = crm.apply(orders("a1", "a2", "a3", "zz", "a1"))
    assert result.table["segment"].to_pylist() == ["gold", "silver", "gold", None, "gold"]
    assert result.enriched == 4
    assert len(api.requests) == 2 and asked(api) == {"a1": 1, "a2": 1, "a3": 1, "zz": 1}
    if method == "GET":
        assert sorted(r.query["ids"] for r in api.requests) == ["a1,a2", "a3,zz"]


def test_integer_keys_match_the_ids_of_a_bulk_answer_as_text(api):
    api.accounts.update({"7": {"id": 7, "tier": "seven"}, "8": {"id": "8", "tier": "eight"}})
    crm = step({"key": "n", "endpoint": api.url_for("/accounts"), "bulk": {"recordsPath": "results"},
                "select": ["tier"]})
    assert crm.apply(pa.table({"n": [7, 8, 9]})).table["tier"].to_pylist() == ["seven", "eight", None]


# --- database tables ---------------------------------------------------------------------------

def make_accounts(url: str) -> None:
    with engine_for(url).begin() as conn:
        conn.execute(sa.text('CREATE TABLE "Accounts" (id integer PRIMARY KEY, "order" text, tier integer)'))
        conn.execute(sa.text('INSERT INTO "Accounts" VALUES (1, \'first\', 10), (2, \'second\', 20)'))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_database_table_lookup_with_quoted_identifiers(request, tmp_path, backend):
    url = f"sqlite:///{tmp_path}/crm.db" if backend == "sqlite" else request.getfixturevalue("pg_schema")
    make_accounts(url)
    enrich.CACHE.clear()
    crm = step({"key": "account", "connection": "crm", "table": "Accounts", "lookupField": "id",
                "select": {"position": "order"}, "onMissing": "reject"}, connections={"crm": url})
    result = crm.apply(pa.table({"account": [2, 1, 3, 2]}))
    assert result.table.to_pylist() == [{"account": 2, "position": "second"}, {"account": 1, "position": "first"},
                                        {"account": 2, "position": "second"}]
    assert [d.reason for d in result.rejects] == ["step 'crm': key '3' (account) not found"]


def test_database_lookup_reads_keys_in_chunks(tmp_path):
    url = f"sqlite:///{tmp_path}/many.db"
    with engine_for(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE accounts (id integer PRIMARY KEY, tier integer)"))
        conn.execute(sa.text("INSERT INTO accounts VALUES (:id, :tier)"), [{"id": i, "tier": i * 2} for i in range(1, 1301)])
    crm = step({"key": "id", "connection": url, "table": "accounts", "select": ["tier"]})
    result = crm.apply(pa.table({"id": list(range(1, 1302))}))
    assert result.table["tier"].to_pylist() == [i * 2 for i in range(1, 1301)] + [None]
    assert result.enriched == 1300


# --- the spec ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ({"endpoint": "http://crm/accounts"}, r"\.endpoint: expected \{key\} in the path or a query parameter"),
    ({"endpoint": "http://crm/a/{key}", "connection": "sqlite:///x.db", "table": "t"},
     r"\.connection: give either an HTTP endpoint"),
    ({"endpoint": "http://crm/a/{key}", "onMissing": "drop"}, r"\.onMissing: 'drop' is not one of keep, null, reject"),
    ({}, r": give an 'endpoint' \(with \{key\}\), a 'bulk' endpoint or a 'connection'"),
    ({"endpoint": "http://crm/a/{key}", "cacheTtl": "soon"}, r"\.cacheTtl: expected a duration"),
    ({"endpoint": "http://crm/a/{key}", "select": {"x": ""}}, r"\.select\.x: expected a field name"),
    ({"bulk": {"endpoint": "http://crm/bulk", "method": "PUT"}}, r"\.bulk\.method: 'PUT' is not one of GET, POST"),
    ({"bulk": {"endpoint": "http://crm/bulk", "maxkeys": 5}}, r"\.bulk\.maxkeys: unknown key; did you mean 'maxKeys'"),
    ({"connection": "sqlite:///x.db", "table": "t", "apiKey": "k"}, r"\.apiKey: unknown key"),
])
def test_spec_errors_name_their_path(spec, message):
    with pytest.raises(SpecError, match=r"^pipeline\.transformations\[1\]" + message):
        step({"key": "account_id", **spec})


# --- a whole run -------------------------------------------------------------------------------

def test_a_pipeline_run_loads_enriched_rows_and_counts_them(api, tmp_path):
    src, dst = f"sqlite:///{tmp_path}/src.db", f"sqlite:///{tmp_path}/dst.db"
    with engine_for(src).begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (order_id integer PRIMARY KEY, account_id text)"))
        conn.execute(sa.text("INSERT INTO orders VALUES (1, 'a1'), (2, 'a2'), (3, 'missing'), (4, 'a1')"))
    spec = {"name": "enrich-run", "connections": {"src": src, "dst": dst},
            "pipeline": {"source": {"type": "database", "connection": "src", "table": "orders"},
                         "transformations": [{"id": "crm", "type": "enrich", "key": "account_id",
                                              "endpoint": f"{api.url}/accounts/{{key}}", "apiKey": TOKEN,
                                              "select": {"segment": "profile.segment"}}],
                         "destination": {"type": "database", "connection": "dst", "table": "orders_enriched"}}}
    summary = Pipeline.from_dict(spec).run(log=f"sqlite:///{tmp_path}/events.db", runtime="local")
    assert summary["status"] == "success", summary.get("error")
    with engine_for(dst).connect() as conn:
        rows = conn.execute(sa.text("SELECT order_id, segment FROM orders_enriched ORDER BY order_id")).all()
    assert [tuple(r) for r in rows] == [(1, "gold"), (2, "silver"), (3, None), (4, "gold")]
    assert summary["recordsEnriched"] == 3
    assert TOKEN not in json.dumps(summary, default=str)
