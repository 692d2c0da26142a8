"""The stream examples run as shipped, against the real broker, and give the windows a
plain per-event reference gives."""
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.dataset as ds
import sqlalchemy as sa

from etl_actors import Pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MINUTE = 60_000
T0 = 1_767_225_600_000            # 2026-01-01T00:00:00Z


def copy_example(name: str, tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    return Path(shutil.copy(EXAMPLES / name, tmp_path / name))


def table(url: str, name: str) -> list[dict]:
    with sa.create_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f'SELECT * FROM "{name}" ORDER BY 1'))]


def test_the_realtime_events_example_counts_each_minute_into_the_database_and_the_topic(kafka, tmp_path, monkeypatch):
    kafka.create_topic("user-events", partitions=2)
    kafka.create_topic("processed-events")
    events = [{"userId": f"u{i % 13}", "value": round(i * 0.25, 2), "timestamp": T0 + i * 997, "type": " Click "}
              for i in range(600)]
    kafka.produce("user-events", events)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka.bootstrap)
    monkeypatch.delenv("ANALYTICS_URL", raising=False)
    spec = copy_example("realtime_events.yaml", tmp_path)

    result = Pipeline.from_file(str(spec)).run(log=f"sqlite:///{tmp_path}/events.db", runtime="local", until_idle=1.5)

    reference = defaultdict(lambda: [0, set(), 0.0])
    for e in events:
        w = reference[e["timestamp"] // MINUTE * MINUTE]
        w[0] += 1
        w[1].add(e["userId"])
        w[2] += e["value"]
    rows = table(f"sqlite:///{tmp_path}/data/analytics.db", "event_aggregates")
    assert result["status"] == "success" and result["recordsExtracted"] == 600
    assert [(r["windowStart"], r["windowEnd"], r["event_count"], r["unique_users"], round(r["total_value"], 2))
            for r in rows] == [(s, s + MINUTE, n, len(u), round(v, 2)) for s, (n, u, v) in sorted(reference.items())]
    published = sorted(kafka.consume_all("processed-events"), key=lambda r: r["windowStart"])
    assert [(r["windowStart"], r["event_count"]) for r in published] == [(r["windowStart"], r["event_count"])
                                                                          for r in rows]


def test_the_log_aggregation_example_slides_per_service_and_level(kafka, tmp_path, monkeypatch):
    kafka.create_topic("app-logs", partitions=3)
    lines = [{"time": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "service": ["api", "db"][i % 2],
              "level": ["info", "warn", "debug"][i % 3], "host": f"h{i % 4}", "latency_ms": i % 50}
             for i in range(0, 900, 7)]
    kafka.produce("app-logs", lines, keys=[line["service"] for line in lines])
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka.bootstrap)
    monkeypatch.delenv("OPS_DB_URL", raising=False)
    spec = copy_example("log_aggregation.yaml", tmp_path)

    result = Pipeline.from_file(str(spec)).run(log=f"sqlite:///{tmp_path}/events.db", runtime="local", until_idle=1.5)

    reference = defaultdict(lambda: [0, set(), 0.0])
    for line in lines:
        if line["level"] == "debug":
            continue
        t = int(line["time"][14:16]) * 60_000 + int(line["time"][17:19]) * 1000 + T0
        first = (t - 5 * MINUTE) // MINUTE * MINUTE + MINUTE
        for start in range(first, t + 1, MINUTE):
            w = reference[(start, line["service"], line["level"].upper())]
            w[0] += 1
            w[1].add(line["host"])
            w[2] = max(w[2], line["latency_ms"])
    rows = table(f"sqlite:///{tmp_path}/data/ops.db", "log_windows")
    assert result["status"] == "success" and result["recordsFiltered"] == sum(l["level"] == "debug" for l in lines)
    assert sorted((r["windowStart"], r["service"], r["level"], r["lines"], r["hosts"], r["p_latency_max"])
                  for r in rows) == sorted((s, svc, lvl, n, len(h), m) for (s, svc, lvl), (n, h, m) in reference.items())
    files = ds.dataset(tmp_path / "data" / "log_windows", format="parquet").to_table()
    assert files.num_rows == len(rows)
    assert all(p.name.startswith("windows-") for p in (tmp_path / "data" / "log_windows").glob("*.parquet"))
