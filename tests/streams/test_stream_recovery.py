"""kill -9 in the middle of a stream, while events keep coming: a window actor, the
loader, the supervisor, the driver. Afterwards the destination holds exactly the
reference windows (none lost, none counted twice) and every late event is one dead
letter."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import yaml

from etl_actors import Pipeline
from etl_actors import events as ev
from etl_actors.eventlog import EventLog

from .kit import Reference, Topic, Windowing, database, late_letters, noisy_events, stream_spec, wait_for, windows_in

pytestmark = [pytest.mark.slow]

PARTITIONS, CHUNKS, PER_CHUNK = 3, 20, 300
WINDOWING = Windowing("tumbling", size_ms=5_000, out_of_order_ms=1_000, parallelism=2)


class Feed(threading.Thread):
    """Sends the chunks to the topic one after the other, ``pause`` seconds apart."""

    def __init__(self, topic: Topic, chunks: list[dict[int, list]], pause: float = 0.1):
        super().__init__(daemon=True)
        self.topic, self.chunks, self.pause, self.sent = topic, chunks, pause, 0

    def run(self) -> None:
        for chunk in self.chunks:
            for partition, values in chunk.items():
                self.topic.send(partition, values)
            self.sent += 1
            time.sleep(self.pause)


def chunks(seed: int) -> list[dict[int, list]]:
    """Per partition 6,000 events, 50 ms of event time apart, up to 800 ms out of order,
    every 40th 8 s behind (late), cut into CHUNKS chunks."""
    rng = random.Random(seed)
    per_partition = {p: noisy_events(rng, CHUNKS * PER_CHUNK, start_s=p * 3, step_ms=50, jitter_ms=800,
                                     late_every=40, late_by_ms=8_000) for p in range(PARTITIONS)}
    return [{p: events[i * PER_CHUNK:(i + 1) * PER_CHUNK] for p, events in per_partition.items()}
            for i in range(CHUNKS)]


def checkpoints(log: str, name: str) -> list:
    return [r.event for r in EventLog(log).read(f"pipeline:{name}") if isinstance(r.event, ev.CheckpointCommitted)]


def begun(topic: Topic, seed: int) -> Feed:
    """The first chunk sent; the rest to be sent by the returned (not started) Feed."""
    parts = chunks(seed)
    for partition, values in parts[0].items():
        topic.send(partition, values)
    return Feed(topic, parts[1:])


def mid_stream(feed: Feed, log: str, name: str, db) -> None:
    """Once the stream has committed a checkpoint: start feeding, and return when windows
    are in the destination and events are still coming."""
    wait_for(lambda: checkpoints(log, name), 60, "a first checkpoint")
    feed.start()
    wait_for(lambda: windows_in(db) and feed.sent >= 4, 60, "windows in the destination")
    assert feed.is_alive(), "the feed ended before the kill: it would not land mid-stream"


def assert_reference(topic: Topic, log: str, name: str, db) -> Reference:
    ref = Reference(WINDOWING).read(topic.sent).flush()
    assert len(ref.late) > 100
    assert windows_in(db) == ref.rows()                        # none lost, none counted twice
    assert late_letters(log, name) == sorted(ref.late)         # each late event once
    return ref


def restarted(log: str, name: str) -> list[str]:
    return [r.event.child for r in EventLog(log).read(f"pipeline:{name}") if isinstance(r.event, ev.ChildRestarted)]


@pytest.mark.parametrize("victim", ["window:1", "loader"])
def test_a_killed_child_is_replaced_and_the_windows_equal_the_reference(ray_local, kafka, tmp_path, uniq, victim):
    topic = Topic(kafka, f"clicks-{uniq}", PARTITIONS)
    feed = begun(topic, seed=1)
    name, log, db = f"kill-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    pipeline = Pipeline.from_dict(stream_spec(name, topic, [WINDOWING.processor()], [database(db)], parallelism=2))
    with pipeline:
        pipeline.start(log=log, until_idle=3)
        mid_stream(feed, log, name, db)
        ray.kill(ray.get_actor(f"etl:{name}:{victim}", namespace="etl_actors"))
        feed.join()
        result = pipeline.wait(timeout=60)

    assert result["status"] == "success", result.get("error")
    assert restarted(log, name) == [victim.replace(":", "#") if ":" in victim else "loader#0"]
    ref = assert_reference(topic, log, name, db)
    assert result["watermark"] == topic.ends()
    assert result["recordsRejected"] == len(ref.late)          # replayed late events are not counted again


def test_a_killed_supervisor_is_restarted_and_the_windows_equal_the_reference(ray_local, kafka, tmp_path, uniq):
    topic = Topic(kafka, f"clicks-{uniq}", PARTITIONS)
    feed = begun(topic, seed=2)
    name, log, db = f"sup-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    pipeline = Pipeline.from_dict(stream_spec(name, topic, [WINDOWING.processor()], [database(db)], parallelism=2))

    def kill_supervisor() -> None:
        mid_stream(feed, log, name, db)
        ray.kill(ray.get_actor(f"etl:{name}", namespace="etl_actors"), no_restart=False)

    killer = threading.Thread(target=kill_supervisor, daemon=True)
    killer.start()
    with pipeline:
        result = pipeline.run(log=log, until_idle=3)
    killer.join()
    feed.join()

    assert result["status"] == "success", result.get("error")
    ends = [type(r.event).__name__ for r in EventLog(log).read(f"pipeline:{name}")
            if isinstance(r.event, (ev.RunFailed, ev.RunSucceeded))]
    assert ends == ["RunFailed", "RunSucceeded"]
    assert_reference(topic, log, name, db)
    assert result["watermark"] == topic.ends()


def test_a_killed_driver_then_a_rerun_until_idle_gives_the_reference_windows(ray_local, kafka, tmp_path, uniq):
    topic = Topic(kafka, f"clicks-{uniq}", PARTITIONS)
    feed = begun(topic, seed=3)
    name, log, db = f"driver-{uniq}", f"sqlite:///{tmp_path}/events.db", tmp_path / "out.db"
    spec_path = tmp_path / "stream.yaml"
    spec_path.write_text(yaml.safe_dump(
        stream_spec(name, topic, [WINDOWING.processor()], [database(db)], parallelism=2)))
    env = {**os.environ, "RAY_ADDRESS": ray_local.address_info["address"]}
    command = [sys.executable, "-m", "etl_actors", "run", str(spec_path), "--log", log, "--json"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        mid_stream(feed, log, name, db)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    feed.join()
    assert checkpoints(log, name)[-1].positions != topic.ends()   # the kill left work undone

    rerun = subprocess.run(command + ["--until-idle", "2"], env=env, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["status"] == "success" and summary["watermark"] == topic.ends()
    assert 0 < summary["recordsExtracted"] < len(topic.sent)     # from the last checkpoint, not the start
    assert_reference(topic, log, name, db)
