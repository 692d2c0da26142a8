"""The plan a batch pipeline runs with: chained (the extractors run the steps, no
transformer actors) unless a step needs the pool; shown by ``validate``, recorded in
``PipelineDefined``, and either plan loads the same rows."""
import json
import subprocess
import sys

import pytest
import ray
import sqlalchemy as sa
import yaml

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog

ROWS = "id,status,amount\n" + "\n".join(
    f"{i},{'paid' if i % 3 else 'void'},{'oops' if i in (7, 250) else i}" for i in range(1, 401)) + "\n"
STEPS = [{"id": "paid", "type": "filter", "condition": "status == 'paid'"},
         {"id": "amount", "type": "map", "keep": True,
          "mappings": {"amount": {"source": "amount", "converter": "int"}}}]


def spec(tmp_path, name, steps=STEPS, **runtime):
    (tmp_path / "in.csv").write_text(ROWS)
    return {"name": name, "pipeline": {
        "source": {"type": "file", "path": str(tmp_path / "in.csv"), "batchSize": 50},
        "transformations": steps,
        "destination": {"type": "database", "connection": f"sqlite:///{tmp_path}/{name}.db", "table": "out"},
        **runtime}}


def validated(tmp_path, data) -> list[dict]:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "etl_actors", "validate", str(path), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["plan"]


def test_validate_shows_the_chained_plan_and_when_the_pool_is_kept(tmp_path):
    chained = validated(tmp_path, spec(tmp_path, "chained"))
    assert chained == [{"kind": "extractor", "actors": "cpus", "runs": ["read file", "paid", "amount"]},
                       {"kind": "loader", "actors": 1, "runs": ["write database"]}]
    pooled = validated(tmp_path, spec(tmp_path, "pooled", parallelism=3))
    assert [(s["kind"], s["actors"]) for s in pooled] == [("extractor", "cpus"), ("transformer", 3), ("loader", 1)]
    aggregate = STEPS[:1] + [{"id": "total", "type": "aggregate", "groupBy": ["status"],
                              "aggregations": {"id": "count"}}]
    assert "transformer" in [s["kind"] for s in validated(tmp_path, spec(tmp_path, "agg", aggregate))]
    function = STEPS + [{"id": "fn", "type": "function", "handler": "plugins:slow_identity"}]
    assert "transformer" in [s["kind"] for s in validated(tmp_path, spec(tmp_path, "fn", function))]


def loaded(tmp_path, name):
    with engine_for(f"sqlite:///{tmp_path}/{name}.db").connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.text("SELECT id, status, amount FROM out")))


@pytest.mark.ray
def test_a_chained_run_starts_no_transformers_and_loads_what_the_pool_loads(ray_local, tmp_path, uniq):
    log = f"sqlite:///{tmp_path}/events.db"
    chained, pooled = f"chained-{uniq}", f"pooled-{uniq}"
    with Pipeline.from_dict(spec(tmp_path, chained)) as pipeline:
        result = pipeline.run(log=log)
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        assert f"etl:{chained}:extractor:0" in names and f"etl:{chained}:loader" in names
        assert not any(n.startswith(f"etl:{chained}:transformer") for n in names)
    other = Pipeline.from_dict(spec(tmp_path, pooled, parallelism=2)).run(log=log)

    expected = [(i, "paid", i) for i in range(1, 401) if i % 3 and i not in (7, 250)]
    assert loaded(tmp_path, chained) == loaded(tmp_path, pooled) == expected
    for summary in (result, other):
        assert (summary["status"], summary["recordsExtracted"], summary["recordsRejected"]) == ("success", 400, 2)
        assert [s["id"] for s in summary["steps"]] == ["paid", "amount"]
    store = EventLog(log)
    letters = store.dead_letters(chained)
    assert sorted((d["stage"], int(d["record"]["id"])) for d in letters) == [("transform:amount", 7),
                                                                              ("transform:amount", 250)]
    defined = [r.event for r in store.read(f"pipeline:{chained}") if isinstance(r.event, ev.PipelineDefined)]
    assert [s["kind"] for s in defined[-1].plan] == ["extractor", "loader"]
    kinds = [r.type for r in store.read(f"pipeline:{chained}")]
    assert kinds.count("BatchExtracted") == kinds.count("BatchTransformed") == kinds.count("BatchLoaded") == 8
