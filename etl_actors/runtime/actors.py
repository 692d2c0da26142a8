"""The one module that imports Ray: it turns the plain classes into actors.

* ``etl:<pipeline>`` — the supervisor, an async actor in the ``etl_actors`` namespace
  with a ``control`` concurrency group so ``status`` and ``stop`` answer while a run is
  busy. Its children share its fate: the first ones a run needs are created by the
  driver beside it (so they boot together) and belong to the driver, as it does; those
  it creates later (more extractors, replacements) are its own.
* ``etl:<pipeline>:extractor:<i>``, ``...:transformer:<i>``, ``...:loader`` — sync stage
  actors. Tables pass between them as ObjectRefs; the supervisor sees only reports.

Children are created with ``max_restarts=0``: when one dies, its call raises here and
the supervisor records ``ChildRestarted``, creates it again and retries the batch
(loaders are idempotent by batch id, so a retry after a commit is a no-op).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..errors import LeaseHeld
from ..leases import iso
from ..logs import RunLogger
from ..spec import PipelineSpec
from .graph import STAGES, child_name, first_children
from .supervisor import ChildLost, PipelineSupervisor

NAMESPACE = "etl_actors"


def supervisor_name(pipeline: str) -> str:
    return f"etl:{pipeline}"


def _unwrap(exc: RayTaskError) -> BaseException:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class RayChildren:
    """Implements :class:`~.supervisor.Children` with Ray actors, one per child, named
    as :func:`~.graph.child_name` says."""

    def __init__(self, spec: PipelineSpec, log_url: str):
        self.spec, self.log_url = spec, log_url
        self.handles: dict[tuple[str, int], Any] = {}
        self.generations: dict[tuple[str, int], int] = {}
        self.fresh: set[tuple[str, int]] = set()    # started ahead of a run, never used yet
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        for kind, n in first_children(spec, cluster_cpus).items():
            for index in range(n):
                self._take_first(kind, index, fresh=not restarted)

    def _take_first(self, kind: str, index: int, fresh: bool) -> None:
        """Take over the child the driver started with this supervisor (see
        :func:`start_supervisor`), or start it now. A child taken over by a supervisor
        Ray restarted served the one before it: the run resets it."""
        name = child_name(self.spec.name, kind, index)
        for attempt in range(3):
            try:
                self.handles[(kind, index)] = ray.get_actor(name, namespace=NAMESPACE)
                if fresh:
                    self.fresh.add((kind, index))
                return
            except ValueError:   # not there: start it
                pass
            try:
                self.handles[(kind, index)] = spawn_child(self.spec, self.log_url, kind, index)
                self.fresh.add((kind, index))
                return
            except ValueError:   # started meanwhile, or a dying one's name: look again
                time.sleep(0.05)

    def cpus(self) -> int:
        return cluster_cpus()

    async def _create(self, kind: str, index: int) -> None:
        for attempt in range(50):
            try:
                self.handles[(kind, index)] = spawn_child(self.spec, self.log_url, kind, index)
                return
            except ValueError:  # the name of a dying predecessor is not free yet
                await asyncio.sleep(0.2)
        raise RuntimeError(f"cannot create {child_name(self.spec.name, kind, index)}: the name stays taken")

    async def _await(self, kind: str, index: int, ref):
        try:
            return await ref
        except RayActorError as exc:
            raise ChildLost(f"{kind}#{index}", type(exc).__name__) from None
        except RayTaskError as exc:
            raise _unwrap(exc) from None

    async def start(self, counts: Mapping[str, int]) -> None:
        wanted = [(kind, i) for kind, n in counts.items() for i in range(n)]
        warm = [key for key in wanted if key in self.handles and key not in self.fresh]
        self.fresh.clear()
        for kind, index in wanted:
            if (kind, index) not in self.handles:
                await self._create(kind, index)
        await asyncio.gather(*(self._ready(kind, index, (kind, index) in warm) for kind, index in wanted))

    async def _ready(self, kind: str, index: int, warm: bool, attempts: int = 3) -> None:
        """Wait until the child answers (a warm one after resetting its state); one that
        dies while starting is created again."""
        for attempt in range(attempts):
            handle = self.handles[(kind, index)]
            try:
                call = handle.reset.remote() if warm and attempt == 0 else handle.__ray_ready__.remote()
                return await self._await(kind, index, call)
            except ChildLost:
                if attempt == attempts - 1:
                    raise
                await self.restart(kind, index)

    async def call(self, kind: str, index: int, method: str, *args, returns: int = 1, resolve: int = 0) -> Any:
        """Call ``method`` on the child; with ``returns > 1`` the result is a tuple whose
        item ``resolve`` is the value and the others ObjectRefs (tables stay in the
        object store)."""
        remote = getattr(self.handles[(kind, index)], method)
        if returns == 1:
            return await self._await(kind, index, remote.remote(*args))
        refs = list(remote.options(num_returns=returns).remote(*args))
        refs[resolve] = await self._await(kind, index, refs[resolve])
        return tuple(refs)

    def generation(self, kind: str, index: int) -> int:
        """How many times the child was replaced; calls made before a restart fail."""
        return self.generations.get((kind, index), 0)

    async def restart(self, kind: str, index: int) -> None:
        self.generations[(kind, index)] = self.generation(kind, index) + 1
        old = self.handles.pop((kind, index), None)
        if old is not None:
            ray.kill(old, no_restart=True)
        await self._create(kind, index)

    async def stop(self) -> None:
        async def close(handle) -> None:
            try:
                await asyncio.wait_for(handle.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - best effort; a dead child holds nothing open
                pass

        await asyncio.gather(*(close(h) for h in self.handles.values()))

    async def shutdown(self) -> None:
        await self.stop()
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        self.handles.clear()


class PipelineMetrics:
    """Dashboard metrics from the supervisor's events, tagged with ``pipeline``.

    Best effort (Ray exports them every few seconds and drops them on a force kill):
    for dashboards and alerts, never for billing, which folds the event log.
    Exported as ``ray_etl_records_total{stage=...}``, ``ray_etl_batches_in_flight`` ...
    """

    def __init__(self, pipeline: str):
        from ray.util.metrics import Counter, Gauge

        tags = {"pipeline": pipeline}
        self.records = Counter("etl_records", "Records through a stage (extracted, loaded, rejected, filtered)",
                               tag_keys=("pipeline", "stage")).set_default_tags(tags)
        self.bytes = Counter("etl_bytes_extracted", "Bytes extracted", tag_keys=("pipeline",)).set_default_tags(tags)
        self.errors = Counter("etl_errors", "Child restarts, skipped steps and failed runs",
                              tag_keys=("pipeline",)).set_default_tags(tags)
        self.in_flight = Gauge("etl_batches_in_flight", "Batches extracted and not yet loaded",
                               tag_keys=("pipeline",)).set_default_tags(tags)
        self.lag = Gauge("etl_commit_lag_seconds", "Seconds since the last committed position",
                         tag_keys=("pipeline",)).set_default_tags(tags)
        self._open = 0
        self._last_commit = time.time()

    def _count(self, stage: str, value: int) -> None:
        if value > 0:   # Counter.inc(0) raises
            self.records.inc(value, tags={"stage": stage})

    def __call__(self, event) -> None:
        from .. import events as ev

        if isinstance(event, ev.BatchExtracted):
            self._open += 1
            self._count("extracted", event.rows + event.rejected)
            if event.bytes > 0:
                self.bytes.inc(event.bytes)
        elif isinstance(event, ev.BatchTransformed):
            self._count("filtered", event.filtered)
            self._count("rejected", event.rejected)
        elif isinstance(event, ev.BatchLoaded):
            self._open = max(0, self._open - 1)
            self._count("loaded", event.rows)
            self._count("rejected", event.failed)
        elif isinstance(event, ev.WatermarkCommitted):
            self._last_commit = event.at
        elif isinstance(event, ev.CheckpointCommitted):     # a stream: the counts since its last checkpoint
            self._count("extracted", event.extracted)
            self._count("loaded", event.loaded)
            self._count("rejected", event.rejected + event.late)
            self._count("filtered", event.filtered)
            if event.bytes > 0:
                self.bytes.inc(event.bytes)
            self._last_commit = event.at
        elif isinstance(event, (ev.ChildRestarted, ev.StepSkipped, ev.RunFailed)):
            self.errors.inc(1)
        elif isinstance(event, ev.RunStarted):
            self._open, self._last_commit = 0, event.at
        self.in_flight.set(self._open)
        self.lag.set(max(0.0, time.time() - self._last_commit))


@ray.remote(num_cpus=0, concurrency_groups={"control": 1})
class SupervisorActor:
    """``PipelineSupervisor`` on Ray. May be restarted: ``__init__`` replays the log,
    and a retried ``run`` resumes from the committed watermark."""

    def __init__(self, spec: PipelineSpec, log_url: str):
        context = ray.get_runtime_context()
        identity = {"actor": context.get_actor_id(), "cluster": context.get_session_name()}
        self.supervisor = PipelineSupervisor(spec, log_url, RayChildren, identity=identity,
                                             listeners=[PipelineMetrics(spec.name), RunLogger(spec.name)])

    def __repr__(self) -> str:
        return repr(self.supervisor)

    async def run(self, trigger: str = "manual", run_id: str | None = None, reset: bool = False,
                  force: bool = False, until_idle: float | None = None, redrive: dict | None = None) -> dict:
        return await self.supervisor.run(trigger, run_id, reset, force, until_idle, redrive)

    @ray.method(concurrency_group="control")
    async def status(self) -> dict:
        return self.supervisor.status()

    @ray.method(concurrency_group="control")
    async def stop(self, reason: str = "stopped on request") -> None:
        self.supervisor.stop(reason)

    async def shutdown(self) -> None:
        """End the children (the driver then kills this actor)."""
        await self.supervisor.shutdown()


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def spawn_child(spec: PipelineSpec, log_url: str, kind: str, index: int):
    """Create a child actor by its name (its process starts in the background);
    ValueError while the name is taken."""
    stage = STAGES[kind]
    cls = ray.remote(stage.cls(spec))
    return cls.options(name=child_name(spec.name, kind, index), namespace=NAMESPACE, num_cpus=spec.runtime.num_cpus,
                       max_restarts=0, max_task_retries=0).remote(*stage.args(spec, log_url, index))


_STARTED_WITH: dict[str, list] = {}   # supervisor actor id -> the children the driver started with it


def start_supervisor(spec: PipelineSpec, log_url: str, wait_s: float = 30.0):
    """Create the pipeline's supervisor; refuses when a live one is already running.

    The children every run needs (:func:`~.graph.first_children`) are created here too,
    beside it, so their processes boot while the supervisor's does; the supervisor
    takes them over by name. Being the driver's, they share its fate as the supervisor
    does; :func:`stop_started_children` ends them with the supervisor.

    A supervisor whose driver just died may still hold the name for a moment: it is
    waited for (up to ``wait_s``), not mistaken for a running pipeline.
    """
    name = supervisor_name(spec.name)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            supervisor = SupervisorActor.options(name=name, namespace=NAMESPACE, max_restarts=3).remote(spec, log_url)
            started = []
            for kind, n in first_children(spec, cluster_cpus).items():
                for index in range(n):
                    try:
                        started.append(spawn_child(spec, log_url, kind, index))
                    except ValueError:   # a dying predecessor holds the name: the supervisor starts it
                        pass
            _STARTED_WITH[supervisor._actor_id.hex()] = started
            return supervisor
        except ValueError:
            status = _status(name)
            if status is not None:
                raise LeaseHeld(_refusal(spec.name, status), pipeline=spec.name, owner=status.get("owner")) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the actor name {name!r} stays taken by a supervisor that does not answer") from None
            time.sleep(0.5)


def _refusal(pipeline: str, status: dict) -> str:
    """Why a second supervisor of a pipeline is refused on this cluster, in one line."""
    if not status.get("running"):
        return (f"pipeline {pipeline!r} already has a supervisor on this Ray cluster, about to start a run or "
                "kept warm by another Pipeline object (close() that one first)")
    since = status.get("since")
    when = f" since {iso(since)}" if since else ""
    return (f"pipeline {pipeline!r} is already running on this Ray cluster: "
            f"{status.get('owner') or 'run ' + str(status.get('runId'))}{when}; wait for it to end, or stop it")


def _status(name: str) -> dict | None:
    """The live supervisor's status, or None when it is gone, dying or unreachable."""
    try:
        return ray.get(ray.get_actor(name, namespace=NAMESPACE).status.remote(), timeout=5)
    except Exception:  # noqa: BLE001 - not a live supervisor
        return None


def stop_started_children(supervisor) -> None:
    """End the children :func:`start_supervisor` created with ``supervisor`` (after the
    supervisor's own shutdown; already ended ones are no matter)."""
    for handle in _STARTED_WITH.pop(supervisor._actor_id.hex(), []):
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - gone already
            pass

