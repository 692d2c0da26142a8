"""Credentials of an S3-compatible store given as a connection URL (``${S3_URL}``)
never appear in what a batch job prints, records or stores: the runs' summaries and
errors, ``status --json``, ``events``, or the event log's bytes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from .jobs import job, sales


def test_credentials_never_appear_in_events_status_or_errors(tmp_path, s3, uniq):
    raw, out = f"raw-{uniq}", f"processed-{uniq}"
    s3.put(f"{raw}/daily-exports/sales-2026-12-01.csv", sales(40))
    s3.fs.create_dir(out)
    key, secret = f"AKIA{uniq.upper()}KEY", f"Sec/ret+{uniq}"
    env = {"S3_URL": s3.connection(key, secret.replace("/", "%2F").replace("+", "%2B"))}
    log = f"sqlite:///{tmp_path}/events.db"
    seen = []
    for name, destination in ((f"creds-{uniq}", out), (f"creds-missing-{uniq}", f"nowhere-{uniq}")):
        spec = job(name, raw, destination, connections={"store": "${S3_URL}"})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        for command in (["validate", str(tmp_path / f"{name}.yaml")],
                        ["run", str(tmp_path / f"{name}.yaml"), "--local", "--json", "--log", log],
                        ["status", name, "--json", "--log", log], ["events", name, "--log", log]):
            done = subprocess.run([sys.executable, "-m", "etl_actors", *command], capture_output=True, text=True,
                                  env={**os.environ, **env}, timeout=120)
            seen += [done.stdout, done.stderr]
    runs = [json.loads(text.strip().splitlines()[-1]) for text in seen[2::8]]   # the runs' stdout
    assert [r["status"] for r in runs] == ["success", "failed"]
    assert f"Bucket 'nowhere-{uniq}' not found" in runs[1]["error"]
    stored = (tmp_path / "events.db").read_bytes()
    for secret_form in (key, secret, secret.replace("/", "%2F").replace("+", "%2B")):
        assert all(secret_form not in text for text in seen), secret_form
        assert secret_form.encode() not in stored
