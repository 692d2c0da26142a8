"""The pure core of services: which values are literal secrets, and inputs filled in."""
import pytest

from etl_actors.errors import SpecError
from etl_actors.service.specs import apply_inputs, check_inputs, literal_secrets, pipeline_name, service_spec


@pytest.mark.parametrize("value", [
    {"connections": {"db": "postgresql://etl:pw1234@db/wh"}},
    {"connections": {"db": {"url": "https://api.example/v1?api_key=abcd1234"}}},
    {"source": {"apiKey": "sk-live-1"}},
    {"source": {"auth": {"type": "basic", "username": "u", "password": "p4ss"}}},
    {"source": {"headers": {"Authorization": "Bearer abc.def"}}},
    {"source": {"apiKey": "${KEY:-sk-fallback}"}},          # a default is written out
    {"source": {"apiKey": "${inputs.key}"}},                # a request's input is stored in the log
    {"source": {"token": 123456}},
])
def test_literal_secrets_are_found(value):
    assert literal_secrets(value)


@pytest.mark.parametrize("value", [
    {"connections": {"db": "postgresql://etl:${PGPASSWORD}@db/wh", "files": "sqlite:///data/x.db"}},
    {"connections": {"db": "${WAREHOUSE_URL:-sqlite:///data/warehouse.db}"}},
    {"source": {"apiKey": "${CRM_TOKEN}", "headers": {"Authorization": "Bearer ${CRM_TOKEN}"}}},
    {"source": {"auth": {"type": "bearer", "token": "${T}"}, "endpoint": "https://api.example/v1?page=1"}},
    {"pipeline": {"destination": {"keyFields": ["token_id"], "table": "tokens"}}},
])
def test_references_and_ordinary_values_are_not_secrets(value):
    assert literal_secrets(value) == []


def test_a_secret_is_named_by_its_path():
    body = {"pipeline": {"source": {"type": "api", "auth": {"type": "bearer", "token": "t0ken!"}}},
            "connections": {"a": "mysql://u:p@h/d"}}
    assert sorted(literal_secrets(body)) == ["connections.a", "pipeline.source.auth.token"]


def test_inputs_fill_whole_values_keeping_numbers_and_text_inside_strings():
    spec = {"source": {"path": "data/${inputs.day}.csv", "batchSize": "${inputs.size}"}, "name": "x"}
    filled = apply_inputs(spec, check_inputs(spec, {"day": "2026-12-01", "size": 500}))
    assert filled == {"source": {"path": "data/2026-12-01.csv", "batchSize": 500}, "name": "x"}


@pytest.mark.parametrize("inputs, path", [
    ({"day": "d"}, "inputs.size"), ({"day": "d", "size": 1, "more": 2}, "inputs.more"),
    ({"day": True, "size": 1}, "inputs.day"), ({"day": "${HOME}", "size": 1}, "inputs.day"),
    ({"day": "https://u:secret9@h/x", "size": 1}, "inputs.day")])
def test_inputs_that_do_not_fit_are_refused_naming_the_input(inputs, path):
    spec = {"source": {"path": "${inputs.day}", "batchSize": "${inputs.size}"}}
    with pytest.raises(SpecError) as raised:
        check_inputs(spec, inputs)
    assert raised.value.path == path


def test_the_pipeline_name_is_a_slug_of_the_title_and_the_service_id():
    assert pipeline_name("Customer Data ETL Pipeline", "svc_3f9a1c2e4b5d") == "customer-data-etl-pipeline-3f9a1c2e"
    assert pipeline_name("¡¿ !!", "svc_00aa11bb22cc") == "service-00aa11bb"


PIPELINE = {"source": {"type": "file", "path": "in.csv"},
            "destination": {"type": "database", "connection": "sqlite:///w.db", "table": "t"}}
RULES = {"rules": [{"id": "id", "type": "required-fields", "fields": ["id"], "severity": "error"}]}


@pytest.mark.parametrize("bodies, problem", [
    ({"pipeline": PIPELINE}, None),
    ({"validation": {**PIPELINE, **RULES}}, None),
    ({"pipeline": PIPELINE, "validation": RULES}, None),     # rules after the steps, as in a spec file
    ({}, "got none"),
    ({"pipeline": PIPELINE, "batch": PIPELINE}, "got pipeline, batch"),
])
def test_a_service_has_one_body_and_may_add_validation_rules_to_it(bodies, problem):
    body = {"name": "Orders", **bodies}
    if problem is None:
        title, spec, _, _ = service_spec(body, "svc_0123456789ab", "/tmp")
        assert title == "Orders" and spec["name"] == pipeline_name("Orders", "svc_0123456789ab")
    else:
        with pytest.raises(SpecError, match=f"^pipeline: expected one of .*{problem}"):
            service_spec(body, "svc_0123456789ab", "/tmp")
