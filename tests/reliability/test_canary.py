"""The canary secret scan: a unique secret in every form a URL can carry one, through
every CLI command and failure path; none may show in stdout, stderr, the structured
logs (local and the Ray supervisor's), any event, any dead letter, or the raw bytes of
the event log's database files."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Each secret is unique, so a leak names its form. The '@' one leaks its tail when a
# URL parser ends the userinfo at the first '@', so its tail is a canary of its own.
SECRETS = {
    "userinfo": "CanaryUser7Pw",
    "at-sign": "Cnry@AtTail8Pw",
    "at-sign tail": "AtTail8Pw",
    "query password": "CanaryQuery9Pw",
    "sslpassword": "CanarySsl1Pw",
    "percent-encoded": "Can@ryEnc2Pw",
    "percent-encoded raw": "Can%40ryEnc2Pw",
    "s3 secret_key": "CanaryS3Secret3",
    "s3 access_key": "AKIACANARY4KEY",
    "token parameter": "CanaryToken5Tk",
    "log password": "CanaryLog6Pw",
    "log query password": "CanaryLogQ7Pw",
}
DOWN = "127.0.0.1:1"   # nothing listens there: every connection fails, quoting what it was given


def urls() -> dict[str, str]:
    s = SECRETS
    return {
        "userinfo": f"postgresql://etl:{s['userinfo']}@{DOWN}/nowhere",
        "at-sign": f"postgresql://etl:{s['at-sign']}@{DOWN}/nowhere",
        "query password": f"postgresql://etl@{DOWN}/nowhere?password={s['query password']}",
        "sslpassword": f"postgresql://etl@{DOWN}/nowhere?sslmode=prefer&sslpassword={s['sslpassword']}",
        "percent-encoded": f"postgresql://etl:{s['percent-encoded raw']}@{DOWN}/nowhere",
        "token parameter": f"postgresql://etl@{DOWN}/nowhere?token={s['token parameter']}",
        "s3": (f"s3://canary-bucket/in?access_key={s['s3 access_key']}&secret_key={s['s3 secret_key']}"
               f"&endpoint_override={DOWN}&scheme=http"),
    }


def spec(name: str, source: dict, destination: dict, steps=()) -> dict:
    return {"name": name, "connections": {"src": "${CANARY_SRC:-sqlite:///unused.db}",
                                          "dst": "${CANARY_DST:-sqlite:///unused.db}"},
            "pipeline": {"source": source, "transformations": list(steps), "destination": destination,
                         "leaseTimeout": 5, "maxRetries": 1}}     # one retry: its RetryScheduled is scanned too


def scenarios(tmp_path: Path) -> list[tuple[str, dict, dict]]:
    """(name, spec, environment) of runs that fail where a secret is at hand."""
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "a.csv").write_text("id,amount\n1,5\n2,x\n3,7\n")
    csv = {"type": "file", "path": str(tmp_path / "in"), "format": "csv"}
    db_sink = {"type": "database", "connection": "dst", "table": "t"}
    local_sink = {"type": "database", "connection": f"sqlite:///{tmp_path}/out.db", "table": "t"}
    out = []
    for form in ("userinfo", "at-sign", "query password", "sslpassword", "percent-encoded", "token parameter"):
        url = urls()[form]
        key = form.replace(" ", "-")
        out.append((f"sink-{key}", spec(f"sink-{key}", csv, db_sink), {"CANARY_DST": url}))
        source = {"type": "database", "connection": "src", "table": "customers", "incremental": True,
                  "cursorField": "updated_at"}
        out.append((f"source-{key}", spec(f"source-{key}", source, local_sink), {"CANARY_SRC": url}))
        join = {"id": "enrich", "type": "join", "with": {"type": "database", "connection": "src", "table": "regions"},
                "on": {"id": "id"}}
        out.append((f"join-{key}", spec(f"join-{key}", csv, local_sink, [join]), {"CANARY_SRC": url}))
    s3 = {"type": "file", "path": urls()["s3"], "format": "csv"}
    out.append(("s3-source", spec("s3-source", s3, local_sink), {}))
    out.append(("s3-sink", spec("s3-sink", csv, {"type": "file", "path": urls()["s3"], "format": "parquet"}), {}))
    return out


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "ETL_ACTORS_LOG_LEVEL": "debug", **(env or {})}
    return subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True,
                          env=full, timeout=120)


def leaks(text: str) -> list[str]:
    return [form for form, secret in SECRETS.items() if secret in text]


@pytest.mark.slow
def test_no_secret_in_any_output_log_event_dead_letter_or_stored_byte(tmp_path, ray_local, figures):
    log = f"sqlite:///{tmp_path}/events.db"
    seen: list[tuple[str, str]] = []       # (what, text) to scan

    def record(what: str, result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        seen.extend([(f"{what} stdout", result.stdout), (f"{what} stderr", result.stderr)])
        return result

    paths = []
    for name, data, env in scenarios(tmp_path):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
        record(f"validate {name}", cli("validate", str(path), env=env))
        run = record(f"run {name}", cli("run", str(path), "--local", "--json", "--log", log, env=env))
        assert run.returncode in (0, 1) and "Traceback" not in run.stderr, (name, run.stderr[-3000:])
        for command in (["status", data["name"]], ["events", data["name"]], ["dlq", data["name"]]):
            record(f"{command[0]} {name}", cli(*command, "--log", log))
    failed = [json.loads(line) for what, text in seen if what.startswith("run ") and what.endswith("stdout")
              for line in text.strip().splitlines()[-1:]]
    assert sum(1 for summary in failed if summary["status"] == "failed") >= 18   # the failure paths were taken

    # the same on Ray: the supervisor's structured log lines land in the session's logs
    ray_env = {"RAY_ADDRESS": ray_local.address_info["address"], "CANARY_DST": urls()["at-sign"]}
    record("run on ray", cli("run", str(paths[2]), "--json", "--log", log, env=ray_env))

    # an event log that cannot be reached, in each URL form that carries its password
    for log_url in (f"postgresql://etl:{SECRETS['log password']}@{DOWN}/etl",
                    f"postgresql://etl@{DOWN}/etl?password={SECRETS['log query password']}",
                    f"postgresql://etl:{SECRETS['at-sign']}@{DOWN}/etl"):
        for command in (["run", str(paths[0]), "--local"], ["status", "x"], ["events", "x"], ["dlq", "x"]):
            result = record(f"{command[0]} on an unreachable log", cli(*command, "--log", log_url))
            assert result.returncode == 1 and "unreachable" in result.stderr and "Traceback" not in result.stderr

    events = cli("events", "sink-userinfo", "--log", log).stdout
    assert "PipelineDefined" in events and "RunFailed" in events
    stored = [Path(f).read_bytes().decode("latin-1") for f in glob.glob(f"{tmp_path}/events.db*")]
    session_dir = ray_local.address_info["session_dir"]
    session_logs = [Path(f).read_text(errors="replace") for f in glob.glob(f"{session_dir}/logs/*")
                    if os.path.isfile(f)]
    assert any("run failed" in text for text in session_logs)
    texts = [*seen, *(("event log file", t) for t in stored), *(("ray session log", t) for t in session_logs)]
    found = {what: leaks(text) for what, text in texts if leaks(text)}
    assert found == {}
    figures["canary secrets scanned for (forms)"] = len(SECRETS)
    figures["canary texts scanned"] = len(texts)
