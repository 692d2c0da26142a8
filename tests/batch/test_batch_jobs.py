"""The seed's Batch Data Processor against an S3-compatible store over real HTTP
(moto's server): one snappy Parquet output per input file, progress by bytes, a
corrupt file reported without stopping the others, and a store that answers 503
retried."""
from __future__ import annotations

import pytest

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from s3server import FaultProxy

from .jobs import compression_of, events_of, job, output_rows, processed, progress_at_last_extract, sales

SIZES = {"sales-2026-12-01.csv": 3, "sales-2026-12-02.csv": 40, "sales-2026-12-03.csv": 2500,
         "sales-2026-12-04.csv": 1, "sales-2026-12-05.csv": 700}


@pytest.fixture
def buckets(s3, uniq):
    """(raw bucket, processed bucket) of this test: the five exports and a file that is
    not one under ``raw/daily-exports/``; the processed bucket exists and is empty."""
    raw, out = f"raw-{uniq}", f"processed-{uniq}"
    for i, (name, rows) in enumerate(SIZES.items()):
        s3.put(f"{raw}/daily-exports/{name}", sales(rows, first=1000 * i))
    s3.put(f"{raw}/daily-exports/README.txt", b"exports land here daily\n")
    s3.fs.create_dir(out)
    return raw, out


def connections(s3) -> dict:
    return {"store": s3.connection("AKIABATCHTEST", "batch-test-secret")}


def assert_one_output_per_input(s3, out: str) -> None:
    files = s3.files(f"{out}/processed")
    assert sorted(files) == sorted(SIZES)          # nothing else: no _parts left, no temporary file
    for i, (name, rows) in enumerate(SIZES.items()):
        path = f"{out}/processed/{name}"
        assert compression_of(s3.fs, path) == "SNAPPY"
        assert output_rows(s3.fs, path) == processed(rows, first=1000 * i), name


def test_each_input_file_becomes_one_snappy_parquet_output_and_progress_reaches_100(tmp_path, s3, buckets, uniq):
    raw, out = buckets
    log = f"sqlite:///{tmp_path}/events.db"
    result = Pipeline.from_dict(job(f"batch-{uniq}", raw, out, connections=connections(s3))).run(log=log,
                                                                                                  runtime="local")
    assert result["status"] == "success", result.get("error")
    assert_one_output_per_input(s3, out)
    assert result["recordsLoaded"] == sum(len(processed(rows, 1000 * i)) for i, rows in enumerate(SIZES.values()))

    events = events_of(log, f"batch-{uniq}")
    sizes = s3.files(f"{raw}/daily-exports")
    started = next(e for e in events if isinstance(e, ev.RunStarted))
    assert started.total_bytes == sum(sizes[name] for name in SIZES)
    state = progress_at_last_extract(events)
    assert (state.bytes_in, state.percent) == (started.total_bytes, 100.0)
    first = next(i for i, e in enumerate(events) if isinstance(e, ev.BatchExtracted))
    assert 0 < progress_at_last_extract(events[:first + 1]).percent < 100
    assert sorted(e.partition for e in events if isinstance(e, ev.WatermarkCommitted)) == sorted(SIZES)
    assert all(e.done for e in events if isinstance(e, ev.WatermarkCommitted))   # one commit per file, once written

    again = Pipeline.from_dict(job(f"batch-{uniq}", raw, out, connections=connections(s3))).run(log=log,
                                                                                                 runtime="local")
    assert (again["status"], again["recordsExtracted"]) == ("success", 0)        # written files are not read again


def test_the_batch_job_runs_on_ray(tmp_path, s3, buckets, uniq, ray_local):
    raw, out = buckets
    pipeline = Pipeline.from_dict(job(f"batch-ray-{uniq}", raw, out, connections=connections(s3)))
    try:
        result = pipeline.run(log=f"sqlite:///{tmp_path}/events.db")
    finally:
        pipeline.close()
    assert result["status"] == "success", result.get("error")
    assert_one_output_per_input(s3, out)


def test_a_corrupt_file_fails_alone_and_the_good_outputs_are_complete(tmp_path, s3, buckets, uniq):
    raw, out = buckets
    s3.put(f"{raw}/daily-exports/sales-2026-12-06.csv", b"\x00\x9c\x01PK\x03\x04 not a csv at all \xff\xfe\x00")
    log = f"sqlite:///{tmp_path}/events.db"
    name = f"batch-bad-{uniq}"
    failed = Pipeline.from_dict(job(name, raw, out, connections=connections(s3))).run(log=log, runtime="local")
    assert failed["status"] == "failed"
    assert failed["error"].startswith("sales-2026-12-06.csv: cannot read 'sales-2026-12-06.csv' as csv: not UTF-8 text")
    assert_one_output_per_input(s3, out)

    spec = job(name, raw, out, connections=connections(s3), source={"errorHandling": "continue"})
    skipped = Pipeline.from_dict(spec).run(log=log, runtime="local")
    assert (skipped["status"], skipped["partitionsFailed"]) == ("success", ["sales-2026-12-06.csv"])
    letter, = EventLog(log).dead_letters(name, skipped["runId"])
    assert (letter["stage"], letter["record"]["_file"]) == ("extract", "sales-2026-12-06.csv")
    assert_one_output_per_input(s3, out)


def test_a_store_answering_503_is_retried_on_read_and_on_write(tmp_path, s3, buckets, uniq):
    raw, out = buckets
    log = f"sqlite:///{tmp_path}/events.db"
    with FaultProxy(s3) as proxy:
        store = proxy.connection("AKIABATCHTEST", "batch-test-secret", max_attempts="1")   # no retry in the client
        proxy.fail(f"/{raw}/daily-exports/sales-2026-12-02.csv", times=2, method="GET")
        proxy.fail(f"/{out}/processed/sales-2026-12-05.csv", times=1, method="PUT")     # the move into place
        name = f"batch-503-{uniq}"
        result = Pipeline.from_dict(job(name, raw, out, connections={"store": store})).run(log=log, runtime="local")
    assert result["status"] == "success", result.get("error")
    # two reads of one file and the write of another: files are read side by side, so
    # the write may fail between the two reads (it did, on a loaded machine)
    assert sorted(method for method, _ in proxy.failed) == ["GET", "GET", "PUT"]
    retries = [e for e in events_of(log, name) if isinstance(e, ev.RetryScheduled)]
    assert [(e.stage.split("#")[0], e.attempt) for e in retries if e.stage.startswith("extractor")] == \
        [("extractor", 1), ("extractor", 2)]
    assert [e.stage for e in retries if e.stage.startswith("loader")] == ["loader#0"]
    assert all(any(word in e.error for word in ("SLOW_DOWN", "SERVICE_UNAVAILABLE", "HTTP status 503"))
               for e in retries), [e.error for e in retries]      # the 503, as the client read it
    assert_one_output_per_input(s3, out)


def test_without_a_connection_the_aws_environment_names_the_store(tmp_path, s3, buckets, uniq, monkeypatch):
    raw, out = buckets
    for name, value in {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "env-key",
                        "AWS_SECRET_ACCESS_KEY": "env-secret", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    result = Pipeline.from_dict(job(f"batch-env-{uniq}", raw, out, connection=None)).run(
        log=f"sqlite:///{tmp_path}/events.db", runtime="local")
    assert result["status"] == "success", result.get("error")
    assert_one_output_per_input(s3, out)

