"""The supervisor's run protocol, in-process: commits, recovery, fencing."""
import asyncio
import uuid

import pytest

from etl_actors import events as ev
from etl_actors.errors import ConcurrencyError
from etl_actors.eventlog import EventLog
from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import PartitionCommits, PipelineSupervisor
from etl_actors.spec import PipelineSpec, RuntimeOptions
from plugins import FlakyListSource, FlakySink, ListSource, MemorySink, UnlistableSource

ROWS_A = tuple({"id": i, "v": f"a{i}"} for i in range(7))
ROWS_B = tuple({"id": 100 + i, "v": f"b{i}"} for i in range(4))


def make_spec(steps=(), max_in_flight=2, name=None):
    name = name or f"p-{uuid.uuid4().hex[:6]}"
    return PipelineSpec(name=name, source=ListSource(parts=(("a", ROWS_A), ("b", ROWS_B))),
                        transformations=tuple(steps), destination=MemorySink(name=name),
                        runtime=RuntimeOptions(parallelism=2, max_in_flight=max_in_flight), digest="d1")


class LosingChildren(LocalChildren):
    """Loses one child of ``kind`` on its ``nth`` call."""

    kind, nth = "loader", 2

    def __init__(self, spec, log_url):
        super().__init__(spec, log_url)
        self.calls = 0

    def _check(self, kind, index):
        if kind == self.kind:
            self.calls += 1
            if self.calls == self.nth:
                self.lose(kind)
        super()._check(kind, index)


def run(spec, log_url, children=LocalChildren):
    return asyncio.run(PipelineSupervisor(spec, log_url, children).run())


@pytest.fixture
def log_url(tmp_path):
    return f"sqlite:///{tmp_path}/events.db"


def test_loads_every_row_once_and_commits_each_partition_as_done(log_url):
    spec = make_spec()
    result = run(spec, log_url)
    assert result["status"] == "success"
    assert sorted(r["id"] for r in spec.destination.rows) == [r["id"] for r in ROWS_A + ROWS_B]
    assert result["recordsExtracted"] == result["recordsLoaded"] == 11
    assert result["watermark"] == {"a": {"rows": 7, "done": True}, "b": {"rows": 4, "done": True}}


def test_rerun_skips_partitions_already_loaded(log_url):
    spec = make_spec()
    run(spec, log_url)
    again = run(spec, log_url)
    assert again["status"] == "success" and again["recordsExtracted"] == 0
    assert len(spec.destination.rows) == 11


@pytest.mark.parametrize("kind", ["loader", "transformer", "extractor"])
def test_lost_child_is_restarted_and_no_row_is_lost_or_doubled(log_url, kind):
    spec = make_spec()
    LosingChildren.kind = kind
    result = run(spec, log_url, LosingChildren)
    assert result["status"] == "success"
    assert sorted(r["id"] for r in spec.destination.rows) == [r["id"] for r in ROWS_A + ROWS_B]
    restarted = [r.event for r in EventLog(log_url).read(spec.stream) if isinstance(r.event, ev.ChildRestarted)]
    assert [e.child.split("#")[0] for e in restarted] == [kind]


def test_commits_only_the_prefix_of_loaded_batches():
    commits = PartitionCommits()
    for batch_id in ("b0", "b1", "b2"):
        commits.extracted(batch_id)
    assert commits.mark_loaded("b1", {"rows": 2}) == (False, None)
    assert commits.mark_loaded("b0", {"rows": 1}) == (True, {"rows": 2})
    assert commits.mark_loaded("b2", {"rows": 3}) == (True, {"rows": 3})


def test_a_zombie_supervisor_is_fenced_out(log_url):
    spec = make_spec()
    zombie = PipelineSupervisor(spec, log_url, LocalChildren)
    run(spec, log_url)
    with pytest.raises(ConcurrencyError):
        zombie.append(ev.PhaseStarted(run_id="x", phase="extract"))


def test_an_interrupted_run_is_recorded_as_failed_by_the_next(log_url):
    spec = make_spec()
    EventLog(log_url).append(spec.stream, [ev.RunStarted(pipeline=spec.name, run_id="r0", epoch=1,
                                                         watermark={}, partitions=["a"])], 0)
    run(spec, log_url)
    failed = [r.event for r in EventLog(log_url).read(spec.stream) if isinstance(r.event, ev.RunFailed)]
    assert [(e.run_id, e.error.split(":")[0]) for e in failed] == [("r0", "interrupted")]


def test_a_reset_run_reads_every_partition_again_and_the_ledger_keeps_rows_single(log_url):
    spec = make_spec()
    run(spec, log_url)
    again = asyncio.run(PipelineSupervisor(spec, log_url, LocalChildren).run(reset=True))
    assert (again["status"], again["recordsExtracted"], again["recordsLoaded"]) == ("success", 11, 11)
    assert len(spec.destination.rows) == 11
    assert again["watermark"] == {"a": {"rows": 7, "done": True}, "b": {"rows": 4, "done": True}}


def test_stop_commits_the_batches_in_flight_and_the_next_run_finishes_the_rest(log_url):
    spec = make_spec(max_in_flight=1)
    supervisor = PipelineSupervisor(spec, log_url, LocalChildren)
    supervisor.listeners.append(lambda e: isinstance(e, ev.BatchLoaded) and supervisor.stop())
    stopped = asyncio.run(supervisor.run())
    assert stopped["status"] == "failed" and stopped["error"].startswith("stopped on request")
    assert 0 < stopped["recordsLoaded"] < 11
    rest = run(spec, log_url)
    assert rest["recordsLoaded"] == 11 - stopped["recordsLoaded"]
    assert sorted(r["id"] for r in spec.destination.rows) == [r["id"] for r in ROWS_A + ROWS_B]


def test_a_listener_that_raises_leaves_the_folds_level_with_the_log(log_url, capsys):
    from etl_actors.projections import runs as runs_projection
    from etl_actors.projections import watermarks as watermarks_projection

    def broken(event):
        if isinstance(event, ev.BatchLoaded):
            raise RuntimeError("metrics backend down")

    spec = make_spec()
    supervisor = PipelineSupervisor(spec, log_url, LocalChildren, listeners=[broken])
    result = asyncio.run(supervisor.run())
    recorded = EventLog(log_url).read(spec.stream)
    assert result["status"] == "success" and result["recordsLoaded"] == 11
    assert supervisor.watermarks == watermarks_projection.project(recorded)
    assert runs_projection.summary(supervisor.runs.last()) == runs_projection.summary(
        runs_projection.project(recorded).last())
    assert "metrics backend down" in capsys.readouterr().err


def flaky_spec(error_handling: str) -> PipelineSpec:
    name = f"p-{uuid.uuid4().hex[:6]}"
    source = FlakyListSource(parts=(("a", ROWS_A), ("b", ROWS_B)), broken=("a",), error_handling=error_handling)
    return PipelineSpec(name=name, source=source, transformations=(), destination=MemorySink(name=name),
                        runtime=RuntimeOptions(parallelism=1, max_in_flight=1, extractors=1), digest="d1")


def test_a_partition_that_cannot_be_read_fails_alone_and_the_run_names_it(log_url):
    spec = flaky_spec("fail")
    result = run(spec, log_url)
    assert result["status"] == "failed" and result["error"] == "a: cannot read 'a': not what it says"
    assert result["partitionsFailed"] == ["a"]
    assert sorted(r["id"] for r in spec.destination.rows) == [0, 1] + [r["id"] for r in ROWS_B]
    assert result["watermark"] == {"a": {"rows": 2, "done": False}, "b": {"rows": 4, "done": True}}


def test_with_continue_an_unreadable_partition_is_a_dead_letter_and_the_run_succeeds(log_url):
    spec = flaky_spec("continue")
    result = run(spec, log_url)
    assert result["status"] == "success" and result["partitionsFailed"] == ["a"] and result["errors"] == 1
    letters = EventLog(log_url).dead_letters(spec.name)
    assert [(d["stage"], d["reason"], d["record"]["_file"]) for d in letters] == \
        [("extract", "cannot read 'a': not what it says", "a")]
    again = run(spec, log_url)                    # retried on the next run (never silently dropped)
    assert again["partitionsFailed"] == ["a"] and again["watermark"]["a"] == {"rows": 4, "done": False}
    assert [d["runId"] for d in EventLog(log_url).dead_letters(spec.name)] == [result["runId"], again["runId"]]


def flaky_sink_spec(failures: int, retries: int, retry_after=None) -> PipelineSpec:
    name = f"p-{uuid.uuid4().hex[:6]}"
    return PipelineSpec(name=name, source=ListSource(parts=(("a", ROWS_A),)), transformations=(),
                        destination=FlakySink(name=name, failures=failures, retry_after=retry_after),
                        runtime=RuntimeOptions(parallelism=1, max_in_flight=1, extractors=1, max_retries=retries),
                        digest="d1")


def test_a_transient_sink_error_is_retried_with_backoff_until_it_passes(log_url):
    spec = flaky_sink_spec(failures=2, retries=3, retry_after=0.05)
    result = run(spec, log_url)
    assert result["status"] == "success" and result["recordsLoaded"] == len(ROWS_A)
    assert sorted(r["id"] for r in spec.destination.rows) == [r["id"] for r in ROWS_A]
    retries = [r.event for r in EventLog(log_url).read(spec.stream) if r.type == "RetryScheduled"]
    assert len(retries) == 4 * 2 and {r.attempt for r in retries} == {1, 2}      # four batches, two failures each
    assert all(r.delay >= 0.05 and "database went away" in r.error for r in retries)


def test_a_transient_error_that_outlasts_its_retries_fails_the_run_naming_it(log_url):
    spec = flaky_sink_spec(failures=5, retries=2)
    result = run(spec, log_url)
    assert result["status"] == "failed" and "database went away (attempt 3)" in result["error"]
    assert result["watermark"] == {} and spec.destination.rows == []


@pytest.mark.parametrize("failures, retries, status", [(2, 3, "success"), (3, 2, "failed")])
def test_a_source_that_cannot_be_listed_for_a_while_is_listed_again_with_backoff(log_url, failures, retries, status):
    name = f"p-{uuid.uuid4().hex[:6]}"
    spec = PipelineSpec(name=name, source=UnlistableSource(parts=(("a", ROWS_A),), name=name, failures=failures),
                        transformations=(), destination=MemorySink(name=name),
                        runtime=RuntimeOptions(parallelism=1, extractors=1, max_retries=retries), digest="d1")
    result = run(spec, log_url)
    retries_seen = [r.event for r in EventLog(log_url).read(spec.stream) if r.type == "RetryScheduled"]
    assert [(r.stage, r.attempt) for r in retries_seen] == [("list", i) for i in range(1, min(failures, retries) + 1)]
    assert result["status"] == status
    if status == "success":
        assert result["recordsLoaded"] == len(ROWS_A)
    else:
        assert "store unavailable (attempt 3)" in result["error"] and result["recordsLoaded"] == 0


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after():
    import random

    from etl_actors.runtime.retry import CAP_S, delay

    rng = random.Random(7)
    waits = [delay(attempt, rng=rng) for attempt in range(1, 12)]
    assert all(0.25 <= w <= 0.5 for w in waits[:1]) and all(w <= CAP_S for w in waits)
    assert waits[5] > waits[0] * 4                       # grows
    assert delay(1, retry_after=7.5) >= 7.5              # the server's Retry-After wins
