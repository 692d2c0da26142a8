"""The ``etl-actors`` command line.

Exit codes: 0 success, 1 the run failed, 2 an invalid spec or usage (never a
traceback for those). ``--json`` prints machine-readable output; with ``run`` the
last line of stdout is the run summary as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from typing import Sequence

from .batch import jsonable
from .errors import EtlError, RunInterrupted, SpecError, UsageError, first_line
from .events import pipeline_stream
from .redaction import redact_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with a one-line message
        self.print_usage(sys.stderr)
        print(f"etl-actors: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etl-actors", description="Data-pipeline services on Ray, driven by an event log.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also ETL_ACTORS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    log_help = "event log URL (default: $ETL_ACTORS_LOG, then sqlite:///.etl_actors/events.db)"

    run = sub.add_parser("run", help="run a pipeline once from its committed watermark")
    run.add_argument("spec")
    run.add_argument("--log", help=log_help)
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.add_argument("--local", action="store_true", help="run in this process instead of on Ray")
    run.add_argument("--reset", action="store_true",
                     help="forget the committed watermark and read the source from the start")
    run.add_argument("--until-idle", type=_seconds, metavar="SECONDS", dest="until_idle",
                     help="streams: stop once no message has come for SECONDS, emitting every open window")
    run.add_argument("--force", action="store_true",
                     help="take the pipeline over from a run that still holds its lease (that run is "
                          "recorded as interrupted and fenced out)")

    validate = sub.add_parser("validate", help="check a spec without running it")
    validate.add_argument("spec")
    validate.add_argument("--json", action="store_true")

    for name, text in (("status", "the watermark and last run of a pipeline"),
                       ("events", "the events of a pipeline, one JSON object a line"),
                       ("dlq", "the dead letters of a pipeline, one JSON object a line")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("pipeline")
        cmd.add_argument("--log", help=log_help)
        cmd.add_argument("--json", action="store_true")
        if name == "dlq":
            cmd.add_argument("action", nargs="?", choices=("list", "redrive"), default="list",
                             help="list (the default) or redrive: send the pending letters through the "
                                  "pipeline's current spec from the stage where they failed")
            cmd.add_argument("--run", help="only this run's dead letters")
            cmd.add_argument("--stage", help="only the letters of this stage (transform:<step>, load, ...)")
            cmd.add_argument("--all", action="store_true", help="list redriven letters too (the history)")
            cmd.add_argument("--limit", type=int)
            cmd.add_argument("--spec", help="redrive: the spec file (default: the one the last run was made from)")
            cmd.add_argument("--local", action="store_true", help="redrive: in this process instead of on Ray")
        if name == "events":
            cmd.add_argument("--from-version", type=int, default=1)
            cmd.add_argument("--follow", "-f", action="store_true",
                             help="keep printing new events as they are appended (Ctrl-C ends)")
    cdc = sub.add_parser("cdc", help="change-data-capture hygiene: drop a pipeline's replication slot")
    cdc_sub = cdc.add_subparsers(dest="cdc_action", required=True, parser_class=_Parser)
    cdc_drop = cdc_sub.add_parser("drop", help="drop the pipeline's replication slot and publication (an "
                                               "abandoned slot makes PostgreSQL keep WAL forever); the next "
                                               "run snapshots again")
    cdc_drop.add_argument("pipeline")
    cdc_drop.add_argument("--spec", help="the spec file (default: the one the last run was made from)")
    cdc_drop.add_argument("--log", help=log_help)
    cdc_drop.add_argument("--json", action="store_true")

    quality = sub.add_parser("quality", help="the data-quality report of a pipeline's run (the last by default)")
    quality.add_argument("pipeline")
    quality.add_argument("--run", help="this run's report")
    quality.add_argument("--log", help=log_help)
    quality.add_argument("--json", action="store_true")

    alerts = sub.add_parser("alerts", help="open and recent failure alerts (of one pipeline or all)")
    alerts.add_argument("pipeline", nargs="?")
    alerts.add_argument("--log", help=log_help)
    alerts.add_argument("--json", action="store_true")

    bill = sub.add_parser("bill", help="charges and invoice totals, from the event log")
    bill.add_argument("--customer", help="only this customer's charges")
    bill.add_argument("--period", help="only this month's (YYYY-MM, UTC)")
    bill.add_argument("--log", help=log_help)
    bill.add_argument("--json", action="store_true")

    serve = sub.add_parser("serve", help="serve the service API and the status page")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--log", help=log_help)

    keys = sub.add_parser("keys", help="API keys of the service: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_action", required=True, parser_class=_Parser)
    create = keys_sub.add_parser("create", help="print a new key once (only its hash is stored)")
    role = create.add_mutually_exclusive_group(required=True)
    role.add_argument("--admin", action="store_true", help="a key that manages services and sees everything")
    role.add_argument("--customer", metavar="ID", help="a key that sees only this customer's objects")
    create.add_argument("--log", help=log_help)
    listing = keys_sub.add_parser("list", help="the keys (prefix, role, customer, created, revoked)")
    listing.add_argument("--log", help=log_help)
    listing.add_argument("--json", action="store_true")
    revoke = keys_sub.add_parser("revoke", help="revoke the key starting with PREFIX")
    revoke.add_argument("prefix")
    revoke.add_argument("--log", help=log_help)

    schedule = sub.add_parser("schedule", help="fire pipelines on their schedule: start (or reuse) the "
                                               "detached scheduler actor and return")
    schedule.add_argument("specs", nargs="*", metavar="SPEC")
    schedule.add_argument("--list", action="store_true", help="the schedules armed and their next fire times")
    schedule.add_argument("--stop", metavar="NAME", help="disarm the schedule of pipeline NAME")
    schedule.add_argument("--log", help=log_help)
    schedule.add_argument("--json", action="store_true")
    return parser


def _seconds(text: str) -> float:
    from .spec import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_json(data) -> None:
    """One JSON object a line; NaN and Infinity (which JSON has not) are printed as null."""
    print(json.dumps(jsonable(data), default=str, allow_nan=False), flush=True)


def _cmd_validate(args) -> int:
    from .spec import parse_file

    try:
        spec = parse_file(args.spec)
    except SpecError as exc:
        if args.json:  # the same errors, for scripts: {"valid": false, "errors": [{"path", "message"}]}
            _print_json({"valid": False, "errors": [{"path": e.path, "message": e.reason}
                                                    for e in getattr(exc, "errors", [exc])]})
        raise
    from .runtime.graph import plan

    stages = plan(spec)
    if args.json:
        _print_json({"valid": True, "pipeline": spec.name, "digest": spec.digest, "kind": spec.kind, "plan": stages})
    else:
        steps = ", ".join(s.id for s in spec.transformations) or "none"
        sinks = ", ".join(s.type for s in spec.sinks)
        window = f" -> window {spec.window.id}" if spec.window is not None else ""
        print(f"{args.spec}: valid {spec.kind} pipeline {spec.name!r} "
              f"({spec.source.type} -> [{steps}]{window} -> {sinks})")
        for stage in stages:
            print(f"  {stage['kind']:<12} x{stage['actors']}: {', '.join(stage['runs']) or '-'}")
    return EXIT_OK


def _cmd_run(args) -> int:
    from .pipeline import Pipeline, resolve_log_url

    pipeline = Pipeline.from_file(args.spec)
    log_url = resolve_log_url(args.log)
    bar = _ProgressBar(pipeline.name, log_url) if sys.stderr.isatty() else None
    if bar:
        bar.start()
    if args.until_idle is not None and not pipeline.spec.is_stream:
        raise UsageError("--until-idle is for stream specs (stream:); a batch run ends when its source does")
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with pipeline:
            options = {"until_idle": args.until_idle} if pipeline.spec.is_stream else {}
            result = pipeline.run(log=log_url, runtime="local" if args.local else "ray", reset=args.reset,
                                  force=args.force, **options)
    except RunInterrupted as exc:  # Ctrl-C: stopped after the batches in flight; say how far it got
        result, interrupted = exc.summary, True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar:
            bar.close()
    if args.json:
        _print_json(result)
    else:
        _print_summary(result)
    if interrupted and not (pipeline.spec.is_stream and result["status"] == "success"):
        return EXIT_INTERRUPTED   # a stream stopped by a signal flushed and committed: that is its end
    return EXIT_OK if result["status"] == "success" else EXIT_FAILED


def _terminate(signum, frame) -> None:
    """SIGTERM ends a run as Ctrl-C does: after what is in flight is committed."""
    raise KeyboardInterrupt


def _print_summary(result: dict) -> None:
    print(f"pipeline {result['pipeline']} run {result['runId']}: {result['status']}")
    for key in ("trigger", "recordsExtracted", "recordsTransformed", "recordsLoaded", "recordsRejected",
                "recordsFlagged", "recordsEnriched", "bytesProcessed", "errors", "durationMs", "throughput"):
        if key in result:
            print(f"  {key:<20} {result[key]}")
    print(f"  {'watermark':<20} {json.dumps(result['watermark'], default=str)}")
    for step in result["steps"]:
        print(f"  step {step['id']:<15} in {step['recordsIn']:>10} out {step['recordsOut']:>10} "
              f"{step['durationMs']:>9.1f} ms {'ok' if step['success'] else 'FAILED'}")
    if result.get("error"):
        print(f"  error: {result['error']}")


def _cmd_status(args) -> int:
    from .pipeline import pipeline_status, resolve_log_url

    log_url = resolve_log_url(args.log)
    spec = _cdc_spec(args.pipeline, log_url)
    status = pipeline_status(args.pipeline, log_url, spec)
    cdc = None
    if spec is not None:
        from .cdc import cdc_status

        cdc = status["cdc"] = cdc_status(spec.source)
    if args.json:
        _print_json(status)
        return EXIT_OK
    print(f"pipeline {status['pipeline']}: {status['runs']} run(s)")
    print(f"  watermark {json.dumps(status['watermark'], default=str)}")
    if status["lastRun"]:
        last = status["lastRun"]
        print(f"  last run {last['runId']}: {last['status']}, {last['recordsLoaded']} loaded, "
              f"{last['recordsRejected']} rejected, {last['durationMs']} ms")
    stream = status.get("stream")
    if stream and stream["watermark"] is None and not stream["openWindows"]:     # no window
        print(f"  stream at checkpoint {stream['checkpoint']} ({_iso(stream['at'])}), "
              f"{stream['eventsPerSecond']} events/s")
    elif stream:
        print(f"  stream watermark {stream['watermark']} (windows emitted up to {stream['emittedUpTo']}), "
              f"{stream['openWindows']} open window(s), {stream['eventsPerSecond']} events/s "
              f"at checkpoint {stream['checkpoint']} ({_iso(stream['at'])})")
        for partition, lag in sorted(stream["lag"].items()):
            print(f"  partition {partition}: at {stream['positions'].get(partition)}, lag {lag}")
    if cdc is not None:
        if "lagBytes" in cdc:
            seconds = "? s" if cdc["lagSeconds"] is None else f"{cdc['lagSeconds']} s"
            print(f"  slot {cdc['slot']}: lag {cdc['lagBytes']} bytes, {seconds} "
                  f"({'in use' if cdc['active'] else 'idle'}; confirmed {cdc['confirmedLsn']}, "
                  f"server at {cdc['currentLsn']})")
        else:
            print(f"  slot {cdc['slot']}: {cdc.get('error') or 'does not exist'}")
    return EXIT_OK


def _cdc_spec(pipeline: str, log_url: str):
    """The spec of a postgres-cdc pipeline's last run (for its slot), else None."""
    try:
        from .spec import parse_file

        spec = parse_file(_last_spec_file(pipeline, log_url))
    except Exception:  # noqa: BLE001 - no spec to read: no slot to show
        return None
    return spec if getattr(spec.source, "type", None) == "postgres-cdc" else None


def _cmd_events(args) -> int:
    from .eventlog import EventLog
    from .pipeline import resolve_log_url

    log, stream = EventLog(resolve_log_url(args.log)), pipeline_stream(args.pipeline)
    position = log.last_position() if args.follow else 0
    for rec in log.read(stream, args.from_version):
        _print_event(rec)
        position = max(position, rec.position)   # what was appended meanwhile is printed once
    if args.follow:
        try:
            for rec in log.follow(position, poll_interval=0.25, stream=stream):
                _print_event(rec)
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK


def _print_event(rec) -> None:
    import dataclasses

    _print_json({"position": rec.position, "stream": rec.stream, "version": rec.version, "type": rec.type,
                 "recordedAt": _iso(rec.recorded_at), "data": dataclasses.asdict(rec.event)})


def _cmd_dlq(args) -> int:
    from .eventlog import EventLog
    from .pipeline import resolve_log_url

    log_url = resolve_log_url(args.log)
    if args.action == "redrive":
        return _redrive(args, log_url)
    letters = EventLog(log_url).dead_letters(args.pipeline, args.run, args.limit, pending=not args.all,
                                             stage=args.stage)
    for letter in letters:
        if args.json:
            _print_json({k: v for k, v in letter.items() if k != "schema"})
        else:
            _print_json({k: letter[k] for k in ("id", "runId", "stage", "reason", "record")})
    return EXIT_OK


def _redrive(args, log_url: str) -> int:
    """``dlq PIPELINE redrive``: a run of the pipeline's current spec over its pending
    letters; prints its summary like ``run``."""
    from .pipeline import Pipeline

    path = args.spec or _last_spec_file(args.pipeline, log_url)
    pipeline = Pipeline.from_file(path)
    if pipeline.name != args.pipeline:
        raise UsageError(f"{path} is the spec of pipeline {pipeline.name!r}, not {args.pipeline!r}")
    with pipeline:
        result = pipeline.redrive(log=log_url, runtime="local" if args.local else "ray", run_id=args.run,
                                  stage=args.stage)
    if args.json:
        _print_json(result)
    else:
        _print_summary(result)
    from .eventlog import EventLog

    pending = EventLog(log_url).dead_letter_stages(args.pipeline, args.run, pending=True)
    if pending:   # failed again, or of a stage a redrive does not take back (extract, window, a step now gone)
        _say(f"{sum(pending.values())} dead letter(s) still pending: "
             + ", ".join(f"{stage} {n}" for stage, n in sorted(pending.items())))
    return EXIT_OK if result["status"] == "success" else EXIT_FAILED


def _last_spec_file(pipeline: str, log_url: str) -> str:
    """The spec file the pipeline's last run was made from (it is read as it is now:
    the redrive runs the fixed spec)."""
    from .eventlog import EventLog
    from .events import RunRequested

    for rec in reversed(EventLog(log_url).read(pipeline_stream(pipeline))):
        if isinstance(rec.event, RunRequested) and rec.event.spec:
            if not os.path.exists(rec.event.spec):
                raise UsageError(f"the spec of {pipeline!r}'s last run, {rec.event.spec}, is gone: give --spec FILE")
            return rec.event.spec
    raise UsageError(f"no run of {pipeline!r} in the log was made from a spec file: give --spec FILE")


def _cmd_quality(args) -> int:
    """The run's ``QualityReported`` as ``{"runId", "total", "passed", "failed",
    "warnings", "rules": {id: {"violations", "severity", "examples"}}}``."""
    from .eventlog import EventLog
    from .events import QualityReported, RunStarted
    from .pipeline import resolve_log_url

    recorded = EventLog(resolve_log_url(args.log)).read(pipeline_stream(args.pipeline))
    run_id = args.run or next((r.event.run_id for r in reversed(recorded) if isinstance(r.event, RunStarted)), None)
    if run_id is None:
        raise UsageError(f"pipeline {args.pipeline!r} has no run in the log")
    report = next((r.event for r in reversed(recorded)
                   if isinstance(r.event, QualityReported) and r.event.run_id == run_id), None)
    if report is None:
        raise UsageError(f"run {run_id} of {args.pipeline!r} has no quality report (no validation step ran"
                         + (", or it has not ended)" if args.run else ")"))
    data = {"runId": run_id, "total": report.total, "passed": report.passed, "failed": report.failed,
            "warnings": report.warnings,
            "rules": {rule: {"violations": s.get("violations", 0), "severity": s.get("severity"),
                             "action": s.get("action"), "examples": s.get("examples", [])}
                      for rule, s in report.rules.items()}}
    if args.json:
        _print_json(data)
        return EXIT_OK
    print(f"pipeline {args.pipeline} run {run_id}: {data['total']} validated, {data['passed']} passed, "
          f"{data['failed']} failed, {data['warnings']} with warnings")
    for rule, stats in data["rules"].items():
        print(f"  {rule:<20} {stats['severity'] or '':<8} {stats['action'] or '':<7} "
              f"{stats['violations']:>10} violation(s)")
        for example in stats["examples"]:
            print(f"      e.g. {json.dumps(jsonable(example), default=str)[:200]}")
    return EXIT_OK


def _cmd_alerts(args) -> int:
    from .alerts import format_table, listing
    from .eventlog import EventLog
    from .pipeline import resolve_log_url

    rows = listing(EventLog(resolve_log_url(args.log)), args.pipeline)
    if args.json:
        for row in rows:
            _print_json(row)
    else:
        print(format_table(rows))
    return EXIT_OK


def _iso(epoch: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


class _ProgressBar:
    """Follows the log while a run goes and draws its progress on stderr."""

    def __init__(self, pipeline: str, log_url: str):
        from .eventlog import EventLog
        from .projections import progress

        self.log = EventLog(log_url)
        self.stream = pipeline_stream(pipeline)
        self.state, self.position = progress.Progress(), self.log.last_position()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop following, then draw the run's last state (its final events may have
        come after the last poll)."""
        self.stop.set()
        self.thread.join(timeout=2)
        if not self.thread.is_alive():
            try:
                self._apply(self.log.read_all(self.position, stream=self.stream))
            except Exception:  # noqa: BLE001 - the bar is cosmetic; the run decides the outcome
                pass
        sys.stderr.write("\n")

    def _follow(self) -> None:
        try:
            self._apply(self.log.follow(self.position, poll_interval=0.25, stop=self.stop, stream=self.stream))
        except Exception:  # noqa: BLE001 - the bar is cosmetic; the run decides the outcome
            return

    def _apply(self, recorded) -> None:
        from .projections import progress

        for rec in recorded:
            self.state, self.position = progress.evolve(self.state, rec), rec.position
            self._draw(self.state)

    def _draw(self, state) -> None:
        if state.rate is not None:   # a stream: how fast and how far behind, not a percentage
            sys.stderr.write(f"\r{state.phase:<7} {state.records_in:>12,} events {state.rate:>10,.0f} events/s "
                             f"lag {state.lag or 0:>10,} {state.records_out:>10,} out")
            sys.stderr.flush()
            return
        width = 30
        pct = state.percent
        filled = int(width * (pct or 0) / 100)
        bar = "#" * filled + "." * (width - filled)
        pct_text = f"{pct:5.1f}%" if pct is not None else "  ?  "
        sys.stderr.write(f"\r[{bar}] {pct_text} {state.phase:<9} {state.records_in:>12,} in "
                         f"{state.records_out:>12,} out {state.throughput:>12,.0f} rec/s")
        sys.stderr.flush()


def _cmd_bill(args) -> int:
    from .billing import bill_command

    return bill_command(args)


def _cmd_serve(args) -> int:
    from .service.app import serve_command

    return serve_command(args)


def _cmd_cdc(args) -> int:
    from .cdc import drop
    from .pipeline import resolve_log_url

    log_url = resolve_log_url(args.log)
    result = drop(args.pipeline, args.spec or _last_spec_file(args.pipeline, log_url), log_url)
    if args.json:
        _print_json(result)
        return EXIT_OK
    gone = [f"slot {result['slot']}"] if result["slotDropped"] else []
    gone += [f"publication {result['publication']}"] if result["publicationDropped"] else []
    print(f"pipeline {args.pipeline}: dropped {' and '.join(gone)}" if gone else
          f"pipeline {args.pipeline}: no slot {result['slot']} or publication {result['publication']} to drop")
    return EXIT_OK


def _cmd_keys(args) -> int:
    from .service.keys import keys_command

    return keys_command(args)


def _cmd_schedule(args) -> int:
    from .scheduler_actor import schedule_command

    return schedule_command(args)


_COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "status": _cmd_status, "events": _cmd_events,
             "dlq": _cmd_dlq, "quality": _cmd_quality, "alerts": _cmd_alerts, "bill": _cmd_bill,
             "serve": _cmd_serve, "keys": _cmd_keys, "schedule": _cmd_schedule, "cdc": _cmd_cdc}


def _say(message: str) -> None:
    print(f"etl-actors: {redact_text(message)}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error a user or the environment causes is one line on
    stderr (exit 2 for a spec or usage error, 1 otherwise), the traceback only with
    ``--debug`` or ``ETL_ACTORS_DEBUG=1``."""
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("ETL_ACTORS_DEBUG", "").lower() in ("1", "true", "yes")
    try:
        return _COMMANDS[args.command](args)
    except SpecError as exc:
        for error in getattr(exc, "errors", [exc]):
            _say(f"invalid spec: {error}")
        return EXIT_USAGE
    except UsageError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback (see --debug)
        if debug:
            traceback.print_exc()
        _say(_one_line(exc) + ("" if debug or isinstance(exc, EtlError) else " (--debug shows the traceback)"))
        return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message, or its type and first line for the unexpected."""
    text = str(exc).strip()
    if isinstance(exc, (EtlError, RuntimeError)) and text:
        return " ".join(text.split())
    return first_line(exc, with_type=True)


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``etl-actors events X | head``): what it read stands,
        # and the rest is not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    _shutdown_ray()
    _exit(code)


def _shutdown_ray() -> None:
    """Stop the Ray connection (and the local Ray this command started) with Ctrl-C
    ignored: the run is over and in the log, and a Ctrl-C now would only interrupt
    Ray's exit hook with a traceback."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .pipeline import stop_ray

    stop_ray()


def _exit(code: int) -> None:
    """End the process with ``code`` once its output is flushed and its atexit
    handlers have run, without the interpreter's module-by-module teardown (0.2 to 0.4 s
    once Ray, pyarrow and SQLAlchemy are loaded, and nothing of the command's left to
    do: its results are in the log and on stdout)."""
    import atexit

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):   # the reader left, or the stream is closed
            pass
    for thread in threading.enumerate():     # as the interpreter would: its threads end first
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
