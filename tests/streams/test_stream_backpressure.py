"""Backpressure: a slow sink slows the consumer. The stream reads at most a few polls
ahead of what the sink has, however much the topic holds."""
import asyncio
import dataclasses
import time

from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import PipelineSupervisor
from etl_actors.spec import parse
from plugins import SlowSink

from .kit import Topic, event, stream_spec

BATCH = 100


def test_a_slow_sink_holds_the_consumer_back_to_a_few_polls_ahead(kafka, tmp_path, uniq):
    topic = Topic(kafka, f"slow-{uniq}", partitions=1)
    topic.send(0, [event(i, "u", i) for i in range(3000)])
    spec = parse(stream_spec(f"slow-{uniq}", topic, [], [{"type": "database", "connection": "sqlite:///x.db",
                                                           "table": "t"}], batchSize=BATCH, checkpoint="100ms"))
    sink = SlowSink(name=spec.name, seconds=0.2)
    spec = dataclasses.replace(spec, sinks=(sink,), destination=sink)
    supervisor = PipelineSupervisor(spec, f"sqlite:///{tmp_path}/events.db", LocalChildren)
    ahead = []

    async def watch(run: asyncio.Task) -> None:
        await asyncio.sleep(1.0)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not run.done():
            extractor = supervisor.children.children[("extractor", 0)]
            read = extractor.reader.returned.get(f"{topic.name}:0", 0)
            ahead.append((read, len(sink.rows)))
            await asyncio.sleep(0.1)
        supervisor.stop()

    async def main() -> dict:
        run = asyncio.ensure_future(supervisor.run())
        await watch(run)
        return await run

    result = asyncio.run(main())
    assert result["status"] == "success" and ahead
    assert all(read - loaded <= 3 * BATCH for read, loaded in ahead), ahead     # the poll handed on, one ahead, one fetched
    assert max(read for read, _ in ahead) < 3000                                # it never raced to the end of the topic
    assert sorted(r["value"] for r in sink.rows) == list(range(result["recordsExtracted"]))   # in order, none twice
