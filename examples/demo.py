"""`make demo`: create the demo data, run the orders pipeline on a local Ray with the
SQLite event log under ./.etl_actors/, then show the status and the dead letters."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def etl(*args: str) -> int:
    exe = os.path.join(os.path.dirname(sys.executable), "etl-actors")
    print(f"\n$ etl-actors {' '.join(args)}", flush=True)
    return subprocess.call([exe, *args], cwd=ROOT)


def main() -> int:
    subprocess.check_call([sys.executable, os.path.join(HERE, "make_data.py")])
    for stale in (os.path.join(ROOT, ".etl_actors"), os.path.join(HERE, "data", "warehouse.db")):
        shutil.rmtree(stale, ignore_errors=True) if os.path.isdir(stale) else (
            os.path.exists(stale) and os.remove(stale))
    code = etl("run", "examples/orders.yaml")
    if code:
        return code
    etl("run", "examples/orders.yaml")          # a rerun: every file is already loaded
    etl("status", "orders-etl")
    etl("dlq", "orders-etl", "--limit", "3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
