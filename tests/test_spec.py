"""Spec parsing and validation: paths in errors, connections, secrets, YAML quirks."""
import pytest

from etl_actors.errors import SpecError
from etl_actors.spec import load_file, load_text, parse, substitute_env


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
        "pipeline.destination.mode: 'upsrt' is not one of insert, upsert, replace, mirror"


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


# --- loading: specs that attack the parser ---------------------------------------------

def load_error(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_text(text, "spec.yaml")
    return str(caught.value)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The 661-byte billion laughs: each level lists the previous one ``width`` times."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_where_it_passes_the_limit_without_expanding_it():
    message = load_error(alias_bomb())
    assert message.startswith("a5: expands past 100,000 values through YAML aliases (anchors & and *)")


def test_aliases_within_the_limits_are_read_as_the_values_they_name():
    data = load_text("base: &b {type: file, path: in}\ncopy: *b\nlist: [*b, *b]\n")
    assert data["copy"] == data["list"][1] == {"type": "file", "path": "in"}


def test_an_alias_inside_its_own_anchor_is_refused_naming_the_path():
    assert load_error("pipeline:\n  steps: &s [1, *s]\n") == \
        "pipeline.steps[1]: a YAML alias (anchors & and *) in spec.yaml refers to a value that contains it"


def test_nesting_deeper_than_the_limit_is_refused_without_a_recursion_error():
    assert load_error("x: " + "[" * 50_000) == "spec.yaml: nests deeper than 100 levels at line 1"
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    assert load_error(chain).startswith("a99: nests deeper than 100 levels through YAML aliases")


def test_a_duplicate_key_is_refused_naming_its_path_and_both_lines():
    text = "name: a\npipeline:\n  source:\n    path: in\n    type: file\n    path: other\n"
    assert load_error(text) == "pipeline.source.path: duplicate key at line 6 of spec.yaml (first at line 4)"


def test_keys_are_compared_as_written_so_quoting_does_not_hide_a_duplicate():
    assert load_error("'on': 1\non: 2\n").startswith("on: duplicate key at line 2")


def test_explicit_keys_override_merged_ones_as_yaml_merge_intends():
    data = load_text("base: &b {mode: insert, table: t}\ndestination:\n  <<: *b\n  mode: upsert\n")
    assert data["destination"] == {"mode": "upsert", "table": "t"}


def test_mapping_keys_are_the_text_written_and_must_be_text():
    assert load_text("1: a\nnull: b\n") == {"1": "a", "null": "b"}
    assert load_error("x:\n  ? [a, b]\n  : c\n") == "x: a mapping key must be text, got a list at line 2 of spec.yaml"


def test_a_value_its_tag_cannot_read_names_the_line_instead_of_a_traceback():
    assert load_error("name: x\nwhen: 2024-13-45\n") == \
        "spec.yaml: cannot read '2024-13-45' as timestamp (month must be in 1..12) at line 2"
    assert load_error("x: !!python/object/apply:os.system [ls]\n").startswith("spec.yaml: not valid YAML or JSON")


def test_a_file_that_is_not_utf8_names_the_byte_and_its_offset(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(SpecError) as caught:
        load_file(str(path))
    assert str(caught.value) == f"{path}: not UTF-8 text: byte 0xe9 at offset 9"


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: caf\xc3\xa9\n")
    assert load_file(str(path)) == {"name": "café"}


def test_a_spec_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"x: [" + b"1," * 600_000 + b"1]\n")
    with pytest.raises(SpecError, match=r"larger than 1,048,576 bytes"):
        load_file(str(path))
