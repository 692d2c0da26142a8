"""examples/batch_processor.yaml, the seed's Batch Data Processor, validated and run
as written against the S3-compatible store, its connection from ``S3_URL``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch_processor.yaml"
EXPORT = (b"order_id,customer_id,region,amount,sold_at\n"
          b"A1,c1, EU ,12.5,2026-12-01T08:00:00\n"
          b"A2,,us,3.0,2026-12-01T09:00:00\n"
          b"A3,c3,Us,-4.0,2026-12-01T10:00:00\n"
          b"A4,c4,De,0.25,2026-12-01T11:00:00\n")


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_the_batch_processor_example_validates_and_writes_each_export_as_snappy_parquet(tmp_path, s3):
    s3.put("raw-data/daily-exports/sales-2026-12-01.csv", EXPORT)
    s3.put("raw-data/daily-exports/sales-2026-12-02.csv", EXPORT.replace(b"A", b"B"))
    s3.fs.create_dir("processed-data")
    env = {"S3_URL": s3.connection("AKIAEXAMPLE", "example%2Fsecret")}
    checked = cli("validate", str(EXAMPLE), env=env)
    assert checked.returncode == 0, checked.stderr
    ran = cli("run", str(EXAMPLE), "--local", "--json", "--log", f"sqlite:///{tmp_path}/events.db", env=env)
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    assert (summary["status"], summary["recordsLoaded"], summary["recordsFiltered"]) == ("success", 4, 4), ran.stderr
    assert sorted(s3.files("processed-data/processed")) == ["sales-2026-12-01.csv", "sales-2026-12-02.csv"]
    with s3.fs.open_input_file("processed-data/processed/sales-2026-12-01.csv") as handle:
        written = pq.ParquetFile(handle)
        rows = written.read(columns=["order_id", "region", "amount_cents"]).to_pylist()
        assert written.metadata.row_group(0).column(0).compression == "SNAPPY"
    assert rows == [{"order_id": "A1", "region": "eu", "amount_cents": 1250.0},
                    {"order_id": "A4", "region": "de", "amount_cents": 25.0}]
