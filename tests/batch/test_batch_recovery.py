"""One output per input file, exactly once: the per-file writer's protocol on a local
folder and on the S3-compatible store (parts replaced by batch id, an earlier run's
parts forgotten, an assembly finished after a crash), then a batch job killed with
SIGKILL halfway and run again."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.errors import TerminalError
from etl_actors.objectstore import location
from etl_actors.sinks.file import FileSink

from .jobs import STEPS, events_of, job, output_rows, processed, sales


@pytest.fixture(params=["folder", "s3"])
def place(request, tmp_path, uniq):
    """(sink path, filesystem, folder in it) of an empty destination."""
    if request.param == "folder":
        return str(tmp_path / "out"), pafs.LocalFileSystem(), str(tmp_path / "out")
    s3 = request.getfixturevalue("s3")
    s3.fs.create_dir(f"out-{uniq}")
    return location(f"out-{uniq}", "processed", s3.connection("k", "s")), s3.fs, f"out-{uniq}/processed"


def writer(place, run_id: str, **options):
    path, _, _ = place
    opened = FileSink(path=path, per_file=True, **options).open("p")
    opened.run_id = run_id
    return opened


def files(place) -> list[str]:
    _, fs, folder = place
    found = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted(f.path[len(folder) + 1:] for f in found if f.type == pafs.FileType.File)


def rows(place, name: str) -> list[int]:
    _, fs, folder = place
    with fs.open_input_file(f"{folder}/{name}") as handle:
        return pq.read_table(handle).column("id").to_pylist()


def ids(first: int, count: int) -> pa.Table:
    return pa.table({"id": list(range(first, first + count))})


def test_batches_loaded_out_of_order_and_again_make_one_output_in_file_order(place):
    out = writer(place, "run1")
    for first in (4, 0, 2, 0, 4):
        out.write(ids(first, 2), f"a.csv#{first}")
    out.complete_partition("a.csv")
    out.complete_partition("a.csv")           # a retry after the loader died in it
    assert files(place) == ["a.csv"] and rows(place, "a.csv") == [0, 1, 2, 3, 4, 5]


def test_a_rerun_forgets_the_parts_an_interrupted_run_left(place):
    interrupted = writer(place, "run1")
    interrupted.write(ids(0, 2), "a.csv#0")
    interrupted.write(ids(2, 2), "a.csv#2")    # then killed: no output, no commit
    rerun = writer(place, "run2")              # reads the file again from row 0, with other chunks
    for first in (3, 0):
        rerun.write(ids(first, 3), f"a.csv#{first}")
    rerun.complete_partition("a.csv")
    assert files(place) == ["a.csv"] and rows(place, "a.csv") == [0, 1, 2, 3, 4, 5]


def test_an_assembly_interrupted_while_deleting_parts_is_finished_not_redone(place):
    out = writer(place, "run1")
    out.write(ids(0, 2), "sub/a.csv#0")
    out.complete_partition("sub/a.csv")
    path, fs, folder = place
    leftover = f"{folder}/_parts/sub/a.csv/run1"   # as a crash after the output and its note left it
    for name, data in ((f"{leftover}/00000000000000000005.parquet", b"not the rows"),
                       (f"{leftover}.combined", b"")):
        fs.create_dir(os.path.dirname(name), recursive=True)
        with fs.open_output_stream(name) as stream:
            stream.write(data)
    writer(place, "run1").complete_partition("sub/a.csv")
    assert files(place) == ["sub/a.csv"] and rows(place, "sub/a.csv") == [0, 1]


def test_the_extension_replaces_the_inputs_and_the_schema_grows_across_parts(place):
    out = writer(place, "run1", extension=".parquet")
    out.write(pa.table({"id": [0], "v": pa.array([None], pa.null())}), "day.csv.gz#0")
    out.write(pa.table({"id": [1], "v": ["x"]}), "day.csv.gz#1")
    out.complete_partition("day.csv.gz")
    assert files(place) == ["day.parquet"]
    _, fs, folder = place
    with fs.open_input_file(f"{folder}/day.parquet") as handle:
        assert pq.read_table(handle).to_pylist() == [{"id": 0, "v": None}, {"id": 1, "v": "x"}]


def test_a_batch_that_is_not_a_files_is_refused(place):
    with pytest.raises(TerminalError, match=r"got batch 'aggregate:5f2c': an aggregate's result, or dead letters"):
        writer(place, "run1").write(ids(0, 1), "aggregate:5f2c")


# --- kill -9 halfway through a job, then run it again ----------------------------------

FILES = {f"sales-2026-12-0{i}.csv": rows for i, rows in enumerate((300, 20, 900, 1, 600), start=1)}


def count(db: str, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0     # the run has not created the log yet


def test_a_job_killed_halfway_and_run_again_writes_each_output_once(tmp_path, s3, uniq):
    raw, out = f"raw-{uniq}", f"processed-{uniq}"
    for i, (name, n) in enumerate(FILES.items()):
        s3.put(f"{raw}/daily-exports/{name}", sales(n, first=10_000 * i))
    s3.fs.create_dir(out)
    pause = {"id": "pause", "type": "function", "handler": "batch.steps:pause"}
    spec = job(f"killed-{uniq}", raw, out, steps=[*STEPS, pause], chunk=100,
               connections={"store": s3.connection("k", "s")})
    spec["batch"]["processing"]["maxInFlight"] = 4
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    db, log = tmp_path / "events.db", f"sqlite:///{tmp_path}/events.db"
    driver = subprocess.Popen([sys.executable, "-m", "etl_actors", "run", str(tmp_path / "job.yaml"), "--local",
                               "--log", log], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while count(db, "SELECT count(*) FROM etl_events WHERE type = 'WatermarkCommitted'") < 2 \
                or count(db, "SELECT count(*) FROM etl_events WHERE type = 'BatchLoaded'") < 12:
            assert driver.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    first = events_of(log, f"killed-{uniq}")
    assert not any(isinstance(e, (ev.RunSucceeded, ev.RunFailed)) for e in first)   # killed mid-run
    written = {e.partition for e in first if isinstance(e, ev.WatermarkCommitted)}
    assert 2 <= len(written) < len(FILES)

    result = Pipeline.from_dict(spec).run(log=log, runtime="local")
    assert result["status"] == "success", result.get("error")
    assert sorted(s3.files(f"{out}/processed")) == sorted(FILES)            # no _parts, no temporary file
    for i, (name, n) in enumerate(FILES.items()):
        assert output_rows(s3.fs, f"{out}/processed/{name}") == processed(n, first=10_000 * i), name
    rerun = next(e for e in events_of(log, f"killed-{uniq}") if isinstance(e, ev.RunStarted)
                 and e.run_id == result["runId"])
    assert sorted(rerun.partitions) == sorted(set(FILES) - written)         # written outputs are not read again
