"""The Python surface: build a pipeline from a spec and run it.

    >>> import etl_actors as ea
    >>> result = ea.Pipeline.from_file("examples/orders.yaml").run()   # doctest: +SKIP
    >>> result["status"], result["recordsLoaded"]                        # doctest: +SKIP
    ('success', 1000)

``run`` uses Ray: the cluster at ``RAY_ADDRESS`` (or the one ``ray job submit`` runs
in), else a local one it starts. ``runtime="local"`` runs the same classes in this
process instead.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from typing import Any, Mapping

from .errors import EtlError, RunInterrupted, SpecError
from .eventlog import EventLog, check_durable
from .events import pipeline_stream
from .leases import Leases
from .projections import runs as runs_projection
from .projections import watermarks as watermarks_projection
from .spec import PipelineSpec, anchor_sqlite, parse, parse_file

DEFAULT_LOG = "sqlite:///.etl_actors/events.db"
SUPERVISOR_RETRIES = 3
STOP_GRACE_S = 60.0


def resolve_log_url(log: str | None = None) -> str:
    """``log``, else ``$ETL_ACTORS_LOG``, else a SQLite file under ``./.etl_actors/``;
    relative SQLite paths are made absolute so every actor opens the same file. (An
    unsupported kind of URL is refused by :class:`EventLog` when it is opened.)"""
    return anchor_sqlite(log or os.environ.get("ETL_ACTORS_LOG") or DEFAULT_LOG, os.getcwd())


def ensure_ray(**init_kwargs) -> None:
    """Connect to Ray once per process: the cluster at ``RAY_ADDRESS`` if set, else a new
    local one."""
    import ray

    if ray.is_initialized():
        return
    check_ray_address(init_kwargs.get("address") or os.environ.get("RAY_ADDRESS"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_kwargs.setdefault("namespace", "etl_actors")
    init_kwargs.setdefault("log_to_driver", False)
    init_kwargs.setdefault("configure_logging", False)
    ray.init(**init_kwargs)


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when ``address`` (``host:port`` or ``ray://host:port``)
    does not answer: ``ray.init`` would retry for minutes before saying so."""
    match = re.fullmatch(r"(?:ray://)?([\w.\-]+):(\d+)", address or "")
    if match is None:
        return  # not host:port ("auto", "local", ...): leave it to Ray
    host, port = match.groups()
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise EtlError(f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): "
                       f"{exc.strerror or type(exc).__name__}") from None


class Pipeline:
    """A validated pipeline spec and the ways to run it."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self._supervisor = None     # kept between runs on Ray, with its warm children
        self._supervisor_log = None

    @classmethod
    def from_file(cls, path: str) -> "Pipeline":
        return cls(parse_file(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str = ".") -> "Pipeline":
        return cls(parse(data, base_dir=os.path.abspath(base_dir)))

    @property
    def name(self) -> str:
        return self.spec.name

    def run(self, log: str | None = None, runtime: str = "ray", trigger: str = "manual",
            reset: bool = False, force: bool = False) -> dict:
        """Run once from the committed watermark (from the start of the source with
        ``reset``); return the run summary (``status`` is ``success`` or ``failed``).

        Raises :class:`~etl_actors.errors.LeaseHeld` while another run of this pipeline
        is live (anywhere that shares the event log), unless ``force``: then that run
        is recorded as interrupted and fenced out."""
        log_url = resolve_log_url(log)
        check_durable(log_url)
        if runtime == "local":
            return run_local(self.spec, log_url, trigger, reset, force)
        if runtime != "ray":
            raise SpecError("runtime", f"{runtime!r} is not one of ray, local")
        if self._supervisor is not None and self._supervisor_log != log_url:
            self.close()
        if self._supervisor is None:
            self._supervisor, self._supervisor_log = start_on_ray(self.spec, log_url, force), log_url
        try:
            return run_supervised(self._supervisor, trigger, reset, force)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End the supervisor and children this object keeps between runs on Ray. They
        also end with the driver process."""
        if self._supervisor is not None:
            stop_supervisor(self._supervisor)
            self._supervisor = self._supervisor_log = None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def status(self, log: str | None = None) -> dict:
        return pipeline_status(self.name, resolve_log_url(log), self.spec)

    def stop(self) -> None:
        """Ask the running supervisor to finish its batches in flight and stop."""
        import ray

        from .runtime.actors import NAMESPACE, supervisor_name

        ensure_ray()
        ray.get(ray.get_actor(supervisor_name(self.name), namespace=NAMESPACE).stop.remote())


def run_local(spec: PipelineSpec, log_url: str, trigger: str = "manual", reset: bool = False,
              force: bool = False) -> dict:
    from .logs import RunLogger
    from .runtime.local import LocalChildren
    from .runtime.supervisor import PipelineSupervisor

    run_id = uuid.uuid4().hex[:12]
    try:
        supervisor = PipelineSupervisor(spec, log_url, LocalChildren, listeners=[RunLogger(spec.name, "warning")])
        return asyncio.run(supervisor.run(trigger, run_id, reset, force))
    except KeyboardInterrupt:  # the run was cancelled and recorded as failed: say how far it got
        last = pipeline_status(spec.name, log_url, spec)["lastRun"]
        if last is None or last["runId"] != run_id:
            raise
        raise RunInterrupted(last) from None


def run_on_ray(spec: PipelineSpec, log_url: str, trigger: str = "manual") -> dict:
    """One run on Ray with a supervisor of its own, ended afterwards."""
    supervisor = start_on_ray(spec, log_url)
    try:
        return run_supervised(supervisor, trigger)
    finally:
        stop_supervisor(supervisor)


def start_on_ray(spec: PipelineSpec, log_url: str, force: bool = False):
    from .runtime.actors import start_supervisor

    leases = Leases(EventLog(log_url))   # an unreachable log, or a live run, is said before Ray starts
    if not force:
        leases.refuse_early(spec.name)
    ensure_ray()
    return start_supervisor(spec, log_url)


def run_supervised(supervisor, trigger: str = "manual", reset: bool = False, force: bool = False) -> dict:
    """Run through ``supervisor``; when it dies, Ray restarts it (its ``__init__``
    replays the log) and the run is asked for again, resuming from the watermark.
    An error the run raised is raised here as itself, not wrapped in Ray's."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    for attempt in range(SUPERVISOR_RETRIES + 1):
        run = supervisor.run.remote(trigger, None, reset and attempt == 0, force and attempt == 0)
        try:
            return ray.get(run)
        except RayActorError:
            if attempt == SUPERVISOR_RETRIES:
                raise
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(_stop_gracefully(supervisor, run)) from None


def _stop_gracefully(supervisor, run) -> dict:
    """After a Ctrl-C: ask the supervisor to stop once the batches in flight are
    committed, and wait for the run's summary. A second Ctrl-C (or a supervisor that
    does not answer in time) gives up on it at once: the run then ends with the driver
    and is recorded as interrupted when the pipeline next starts."""
    import ray

    print("etl-actors: interrupted: stopping after the batches in flight (Ctrl-C again to abandon them)",
          file=sys.stderr, flush=True)
    try:
        ray.get(supervisor.stop.remote("interrupted (Ctrl-C)"), timeout=STOP_GRACE_S)
        return ray.get(run, timeout=STOP_GRACE_S)
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001 - any failure to stop cleanly is a plain interrupt
        raise KeyboardInterrupt from None


def stop_supervisor(supervisor) -> None:
    import ray

    try:
        ray.get(supervisor.shutdown.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - it may be dead already; the kill below settles it
        pass
    ray.kill(supervisor, no_restart=True)


def pipeline_status(name: str, log_url: str, spec: PipelineSpec | None = None) -> dict:
    """What the log says of a pipeline: watermark, run count, the last run."""
    recorded = EventLog(log_url).read(pipeline_stream(name))
    runs = runs_projection.project(recorded)
    marks = watermarks_projection.project(recorded)
    view = spec.source.view_watermark if spec else None
    last = runs.last(name)
    return {"pipeline": name, "watermark": view(marks) if view else marks, "runs": len(runs.of(name)),
            "lastRun": runs_projection.summary(last, view) if last else None}
