"""The seed's Data Quality Checker (examples/data_quality.yaml) from the command line:
exactly the records breaking an error rule are dead letters (one each, naming every rule
broken), warnings load flagged, and `etl-actors quality --json` counts them per rule."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from etl_actors.db import engine_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import make_data  # noqa: E402

EMAIL = re.compile(r"^[^@]+@[^@]+\.[^@]+$")


def etl(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True,
                         timeout=180, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout


def expected(path: Path) -> dict[int, set[str]]:
    """Each sign-up's broken rules, by the seed's definitions, read straight from the file."""
    broken, seen = {}, set()
    with open(path) as handle:
        for row in csv.DictReader(handle):
            rules = set()
            if not row["email"].strip():
                rules.add("completeness")
            elif not EMAIL.match(row["email"]):
                rules.add("format")
            if int(row["customer_id"]) > 2000:
                rules.add("referential")
            if row["email"].strip():       # a duplicate of a value claimed by a record no other rule rejects
                if row["email"] in seen:
                    rules.add("uniqueness")
                elif not rules:
                    seen.add(row["email"])
            if not 0 <= int(row["age"]) <= 150:
                rules.add("range")
            broken[int(row["id"])] = rules
    return broken


def test_the_data_quality_example_rejects_flags_and_reports_per_rule(tmp_path):
    shutil.copy(ROOT / "examples" / "data_quality.yaml", tmp_path / "data_quality.yaml")
    (tmp_path / "data").mkdir()
    make_data.make_customers(str(tmp_path / "data" / "crm.db"))
    make_data.make_signups(str(tmp_path / "data" / "signups.csv"))
    truth = expected(tmp_path / "data" / "signups.csv")
    errors = {i for i, rules in truth.items() if rules - {"range"}}
    flagged = {i for i, rules in truth.items() if rules == {"range"}}
    log = f"sqlite:///{tmp_path}/events.db"

    summary = json.loads(etl("run", "data_quality.yaml", "--local", "--json", "--log", log,
                             cwd=tmp_path).splitlines()[-1])
    assert (summary["recordsLoaded"], summary["recordsRejected"], summary["recordsFlagged"]) == \
        (len(truth) - len(errors), len(errors), len(flagged))

    letters = [json.loads(line) for line in etl("dlq", "data-quality-checker", "--log", log, cwd=tmp_path).splitlines()]
    assert sorted(int(d["record"]["id"]) for d in letters) == sorted(errors)       # one letter each
    for letter in letters:
        named = {part.split(":")[0].strip() for part in letter["reason"].split("; ")}
        assert named == truth[int(letter["record"]["id"])], letter     # every rule broken, warnings too
        assert letter["stage"] == "transform:validation"

    with engine_for(f"sqlite:///{tmp_path}/data/warehouse.db").connect() as conn:
        flags = dict(conn.execute(sa.text("SELECT id, _quality_flags FROM signups")).all())
    assert {i for i, f in flags.items() if f is not None} == flagged
    assert all(json.loads(flags[i]) == ["range"] for i in flagged)

    report = json.loads(etl("quality", "data-quality-checker", "--log", log, "--json", cwd=tmp_path))
    assert set(report) == {"runId", "total", "passed", "failed", "warnings", "rules"}
    assert (report["runId"], report["total"], report["failed"], report["passed"]) == \
        (summary["runId"], len(truth), len(errors), len(truth) - len(errors))
    assert report["warnings"] == sum(1 for rules in truth.values() if "range" in rules)
    for rule in ("completeness", "format", "range", "uniqueness", "referential"):
        stats = report["rules"][rule]
        assert stats["violations"] == sum(1 for rules in truth.values() if rule in rules), rule
        assert stats["severity"] == ("warning" if rule == "range" else "error")
        assert 0 < len(stats["examples"]) <= 5

    text = etl("quality", "data-quality-checker", "--log", log, cwd=tmp_path)
    assert "referential" in text and "violation" in text
