"""`make demo`: create the demo data, then on a local Ray with the SQLite event log under
./.etl_actors/:

1. the orders pipeline (files -> clean, filter, join -> upsert), run twice (the rerun
   finds every file loaded), its status and first dead letters;
2. the seed's Data Quality Checker over sign-ups: rejects, flags, its quality report;
3. the seed's Customer Data ETL from a REST API (examples/crm_api.py, started here, with
   a 429 and a 500 along the way) -> normalize -> enrich -> validate -> warehouse upsert,
   then an incremental rerun after 25 customers change;
4. the same kind of pipeline sold as a service (examples/service_client.py): the API is
   served, a service created over HTTP, a request sent and followed live, its charge and
   the customer's invoice printed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def etl(*args: str, env: dict | None = None) -> int:
    exe = os.path.join(os.path.dirname(sys.executable), "etl-actors")
    print(f"\n$ etl-actors {' '.join(args)}", flush=True)
    return subprocess.call([exe, *args], cwd=ROOT, env=env)


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

    code = etl("run", "examples/data_quality.yaml")
    if code:
        return code
    etl("quality", "data-quality-checker")
    etl("dlq", "data-quality-checker", "--limit", "3")
    code = customer_sync()
    if code:
        return code
    print("\n$ python examples/service_client.py", flush=True)
    return subprocess.call([sys.executable, os.path.join(HERE, "service_client.py")], cwd=ROOT)


def customer_sync() -> int:
    sys.path.insert(0, HERE)
    import crm_api

    api = crm_api.start(flaky=True)
    env = {**os.environ, "CRM_API_URL": api.url, "CRM_API_TOKEN": api.api.token}
    try:
        code = etl("run", "examples/customer_sync.yaml", env=env)
        if code:
            return code
        request = urllib.request.Request(f"{api.url}/v1/admin/touch?n=25", method="POST",
                                         headers={"Authorization": f"Bearer {api.api.token}"})
        urllib.request.urlopen(request, timeout=10).read()
        print("\n(25 customers changed in the CRM; the rerun fetches only those)", flush=True)
        code = etl("run", "examples/customer_sync.yaml", env=env)
        etl("quality", "customer-data-etl")
        return code
    finally:
        api.stop()


if __name__ == "__main__":
    sys.exit(main())
