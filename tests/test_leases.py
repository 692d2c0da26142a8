"""The lease contract, on every event-log backend: one live run per pipeline, taken
over only when its holder is provably gone, its heartbeat expired, or by force."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from etl_actors.errors import LeaseHeld, LeaseLost
from etl_actors.eventlog import EventLog
from etl_actors.events import PhaseStarted
from etl_actors.leases import Heartbeat, Leases, Owner, process_started


def dead_owner(run_id: str = "r-dead") -> Owner:
    """A run whose process, on this host, has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = process_started(child.pid)
    child.wait()
    return Owner(run_id, socket.gethostname(), child.pid, started)


def elsewhere(run_id: str = "r-far") -> Owner:
    """A run on another machine: nothing here can tell whether it lives."""
    return Owner(run_id, "another-host.example", 4242, 1.0)


class LeaseContract:
    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def leases(self, url):
        return Leases(EventLog(url))

    def test_a_live_lease_is_refused_naming_its_owner_run_and_start(self, leases):
        held = leases.acquire("orders", Owner.here("r1"), timeout=30).lease
        with pytest.raises(LeaseHeld) as refused:
            leases.acquire("orders", Owner.here("r2"), timeout=30)
        message = str(refused.value)
        assert "already running" in message and "run r1 on " in message and f":{held.owner.pid}" in message
        assert refused.value.since.endswith("Z") and "--force" in message
        assert leases.current("orders").owner.run_id == "r1"

    def test_a_released_lease_is_taken_at_once_with_the_next_epoch(self, leases):
        first = leases.acquire("orders", Owner.here("r1"), timeout=30).lease
        leases.release("orders", first.epoch)
        grant = leases.acquire("orders", Owner.here("r2"), timeout=30)
        assert (grant.lease.epoch, grant.previous, grant.reason) == (first.epoch + 1, None, "")

    def test_a_holder_whose_process_is_gone_is_taken_over_at_once(self, leases):
        gone = dead_owner()
        leases.acquire("orders", gone, timeout=30)
        grant = leases.acquire("orders", Owner.here("r2"), timeout=30)
        assert grant.previous.owner.run_id == "r-dead" and "was lost" in grant.reason

    def test_a_holder_elsewhere_is_waited_for_until_its_heartbeat_expires(self, leases):
        leases.acquire("orders", elsewhere(), timeout=0.5)
        with pytest.raises(LeaseHeld, match="run r-far on another-host.example:4242"):
            leases.acquire("orders", Owner.here("r2"), timeout=30)
        time.sleep(0.7)
        grant = leases.acquire("orders", Owner.here("r2"), timeout=30)
        assert "expired" in grant.reason and grant.lease.epoch == 2

    def test_force_takes_a_live_lease_and_fences_the_old_epoch(self, leases, url):
        old = leases.acquire("orders", elsewhere(), timeout=30).lease
        new = leases.acquire("orders", Owner.here("r2"), timeout=30, force=True)
        assert "--force" in new.reason and new.lease.epoch == old.epoch + 1
        log = EventLog(url)
        with pytest.raises(LeaseLost, match="taken over by run r2"):
            log.append("pipeline:orders", [PhaseStarted(run_id="x", phase="extract")], 0, fence=("orders", old.epoch))
        assert log.append("pipeline:orders", [PhaseStarted(run_id="r2", phase="extract")], 0,
                          fence=("orders", new.lease.epoch)) == 1
        assert leases.renew("orders", old.epoch, 30) is False and leases.renew("orders", new.lease.epoch, 30)
        leases.release("orders", old.epoch)        # a stale release leaves the new lease alone
        assert not leases.current("orders").released

    def test_epochs_start_above_the_ones_the_log_already_recorded(self, leases):
        assert leases.acquire("orders", Owner.here("r1"), timeout=30, min_epoch=7).lease.epoch == 8

    def test_of_runs_started_at_the_same_moment_exactly_one_gets_the_lease(self, leases):
        barrier, outcomes = threading.Barrier(6), []

        def start(i: int) -> None:
            barrier.wait()
            try:
                leases.acquire("orders", Owner.here(f"r{i}"), timeout=30)
                outcomes.append("granted")
            except LeaseHeld:
                outcomes.append("refused")
            except Exception as exc:  # noqa: BLE001 - any other outcome is the bug
                outcomes.append(repr(exc))

        threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["granted"] + ["refused"] * 5

    def test_a_heartbeat_keeps_a_short_lease_alive_and_its_end_lets_it_expire(self, leases):
        lease = leases.acquire("orders", elsewhere(), timeout=0.6).lease
        beat = Heartbeat(leases, lease, timeout=0.6, on_lost=lambda: None)
        try:
            time.sleep(1.5)
            with pytest.raises(LeaseHeld):
                leases.acquire("orders", Owner.here("r2"), timeout=30)
        finally:
            beat.stop()
        time.sleep(0.8)
        assert "expired" in leases.acquire("orders", Owner.here("r2"), timeout=30).reason

    def test_a_heartbeat_says_when_its_lease_was_taken_over(self, leases):
        lease = leases.acquire("orders", elsewhere(), timeout=0.6).lease
        lost = threading.Event()
        beat = Heartbeat(leases, lease, timeout=0.6, on_lost=lost.set)
        leases.acquire("orders", Owner.here("r2"), timeout=30, force=True)
        assert lost.wait(3)
        beat.stop()


class TestSqliteLeases(LeaseContract):
    @pytest.fixture
    def url(self, tmp_path):
        return f"sqlite:///{tmp_path}/events.db"


@pytest.mark.postgres
class TestPostgresLeases(LeaseContract):
    @pytest.fixture
    def url(self, pg_schema):
        return pg_schema
