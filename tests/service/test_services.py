"""Services over HTTP: created by admins from the seed's shape, validated like specs,
never holding a literal secret. (No run starts here: no Ray.)"""
import json

import pytest

from etl_actors.eventlog import EventLog
from etl_actors.service.model import service_stream

from .conftest import PER_RECORD, create, log_bytes, orders_service, serving

pytestmark = pytest.mark.asyncio


async def test_an_admin_creates_a_service_that_everyone_lists_and_only_admins_see_the_spec_of(
        tmp_path, log_url, keys):
    async with serving(log_url, runtime="local") as api:
        admin, acme = api.as_(keys["admin"]), api.as_(keys["acme"])
        service_id = await create(admin, {**orders_service(tmp_path, pricing=PER_RECORD), "customerId": "acme"})
        async with admin.get(f"/services/{service_id}") as response:
            service = await response.json()
        assert (service["name"], service["type"], service["subtype"], service["kind"], service["customerId"]) == \
            ("Orders ETL", "Automation", "data-pipeline", "pipeline", "acme")
        assert service["pipeline"].startswith("orders-etl-") and service["pricing"] == PER_RECORD
        assert service["spec"]["pipeline"]["destination"]["table"] == "orders"
        async with acme.get("/services") as response:
            listed = (await response.json())["services"]
        assert [s["id"] for s in listed] == [service_id] and "spec" not in listed[0]
        async with acme.post("/services", json=orders_service(tmp_path)) as response:
            assert response.status == 403 and "admin" in (await response.json())["error"]
    recorded = EventLog(log_url).read(service_stream(service_id))
    assert [r.type for r in recorded] == ["ServiceCreated"] and recorded[0].event.spec["name"] == service["pipeline"]


async def test_an_invalid_spec_is_refused_naming_each_path(tmp_path, log_url, keys):
    body = orders_service(tmp_path)
    body["pipeline"]["destination"]["mode"] = "upsrt"
    body["pricing"] = {"model": "per-gb", "rate": -1}
    async with serving(log_url, runtime="local") as api:
        async with api.as_(keys["admin"]).post("/services", json=body) as response:
            assert response.status == 400
            errors = (await response.json())["errors"]
    by_path = {e["path"]: e["message"] for e in errors}
    assert "upsrt" in by_path["pipeline.destination.mode"]
    assert any(path.startswith("pricing") for path in by_path)
    assert EventLog(log_url).streams("service:") == []


@pytest.mark.parametrize("where, secret", [
    ("url", "hunter2-url-pw"), ("query", "tok-in-query-9"), ("apiKey", "sk-live-abcdef")])
async def test_a_literal_secret_is_refused_and_never_reaches_the_log(tmp_path, log_url, keys, where, secret):
    body = orders_service(tmp_path)
    if where == "url":
        body["connections"]["warehouse"] = f"postgresql://etl:{secret}@db.example/wh"
        path = "connections.warehouse"
    elif where == "query":
        body["connections"]["crm"] = f"https://crm.example/api?token={secret}"
        path = "connections.crm"
    else:
        body["pipeline"]["source"] = {"type": "api", "endpoint": "https://crm.example/api", "apiKey": secret}
        path = "pipeline.source.apiKey"
    async with serving(log_url, runtime="local") as api:
        async with api.as_(keys["admin"]).post("/services", json=body) as response:
            assert response.status == 400
            text = await response.text()
    assert secret not in text
    assert {"path": path, "message": "a literal secret: write secrets as ${ENV} references"} in \
        json.loads(text)["errors"]
    assert secret.encode() not in log_bytes(tmp_path)


async def test_secrets_written_as_env_references_are_accepted(tmp_path, log_url, keys, monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", "from-the-environment")
    body = orders_service(tmp_path)
    body["pipeline"]["transformations"] = [{"id": "crm", "type": "enrich", "key": "customer",
                                            "endpoint": "https://crm.example/accounts/{key}",
                                            "apiKey": "${CRM_TOKEN}"}]
    async with serving(log_url, runtime="local") as api:
        async with api.as_(keys["admin"]).post("/services", json=body) as response:
            text = await response.text()
    assert response.status == 201, text
    assert b"from-the-environment" not in log_bytes(tmp_path)


async def test_the_body_shape_is_checked_strictly(tmp_path, log_url, keys):
    both = {**orders_service(tmp_path), "stream": {"source": {"type": "kafka", "topic": "t"}}}
    unknown = {**orders_service(tmp_path), "pricng": {"model": "per-gb", "rate": 1}}
    async with serving(log_url, runtime="local") as api:
        admin = api.as_(keys["admin"])
        async with admin.post("/services", json=both) as response:
            assert response.status == 400
            assert (await response.json())["errors"][0]["path"] == "pipeline"
        async with admin.post("/services", json=unknown) as response:
            assert response.status == 400
            assert (await response.json())["errors"] == [{"path": "pricng", "message": "unknown key; did you mean 'pricing'?"}]
        async with admin.post("/services", json=[1, 2]) as response:
            assert response.status == 400


async def test_a_request_must_fill_the_inputs_the_spec_names(tmp_path, log_url, keys):
    body = orders_service(tmp_path)
    body["pipeline"]["destination"]["table"] = "${inputs.table}"
    async with serving(log_url, runtime="local") as api:
        admin = api.as_(keys["admin"])
        service_id = await create(admin, body)
        for sent, path in (({}, "inputs.table"), ({"inputs": {"table": "t", "extra": 1}}, "inputs.extra"),
                           ({"inputs": {"table": {"no": 1}}}, "inputs.table"),
                           ({"inputs": {"table": "${HOME}"}}, "inputs.table")):
            async with admin.post(f"/services/{service_id}/requests", json=sent) as response:
                assert response.status == 400, sent
                assert (await response.json())["errors"][0]["path"] == path
        async with admin.get(f"/services/{service_id}") as response:
            assert (await response.json())["inputs"] == ["table"]
    assert EventLog(log_url).streams("request:") == []

