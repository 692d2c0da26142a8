"""Whole chains through the runtime: blocking aggregates, optional steps, replace mode."""
import asyncio

import pyarrow as pa
import pytest

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import PipelineSupervisor

ORDERS = "order_id,country,amount,status\n" + "\n".join(
    f"{i},{['DE', 'FR', 'US'][i % 3]},{i},{'paid' if i % 4 else 'void'}" for i in range(1, 301)) + "\n"


def orders_pipeline(tmp_path, steps, destination=None, name="chain"):
    (tmp_path / "orders.csv").write_text(ORDERS)
    destination = destination or {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db",
                                  "table": "out", "mode": "insert"}
    return Pipeline.from_dict({"name": name, "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 40},
        "transformations": steps, "destination": destination}})


def table(tmp_path, name="out"):
    import sqlalchemy as sa

    from etl_actors.db import engine_for

    with engine_for(f"sqlite:///{tmp_path}/wh.db").connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{name}" ORDER BY 1'))]


AGGREGATE = [{"id": "paid", "type": "filter", "condition": "status == 'paid'"},
             {"id": "by_country", "type": "aggregate", "groupBy": ["country"],
              "aggregations": {"amount": ["sum", "count"], "order_id": "max"}}]


def expected_totals():
    rows = [(i, ["DE", "FR", "US"][i % 3]) for i in range(1, 301) if i % 4]
    return sorted((c, sum(i for i, k in rows if k == c), sum(1 for _, k in rows if k == c),
                   max(i for i, k in rows if k == c)) for c in ("DE", "FR", "US"))


def test_an_aggregate_sees_every_batch_and_loads_once(tmp_path):
    result = orders_pipeline(tmp_path, AGGREGATE).run(log=f"sqlite:///{tmp_path}/ev.db", runtime="local")
    assert (result["status"], result["recordsExtracted"], result["recordsLoaded"]) == ("success", 300, 3)
    assert sorted(table(tmp_path)) == expected_totals()
    assert [s["id"] for s in result["steps"]] == ["paid", "by_country"]


@pytest.mark.ray
def test_an_aggregate_on_ray_combines_partials_from_every_batch(ray_local, tmp_path):
    result = orders_pipeline(tmp_path, AGGREGATE, name="agg-ray").run(log=f"sqlite:///{tmp_path}/ev.db")
    assert result["status"] == "success"
    assert sorted(table(tmp_path)) == expected_totals()


def test_an_optional_failing_step_is_skipped_and_recorded(tmp_path):
    steps = [{"id": "enrich", "type": "filter", "condition": "missing_column > 1", "required": False}]
    result = orders_pipeline(tmp_path, steps).run(log=f"sqlite:///{tmp_path}/ev.db", runtime="local")
    skipped = [r.event for r in EventLog(f"sqlite:///{tmp_path}/ev.db").read("pipeline:chain")
               if isinstance(r.event, ev.StepSkipped)]
    batches = len([r for r in EventLog(f"sqlite:///{tmp_path}/ev.db").read("pipeline:chain")
                   if isinstance(r.event, ev.BatchLoaded)])
    assert (result["status"], result["recordsLoaded"], result["errors"]) == ("success", 300, batches)
    assert len(skipped) == batches and "missing_column" in skipped[0].error
    assert result["steps"] == [{"id": "enrich", "recordsIn": 300, "recordsOut": 300,
                                "durationMs": result["steps"][0]["durationMs"], "success": False}]


def test_a_failing_required_step_fails_the_run_naming_the_step(tmp_path):
    steps = [{"id": "enrich", "type": "filter", "condition": "int(status) > 1"}]   # 'paid' is no number
    result = orders_pipeline(tmp_path, steps).run(log=f"sqlite:///{tmp_path}/ev.db", runtime="local")
    assert result["status"] == "failed" and "step 'enrich' failed" in result["error"]
    assert result["watermark"] == {}


def test_replace_mode_swaps_the_table_in_at_the_end(tmp_path):
    destination = {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "out",
                   "mode": "replace"}
    pipeline = orders_pipeline(tmp_path, [], destination)
    first = pipeline.run(log=f"sqlite:///{tmp_path}/ev.db", runtime="local")
    assert first["status"] == "success" and len(table(tmp_path)) == 300
    assert first["watermark"] == {"orders.csv": {"rows": 300, "done": True}}


def test_a_lost_loader_in_replace_mode_fails_the_run_without_committing(tmp_path):
    destination = {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "out",
                   "mode": "replace"}
    spec = orders_pipeline(tmp_path, [], destination).spec

    class Losing(LocalChildren):
        loads = 0

        async def call(self, kind, index, method, *args, **options):
            if (kind, method) == ("loader", "load"):
                Losing.loads += 1
                if Losing.loads == 2:
                    self.lose("loader")
            return await super().call(kind, index, method, *args, **options)

    result = asyncio.run(PipelineSupervisor(spec, f"sqlite:///{tmp_path}/ev.db", Losing).run())
    assert result["status"] == "failed" and "run again" in result["error"]
    assert result["watermark"] == {}


@pytest.mark.ray
def test_a_warm_pipeline_joins_against_the_lookup_as_it_is_at_each_run(ray_local, tmp_path, uniq):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("order_id,country\n1,DE\n2,US\n")
    lookup = tmp_path / "countries.csv"
    lookup.write_text("code,region\nDE,EU\nUS,NA\n")
    pipeline = Pipeline.from_dict({"name": f"warm-{uniq}", "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "in"), "format": "csv"},
        "transformations": [{"id": "region", "type": "join", "with": {"type": "file", "path": str(lookup)},
                             "on": {"country": "code"}, "select": ["region"]}],
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "out"}}})
    with pipeline:
        pipeline.run(log=f"sqlite:///{tmp_path}/ev.db")
        (tmp_path / "in" / "b.csv").write_text("order_id,country\n3,DE\n")
        lookup.write_text("code,region\nDE,DACH\nUS,NA\n")
        second = pipeline.run(log=f"sqlite:///{tmp_path}/ev.db")
    assert (second["status"], second["recordsLoaded"]) == ("success", 1)
    assert sorted(table(tmp_path)) == [(1, "DE", "EU"), (2, "US", "NA"), (3, "DE", "DACH")]


def test_every_one_of_several_destinations_gets_every_batch_and_a_rerun_adds_nothing(tmp_path):
    import pyarrow.dataset as ds

    (tmp_path / "orders.csv").write_text(ORDERS)
    spec = {"name": "fanout", "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "orders.csv"), "batchSize": 40},
        "destinations": [{"type": "database", "connection": f"sqlite:///{tmp_path}/wh.db", "table": "out"},
                         {"type": "file", "path": str(tmp_path / "files"), "format": "parquet"}]}}
    log = f"sqlite:///{tmp_path}/ev.db"
    result = Pipeline.from_dict(spec).run(log=log, runtime="local")
    rows = table(tmp_path)
    files = ds.dataset(tmp_path / "files", format="parquet").to_table()
    assert result["status"] == "success" and len(rows) == files.num_rows == result["recordsExtracted"] > 40
    assert sorted(files.column("order_id").to_pylist()) == sorted(r[0] for r in rows)
    again = Pipeline.from_dict(spec).run(log=log, runtime="local", reset=True)   # replays: each sink's ledger
    assert again["status"] == "success" and len(table(tmp_path)) == len(rows)
    assert ds.dataset(tmp_path / "files", format="parquet").to_table().num_rows == files.num_rows


def test_destination_and_destinations_together_are_refused_at_their_path(tmp_path):
    from etl_actors.errors import SpecError

    with pytest.raises(SpecError, match=r"^pipeline.destination: give either destination or destinations"):
        Pipeline.from_dict({"name": "both", "pipeline": {
            "source": {"type": "file", "path": str(tmp_path)},
            "destination": {"type": "file", "path": str(tmp_path / "a")},
            "destinations": [{"type": "file", "path": str(tmp_path / "b")}]}})
