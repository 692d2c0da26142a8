"""Secrets from connection URLs never reach events, dead letters, errors, logs or output."""
import json
import subprocess
import sys

import yaml

SECRET = "Sup3rSecretPw"


def test_a_password_never_appears_in_events_errors_or_output(tmp_path, monkeypatch):
    (tmp_path / "in.csv").write_text("id,v\n1,a\n2,b\n")
    spec = {"name": "secretive",
            "connections": {"wh": "${WH_URL}"},
            "pipeline": {"source": {"type": "file", "path": "in.csv"},
                         "destination": {"type": "database", "connection": "wh", "table": "t"},
                         "maxRetries": 2}}        # the retries' events are checked too
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    log = f"sqlite:///{tmp_path}/events.db"
    env = {"WH_URL": f"postgresql://etl:{SECRET}@127.0.0.1:1/nowhere", "PATH": "/usr/bin:/bin",
           "ETL_ACTORS_LOG_LEVEL": "debug"}
    run = subprocess.run([sys.executable, "-m", "etl_actors", "run", str(tmp_path / "spec.yaml"), "--local",
                          "--json", "--log", log], capture_output=True, text=True, env=env, timeout=120)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 1 and summary["status"] == "failed"
    assert "event='run failed'" in run.stderr and "port 1 failed" in run.stderr   # the log says why...
    events = subprocess.run([sys.executable, "-m", "etl_actors", "events", "secretive", "--log", log],
                            capture_output=True, text=True, timeout=60).stdout
    assert "PipelineDefined" in events and "RunFailed" in events and "RetryScheduled" in events
    stored = [f.read_bytes().decode("latin-1") for f in tmp_path.glob("events.db*")]
    for text in (run.stdout, run.stderr, events, *stored):
        assert SECRET not in text                                              # ...but never the secret
