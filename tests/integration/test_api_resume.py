"""kill -9 of a driver mid-way through a 90-page API sync, then a rerun: it resumes at
the page after the last committed one (not page 1) and loads every record exactly once."""
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
import yaml

from apiserver import ApiServer, make_records
from etl_actors import events as ev
from etl_actors.db import engine_for
from etl_actors.eventlog import EventLog

pytestmark = pytest.mark.slow
RECORDS, PAGE = 900, 10          # 90 pages
TOKEN = "tok-RESUME-a1b2c3d4"


def committed(log_url: str, stream: str) -> list[dict]:
    try:
        return [r.event.position for r in EventLog(log_url).read(stream)
                if isinstance(r.event, ev.WatermarkCommitted)]
    except Exception:  # noqa: BLE001 - the driver has not created the log yet
        return []


def rows(wh: str) -> tuple[int, int]:
    """(rows, distinct ids) in the destination table."""
    with engine_for(wh).connect() as conn:
        return tuple(conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT id) FROM users")).one())


def spec(name: str, endpoint: str, wh: str) -> dict:
    return {"name": name, "pipeline": {
        "source": {"type": "api", "endpoint": endpoint, "apiKey": "${RESUME_TOKEN}", "incremental": True,
                   "rateLimitDelay": 0, "pagination": {"type": "page", "size": PAGE}},
        "destination": {"type": "database", "connection": wh, "table": "users", "mode": "insert"}}}


def test_a_driver_killed_at_page_40_of_90_resumes_at_the_next_page_and_loads_each_record_once(tmp_path, uniq):
    log, wh = f"sqlite:///{tmp_path}/events.db", f"sqlite:///{tmp_path}/wh.db"
    name, stream = f"api-kill-{uniq}", f"pipeline:api-kill-{uniq}"
    with ApiServer(make_records(RECORDS), token=TOKEN) as api:
        api.page_delay = 0.03                      # ~3 s for the whole sync: time to kill it mid-way
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(name, api.url_for("/page"), wh)))
        cli = [sys.executable, "-m", "etl_actors", "run", str(path), "--local", "--log", log, "--json"]
        env = {**os.environ, "RESUME_TOKEN": TOKEN}
        driver = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while max((p["page"] for p in committed(log, stream)), default=0) < 40 and time.time() < deadline:
            time.sleep(0.01)
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=30)
        last = committed(log, stream)[-1]
        assert 40 <= last["page"] < 90 and not last["complete"], last
        assert last["page"] * PAGE <= rows(wh)[0] < RECORDS          # killed mid-way, committed pages loaded

        api.clear()
        api.page_delay = 0.0
        rerun = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        pages = [int(r.query["page"]) for r in api.requests_to("/page")]
        assert pages[0] == last["page"] + 1 and pages[-1] == 90
        assert last["since"] is None       # the first sync: no updated_since, before and after the kill
        assert not [r for r in api.requests_to("/page") if "updated_since" in r.query]

    assert rows(wh) == (RECORDS, RECORDS)
    final = committed(log, stream)[-1]
    assert final["complete"] and final["max"] == make_records(RECORDS)[-1]["updated_at"]
    assert TOKEN not in open(tmp_path / "events.db", "rb").read().decode("latin-1")
