"""Cross-part checks of a built pipeline: the transformation chain tried on the
source's schema, and a file sink that would feed its own source."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pytest

from etl_actors.checks import check_pipeline
from etl_actors.errors import SpecError
from etl_actors.registry import PLUGINS
from etl_actors.sinks.base import Sink
from etl_actors.sources.base import Source
from etl_actors.spec import Section, SpecContext, build_plugin, parse

PATHS = {"source": "pipeline.source", "transformations": "pipeline.transformations",
         "destination": "pipeline.destination"}
PEOPLE = pa.schema([("status", pa.string()), ("age", pa.int64()), ("country", pa.string())])


@dataclass(frozen=True)
class DeclaredSource(Source):
    """A source that only declares its schema (``columns: {name: arrow type}``)."""

    type: ClassVar[str] = "declared"
    columns: tuple = ()
    folder: str = "/data/in"

    @classmethod
    def from_spec(cls, section, ctx):
        columns = tuple(section.get("columns", types=dict).items())
        section.done()
        return cls(columns=columns)

    def schema(self):
        return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in self.columns]) if self.columns else None

    def would_read(self, location: str) -> bool:
        return location.startswith(self.folder + "/") and location.endswith(".csv")


@dataclass(frozen=True)
class BrokenSchemaSource(DeclaredSource):
    def schema(self):
        raise OSError("the bucket is unreachable")


@dataclass(frozen=True)
class FolderSink(Sink):
    type: ClassVar[str] = "folder"
    folder: str | None = "/data/out"
    format: str = "csv"

    def writes_files_in(self):
        return self.folder


def people() -> DeclaredSource:
    return DeclaredSource(columns=tuple((f.name, str(f.type)) for f in PEOPLE))


def steps(*specs: dict) -> list:
    ctx = SpecContext()
    return [build_plugin("transform", Section(spec, f"{PATHS['transformations']}[{i}]"), ctx)
            for i, spec in enumerate(specs)]


def problems(source, chain, sink=None) -> list[str]:
    return [str(e) for e in check_pipeline(source, chain, sink or FolderSink(), PATHS)]


def test_a_chain_that_fits_the_schema_has_no_problems():
    chain = steps({"type": "filter", "condition": "age >= 18 and status == 'active'"},
                  {"type": "map", "mappings": {"country": "country", "next": {"expression": "age + 1"}}},
                  {"type": "aggregate", "groupBy": ["country"], "aggregations": {"next": "sum"}})
    assert problems(people(), chain) == []


def test_a_string_column_compared_with_a_number_is_reported_at_the_condition_path():
    chain = steps({"type": "filter", "condition": "status > 5"})
    assert problems(people(), chain) == [
        "pipeline.transformations[0].condition: expression 'status > 5': cannot compare a string with a number "
        "in 'status > 5' (string vs int64); convert one side with int(...), float(...) or str(...)"]


def test_a_column_missing_after_a_map_is_reported_at_the_later_expression():
    chain = steps({"type": "map", "mappings": {"years": "age"}},
                  {"type": "map", "mappings": {"older": {"expression": "age + 1"}}})
    assert problems(people(), chain) == [
        "pipeline.transformations[1].mappings.older.expression: expression 'age + 1': column 'age' not found "
        "(columns: years)"]


def test_an_error_without_an_expression_is_reported_at_the_step():
    chain = steps({"type": "aggregate", "groupBy": ["region"], "aggregations": {"age": "sum"}})
    assert problems(people(), chain) == [
        "pipeline.transformations[0]: step 'aggregate': column(s) 'region' not found "
        "(columns: status, age, country)"]


def test_a_step_that_may_fail_is_passed_over_and_the_next_is_still_checked():
    chain = steps({"type": "filter", "condition": "region == 'eu'", "required": False},
                  {"type": "filter", "condition": "age > 'x'"})
    assert problems(people(), chain) == [
        "pipeline.transformations[1].condition: expression \"age > 'x'\": cannot compare a string with a number "
        "in \"age > 'x'\" (int64 vs string); convert one side with int(...), float(...) or str(...)"]


def test_steps_after_user_code_are_not_tried():
    chain = steps({"type": "function", "handler": "json:loads"}, {"type": "filter", "condition": "nothing > 1"})
    assert problems(people(), chain) == []


@pytest.mark.parametrize("source", [DeclaredSource(), BrokenSchemaSource(columns=(("a", "int64"),))])
def test_without_a_schema_the_chain_is_not_tried(source):
    assert problems(source, steps({"type": "filter", "condition": "nothing > 1"})) == []


def test_a_file_sink_inside_the_folder_its_source_reads_is_refused():
    message, = problems(people(), [], FolderSink(folder="/data/in/out/"))
    assert message.startswith("pipeline.destination.path: the file sink writes into '/data/in/out/', where the "
                              "source reads: the source would read this pipeline's own output again")


@pytest.mark.parametrize("sink", [FolderSink(folder="/data/out"), FolderSink(folder="/data/in", format="parquet"),
                                  FolderSink(folder=None)])
def test_a_sink_whose_files_the_source_would_not_read_is_fine(sink):
    assert problems(people(), [], sink) == []


def test_validate_reports_a_type_mismatch_where_the_source_declares_its_schema(monkeypatch):
    monkeypatch.setitem(PLUGINS["source"], "declared", f"{__name__}:DeclaredSource")
    spec = {"name": "people", "pipeline": {
        "source": {"type": "declared", "columns": {"age": "string"}},
        "transformations": [{"id": "adults", "type": "filter", "condition": "age >= 18"}],
        "destination": {"type": "file", "path": "/tmp/out", "format": "csv"}}}
    with pytest.raises(SpecError) as caught:
        parse(spec, base_dir="/tmp")
    assert caught.value.path == "pipeline.transformations[0].condition"
    assert "cannot compare a string with a number in 'age >= 18'" in caught.value.reason
