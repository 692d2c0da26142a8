"""Projection snapshots: a supervisor (and ``status``) restarted on a long stream
resumes from its newest snapshot and the events after it, and sees what a replay of
the whole stream sees."""
import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_actors import alerts
from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.pipeline import pipeline_status
from etl_actors.projections import progress, runs, snapshots, streams, watermarks
from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import PipelineSupervisor
from etl_actors.spec import PipelineSpec, RuntimeOptions
from plugins import ListSource, MemorySink

ROWS_A = tuple({"id": i} for i in range(7))
ROWS_B = tuple({"id": 100 + i} for i in range(4))
OPTIONS = alerts.AlertOptions(threshold=3, window_s=600.0)


def make_spec(name=None):
    name = name or f"p-{uuid.uuid4().hex[:8]}"
    return PipelineSpec(name=name, source=ListSource(parts=(("a", ROWS_A), ("b", ROWS_B))), transformations=(),
                        destination=MemorySink(name=name), runtime=RuntimeOptions(parallelism=1),
                        digest="d1", alerts=OPTIONS)


@pytest.fixture
def log_url(tmp_path):
    return f"sqlite:///{tmp_path}/events.db"


def seen(state, pipeline):
    """Everything the supervisor and ``status`` read of a recovered state."""
    held = state.runs
    return {"version": state.version, "epoch": state.epoch, "digest": state.digest,
            "watermarks": state.watermarks, "checkpoint": state.checkpoint, "alerts": state.alerts,
            "runs": held.count(pipeline), "last": held.last(pipeline), "unfinished": held.unfinished(pipeline),
            "run watermarks": held.watermarks}


# --- random streams: resuming equals replaying -------------------------------------------

LEASE = "lease"       # a run takes the lease: a new epoch, unfinished runs recorded as interrupted
RUN = st.integers(0, 3)   # the open run started that many runs ago (one never started when there is none)
POSITION = st.fixed_dictionaries({"rows": st.integers(0, 500), "done": st.booleans()})
PARTITION = st.sampled_from(["a.csv", "b.csv", "t:0"])
STEP = st.fixed_dictionaries({"id": st.sampled_from(["m", "f"]), "recordsIn": st.integers(0, 9),
                              "recordsOut": st.integers(0, 9), "durationMs": st.just(1.5), "success": st.booleans()})
QUALITY = st.sampled_from([{}, {"total": 5, "passed": 4, "failed": 1, "warnings": 0, "rules": {
    "q1": {"violations": 1, "severity": "error", "action": "flag", "examples": [{"id": 1}]}}}])
COUNT = st.integers(0, 50)


def _events(pipeline):
    """Events of the kinds a pipeline's stream holds, and lease takeovers."""
    return st.one_of(
        st.builds(ev.RunStarted, pipeline=st.just(pipeline), run_id=st.just(""), epoch=st.just(1),
                  watermark=st.just({}), partitions=st.just(["a.csv"])),
        st.builds(ev.BatchExtracted, run_id=RUN, batch_id=st.just("b"), partition=PARTITION, rows=COUNT,
                  bytes=COUNT, rejected=st.integers(0, 3)),
        st.builds(ev.BatchTransformed, run_id=RUN, batch_id=st.just("b"), rows_in=COUNT, rows_out=COUNT,
                  rejected=st.just(0), filtered=st.integers(0, 2), steps=st.lists(STEP, max_size=2), quality=QUALITY),
        st.builds(ev.BatchLoaded, run_id=RUN, batch_id=st.just("b"), partition=PARTITION, position=POSITION,
                  rows=COUNT, bytes=COUNT),
        st.builds(ev.WatermarkCommitted, run_id=RUN, partition=PARTITION, position=POSITION),
        st.builds(ev.CheckpointCommitted, run_id=RUN, seq=COUNT, positions=st.dictionaries(PARTITION, COUNT),
                  max_seen=st.dictionaries(PARTITION, COUNT), watermark=COUNT, extracted=COUNT, loaded=COUNT,
                  rejected=st.integers(0, 4), late=st.integers(0, 4), lag=st.dictionaries(PARTITION, COUNT)),
        st.builds(ev.RecordsRejected, run_id=RUN, batch_id=st.just("b"), stage=st.just("load"),
                  count=st.integers(1, 5), reason=st.just("bad row")),
        st.builds(ev.PartitionFailed, run_id=RUN, partition=PARTITION, error=st.just("not a csv file")),
        st.builds(ev.RunSucceeded, run_id=RUN, metrics=st.just({})),
        st.builds(ev.RunFailed, run_id=RUN, error=st.just("boom")),
        st.builds(ev.WatermarkReset, pipeline=st.just(pipeline)),
        st.builds(ev.ProjectionSnapshot, name=st.just("billing"), position=COUNT, state=st.just({"x": 1})),
        st.just(LEASE),
    )


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), every=st.integers(1, 15), keep=st.integers(1, 3), chunk=st.integers(1, 6))
def test_recovering_from_a_snapshot_equals_replaying_the_whole_stream(log_url, monkeypatch, data, every, keep,
                                                                      chunk):
    monkeypatch.setattr(snapshots, "EVERY", every)
    monkeypatch.setattr(snapshots, "KEEP_FINISHED", keep)
    spec = make_spec()
    name, stream = spec.name, spec.stream
    actions = data.draw(st.integers(10, 90).flatmap(
        lambda n: st.lists(st.tuples(_events(name), st.integers(0, 300)), min_size=n, max_size=n)))
    live = PipelineSupervisor(spec, log_url, LocalChildren)
    start, pending, running = time.time() - 600, [], []
    for i, (action, jitter) in enumerate(actions):
        if isinstance(action, ev.Event):   # failures near now, so the live supervisor raises and resolves alerts
            pending.append(_concrete(action, start + 5 * i + jitter, running))
        if pending and (action == LEASE or len(pending) >= chunk or i == len(actions) - 1):
            live.append(*pending)
            pending = []
        if action == LEASE:
            running.clear()
            live._release_lease()
            live._take_lease(f"L{i}", force=False)
    live._release_lease()

    log = EventLog(log_url)
    full = snapshots.recover(log, name, OPTIONS, resume=False)
    resumed = snapshots.recover(log, name, OPTIONS)
    assert seen(resumed, name) == seen(full, name)
    assert resumed.snapshot == full.snapshot
    if full.version > every + 1:
        assert resumed.snapshot > 0
    for run_id, run in resumed.runs.by_id.items():
        assert run == full.runs.by_id[run_id]
    finished = [r for r in full.runs.order if full.runs.by_id[r].status != "running"]
    assert set(finished[-keep:]) <= set(resumed.runs.by_id)

    restarted = PipelineSupervisor(spec, log_url, LocalChildren)
    for supervisor in (live, restarted):
        assert seen(supervisor, name) == seen(full, name)
    status = pipeline_status(name, log_url)
    started = sum(isinstance(r.event, ev.RunStarted) for r in log.read(stream))
    assert (status["runs"], status["watermark"]) == (started, full.watermarks)

    recorded = log.read(stream)
    plain = [r for r in recorded if not isinstance(r.event, ev.ProjectionSnapshot)]
    for fold in (runs.project, watermarks.project, streams.project, lambda r: alerts.project(r, name, OPTIONS),
                 _progress):
        assert fold(recorded) == fold(plain)


def _concrete(event, at, running):
    """``event`` at ``at``, its run named: a new one for ``RunStarted``, else one of the
    ``running`` runs (a run gets no event once it ended)."""
    if not hasattr(event, "run_id"):
        return dataclasses.replace(event, at=at)
    if isinstance(event, ev.RunStarted):
        running.append(f"r{uuid.uuid4().hex[:6]}")
        return dataclasses.replace(event, at=at, run_id=running[-1])
    ago = event.run_id
    run_id = running[-1 - ago] if ago < len(running) else "never-started"
    if isinstance(event, (ev.RunSucceeded, ev.RunFailed)) and run_id in running:
        running.remove(run_id)
    return dataclasses.replace(event, at=at, run_id=run_id)


def _progress(recorded):
    state = progress.Progress()
    for r in recorded:
        state = progress.evolve(state, r)
    return state


# --- a real supervisor ----------------------------------------------------------------------

def test_a_supervisor_restarted_after_many_events_resumes_at_its_watermark_version_and_run_count(
        log_url, monkeypatch):
    monkeypatch.setattr(snapshots, "EVERY", 50)
    monkeypatch.setattr(snapshots, "KEEP_FINISHED", 2)
    spec = make_spec()
    for reset in (False, True, True, True, True, True):
        assert asyncio.run(PipelineSupervisor(spec, log_url, LocalChildren).run(reset=reset))["status"] == "success"
    log = EventLog(log_url)
    snapshot = snapshots.latest_in(log, spec.stream, snapshots.SUPERVISOR)
    assert snapshot is not None and log.version(spec.stream) > 100
    held = snapshot.event.state["runs"]["runs"].values()
    assert len([run for run in held if run["status"] != "running"]) == 2      # the others only counted

    restarted = PipelineSupervisor(spec, log_url, LocalChildren)
    assert snapshots.recover(log, spec.name).snapshot == snapshot.version
    assert restarted.version == log.version(spec.stream)
    assert restarted.watermarks == {"a": {"rows": 7, "done": True}, "b": {"rows": 4, "done": True}}
    assert pipeline_status(spec.name, log_url)["runs"] == 6

    result = asyncio.run(restarted.run(reset=True))      # appends at the version the log is at
    assert (result["status"], result["recordsExtracted"]) == ("success", 11)
    status = pipeline_status(spec.name, log_url, spec)
    assert (status["runs"], status["lastRun"]["runId"]) == (7, result["runId"])
    assert status["watermark"] == {"a": {"rows": 7, "done": True}, "b": {"rows": 4, "done": True}}


def test_a_snapshot_follows_once_more_than_every_events_were_appended(log_url, monkeypatch):
    monkeypatch.setattr(snapshots, "EVERY", 50)
    spec = make_spec()
    supervisor, log = PipelineSupervisor(spec, log_url, LocalChildren), EventLog(log_url)
    for i in range(50):
        supervisor.append(ev.PhaseStarted(run_id="r", phase=f"p{i}"))
    assert snapshots.latest_in(log, spec.stream, snapshots.SUPERVISOR) is None
    supervisor.append(ev.PhaseStarted(run_id="r", phase="p50"))
    first = snapshots.latest_in(log, spec.stream, snapshots.SUPERVISOR)
    assert (first.version, first.event.version, supervisor.version) == (52, 51, 52)
    for i in range(51):
        supervisor.append(ev.PhaseStarted(run_id="r", phase=f"q{i}"))
    second = snapshots.latest_in(log, spec.stream, snapshots.SUPERVISOR)
    assert (second.version, second.event.version, supervisor.version) == (104, 103, 104)
    assert [r.version for r in log.read(spec.stream) if isinstance(r.event, ev.ProjectionSnapshot)] == [52, 104]


def test_a_log_without_a_readable_snapshot_is_replayed_from_its_start(log_url, monkeypatch):
    monkeypatch.setattr(snapshots, "EVERY", 50)
    spec = make_spec()
    log = EventLog(log_url)
    events = [ev.RunStarted(pipeline=spec.name, run_id="old", epoch=1, watermark={}, partitions=["a"])]
    events += [ev.WatermarkCommitted(run_id="old", partition="a", position={"rows": i}) for i in range(1, 70)]
    events += [ev.ProjectionSnapshot(name=snapshots.SUPERVISOR, version=70, state={"format": 0}),
               ev.RunSucceeded(run_id="old", metrics={})]
    log.append(spec.stream, events, expected_version=0)   # as an older release wrote it

    supervisor = PipelineSupervisor(spec, log_url, LocalChildren)
    assert seen(supervisor, spec.name) == seen(snapshots.recover(log, spec.name, OPTIONS, resume=False), spec.name)
    assert (supervisor.version, supervisor.watermarks) == (72, {"a": {"rows": 69}})
    assert supervisor.runs.last(spec.name).status == "success"
    supervisor.append(ev.PhaseStarted(run_id="next", phase="extract"))   # the next append snapshots it
    assert snapshots.latest_in(log, spec.stream, snapshots.SUPERVISOR).version == 74
    assert pipeline_status(spec.name, log_url)["runs"] == 1


def cli(*args):
    return subprocess.run([sys.executable, "-m", "etl_actors", *args], capture_output=True, text=True, timeout=120)


def test_status_and_events_read_a_stream_with_snapshots(log_url, monkeypatch):
    monkeypatch.setattr(snapshots, "EVERY", 20)
    monkeypatch.setattr(snapshots, "KEEP_FINISHED", 1)
    spec = make_spec()
    for reset in (False, True, True):
        asyncio.run(PipelineSupervisor(spec, log_url, LocalChildren).run(reset=reset))
    status = cli("status", spec.name, "--log", log_url)
    assert status.returncode == 0, status.stderr
    assert f"pipeline {spec.name}: 3 run(s)" in status.stdout
    printed = cli("events", spec.name, "--log", log_url)
    assert printed.returncode == 0, printed.stderr
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert len(lines) == EventLog(log_url).version(spec.stream)
    assert any(line["type"] == "ProjectionSnapshot" and line["data"]["name"] == "supervisor" for line in lines)


# --- whole-log projections ---------------------------------------------------------------------

class StaleLog(EventLog):
    """A log read just before another process saved a snapshot: the stream's version
    it sees is the one before."""

    def version(self, stream):
        return super().version(stream) - 1


@pytest.fixture(params=["sqlite", "postgresql"])
def any_log_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    return request.getfixturevalue("pg_schema")


def test_save_and_latest_round_trip_and_a_save_that_lost_the_race_is_dropped(any_log_url):
    log = EventLog(any_log_url)
    assert snapshots.latest(log, "billing") is None
    snapshots.save(log, "billing", 10, {"charged": ["r1"]})
    snapshots.save(log, "billing", 25, {"charged": ["r1", "r2"], "total": "1.50"})
    newest = snapshots.latest(log, "billing")
    assert (newest.name, newest.position, newest.state) == ("billing", 25, {"charged": ["r1", "r2"], "total": "1.50"})
    assert snapshots.stream_of("billing") == "projection:billing"

    snapshots.save(StaleLog(any_log_url), "billing", 30, {"charged": []})   # ConcurrencyError: ignored
    assert snapshots.latest(log, "billing").position == 25

    stream = "pipeline:shared"
    log.append(stream, [ev.ProjectionSnapshot(name="billing", version=1, state={"n": 1}),
                        ev.PhaseStarted(run_id="r", phase="x"),
                        ev.ProjectionSnapshot(name="other", version=2, state={"n": 2})], expected_version=0)
    found = snapshots.latest_in(log, stream, "billing")
    assert (found.version, found.event.state) == (1, {"n": 1})
    assert snapshots.latest_in(log, stream, "nobody") is None
