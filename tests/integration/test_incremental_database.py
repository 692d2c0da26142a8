"""Incremental database sync: a rerun reads exactly what changed, on SQLite and PostgreSQL."""
from datetime import datetime

import pytest

from etl_actors import Pipeline
from etl_actors.eventlog import EventLog
from etl_actors.projections import watermarks

from . import crm

LATER = datetime(2026, 6, 1)


def sync_twice(src, dst, log, runtime):
    crm.create(src, 3000)
    pipeline = Pipeline.from_dict(crm.spec("crm-sync", src, dst))
    first = pipeline.run(log=log, runtime=runtime)
    crm.update(src, range(1, 1001), LATER)
    crm.insert(src, range(3001, 3501), LATER.replace(hour=1))
    second = pipeline.run(log=log, runtime=runtime)
    return first, second


def test_rerun_after_1000_updates_and_500_inserts_extracts_exactly_those(tmp_path):
    src, dst = f"sqlite:///{tmp_path}/crm.db", f"sqlite:///{tmp_path}/wh.db"
    first, second = sync_twice(src, dst, f"sqlite:///{tmp_path}/events.db", "local")
    assert (first["status"], first["recordsExtracted"]) == ("success", 3000)
    assert (second["status"], second["recordsExtracted"], second["recordsLoaded"]) == ("success", 1500, 1500)
    assert crm.dest_rows(dst) == crm.source_rows(src)
    assert second["watermark"] == "2026-06-01T01:08:19"


@pytest.mark.ray
@pytest.mark.postgres
def test_the_same_sync_on_ray_with_postgres_everywhere(ray_local, pg_schema):
    first, second = sync_twice(pg_schema, pg_schema, pg_schema, "ray")
    assert (first["recordsExtracted"], second["recordsExtracted"]) == (3000, 1500)
    assert crm.dest_rows(pg_schema) == crm.source_rows(pg_schema)
    committed = watermarks.project(EventLog(pg_schema).read("pipeline:crm-sync"))
    assert list(committed) == ["query"]
