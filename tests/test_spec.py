"""Spec parsing and validation: paths in errors, connections, secrets, YAML quirks."""
import pytest

from etl_actors.errors import SpecError
from etl_actors.spec import load_text, parse, substitute_env


def spec(**overrides):
    data = {
        "name": "orders",
        "connections": {"wh": "sqlite:///wh.db"},
        "pipeline": {
            "source": {"type": "file", "path": "in", "format": "csv"},
            "transformations": [{"id": "keep", "type": "filter", "condition": "amount > 0"}],
            "destination": {"type": "database", "connection": "wh", "table": "orders", "mode": "insert"},
        },
    }
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return data


def error_of(data) -> str:
    with pytest.raises(SpecError) as caught:
        parse(data, base_dir="/tmp")
    return str(caught.value)


def test_a_bad_destination_mode_names_its_path_and_the_choices():
    assert error_of(spec(pipeline__destination__mode="upsrt")) == \
        "pipeline.destination.mode: 'upsrt' is not one of insert, upsert, replace"


def test_an_unknown_source_type_lists_the_known_ones():
    message = error_of(spec(pipeline__source__type="ftp"))
    assert message.startswith("pipeline.source.type: 'ftp' is not one of ") and "database" in message


def test_a_misspelled_key_is_reported_with_a_suggestion():
    message = error_of(spec(pipeline__destination__keyFeilds=["id"]))
    assert message.startswith("pipeline.destination.keyFeilds: unknown key") and "keyFields" in message


def test_a_missing_name_is_required():
    data = spec()
    del data["name"]
    assert error_of(data) == "name: is required"


def test_camel_and_snake_case_are_both_accepted():
    data = spec(pipeline__destination__mode="upsert", pipeline__destination__key_fields=["id"])
    assert parse(data, base_dir="/tmp").destination.key_fields == ("id",)


def test_connections_substitute_environment_variables(monkeypatch):
    monkeypatch.setenv("WH_URL", "postgresql://etl:s3cret@db/wh")
    data = spec(connections={"wh": "${WH_URL}"})
    assert parse(data, base_dir="/tmp").destination.url == "postgresql://etl:s3cret@db/wh"


def test_a_missing_environment_variable_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("NOPE_URL", raising=False)
    assert error_of(spec(connections={"wh": "${NOPE_URL}"})) == "connections.wh: environment variable NOPE_URL is not set"


def test_an_unknown_connection_lists_known_names_but_never_urls():
    message = error_of(spec(connections={"wh": "postgresql://etl:s3cret@db/wh"},
                            pipeline__destination__connection="warehouse"))
    assert "unknown connection 'warehouse' (known: wh)" in message and "s3cret" not in message


def test_env_substitution_uses_defaults():
    assert substitute_env("${UNSET_X_Y:-sqlite:///a.db}", "p", env={}) == "sqlite:///a.db"


def test_yaml_keeps_on_and_off_keys_as_written():
    data = load_text("with: {type: file}\non: {customer_id: id}\noff: 1\nflag: yes\n")
    assert data["on"] == {"customer_id": "id"} and data["off"] == 1 and data["flag"] is True


def test_yaml_syntax_errors_name_the_line():
    with pytest.raises(SpecError, match=r"not valid YAML or JSON at line 3, column 1"):
        load_text("name: x\npipeline: [\n")


def test_relative_sqlite_connections_are_read_from_the_spec_folder():
    parsed = parse(spec(), base_dir="/srv/specs")
    assert parsed.destination.url == "sqlite:////srv/specs/wh.db"


def test_duplicate_step_ids_are_rejected():
    data = spec()
    data["pipeline"]["transformations"].append({"id": "keep", "type": "filter", "condition": "amount < 9"})
    assert error_of(data) == "pipeline.transformations[1].id: duplicate step id 'keep' (also at [0])"
