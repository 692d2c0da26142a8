"""PostgreSQL for the sink benchmarks: the server's URL, psycopg connections in a schema
of their own, and a way to see where a sink writer's time goes."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def server_url() -> str:
    """``ETL_BENCH_PG_URL``, else ``ETL_TEST_PG_URL`` (their last non-empty line), else
    the URL ``scripts/start_postgres.sh`` prints."""
    for name in ("ETL_BENCH_PG_URL", "ETL_TEST_PG_URL"):
        lines = [line.strip() for line in os.environ.get(name, "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    out = subprocess.run(["bash", str(ROOT / "scripts" / "start_postgres.sh")], check=True,
                         capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()][-1]


def connect(url: str, schema: str, autocommit: bool = False):
    import psycopg

    from etl_actors.db import normalize_url

    plain = normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(plain, options=f"-csearch_path={schema}", autocommit=autocommit)


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def time_phases(writer, spent: dict, labels: dict[str, str]) -> None:
    """Wrap the writer's methods named in ``labels`` (on the instance only) so that
    ``spent[label]`` adds up the seconds each took."""
    def timed(name: str, label: str) -> None:
        method = getattr(writer, name)

        def run(*args, **kwargs):
            mark = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - mark
        setattr(writer, name, run)

    for name, label in labels.items():
        timed(name, label)
