"""Failure alerts: a projection over a pipeline's events, and webhook delivery.

A pipeline's *failures* are its rejected records (at extract, transform or load), its
failed pages or files, its failed runs and its streams' new dead letters (poison
messages and late events); :func:`failures` says how many one event counts. The fold
keeps the failures of the sliding window (``window``, default one hour) and the open
alert. :func:`decide` turns the state into the next fact:

- :class:`~etl_actors.events.AlertRaised` when no alert is open and more than
  ``threshold`` failures (default 100, as the seed's ``recentFailures > 100``) fall in
  ``[now - window, now]``;
- :class:`~etl_actors.events.AlertResolved` when one is open and the count fell below
  the threshold (for threshold 0: to none);
- nothing otherwise. An episode raises once, however many failures follow, and
  between the two thresholds (``count == threshold``) an open alert stays open.

Time is the events' own ``at``, and ``decide`` is given ``now``, so replaying the log
gives the same state and the same alert ids (``<pipeline>#<n>``) as the live fold.

Guarantee of :func:`deliver`: at least once per alert and kind, deduplicable by the
receiver through the ``Idempotency-Key: <alertId>:<kind>`` header; it never raises,
and no secret of the webhook URL appears in what it returns.

>>> options = AlertOptions(threshold=2)
>>> state = project([ev.RecordsRejected("r1", "b1", "load", 3, "bad", at=10.0)], "orders", options)
>>> decide(state, "orders", 10.0, options).alert_id
'orders#1'
"""
from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from . import events as ev
from .errors import SpecError, describe as describe_value, first_line
from .redaction import ConnectionUrl, redact_text, redact_url, remember_url
from .spec import parse_seconds, positive_duration_problem, substitute_env

HISTORY = 50                  # recent alerts kept per pipeline (the open one always among them)
PIPELINE_PREFIX = ev.pipeline_stream("")


# --- options ------------------------------------------------------------------------

@dataclass(frozen=True)
class AlertOptions:
    """When a pipeline raises an alert and where it is sent.

    ``threshold``: an alert is raised past this many failures in the window (count >
    threshold). ``webhook``: an http(s) URL the alerts are POSTed to, or None; it may
    hold a secret (userinfo, a token in the query), which is never shown. ``window_s``:
    the sliding window in seconds (spec key ``window``, a duration such as ``1h``)."""

    threshold: int = 100
    webhook: str | None = None
    window_s: float = 3600.0

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 0:
            raise SpecError("threshold", f"expected an integer of 0 or more, got {describe_value(self.threshold)}")
        if isinstance(self.window_s, bool) or not isinstance(self.window_s, (int, float)) or not self.window_s > 0:
            raise SpecError("window", f"expected more than 0 seconds, got {describe_value(self.window_s)}")
        object.__setattr__(self, "window_s", float(self.window_s))
        if self.webhook is not None:
            if problem := _webhook_problem(self.webhook):
                raise SpecError("webhook", problem)
            object.__setattr__(self, "webhook", ConnectionUrl(self.webhook))

    @classmethod
    def from_spec(cls, section) -> "AlertOptions":
        """From the top-level ``alerts:`` section (keys ``threshold``, ``webhook``,
        ``window``); errors name their path (``alerts.threshold``)."""
        threshold = section.get("threshold", 100, types=int,
                                check=lambda v: None if v >= 0 else f"expected 0 or more, got {v}")
        window = section.get("window", 3600.0, types=(int, float, str), check=positive_duration_problem)
        webhook = section.get("webhook", None, types=str)
        if webhook is not None:
            webhook = substitute_env(webhook, section.at("webhook"))
            remember_url(webhook)
            if problem := _webhook_problem(webhook):
                raise SpecError(section.at("webhook"), problem)
        section.done()
        return cls(threshold=threshold, webhook=webhook, window_s=parse_seconds(window))

    def describe(self) -> dict:
        """Secret-free: the webhook's secrets as ``***``."""
        return {"threshold": self.threshold, "window": self.window_s,
                "webhook": redact_url(self.webhook) if self.webhook else None}


def _webhook_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return f"expected an http:// or https:// URL, got {redact_url(url)!r}"


# --- the fold -----------------------------------------------------------------------

def failures(event: ev.Event | ev.RecordedEvent) -> int:
    """How many failures ``event`` counts: a ``RecordsRejected`` its ``count`` (failed
    loads included, so ``BatchLoaded.failed`` is not counted again), a
    ``PartitionFailed`` or ``RunFailed`` one, a ``CheckpointCommitted`` its new dead
    letters (``rejected`` poison messages plus ``late`` events); anything else none."""
    event = getattr(event, "event", event)
    if isinstance(event, ev.RecordsRejected):
        return max(0, event.count)
    if isinstance(event, (ev.PartitionFailed, ev.RunFailed)):
        return 1
    if isinstance(event, ev.CheckpointCommitted):
        return max(0, event.rejected) + max(0, event.late)
    return 0


@dataclass(frozen=True)
class Episode:
    """One alert: when it was raised, resolved (None while open), and what its webhook
    last answered (None before any delivery)."""

    raised: ev.AlertRaised
    resolved: ev.AlertResolved | None = None
    delivered: ev.AlertDelivered | None = None


@dataclass
class AlertState:
    """One pipeline's alert state.

    ``recent`` holds ``(at, failures)`` pairs by time, none older than ``window`` before
    the newest (``latest``), and ``total`` their sum; ``open`` is the open alert (or
    None), ``raised`` how many alerts the pipeline raised so far, ``history`` its last
    :data:`HISTORY` episodes, oldest first.

    :func:`evolve` updates the state in place and returns it, so a fold over months of
    log costs the same per event as a live one; take a :meth:`copy` to keep one."""

    recent: deque = field(default_factory=deque)
    total: int = 0
    latest: float = float("-inf")
    open: ev.AlertRaised | None = None
    raised: int = 0
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))

    def count(self, now: float, window_s: float) -> int:
        """Failures at times within ``[now - window_s, now]``."""
        start, total = now - window_s, self.total
        for at, n in self.recent:
            if at >= start:
                break
            total -= n
        for at, n in reversed(self.recent):
            if at <= now:
                break
            total -= n
        return total

    def due(self, window_s: float) -> float | None:
        """When the oldest failure leaves the window (so :func:`decide` may resolve
        without a new event), or None when the window holds none."""
        return self.recent[0][0] + window_s if self.recent else None

    def copy(self) -> "AlertState":
        return replace(self, recent=deque(self.recent), history=deque(self.history, maxlen=HISTORY))

    def to_dict(self) -> dict:
        """The state as plain types (alert events as their fields), for a snapshot."""
        return {"recent": [list(pair) for pair in self.recent], "total": self.total, "latest": self.latest,
                "open": _fields(self.open), "raised": self.raised,
                "history": [{"raised": _fields(e.raised), "resolved": _fields(e.resolved),
                             "delivered": _fields(e.delivered)} for e in self.history]}

    @classmethod
    def from_dict(cls, data: dict) -> "AlertState":
        """The state :meth:`to_dict` wrote."""
        history = (Episode(_event(ev.AlertRaised, e["raised"]), _event(ev.AlertResolved, e["resolved"]),
                           _event(ev.AlertDelivered, e["delivered"])) for e in data["history"])
        return cls(recent=deque(tuple(pair) for pair in data["recent"]), total=data["total"],
                   latest=data["latest"], open=_event(ev.AlertRaised, data["open"]), raised=data["raised"],
                   history=deque(history, maxlen=HISTORY))


def _fields(event: ev.Event | None) -> dict | None:
    return None if event is None else {f.name: getattr(event, f.name) for f in fields(event)}


def _event(cls: type, data: dict | None):
    if data is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def project(recorded: Iterable[ev.RecordedEvent | ev.Event], pipeline: str,
            options: AlertOptions = AlertOptions()) -> AlertState:
    """The alert state of ``pipeline`` after ``recorded`` (recorded events of other
    streams than the pipeline's are skipped, so ``read_all`` may be given)."""
    stream, state = ev.pipeline_stream(pipeline), AlertState()
    for item in recorded:
        if isinstance(item, ev.RecordedEvent) and item.stream != stream:
            continue
        state = evolve(state, item, options)
    return state


def evolve(state: AlertState, event: ev.Event | ev.RecordedEvent,
           options: AlertOptions = AlertOptions()) -> AlertState:
    """Fold one event (at its own time ``event.at``): failures join the window, alert
    events open, close and annotate episodes."""
    event = getattr(event, "event", event)
    n = failures(event)
    if n:
        return _add_failures(state, event.at, n, options.window_s)
    if isinstance(event, ev.AlertRaised):
        state.open, state.raised = event, state.raised + 1
        state.history.append(Episode(event))
    elif isinstance(event, ev.AlertResolved):
        if state.open is not None and state.open.alert_id == event.alert_id:
            state.open = None
        _annotate(state, event.alert_id, resolved=event)
    elif isinstance(event, ev.AlertDelivered):
        _annotate(state, event.alert_id, delivered=event)
    return state


def _add_failures(state: AlertState, at: float, n: int, window_s: float) -> AlertState:
    if not state.recent or at >= state.recent[-1][0]:
        state.recent.append((at, n))
    else:       # an event stamped a little earlier than one folded before it
        state.recent.insert(bisect.bisect_right(state.recent, at, key=lambda pair: pair[0]), (at, n))
    state.total += n
    state.latest = max(state.latest, at)
    horizon = state.latest - window_s
    while state.recent and state.recent[0][0] < horizon:
        state.total -= state.recent.popleft()[1]
    return state


def _annotate(state: AlertState, alert_id: str, **changes) -> None:
    for i in range(len(state.history) - 1, -1, -1):
        if state.history[i].raised.alert_id == alert_id:
            state.history[i] = replace(state.history[i], **changes)
            return


def decide(state: AlertState, pipeline: str, now: float,
           options: AlertOptions = AlertOptions()) -> ev.AlertRaised | ev.AlertResolved | None:
    """The alert event due at ``now`` (not before the last folded event), or None.

    Raised when none is open and the window's count is above the threshold; resolved
    when one is open and the count is below it (threshold 0: when it is 0)."""
    count = state.count(now, options.window_s)
    if state.open is None and count > options.threshold:
        return ev.AlertRaised(
            pipeline=pipeline, alert_id=f"{pipeline}#{state.raised + 1}", count=count,
            threshold=options.threshold, window_s=options.window_s,
            message=f"Pipeline {pipeline} has {count} failures in the last {_window_text(options.window_s)} "
                    f"(threshold {options.threshold})", at=now)
    if state.open is not None and count < max(options.threshold, 1):
        return ev.AlertResolved(pipeline=pipeline, alert_id=state.open.alert_id, count=count, at=now)
    return None


def _window_text(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} seconds"


# --- delivery -------------------------------------------------------------------------

def payload(alert: ev.AlertRaised | ev.AlertResolved, raised: ev.AlertRaised | None = None) -> dict:
    """The JSON a webhook receives. A resolved alert takes its severity, threshold and
    window from ``raised`` (the episode's AlertRaised) when given, else they are None."""
    kind = "raised" if isinstance(alert, ev.AlertRaised) else "resolved"
    origin = alert if kind == "raised" else raised
    message = alert.message if kind == "raised" else (
        f"Pipeline {alert.pipeline}: alert {alert.alert_id} resolved, {alert.count} failures in the window")
    return {"alertId": alert.alert_id, "pipeline": alert.pipeline, "kind": kind,
            "severity": origin.severity if origin else None, "count": alert.count,
            "threshold": origin.threshold if origin else None,
            "windowSeconds": origin.window_s if origin else None,
            "message": redact_text(message), "at": iso(alert.at)}


async def deliver(webhook: str, alert: ev.AlertRaised | ev.AlertResolved, *, max_retries: int = 5,
                  timeout: float = 10.0, raised: ev.AlertRaised | None = None) -> ev.AlertDelivered:
    """POST the alert as JSON (:func:`payload`) to ``webhook`` with ``Idempotency-Key:
    <alert_id>:<kind>``, retrying 408, 429, 5xx, timeouts and connection errors with
    backoff (honouring ``Retry-After``) up to ``max_retries`` times.

    Never raises: returns the AlertDelivered fact, with the answer's ``status`` (None
    when the webhook was not reached), the ``attempts`` made and the ``error`` (empty
    on success); the webhook's secrets are ``***`` in it."""
    from .http import HttpClient, HttpError, HttpOptions

    remember_url(webhook)
    body = payload(alert, raised)
    client = HttpClient(HttpOptions(max_retries=max_retries, timeout=timeout))
    status, attempts, error = None, 1, ""
    try:
        response = await client.request("POST", webhook, json=body,
                                        idempotency_key=f"{alert.alert_id}:{body['kind']}")
        status, attempts = response.status, getattr(response, "attempts", 1)
        if status >= 300:
            error = f"webhook answered HTTP {status}"
    except HttpError as exc:
        status, attempts, error = exc.status, exc.attempts, first_line(exc)
    except Exception as exc:  # noqa: BLE001 - delivery reports every failure, it never raises
        attempts, error = getattr(exc, "attempts", 1), first_line(exc, with_type=True)
    finally:
        await _close_quietly(client)
    return ev.AlertDelivered(alert_id=alert.alert_id, kind=body["kind"], webhook=redact_url(webhook),
                             status=status, attempts=attempts, error=redact_text(error))


async def _close_quietly(client) -> None:
    try:
        await client.close()
    except Exception:  # noqa: BLE001 - a session that fails to close changes no delivery
        pass


# --- listing ----------------------------------------------------------------------------

def listing(log, pipeline: str | None = None, now: float | None = None,
            options_of: Callable[[str], AlertOptions] | None = None) -> list[dict]:
    """Open and recent alerts of ``pipeline`` (or of every pipeline in ``log``), newest
    first, as ``etl-actors alerts`` shows them. ``options_of(pipeline)`` gives a
    pipeline's options (default :class:`AlertOptions`()), used for the current count
    ``failuresInWindow`` at ``now`` (default: the clock)."""
    names = [pipeline] if pipeline is not None else [
        stream[len(PIPELINE_PREFIX):] for stream in log.streams(PIPELINE_PREFIX)]
    from .projections import snapshots   # here: snapshots fold alert states

    options_of = options_of or (lambda name: AlertOptions())
    states = {name: snapshots.recover(log, name, options_of(name)).alerts for name in names}
    return rows_of(states, now, options_of)


def rows_of(states: Mapping[str, AlertState], now: float | None = None,
            options_of: Callable[[str], AlertOptions] | None = None) -> list[dict]:
    """The listing of already folded ``{pipeline: state}`` (a server following the log
    keeps them), newest first."""
    now = time.time() if now is None else now
    rows = []
    for name, state in states.items():
        options = options_of(name) if options_of else AlertOptions()
        in_window = state.count(now, options.window_s)
        rows += [_row(episode, in_window) for episode in state.history]
    return sorted(rows, key=lambda row: (row["raisedAt"], row["alertId"]), reverse=True)


def _row(episode: Episode, in_window: int) -> dict:
    raised, resolved, delivered = episode.raised, episode.resolved, episode.delivered
    return {"alertId": raised.alert_id, "pipeline": raised.pipeline,
            "state": "open" if resolved is None else "resolved", "severity": raised.severity,
            "count": raised.count, "threshold": raised.threshold, "message": raised.message,
            "raisedAt": iso(raised.at), "resolvedAt": iso(resolved.at) if resolved else None,
            "delivered": None if delivered is None else {
                "status": delivered.status, "attempts": delivered.attempts, "error": delivered.error},
            "failuresInWindow": in_window}


def format_table(rows: list[dict]) -> str:
    """The listing as text: a header and one line per alert; ``no alerts`` when empty."""
    if not rows:
        return "no alerts"
    table = [("ALERT", "STATE", "SEVERITY", "COUNT", "IN WINDOW", "RAISED", "RESOLVED", "DELIVERY", "MESSAGE")]
    table += [(row["alertId"], row["state"], row["severity"], str(row["count"]), str(row["failuresInWindow"]),
               _short(row["raisedAt"]), _short(row["resolvedAt"]), _delivery(row["delivered"]), row["message"])
              for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in table)


def _short(stamp: str | None) -> str:
    return "-" if stamp is None else stamp[:19].replace("T", " ")


def _delivery(delivered: dict | None) -> str:
    if delivered is None:
        return "-"
    tries = f"{delivered['attempts']} attempt{'s' if delivered['attempts'] != 1 else ''}"
    if delivered["error"]:
        return f"failed ({delivered['status'] or 'no answer'}, {tries})"
    return f"HTTP {delivered['status']} ({tries})"


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 in UTC."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


__all__ = ["AlertOptions", "AlertState", "Episode", "failures", "project", "evolve", "decide", "deliver",
           "payload", "listing", "format_table"]
