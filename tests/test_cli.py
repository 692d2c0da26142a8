"""The command line as users and their scripts meet it: exit codes, JSON shapes."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

RUN_KEYS = {"pipeline", "runId", "status", "recordsExtracted", "recordsTransformed", "recordsLoaded",
            "recordsRejected", "bytesProcessed", "errors", "durationMs", "watermark", "steps"}


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.fixture
def orders_spec(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders.csv").write_text(
        "order_id,amount,status\n1,10,paid\n2,abc,paid\n3,7,cancelled\n4,12,paid\n")
    spec = {"name": "cli-orders",
            "pipeline": {
                "source": {"type": "file", "path": "in", "format": "csv"},
                "transformations": [
                    {"id": "cast", "type": "map", "keep": True, "mappings": {"amount": {"source": "amount", "converter": "int"}}},
                    {"id": "paid", "type": "filter", "condition": "status == 'paid'"}],
                "destination": {"type": "database", "connection": "sqlite:///wh.db", "table": "orders",
                                "mode": "upsert", "keyFields": ["order_id"]}}}
    path = tmp_path / "orders.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_validate_exits_2_with_the_path_and_no_traceback(tmp_path, orders_spec):
    spec = yaml.safe_load(orders_spec.read_text())
    spec["pipeline"]["destination"]["mode"] = "upsrt"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    out = cli("validate", str(bad))
    assert out.returncode == 2
    assert "pipeline.destination.mode: 'upsrt' is not one of insert, upsert, replace" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_accepts_a_good_spec(orders_spec):
    out = cli("validate", str(orders_spec))
    assert out.returncode == 0 and "valid batch pipeline 'cli-orders'" in out.stdout


def test_an_unknown_command_is_a_usage_error():
    assert cli("frobnicate").returncode == 2


def test_run_json_status_events_and_dlq(tmp_path, orders_spec):
    log = f"sqlite:///{tmp_path}/events.db"
    out = cli("run", str(orders_spec), "--local", "--json", "--log", log)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert RUN_KEYS <= set(summary)
    assert (summary["status"], summary["recordsExtracted"], summary["recordsLoaded"],
            summary["recordsRejected"]) == ("success", 4, 2, 1)
    assert [s["id"] for s in summary["steps"]] == ["cast", "paid"]

    status = json.loads(cli("status", "cli-orders", "--log", log, "--json").stdout)
    assert status["runs"] == 1 and status["lastRun"]["runId"] == summary["runId"]

    events = [json.loads(line) for line in cli("events", "cli-orders", "--log", log).stdout.splitlines()]
    assert {"position", "stream", "version", "type", "recordedAt", "data"} <= set(events[0])
    assert events[-1]["type"] == "RunSucceeded"

    letters = [json.loads(line) for line in cli("dlq", "cli-orders", "--log", log).stdout.splitlines()]
    assert [(d["stage"], d["record"]["order_id"]) for d in letters] == [("transform:cast", 2)]
    assert "abc" in letters[0]["reason"] and letters[0]["runId"] == summary["runId"]


def test_a_run_on_a_ray_of_its_own_stops_every_process_of_it_and_prints_its_whole_summary(orders_spec):
    """The command starts a local Ray and ends it quickly (the autoscaler's monitor is
    killed, the process leaves without the interpreter's teardown): none of that Ray's
    processes outlive the command, and what it printed is all there."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")     # short: Ray's socket paths live in it
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = ray_tmp
        log = f"sqlite:///{orders_spec.parent}/events.db"
        out = cli("run", str(orders_spec), "--json", "--log", log, env=env)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert (summary["status"], summary["recordsLoaded"]) == ("success", 2)
        assert os.listdir(ray_tmp), "the run did not start a Ray of its own"
        deadline = time.monotonic() + 10       # a worker of the raylet leaves once it sees it gone
        while (left := _processes_naming(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _processes_naming(text: str) -> list[str]:
    """The command lines of live processes that name ``text`` (zombies have none)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command[:120])
    return found


def test_a_failed_run_exits_1_with_the_error_in_the_summary(tmp_path, orders_spec):
    spec = yaml.safe_load(orders_spec.read_text())
    spec["pipeline"]["transformations"][1]["condition"] = "int(status) == 1"   # 'paid' is no number
    path = tmp_path / "fails.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = cli("run", str(path), "--local", "--json", "--log", f"sqlite:///{tmp_path}/events.db")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 1 and summary["status"] == "failed"
    assert "paid" in summary["error"] and "int(status) == 1" in summary["error"]


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path, orders_spec):
    """``etl-actors events X | head -1``: the first line, exit 0, nothing on stderr."""
    log = f"sqlite:///{tmp_path}/events.db"
    assert cli("run", str(orders_spec), "--local", "--log", log).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "etl_actors", "events", "cli-orders", "--log", log],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away while the events are still printing
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert json.loads(first)["type"] == "LeaseAcquired"
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


@pytest.mark.parametrize("command", ["status", "events", "dlq"])
def test_an_event_log_of_an_unsupported_kind_is_a_usage_error(command):
    out = cli(command, "cli-orders", "--log", "mysql://etl:hunter2-secret@db.example/etl")
    assert out.returncode == 2
    assert "'mysql' is not supported" in out.stderr and "sqlite:///" in out.stderr
    assert "hunter2-secret" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_an_unreachable_event_log_fails_the_run_before_ray_starts(tmp_path, orders_spec):
    """A closed port with a password in the URL: exit 1, the reason, never the password."""
    out = cli("run", str(orders_spec), "--json", "--log", "postgresql://etl:hunter2-secret@127.0.0.1:1/etl")
    assert out.returncode == 1
    assert "is unreachable" in out.stderr and "127.0.0.1:1" in out.stderr and "refused" in out.stderr
    assert "hunter2-secret" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_a_missing_source_folder_is_a_failed_run_with_its_reason(tmp_path, orders_spec):
    spec = yaml.safe_load(orders_spec.read_text())
    spec["pipeline"]["source"]["path"] = "no-such-folder/*.csv"
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(spec))
    log = f"sqlite:///{tmp_path}/events.db"
    out = cli("run", str(path), "--local", "--json", "--log", log)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 1 and summary["status"] == "failed" and summary["recordsExtracted"] == 0
    assert "no such file or folder" in summary["error"] and "no-such-folder" in summary["error"]
    status = json.loads(cli("status", "cli-orders", "--log", log, "--json").stdout)
    assert status["runs"] == 1 and status["lastRun"]["status"] == "failed"


def test_ctrl_c_of_a_local_run_says_how_far_it_got_and_the_rerun_finishes(tmp_path):
    import signal
    import sqlite3
    import time

    from etl_actors.eventlog import EventLog

    rows = 200_000
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "big.csv", "w") as f:
        f.write("id,amount\n" + "".join(f"{i},{i % 97}\n" for i in range(rows)))
    spec = {"name": "cli-ctrl-c", "pipeline": {
        "source": {"type": "file", "path": "in", "format": "csv", "batchSize": 1000},
        "destination": {"type": "database", "connection": "sqlite:///wh.db", "table": "t",
                        "mode": "upsert", "keyFields": ["id"]}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    log = f"sqlite:///{tmp_path}/events.db"
    command = [sys.executable, "-m", "etl_actors", "run", str(path), "--local", "--json", "--log", log]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (tmp_path / "events.db").exists() and sum(
                1 for r in EventLog(log).read("pipeline:cli-ctrl-c") if r.type == "BatchLoaded") >= 3:
            break
        time.sleep(0.02)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130 and b"Traceback" not in stderr, stderr.decode()[-2000:]
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["status"] == "failed" and summary["error"].startswith("interrupted (Ctrl-C)")
    assert 0 < summary["recordsLoaded"] < rows

    rerun = cli("run", str(path), "--local", "--json", "--log", log)
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout.strip().splitlines()[-1])["recordsExtracted"]
    assert rows - summary["recordsLoaded"] <= resumed < rows      # from the committed offset, not the start
    with sqlite3.connect(tmp_path / "wh.db") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(amount) FROM t").fetchone() == (
            rows, rows, sum(i % 97 for i in range(rows)))


def test_on_a_terminal_the_progress_bar_ends_at_the_runs_last_state(tmp_path, orders_spec):
    import os
    import pty

    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "etl_actors", "run", str(orders_spec), "--local",
                             "--log", f"sqlite:///{tmp_path}/events.db"],
                            stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        drawn += chunk
    assert proc.wait(timeout=60) == 0
    frames = [f for f in drawn.decode().replace("\n", "\r").split("\r") if f.startswith("[")]
    assert frames and "100.0% done" in frames[-1] and " 4 in " in frames[-1] and " 2 out " in frames[-1]


def test_a_ray_address_that_does_not_answer_fails_in_one_line(tmp_path, orders_spec):
    import os
    import socket

    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    out = cli("run", str(orders_spec), "--log", f"sqlite:///{tmp_path}/events.db", env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port} (RAY_ADDRESS)" in out.stderr


def test_validate_names_every_error_of_a_spec_at_once(tmp_path, orders_spec):
    spec = yaml.safe_load(orders_spec.read_text())
    spec["pipeline"]["source"]["batchsize"] = 10                       # misspelled key
    spec["pipeline"]["transformations"][0]["type"] = "mapp"            # unknown step type
    spec["pipeline"]["destination"]["mode"] = "upsrt"                  # bad choice
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(spec))
    paths = ["pipeline.source.batchsize", "pipeline.transformations[0].type", "pipeline.destination.mode"]

    out = cli("validate", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line.split(": ")[2] for line in out.stderr.splitlines()] == paths

    out = cli("validate", str(path), "--json")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 2 and report["valid"] is False
    assert [e["path"] for e in report["errors"]] == paths
    assert "'upsrt' is not one of insert, upsert, replace" in report["errors"][2]["message"]


def test_events_follow_prints_what_is_appended_to_this_pipeline_only(tmp_path):
    import signal
    import time

    from etl_actors.eventlog import EventLog
    from etl_actors.events import PhaseStarted

    log_url = f"sqlite:///{tmp_path}/events.db"
    log = EventLog(log_url)
    log.append("pipeline:orders", [PhaseStarted(run_id="r1", phase="extract")], 0)
    follower = subprocess.Popen([sys.executable, "-m", "etl_actors", "events", "orders", "--follow",
                                 "--log", log_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(follower.stdout.readline())["data"]["phase"] == "extract"    # what was there
    log.append("pipeline:orders-v2", [PhaseStarted(run_id="x", phase="other")], 0)  # a prefix twin
    log.append("pipeline:orders", [PhaseStarted(run_id="r1", phase="finish")], 1)
    line = json.loads(follower.stdout.readline())                                   # what came after
    assert (line["stream"], line["version"], line["data"]["phase"]) == ("pipeline:orders", 2, "finish")
    time.sleep(0.5)
    follower.send_signal(signal.SIGINT)
    rest, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 0 and rest == "" and "Traceback" not in stderr


def strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"bare {constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_json_output_never_holds_bare_nan_or_infinity(tmp_path, orders_spec):
    (tmp_path / "in" / "orders.csv").write_text("order_id,amount,status,score\n1,abc,paid,nan\n2,5,paid,inf\n")
    log = f"sqlite:///{tmp_path}/events.db"
    run = cli("run", str(orders_spec), "--local", "--json", "--log", log)
    letters = [strict_json(line) for line in cli("dlq", "cli-orders", "--log", log, "--json").stdout.splitlines()]
    events = [strict_json(line) for line in cli("events", "cli-orders", "--log", log).stdout.splitlines()]
    assert strict_json(run.stdout.strip().splitlines()[-1])["recordsRejected"] == 1 and events
    assert [(d["record"]["order_id"], d["record"]["score"]) for d in letters] == [(1, None)]


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(tmp_path):
    import sqlalchemy as sa

    from etl_actors.eventlog import EventLog
    from etl_actors.events import PhaseStarted

    log = f"sqlite:///{tmp_path}/events.db"
    EventLog(log).append("pipeline:p", [PhaseStarted(run_id="r", phase="extract")], 0)
    with sa.create_engine(log).begin() as conn:      # a payload that is not msgpack: a damaged log
        conn.execute(sa.text("UPDATE etl_events SET payload = x'c1c1c1'"))
    plain = cli("events", "p", "--log", log)
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("etl-actors: ") and "--debug shows the traceback" in plain.stderr
    debug = cli("--debug", "events", "p", "--log", log)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_validate_refuses_a_file_sink_inside_its_own_source_folder(tmp_path, orders_spec):
    spec = yaml.safe_load(orders_spec.read_text())
    spec["pipeline"]["destination"] = {"type": "file", "path": "in/out", "format": "csv"}
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = cli("validate", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("etl-actors: invalid spec: pipeline.destination.path: ")
    spec["pipeline"]["destination"]["format"] = "parquet"      # the csv source would not read those
    path.write_text(yaml.safe_dump(spec))
    assert cli("validate", str(path)).returncode == 0


def test_validate_reports_what_can_only_fail_at_run_time_against_the_files_header(tmp_path, orders_spec):
    spec = yaml.safe_load(orders_spec.read_text())
    spec["pipeline"]["transformations"][1]["condition"] = "status > 5"     # status is text in orders.csv
    path = tmp_path / "types.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = cli("validate", str(path))
    assert out.returncode == 2 and out.stderr.startswith(
        "etl-actors: invalid spec: pipeline.transformations[1].condition: expression 'status > 5': "
        "cannot compare a string with a number")
