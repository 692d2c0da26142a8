"""A stream's sink that fails transiently is retried with backoff: no window is lost,
none written twice; one that keeps failing fails the run naming the error."""
import asyncio
import dataclasses

from etl_actors import events as ev
from etl_actors.eventlog import EventLog
from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import PipelineSupervisor
from etl_actors.spec import parse
from plugins import FlakySink

from .kit import Reference, Topic, Windowing, event, ordered, stream_spec


def run_with_flaky_sink(kafka, tmp_path, uniq, failures: int, retries: int):
    topic = Topic(kafka, f"retry-{uniq}", partitions=2)
    topic.send(0, [event(s, f"u{s % 3}", s) for s in range(0, 300, 7)])
    topic.send(1, [event(s, f"u{s % 4}", 1) for s in range(3, 300, 11)])
    windowing = Windowing("tumbling", size_ms=60_000)
    spec = parse(stream_spec(f"retry-{uniq}", topic, [windowing.processor()],
                             [{"type": "database", "connection": f"sqlite:///{tmp_path}/unused.db", "table": "w"}]))
    sink = FlakySink(name=spec.name, failures=failures, retry_after=0.05)
    spec = dataclasses.replace(spec, sinks=(sink,), destination=sink,
                               runtime=dataclasses.replace(spec.runtime, max_retries=retries))
    log = f"sqlite:///{tmp_path}/events.db"
    result = asyncio.run(PipelineSupervisor(spec, log, LocalChildren).run(until_idle=1.0))
    return result, sink, Reference(windowing).read(topic.sent).flush(), EventLog(log).read(spec.stream)


def test_a_sink_that_fails_transiently_is_retried_and_every_window_arrives_once(kafka, tmp_path, uniq):
    result, sink, reference, recorded = run_with_flaky_sink(kafka, tmp_path, uniq, failures=2, retries=3)
    assert result["status"] == "success"
    assert ordered(sink.rows) == reference.rows()
    retries = [r.event for r in recorded if isinstance(r.event, ev.RetryScheduled)]
    assert retries and {r.attempt for r in retries} == {1, 2} and all(r.delay >= 0.05 for r in retries)


def test_a_sink_that_keeps_failing_fails_the_stream_naming_the_error_and_commits_nothing(kafka, tmp_path, uniq):
    result, sink, _, recorded = run_with_flaky_sink(kafka, tmp_path, uniq, failures=10, retries=2)
    assert result["status"] == "failed" and "database went away" in result["error"]
    assert sink.rows == [] and not any(isinstance(r.event, ev.CheckpointCommitted) for r in recorded)
