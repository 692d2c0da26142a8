"""Structured logs: one line per run-level fact, for people reading a worker's log.

The event log is the record; these lines are its readable echo. The supervisor logs
each run's start and end, restarted children, skipped steps and rejected records (at
info: their count is in the summary and the records in the dead-letter store), as
``key=value`` pairs (``ETL_ACTORS_LOG_FORMAT=json`` for one JSON object per line) on
stderr. On Ray that is the supervisor actor's log, shown in the dashboard's Logs view;
the local runner shows only warnings and errors unless ``ETL_ACTORS_LOG_LEVEL`` says
otherwise. Only event fields are logged, and events never hold a secret.

structlog is used without configuring it globally, so a program embedding
etl_actors keeps its own logging setup.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from . import events as ev

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def get_logger(default_level: str = "info", **bound: Any):
    """A logger writing to stderr at ``$ETL_ACTORS_LOG_LEVEL`` (else ``default_level``)."""
    level = LEVELS.get(os.environ.get("ETL_ACTORS_LOG_LEVEL", default_level).lower(), logging.INFO)
    json_lines = os.environ.get("ETL_ACTORS_LOG_FORMAT", "").lower() == "json"
    renderer = (structlog.processors.JSONRenderer(default=str) if json_lines
                else structlog.processors.KeyValueRenderer(key_order=["at", "level", "event"], sort_keys=False))
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True, key="at"),
                    renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    ).bind(**bound)


class RunLogger:
    """A supervisor listener that logs the events a person watching a run cares about."""

    def __init__(self, pipeline: str, default_level: str = "info"):
        self.log = get_logger(default_level, pipeline=pipeline)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.log.info("run started", run_id=event.run_id, partitions=len(event.partitions),
                          resumes_from=event.watermark or None)
        elif isinstance(event, ev.RunSucceeded):
            self.log.info("run succeeded", run_id=event.run_id, **_figures(event.metrics))
        elif isinstance(event, ev.RunFailed):
            self.log.error("run failed", run_id=event.run_id, error=event.error, **_figures(event.metrics))
        elif isinstance(event, ev.ChildRestarted):
            self.log.warning("child restarted", run_id=event.run_id, child=event.child,
                             reason=event.reason, attempt=event.attempt)
        elif isinstance(event, ev.StepSkipped):
            self.log.warning("step skipped", run_id=event.run_id, step=event.step, batch=event.batch_id,
                             error=event.error)
        elif isinstance(event, ev.RecordsRejected):
            self.log.info("records rejected", run_id=event.run_id, stage=event.stage, count=event.count,
                             batch=event.batch_id, reason=event.reason)
        elif isinstance(event, ev.WatermarkReset):
            self.log.info("watermark reset", reason=event.reason)


def _figures(metrics: dict) -> dict:
    keys = ("recordsExtracted", "recordsLoaded", "recordsRejected", "errors", "durationMs")
    return {key: metrics[key] for key in keys if key in metrics}
