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
import signal
import threading
import re
import socket
import sys
import uuid
from typing import Any, Mapping

from .errors import EtlError, RunInterrupted, SpecError
from .eventlog import EventLog, check_durable
from .leases import Leases
from .projections import runs as runs_projection
from .spec import PipelineSpec, anchor_sqlite, parse, parse_file

DEFAULT_LOG = "sqlite:///.etl_actors/events.db"
SUPERVISOR_RETRIES = 3
STOP_GRACE_S = 60.0


def resolve_log_url(log: str | None = None) -> str:
    """``log``, else ``$ETL_ACTORS_LOG``, else a SQLite file under ``./.etl_actors/``;
    relative SQLite paths are made absolute so every actor opens the same file. (An
    unsupported kind of URL is refused by :class:`EventLog` when it is opened.)"""
    return anchor_sqlite(log or os.environ.get("ETL_ACTORS_LOG") or DEFAULT_LOG, os.getcwd())


# A local Ray of our own hands on a batch of a few megabytes every few milliseconds. Its
# object store frees a released batch within a tenth of a second (Ray's default, a
# second, keeps twenty more batches' memory in use, so each new one lands in pages the
# kernel must first zero), and Arrow's allocator in its workers keeps freed memory for a
# second before handing it back (after mimalloc's default, 10 ms, the next batch's
# buffers fault it in again). Together: an eighth of the extractor's page faults and 8%
# less CPU in a 6M-row CSV run. Each is an environment variable the user may set
# otherwise.
LOCAL_RAY_ENV = {"RAY_free_objects_period_milliseconds": "100", "MIMALLOC_PURGE_DELAY": "1000"}


def ensure_ray(**init_kwargs) -> None:
    """Connect to Ray once per process: the cluster at ``RAY_ADDRESS`` if set, else a new
    local one (with :data:`LOCAL_RAY_ENV`)."""
    import ray

    if ray.is_initialized():
        return
    address = init_kwargs.get("address") or os.environ.get("RAY_ADDRESS")
    check_ray_address(address)
    if not address:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    init_kwargs.setdefault("namespace", "etl_actors")
    init_kwargs.setdefault("log_to_driver", False)
    init_kwargs.setdefault("configure_logging", False)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**init_kwargs)
    if callable(previous):   # ray.init installs its own SIGTERM handler: the application's stays
        signal.signal(signal.SIGTERM, previous)


def stop_ray() -> None:
    """``ray.shutdown()``, in a tenth of a second rather than 1.1 to 1.4 for a local Ray
    this process started. Ray ends that cluster's processes one after the other, each
    given a second to leave after SIGTERM; the autoscaler's monitor, once the GCS is
    gone, never leaves by itself and is SIGKILLed after its second. It holds no state
    (a local cluster does not scale), so it is killed first and the others, which leave
    at once, follow as Ray ends them."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for info in (getattr(node, "all_processes", None) or {}).get("monitor", []):
        try:
            info.process.kill()
        except OSError:    # already gone
            pass
    ray.shutdown()


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
        self._started = None        # a run started with start(): its Ray ref or local thread
        self._started_log = None

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
            reset: bool = False, force: bool = False, until_idle: float | None = None,
            run_id: str | None = None) -> dict:
        """Run once from the committed watermark (from the start of the source with
        ``reset``); return the run summary (``status`` is ``success`` or ``failed``).
        A stream runs until stopped (Ctrl-C, SIGTERM, :meth:`stop` from elsewhere) or,
        with ``until_idle``, until no message has come for that many seconds.

        Raises :class:`~etl_actors.errors.LeaseHeld` while another run of this pipeline
        is live (anywhere that shares the event log), unless ``force``: then that run
        is recorded as interrupted and fenced out. ``run_id`` names the run (a fresh id
        when not given), so a caller can follow it in the log as it goes."""
        return self._run(log, runtime, trigger, reset, force, until_idle, run_id=run_id)

    def redrive(self, log: str | None = None, runtime: str = "ray", run_id: str | None = None,
                stage: str | None = None) -> dict:
        """Send the pending dead letters (of run ``run_id`` / stage ``stage`` when
        given) through the current spec from the stage where each failed: a run with
        trigger ``redrive`` whose summary counts them. Letters that load, or are
        filtered, leave the store; those failing again stay, with the new reason."""
        if self.spec.is_stream:
            from .errors import UsageError

            raise UsageError(f"{self.name} is a stream: its dead letters (late events, poison messages) "
                             "cannot be sent through it again")
        return self._run(log, runtime, "redrive", False, False, None, {"run": run_id, "stage": stage})

    def _run(self, log, runtime, trigger, reset, force, until_idle, redrive=None, run_id=None) -> dict:
        log_url = self._log(log, runtime)
        if runtime == "local":
            return run_local(self.spec, log_url, trigger, reset, force, until_idle, redrive, run_id)
        supervisor = self._ray_supervisor(log_url, force)
        try:
            return run_supervised(supervisor, trigger, reset, force, until_idle, redrive, run_id)
        except BaseException:
            self.close()
            raise

    def _log(self, log: str | None, runtime: str) -> str:
        log_url = resolve_log_url(log)
        check_durable(log_url)
        if runtime not in ("ray", "local"):
            raise SpecError("runtime", f"{runtime!r} is not one of ray, local")
        return log_url

    def _ray_supervisor(self, log_url: str, force: bool):
        if self._supervisor is not None and self._supervisor_log != log_url:
            self.close()
        if self._supervisor is None:
            self._supervisor, self._supervisor_log = start_on_ray(self.spec, log_url, force), log_url
        return self._supervisor

    def start(self, log: str | None = None, runtime: str = "ray", until_idle: float | None = None,
              reset: bool = False, force: bool = False) -> "Pipeline":
        """Start a run and return at once; :meth:`status` shows it live, :meth:`stop`
        ends it (a stream flushes and commits) and :meth:`wait` waits for its summary."""
        if self._started is not None:
            raise EtlError(f"pipeline {self.name!r} was already started by this object; stop() it first")
        log_url = self._log(log, runtime)
        self._started_log = log_url
        if runtime == "local":
            self._started = _LocalRun(self.spec, log_url, reset, force, until_idle)
        else:
            supervisor = self._ray_supervisor(log_url, force)
            self._started = supervisor.run.remote("manual", None, reset, force, until_idle)
        return self

    def wait(self, timeout: float | None = None) -> dict:
        """The summary of the run :meth:`start` began, once it ends."""
        started, self._started = self._started, None
        if started is None:
            raise EtlError(f"pipeline {self.name!r} has no run started by start()")
        if isinstance(started, _LocalRun):
            return started.result(timeout)
        import ray

        try:
            return ray.get(started, timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None

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
        """What the log says (watermark, runs, a stream's last checkpoint), and while a
        run this object started goes, the supervisor's live view under ``live``."""
        status = pipeline_status(self.name, resolve_log_url(log or self._started_log), self.spec)
        if isinstance(self._started, _LocalRun):
            status["live"] = self._started.supervisor.status()
        elif self._started is not None:
            import ray

            status["live"] = ray.get(self._supervisor.status.remote(), timeout=30)
        return status

    def stop(self, timeout: float = STOP_GRACE_S) -> dict | None:
        """Ask the running supervisor to finish what is in flight and stop (a stream
        commits a last checkpoint and succeeds). For a run begun with :meth:`start`,
        returns its summary."""
        if isinstance(self._started, _LocalRun):
            self._started.stop()
            return self.wait(timeout)
        import ray

        from .runtime.actors import NAMESPACE, supervisor_name

        ensure_ray()
        supervisor = self._supervisor or ray.get_actor(supervisor_name(self.name), namespace=NAMESPACE)
        ray.get(supervisor.stop.remote(), timeout=timeout)
        return self.wait(timeout) if self._started is not None else None


def _local_supervisor(spec: PipelineSpec, log_url: str):
    from .logs import RunLogger
    from .runtime.local import LocalChildren
    from .runtime.supervisor import PipelineSupervisor

    return PipelineSupervisor(spec, log_url, LocalChildren, listeners=[RunLogger(spec.name, "warning")])


def run_local(spec: PipelineSpec, log_url: str, trigger: str = "manual", reset: bool = False,
              force: bool = False, until_idle: float | None = None, redrive: dict | None = None,
              run_id: str | None = None) -> dict:
    """One run in this process. A stream stops gracefully on Ctrl-C (it commits a last
    checkpoint); a batch run is cancelled and recorded as interrupted."""
    run_id = run_id or uuid.uuid4().hex[:12]
    supervisor = _local_supervisor(spec, log_url)
    stopped = []

    def terminate() -> None:
        stopped.append(True)
        supervisor.stop("terminated (SIGTERM)")

    async def main() -> dict:
        task = asyncio.ensure_future(supervisor.run(trigger, run_id, reset, force, until_idle, redrive))
        if spec.is_stream and threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
        while spec.is_stream:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:   # Ctrl-C: the stream stops after a last checkpoint
                if stopped:
                    raise
                stopped.append(True)
                supervisor.stop("interrupted (Ctrl-C)")
        return await task

    try:
        result = asyncio.run(main())
    except KeyboardInterrupt:  # the run was cancelled and recorded as failed: say how far it got
        last = pipeline_status(spec.name, log_url, spec)["lastRun"]
        if last is None or last["runId"] != run_id:
            raise
        raise RunInterrupted(last) from None
    if stopped:
        raise RunInterrupted(result)
    return result


class _LocalRun:
    """A run of :meth:`Pipeline.start` in this process, on a thread of its own."""

    def __init__(self, spec: PipelineSpec, log_url: str, reset: bool, force: bool, until_idle: float | None):
        self.supervisor = _local_supervisor(spec, log_url)
        self.loop = asyncio.new_event_loop()
        self._result: dict | None = None
        self._error: BaseException | None = None
        run = self.supervisor.run("manual", None, reset, force, until_idle)
        self.thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self.thread.start()

    def _main(self, run) -> None:
        try:
            self._result = self.loop.run_until_complete(run)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
            self._error = exc

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.supervisor.stop, "stopped on request")

    def result(self, timeout: float | None = None) -> dict:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the run did not end within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result


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


def run_supervised(supervisor, trigger: str = "manual", reset: bool = False, force: bool = False,
                   until_idle: float | None = None, redrive: dict | None = None, run_id: str | None = None) -> dict:
    """Run through ``supervisor``; when it dies, Ray restarts it (its ``__init__``
    replays the log) and the run is asked for again, resuming from the watermark.
    An error the run raised is raised here as itself, not wrapped in Ray's."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    for attempt in range(SUPERVISOR_RETRIES + 1):   # a restarted supervisor's retry is a run of its own
        run = supervisor.run.remote(trigger, run_id if attempt == 0 else None, reset and attempt == 0, force and attempt == 0, until_idle,
                                    redrive)
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

    from .runtime.actors import stop_started_children

    try:
        ray.get(supervisor.shutdown.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - it may be dead already; the kill below settles it
        pass
    ray.kill(supervisor, no_restart=True)
    stop_started_children(supervisor)


def pipeline_status(name: str, log_url: str, spec: PipelineSpec | None = None) -> dict:
    """What the log says of a pipeline: watermark, run count, the last run, and for a
    stream its last checkpoint (watermark, open windows, events/s, lag per partition);
    read from the newest snapshot of its stream and the events after it."""
    from .projections import snapshots
    from .projections import streams as streams_projection

    state = snapshots.recover(EventLog(log_url), name)
    marks, view = state.watermarks, spec.source.view_watermark if spec else None
    last = state.runs.last(name)
    status = {"pipeline": name, "watermark": view(marks) if view else marks, "runs": state.runs.count(name),
              "lastRun": runs_projection.summary(last, view) if last else None}
    if state.checkpoint is not None:
        status["stream"] = streams_projection.view(state.checkpoint)
    return status
