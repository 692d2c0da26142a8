"""Kafka events through a window into the destination: every window holds what the
reference (the rules applied one event at a time, see kit.py) says, late events are
dead letters once, and the stream goes on past what it cannot read."""
from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timezone

import pytest

from etl_actors import Pipeline
from etl_actors.runtime.local import LocalChildren
from etl_actors.runtime.supervisor import ChildLost, PipelineSupervisor

from .kit import (T0, Reference, Topic, Windowing, database, event, late_letters, letters, noisy_events,
                  ordered, stream_spec, wait_for, windows_in)

ENRICH = {"id": "enrich", "type": "map", "keep": True,
          "mappings": {"region": {"source": "userId", "converter": "uppercase"}}}


def run(spec: dict, log: str, runtime: str = "local", until_idle: float = 1.0) -> dict:
    result = Pipeline.from_dict(spec).run(log=log, runtime=runtime, until_idle=until_idle)
    assert result["status"] == "success", result.get("error")
    return result


# One partition, a 5 s allowance for disorder; times in seconds after T0:
#
#   offset   0    1    2    3    4    5    6    7    8    9
#   time    10   50   62   58   80   30  130  118  126   20
#   seen     -   10   50   62   62   80   80  130  130  130
#   wm       -    5   45   57   57   75   75  125  125  125     (seen - 5 s)
#
# 58 comes after 62 but within the allowance: [0, 60) is still open. 30 comes when
# the watermark is 75: its minute is closed (late), but its sliding window [20, 80) is
# not. 20 is late whatever the window.
TIMES = [(10, "a"), (50, "b"), (62, "a"), (58, "b"), (80, "a"), (30, "a"), (130, "b"), (118, "a"), (126, "b"),
         (20, "a")]
SHAPES = {
    "tumbling": (Windowing("tumbling", size_ms=60_000), [5, 7, 9]),
    "sliding": (Windowing("sliding", size_ms=60_000, slide_ms=20_000), [9]),
    "session": (Windowing("session", gap_ms=30_000), [5, 7, 9]),
    "tumbling, 20 s allowed lateness": (Windowing("tumbling", size_ms=60_000, lateness_ms=20_000), [9]),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_disorder_within_the_bound_is_counted_and_late_events_are_dead_letters(kafka, tmp_path, uniq, shape):
    windowing, late = SHAPES[shape]
    topic = Topic(kafka, f"clicks-{uniq}")
    topic.send(0, [event(t, user, i) for i, (t, user) in enumerate(TIMES)])
    name, log, db = f"win-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [windowing.processor()], [database(db)])

    result = run(spec, log)

    ref = Reference(windowing).read(topic.sent).flush()
    assert ref.late == [(0, i) for i in late]                    # the reference agrees with the timeline
    assert windows_in(db) == ref.rows()
    assert late_letters(log, name) == ref.late
    (letter,) = [d for d in letters(log, name) if d["record"]["_offset"] == late[-1]]
    assert (letter["stage"], letter["record"]["timestamp"], letter["record"]["_topic"]) == (
        "window", T0 + 20_000, topic.name)
    assert (result["recordsExtracted"], result["recordsRejected"], result["recordsLoaded"]) == (
        len(TIMES), len(late), len(ref.rows()))
    assert result["watermark"] == topic.ends()


@pytest.mark.parametrize("form", ["epoch seconds", "ISO 8601"])
def test_event_times_in_seconds_or_iso_text_fall_in_the_same_windows(kafka, tmp_path, uniq, form):
    windowing = Windowing("tumbling", size_ms=60_000)
    topic = Topic(kafka, f"clicks-{uniq}")
    events = [event(t, user, i) for i, (t, user) in enumerate(TIMES)]

    def written(e: dict) -> dict:
        ms = e["timestamp"]
        stamp = ms // 1000 if form == "epoch seconds" else \
            datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")
        return {**e, "timestamp": stamp}

    topic.send(0, [written(e) for e in events])
    name, log, db = f"times-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"

    run(stream_spec(name, topic, [windowing.processor()], [database(db)]), log)

    ref = Reference(windowing).read([(0, i, e) for i, e in enumerate(events)]).flush()
    assert windows_in(db) == ref.rows()
    assert late_letters(log, name) == ref.late == [(0, 5), (0, 7), (0, 9)]


def test_three_partitions_two_extractors_and_two_window_actors_give_the_reference_windows(
        ray_local, kafka, tmp_path, uniq):
    rng = random.Random(7)
    windowing = Windowing("tumbling", size_ms=10_000, out_of_order_ms=2_000, key_by=("page", "region"),
                          parallelism=2)
    topic = Topic(kafka, f"clicks-{uniq}", partitions=3)
    for p in range(3):
        topic.send(p, noisy_events(rng, 1_500, start_s=p * 7, step_ms=200, jitter_ms=1_500, late_every=40,
                                   late_by_ms=15_000, pages=5))
    name, log, db = f"ray-win-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [windowing.processor()], [database(db)], parallelism=2)

    result = run(spec, log, runtime="ray", until_idle=2)

    ref = Reference(windowing).read(topic.sent).flush()
    assert len(ref.late) > 50 and len(ref.rows()) > 200              # the input exercises both
    assert windows_in(db) == ref.rows()
    assert late_letters(log, name) == sorted(ref.late)
    assert (result["recordsExtracted"], result["recordsRejected"], result["recordsLoaded"]) == (
        4_500, len(ref.late), len(ref.rows()))
    assert result["watermark"] == topic.ends()


def test_a_poison_message_is_dead_lettered_with_its_place_and_the_stream_goes_on(kafka, tmp_path, uniq):
    windowing = Windowing("tumbling", size_ms=60_000)
    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    topic.send(0, [event(10, "a", 1), event(70, "a", 2), event(140, "b", 3)])
    topic.send(1, [event(20, "b", 4), b'{"userId": "c", "value": 5, "timest', event(90, "c", 6), event(150, "c", 7)])
    name, log, db = f"poison-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [ENRICH, windowing.processor()], [database(db)])

    result = run(spec, log)

    (poison,) = letters(log, name, "extract")
    assert poison["reason"].startswith("cannot parse JSON")
    assert (poison["record"]["_topic"], poison["record"]["_partition"], poison["record"]["_offset"]) == (
        topic.name, 1, 1)
    ref = Reference(windowing).read(topic.sent).flush()
    assert windows_in(db) == ref.rows()                       # the events after it are in their windows
    assert (result["recordsExtracted"], result["recordsRejected"]) == (7, 1)
    assert result["watermark"] == topic.ends()


def test_a_partition_whose_poll_holds_only_a_poison_message_does_not_stop_the_stream(kafka, tmp_path, uniq):
    windowing = Windowing("tumbling", size_ms=60_000)
    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    topic.send(0, [event(10, "a", 1), event(70, "a", 2)])
    topic.send(1, [b"not json"])
    name, log, db = f"poison-only-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [ENRICH, windowing.processor()], [database(db)])

    result = Pipeline.from_dict(spec).run(log=log, runtime="local", until_idle=1)

    assert result["status"] == "success", result.get("error")
    assert windows_in(db) == Reference(windowing).read(topic.sent).flush().rows()
    assert [d["record"]["_offset"] for d in letters(log, name, "extract")] == [0]


# Run 1 ends with --until-idle: every window is emitted, the last [120, 180), so with
# 10 s of allowed lateness events for windows ending at 180 or before are late from
# then on (F = 190). Run 2, times in seconds after T0:
#
#   partition 0:  170 (late)  185  250  100 (late)
#   partition 1:  179 (late)  200
def test_after_an_until_idle_run_new_events_for_emitted_windows_are_late_and_new_windows_right(
        kafka, tmp_path, uniq):
    windowing = Windowing("tumbling", size_ms=60_000, lateness_ms=10_000)
    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    topic.send(0, [event(10, "a", 1), event(50, "b", 2), event(70, "a", 3), event(130, "a", 4)])
    topic.send(1, [event(20, "b", 5), event(125, "b", 6)])
    name, log, db = f"again-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [windowing.processor()], [database(db)])
    first = run(spec, log)
    ref = Reference(windowing).read(topic.sent).flush()
    assert windows_in(db) == ref.rows() and first["recordsRejected"] == 0

    second_batch = topic.send(0, [event(170, "a", 7), event(185, "a", 8), event(250, "b", 9), event(100, "a", 10)])
    second_batch += topic.send(1, [event(179, "b", 11), event(200, "b", 12)])
    second = run(spec, log)

    ref.read(second_batch).flush()
    assert ref.late == [(0, 4), (0, 7), (1, 2)]
    assert windows_in(db) == ref.rows()                       # run 1's windows unchanged, run 2's new ones right
    assert late_letters(log, name) == sorted(ref.late)
    assert (second["recordsExtracted"], second["recordsRejected"]) == (6, 3)
    assert second["watermark"] == topic.ends()


# Partition 1 falls silent after one event; once it has been idle for idleTimeout (1 s)
# the watermark follows partition 0 alone, up to 200 - 5 = 195 s, and the minutes
# ending by then are emitted. When partition 1 speaks again, events for those minutes
# are late although its own clock is at 10 s:
#
#   partition 1:  10  ...silent.....................  100 (late)  190  150 (late)  230
#   partition 0:       10..30, 40..60, ... 190..200  (a chunk every 0.3 s)
def test_after_an_idle_partition_resumes_its_events_for_emitted_windows_are_late(kafka, tmp_path, uniq):
    windowing = Windowing("tumbling", size_ms=60_000)
    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    topic.send(1, [event(10, "b", 0)])
    name, log, db = f"idle-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [windowing.processor(idleTimeout="1s")], [database(db)])
    pipeline = Pipeline.from_dict(spec).start(log=log, runtime="local")

    def stream() -> dict:
        return pipeline.status(log).get("stream") or {}

    try:
        wait_for(lambda: stream().get("positions", {}).get(f"{topic.name}:1") == 1, 30, "partition 1 read")
        for first in range(10, 201, 30):
            topic.send(0, [event(t, "a", t) for t in range(first, min(first + 30, 201), 10)])
            time.sleep(0.3)
        wait_for(lambda: stream().get("emittedUpTo") == T0 + 195_000, 10, "windows emitted up to 195 s")
        resumed = topic.send(1, [event(100, "b", 1), event(190, "b", 2), event(150, "b", 3), event(230, "b", 4)])
        wait_for(lambda: stream()["positions"] == topic.ends(), 10, "partition 1 read again")
    finally:
        stopped = pipeline.stop()
    assert stopped["status"] == "success", stopped.get("error")

    run(spec, log)                                        # emits what is still open

    ref = Reference(windowing).read([s for s in topic.sent if s not in resumed])
    ref.floor = T0 + 195_000
    ref.read(resumed).flush()
    assert ref.late == [(1, 1), (1, 3)]
    assert windows_in(db) == ref.rows()
    assert late_letters(log, name) == ref.late


def test_a_kafka_sink_receives_the_same_windows_as_the_database_sink(kafka, tmp_path, uniq):
    rng = random.Random(11)
    windowing = Windowing("sliding", size_ms=20_000, slide_ms=10_000, out_of_order_ms=1_000)
    topic = Topic(kafka, f"clicks-{uniq}", partitions=2)
    for p in range(2):
        topic.send(p, noisy_events(rng, 200, start_s=0, step_ms=500, jitter_ms=800, late_every=25,
                                   late_by_ms=30_000))
    out = kafka.create_topic(f"windows-{uniq}", 1)
    name, log, db = f"two-sinks-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = stream_spec(name, topic, [windowing.processor()], [database(db), {"type": "kafka", "topic": out}])

    result = run(spec, log)

    rows = Reference(windowing).read(topic.sent).flush().rows()
    assert windows_in(db) == rows
    assert ordered(kafka.consume_all(out)) == rows            # each window once
    assert result["recordsLoaded"] == len(rows)


def test_a_stream_without_a_window_loads_every_event_once(kafka, tmp_path, uniq):
    topic = Topic(kafka, f"orders-{uniq}", partitions=2)

    def orders(first: int, count: int) -> list[dict]:
        return [{"id": i, "userId": f"u{i % 3}", "value": i % 20, "timestamp": T0 + i}
                for i in range(first, first + count)]

    for p in range(2):
        topic.send(p, orders(p * 1_000, 400))
    name, log, db = f"plain-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    processors = [{"id": "enrich", "type": "map", "keep": True,
                   "mappings": {"user": {"source": "userId", "converter": "uppercase"}}},
                  {"id": "big", "type": "filter", "condition": "value >= 5"}]
    spec = stream_spec(name, topic, processors, [database(db, "orders", mode="insert")], parallelism=2)

    def expected() -> list[tuple]:
        return sorted((o["id"], o["userId"].upper(), o["value"]) for _, _, o in topic.sent if o["value"] >= 5)

    def loaded() -> list[tuple]:
        return sorted((r["id"], r["user"], r["value"]) for r in windows_in(db, "orders"))

    first = run(spec, log)
    assert loaded() == expected()
    assert (first["recordsExtracted"], first["recordsLoaded"]) == (800, len(expected()))

    for p in range(2):                                         # a second run reads only what is new
        topic.send(p, orders(5_000 + p * 1_000, 100))
    second = run(spec, log)
    assert loaded() == expected()                              # none missing, none twice
    assert (second["recordsExtracted"], second["recordsLoaded"]) == (200, 150)
    assert second["watermark"] == topic.ends()


class LosesAWindowActor(LocalChildren):
    """Children in this process whose window actor dies at the first checkpoint after
    it took events (as a kill -9 between the two would make it)."""

    added = lost = False

    async def call(self, kind: str, index: int, method: str, *args, **kwargs):
        if kind == "window" and method == "add":
            self.added = True
        if kind == "window" and method == "advance" and self.added and not self.lost:
            self.lost = True
            raise ChildLost(f"window#{index}", "lost on request")
        return await super().call(kind, index, method, *args, **kwargs)


def test_late_events_replayed_after_a_lost_window_actor_count_once_in_the_summary(kafka, tmp_path, uniq):
    windowing = Windowing("tumbling", size_ms=60_000)
    topic = Topic(kafka, f"clicks-{uniq}")
    topic.send(0, [event(t, user, i) for i, (t, user) in enumerate(TIMES)])
    name, log, db = f"lost-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec = Pipeline.from_dict(stream_spec(name, topic, [windowing.processor()], [database(db)])).spec
    children = []

    def build(spec, log_url):
        children.append(LosesAWindowActor(spec, log_url))
        return children[-1]

    result = asyncio.run(PipelineSupervisor(spec, log, build).run(until_idle=1))

    ref = Reference(windowing).read(topic.sent).flush()
    assert children[0].lost and result["status"] == "success"
    assert windows_in(db) == ref.rows() and late_letters(log, name) == ref.late   # the replay is right
    assert result["recordsRejected"] == len(ref.late) == len(letters(log, name))  # and so should its count be


def test_an_event_a_processor_fails_on_is_a_dead_letter_and_the_stream_goes_on(kafka, tmp_path, uniq):
    topic = Topic(kafka, f"bad-{uniq}", partitions=1)
    good = [event(s, f"u{s % 3}", 0, code=str(s)) for s in range(0, 200, 5)]
    bad = event(33, "u9", 0, code="x")                              # text the expression cannot read as int
    topic.send(0, good[:10] + [bad] + good[10:])
    windowing = Windowing("tumbling", size_ms=60_000)
    parse = {"id": "parse", "type": "map", "keep": True, "mappings": {"value": {"expression": "int(code)"}}}
    spec = stream_spec(f"bad-{uniq}", topic, [parse, windowing.processor()], [database(tmp_path / "out.db")])
    log = f"sqlite:///{tmp_path}/events.db"

    result = Pipeline.from_dict(spec).run(log=log, runtime="local", until_idle=1.0)

    parsed = [(p, o, {**v, "value": int(v["code"])}) for p, o, v in topic.sent if v is not bad]
    assert result["status"] == "success" and result["recordsRejected"] == 1
    assert windows_in(tmp_path / "out.db") == Reference(windowing).read(parsed).flush().rows()
    [letter] = letters(log, spec["name"], "transform:parse")
    assert letter["record"]["_offset"] == 10 and letter["record"]["code"] == "x" and "'parse'" in letter["reason"]


def test_a_processor_that_fails_on_every_event_stops_the_stream_before_its_position_moves(kafka, tmp_path, uniq):
    topic = Topic(kafka, f"typo-{uniq}", partitions=1)
    topic.send(0, [event(s, "u", s) for s in range(0, 100, 5)])
    typo = {"id": "typo", "type": "map", "mappings": {"v": {"source": "valeu"}}}
    spec = stream_spec(f"typo-{uniq}", topic, [typo], [database(tmp_path / "out.db", mode="insert")])
    log = f"sqlite:///{tmp_path}/events.db"

    result = Pipeline.from_dict(spec).run(log=log, runtime="local", until_idle=1.0)

    assert result["status"] == "failed" and "'typo'" in result["error"] and "valeu" in result["error"]
    assert result["watermark"] == {} and letters(log, spec["name"]) == []
