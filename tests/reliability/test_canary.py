"""The canary secret scan: a unique secret in every form a URL can carry one, and in
every place an HTTP connector carries one (the API source's apiKey, header and basic
auth, a token in its endpoint's query string, in ``params`` and in custom ``headers``;
the API sink's apiKey and endpoint token; the enrich step's apiKey and endpoint token;
the alerts webhook's query token and userinfo), through every CLI command (validate,
run locally and on Ray, status, events, dlq and a redrive, alerts, quality) and failure
path (an unreachable database, bucket or event log; an API answering 401, 400, 422 or
500 with a body echoing the credentials it got; an API that is down; a webhook that is
down or refuses). None may show in stdout, stderr, the structured logs (local and the
Ray session's), any event, any dead letter, or the raw bytes of the event log's
database files. Basic credentials are also looked for in base64, the form they travel
in (and are echoed back in)."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import glob
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from apiserver import ApiServer
from etl_actors import alerts, events as ev
from etl_actors.errors import SpecError
from etl_actors.redaction import redact_text
from etl_actors.spec import Section

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
    "s3 userinfo key": "AKIACANARY8USER",
    "s3 userinfo secret": "CanaryS3User9Secret",
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
    # a batch: job over an S3-compatible store named by a connection with userinfo credentials
    store = (f"s3://{SECRETS['s3 userinfo key']}:{SECRETS['s3 userinfo secret']}@{DOWN}"
             "?scheme=http&region=us-east-1&max_attempts=1")
    job = {"name": "s3-batch", "connections": {"store": "${CANARY_S3}"},
           "batch": {"source": {"type": "s3", "connection": "store", "bucket": "raw", "prefix": "in/",
                                "pattern": "*.csv"},
                     "destination": {"type": "s3", "connection": "store", "bucket": "out", "prefix": "processed/"},
                     "leaseTimeout": 5, "maxRetries": 1}}
    out.append(("s3-batch", job, {"CANARY_S3": store}))
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


# --- HTTP connectors ---------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Every place an HTTP connector carries a secret. Basic credentials travel as
# base64("user:password") (also those of a URL's userinfo), a form a server echoes back.
HTTP_SECRETS = {
    "api bearer": "CanaryApiBearer1Tk",
    "header auth token": "CanaryHdrAuth2Tk",
    "basic password": "CanaryBasic3Pw",
    "basic base64": _b64("canary:CanaryBasic3Pw"),
    "endpoint query token": "CanaryEndQ4Tk",
    "params token": "CanaryParam5Tk",
    "custom header": "CanaryXHdr6Sec",
    "sink apiKey": "CanarySink7Tk",
    "sink endpoint token": "CanarySinkQ8Tk",
    "enrich apiKey": "CanaryEnrich9Tk",
    "enrich endpoint token": "CanaryEnrQ10Tk",
    "webhook token": "CanaryHookQ11Tk",
    "webhook userinfo": "CanaryHook12Pw",
    "webhook userinfo base64": _b64("hook:CanaryHook12Pw"),
}
# the specs name every secret as ${ENV}; the environment of every command holds them
HTTP_ENV = {f"CANARY_{form.upper().replace(' ', '_')}": secret for form, secret in HTTP_SECRETS.items()
            if "base64" not in form}


def ref(form: str) -> str:
    return "${CANARY_" + form.upper().replace(" ", "_") + "}"


def echo(path: str, **sent: str) -> str:
    """A body that echoes the credentials a client sent to ``path`` (as a 401 of
    tests/apiserver.py does, for the 500s and 422s it is scripted to give)."""
    return json.dumps({"error": f"upstream broke at {path}", "received": sent})


class Servers:
    """The HTTP APIs of the scenarios: ``open`` takes any caller; ``bearer`` and
    ``xkey`` expect a token nobody has, so they answer 401 echoing what they got."""

    def __init__(self, stack):
        self.open = stack.enter_context(ApiServer(accounts={str(i): {"id": str(i), "tier": "gold"}
                                                             for i in range(1, 5)}, lookup_delay=0))
        self.bearer = stack.enter_context(ApiServer(token="NotTheCanaryToken"))
        self.xkey = stack.enter_context(ApiServer(token="NotTheCanaryToken", token_header="X-API-Key",
                                                  token_prefix=""))

    def webhook(self, server: ApiServer | None) -> str:
        host = server.url[len("http://"):] if server else DOWN
        return f"http://hook:{ref('webhook userinfo')}@{host}/receive/alerts?token={ref('webhook token')}"


def api_source(server: ApiServer | None, path: str = "/page", **auth) -> dict:
    base = server.url_for(path) if server else f"http://{DOWN}{path}"
    return {"type": "api", "endpoint": f"{base}?api_key={ref('endpoint query token')}",
            "params": {"access_token": ref("params token")}, "headers": {"X-Secret": ref("custom header")},
            "rateLimitDelay": 0, "maxRetries": 1, **(auth or {"apiKey": ref("api bearer")})}


def api_sink(server: ApiServer, path: str) -> dict:
    return {"type": "api", "endpoint": f"{server.url_for(path)}?token={ref('sink endpoint token')}",
            "apiKey": ref("sink apiKey"), "maxRetries": 1, "batchSize": 10}


def enrich(server: ApiServer, **more) -> dict:
    return {"id": "crm", "type": "enrich", "key": "account", "apiKey": ref("enrich apiKey"),
            "endpoint": f"{server.url_for('/accounts/{key}')}?token={ref('enrich endpoint token')}",
            "maxRetries": 1, "cacheTtl": 0, **more}


def http_spec(name: str, source: dict, destination: dict, webhook: str, steps=()) -> dict:
    return {"name": name, "alerts": {"threshold": 0, "webhook": webhook},
            "pipeline": {"source": source, "transformations": list(steps), "destination": destination,
                         "leaseTimeout": 5, "maxRetries": 1}}


def http_scenarios(tmp_path: Path, servers: Servers) -> list[tuple[str, dict, str]]:
    """(name, spec, the run's expected status): each fails, or dead-letters, where an
    HTTP connector holds its secrets."""
    (tmp_path / "accounts.csv").write_text("id,account\n" + "".join(f"{i},{i}\n" for i in range(1, 9)))
    csv = {"type": "file", "path": str(tmp_path / "accounts.csv"), "format": "csv", "columns": {"account": "string"}}
    db = {"type": "database", "connection": f"sqlite:///{tmp_path}/http-out.db", "table": "t"}
    s, hook = servers, servers.webhook
    q = HTTP_SECRETS
    s.open.fail("/page", 500, times=None, body=echo(
        "/page", authorization=f"Bearer {q['api bearer']}", x_secret=q["custom header"],
        url=f"{s.open.url}/page?api_key={q['endpoint query token']}&access_token={q['params token']}"))
    s.open.respond("/offset", 400, times=None, body=echo(    # a refusal the source quotes
        "/offset", authorization=f"Basic {q['basic base64']}", x_secret=q["custom header"],
        url=f"{s.open.url}/offset?api_key={q['endpoint query token']}&access_token={q['params token']}"))
    sink_sent = {"authorization": f"Bearer {q['sink apiKey']}", "token": q["sink endpoint token"]}
    s.open.fail("/receive/broken", 500, times=None, body=echo("/receive/broken", **sink_sent))
    for path in ("/receive/picky", "/receive/picky-ray"):    # the chunk and its first two records
        s.open.respond(path, 422, echo(path, **sink_sent), times=3)
    quality = {"id": "rules", "type": "validate", "rules": [
        {"id": "low", "type": "regex", "field": "account", "pattern": "^[1-3]$", "severity": "warning"}]}
    basic = {"auth": {"type": "basic", "username": "canary", "password": ref("basic password")}}
    header = {"auth": {"type": "header", "header": "X-API-Key", "token": ref("header auth token")}}
    return [
        ("api-bearer-401", http_spec("api-bearer-401", {**api_source(s.bearer), "errorHandling": "continue"},
                                     api_sink(s.open, "/receive/never"), hook(s.bearer)), "success"),
        ("api-header-401", http_spec("api-header-401", api_source(s.xkey, **header), db, hook(s.open)), "failed"),
        ("api-basic-401", http_spec("api-basic-401", api_source(s.bearer, **basic), db, hook(s.bearer)), "failed"),
        ("api-400-echo", http_spec("api-400-echo", {**api_source(s.open, "/offset", **basic), "pagination": "offset"},
                                   db, hook(s.open)), "failed"),
        ("api-500-echo", http_spec("api-500-echo", api_source(s.open), db, hook(s.open)), "failed"),
        ("api-dead", http_spec("api-dead", api_source(None), db, hook(None)), "failed"),    # and the webhook down
        ("sink-500-echo", http_spec("sink-500-echo", csv, api_sink(s.open, "/receive/broken"), hook(s.open)),
         "failed"),
        ("enrich-401", http_spec("enrich-401", csv, db, hook(s.open), [enrich(s.bearer)]), "failed"),
        ("http-dead-letters", http_spec("http-dead-letters", csv, api_sink(s.open, "/receive/picky"), hook(s.open),
                                        [enrich(s.open, onMissing="reject"), quality]), "success"),
    ]


def walk(tmp_path: Path, log: str, name: str, data: dict, env: dict | None = None) -> tuple[list, dict]:
    """validate, run, status, events and dlq of one scenario: ((what, text) seen, the
    run's summary)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**HTTP_ENV, **(env or {})}
    seen: list[tuple[str, str]] = []

    def record(what: str, result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        seen.extend([(f"{what} {name} stdout", result.stdout), (f"{what} {name} stderr", result.stderr)])
        return result

    assert record("validate", cli("validate", str(path), env=env)).returncode == 0
    run = record("run", cli("run", str(path), *([] if "RAY_ADDRESS" in env else ["--local"]), "--json",
                            "--log", log, env=env))
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, (name, run.stderr[-3000:])
    for command in ("status", "events", "dlq"):
        record(command, cli(command, name, "--log", log, "--json"))
    return seen, json.loads(run.stdout.strip().splitlines()[-1])


def lines(seen: list[tuple[str, str]], what: str) -> list[dict]:
    return [json.loads(line) for label, text in seen if label == what for line in text.splitlines() if line]


def http_leaks(text: str) -> list[str]:
    return [form for form, secret in HTTP_SECRETS.items() if secret in text]


@pytest.mark.slow
def test_no_http_connector_secret_in_any_output_log_event_dead_letter_or_stored_byte(tmp_path, ray_local, figures):
    log = f"sqlite:///{tmp_path}/events-http.db"
    with contextlib.ExitStack() as stack:
        servers = Servers(stack)
        scenarios = http_scenarios(tmp_path, servers)
        name, data, _ = scenarios[-1]               # the dead letters one, on Ray too
        on_ray = copy.deepcopy(data)
        on_ray["name"] = f"{name}-ray"
        on_ray["pipeline"]["destination"]["endpoint"] = api_sink(servers.open, "/receive/picky-ray")["endpoint"]
        jobs = [(n, spec_, None) for n, spec_, _ in scenarios]
        jobs.append((on_ray["name"], on_ray, {"RAY_ADDRESS": ray_local.address_info["address"]}))
        with ThreadPoolExecutor(3) as pool:         # the down webhook's retries overlap the other scenarios
            walked = dict(zip([job[0] for job in jobs], pool.map(lambda job: walk(tmp_path, log, *job), jobs)))
        seen = [text for texts, _ in walked.values() for text in texts]
        summaries = {n: summary for n, (_, summary) in walked.items()}

        def record(what: str, result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
            seen.extend([(f"{what} stdout", result.stdout), (f"{what} stderr", result.stderr)])
            return result

        record("alerts", cli("alerts", "--log", log, "--json"))
        record("quality", cli("quality", name, "--log", log, "--json"))
        redrive = record("redrive", cli("dlq", name, "redrive", "--local", "--json", "--log", log, "--spec",
                                        str(tmp_path / f"{name}.yaml"), env=HTTP_ENV))

    # the failure paths were taken
    assert {n: summaries[n]["status"] for n, _, _ in scenarios} == {n: status for n, _, status in scenarios}
    assert summaries[on_ray["name"]]["status"] == "success"
    assert all(any(r.headers.get(header) for r in server.requests if r.path == "/page")
               for server, header in ((servers.bearer, "Authorization"), (servers.xkey, "X-API-Key")))
    assert [d["stage"] for d in lines(seen, "dlq api-bearer-401 stdout")] == ["extract"]
    for pipeline in (name, on_ray["name"]):
        letters = sorted(d["stage"] for d in lines(seen, f"dlq {pipeline} stdout"))
        assert letters == ["load"] * 2 + ["transform:crm"] * 4, letters      # refused twice; 4 accounts unknown
    assert "RetryScheduled" in {e["type"] for e in lines(seen, "events sink-500-echo stdout")}
    deliveries = {a["pipeline"]: a["delivered"] for a in lines(seen, "alerts stdout")}
    assert (deliveries["api-dead"]["status"], deliveries["api-dead"]["attempts"]) == (None, 6)   # the hook is down
    assert deliveries["api-bearer-401"]["status"] == 401 and deliveries[name]["status"] == 200
    assert json.loads(redrive.stdout.strip().splitlines()[-1])["trigger"] == "redrive", redrive.stderr[-2000:]
    assert lines(seen, "quality stdout")[0]["rules"]["low"]["violations"] == 1    # account 4 is flagged
    quoted = summaries["api-400-echo"]["error"]                    # the refusal's body, secrets hidden
    assert "HTTP 400" in quoted and "upstream broke" in quoted and "***" in quoted, quoted

    # specs that do not validate, quoting a URL that holds a secret
    db = {"type": "database", "connection": "sqlite:///x.db", "table": "t"}
    csv = {"type": "file", "path": str(tmp_path), "format": "csv"}
    for bad in (http_spec("bad-endpoint", {**api_source(None), "endpoint": f"{DOWN}/page?api_key="
                                           f"{ref('endpoint query token')}"}, db, servers.webhook(None)),
                http_spec("bad-webhook", csv, db, servers.webhook(None).replace("http://", ""))):
        path = tmp_path / f"{bad['name']}.yaml"
        path.write_text(yaml.safe_dump(bad))
        result = record(f"validate {bad['name']}", cli("validate", str(path), env=HTTP_ENV))
        assert result.returncode == 2 and "expected an http:// or https:// URL" in result.stderr, result.stderr

    stored = [(f"stored {Path(f).name}", Path(f).read_bytes().decode("latin-1"))
              for f in glob.glob(f"{tmp_path}/*.db*")]
    session_dir = ray_local.address_info["session_dir"]
    session_logs = [("ray session log", Path(f).read_text(errors="replace"))
                    for f in glob.glob(f"{session_dir}/logs/*") if os.path.isfile(f)]
    texts = [*seen, *stored, *session_logs]
    found = {what: http_leaks(text) for what, text in texts if http_leaks(text)}
    assert found == {}, json.dumps(found, indent=1)
    figures["canary secrets scanned for (forms)"] = len(HTTP_SECRETS)
    figures["canary texts scanned"] = len(texts)


# --- the leaks the scan found, one fast test each ------------------------------------------

def test_a_webhook_password_is_not_shown_when_the_hook_echoes_the_basic_credentials_it_got():
    """aiohttp sends a URL's userinfo as ``Authorization: Basic base64(user:password)``;
    a webhook answering 401 with what it got puts that in AlertDelivered.error."""
    password = "CanaryHookEcho13Pw"
    alert = ev.AlertRaised(pipeline="p", alert_id="p#1", count=1, threshold=0, window_s=60.0, message="m")
    with ApiServer(token="NotTheCanaryToken") as hook:
        url = f"http://hook:{password}@{hook.url[len('http://'):]}/receive/alerts"
        delivered = asyncio.run(alerts.deliver(url, alert, max_retries=0))
    assert delivered.status == 401 and "invalid token" in delivered.error
    assert _b64(f"hook:{password}") not in delivered.error, delivered.error


def test_a_webhook_written_without_its_scheme_does_not_show_its_password_in_the_spec_error():
    password = "CanaryHookBare14Pw"
    with pytest.raises(SpecError) as raised:
        alerts.AlertOptions.from_spec(Section({"webhook": f"hook:{password}@hooks.example.com/alerts"}, "alerts"))
    shown = redact_text(str(raised.value))           # as `etl-actors validate` prints it
    assert "expected an http:// or https:// URL" in shown and password not in shown, shown
