"""The seed's validation: shape in specs: beside pipeline: it is a step after the
transformations; as the body it has its own source and destination; a foreign-key rule's
reference defaults to the destination's database; beside stream: it is refused."""
import pytest

from etl_actors.errors import SpecError
from etl_actors.spec import parse

RULES = [{"id": "completeness", "type": "required-fields", "fields": ["id"]},
         {"id": "ref", "type": "foreign-key", "field": "customer_id", "reference": {"table": "customers", "field": "id"}}]


def test_validation_beside_pipeline_is_a_step_after_the_transformations(tmp_path):
    spec = parse({"name": "q", "validation": {"rules": RULES, "actions": {"error": "reject"}}, "pipeline": {
        "source": {"type": "file", "path": str(tmp_path), "format": "csv"},
        "transformations": [{"id": "adults", "type": "filter", "condition": "age >= 18"}],
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "t"}}})
    assert [(s.id, s.type) for s in spec.transformations] == [("adults", "filter"), ("validation", "validate")]
    assert f"{tmp_path}/wh.db" in str(spec.transformations[-1].describe())   # the destination's database


def test_validation_as_the_body_has_its_own_source_and_destination(tmp_path):
    spec = parse({"name": "q", "validation": {
        "source": {"type": "file", "path": str(tmp_path), "format": "csv"}, "rules": RULES,
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "t"}}})
    assert [s.type for s in spec.transformations] == ["validate"] and spec.source.type == "file"


def test_an_unknown_key_in_validation_names_its_path(tmp_path):
    with pytest.raises(SpecError) as caught:
        parse({"name": "q", "validation": {"source": {"type": "file", "path": str(tmp_path), "format": "csv"}, "rules": RULES,
                                           "rulez": [], "destination": {"type": "file", "path": str(tmp_path / "o")}}})
    assert "validation.rulez" in str(caught.value)


def test_validation_beside_a_stream_is_refused_naming_it():
    with pytest.raises(SpecError) as caught:
        parse({"name": "q", "validation": {"rules": RULES}, "stream": {
            "source": {"type": "kafka", "topic": "t", "bootstrapServers": "localhost:9092"},
            "sinks": [{"type": "file", "path": "/tmp/out"}]}})
    assert str(caught.value).startswith("validation:")
