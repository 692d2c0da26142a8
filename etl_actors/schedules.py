"""Schedules: when a pipeline fires, as pure functions of a schedule and the clock.

A spec's ``schedule:`` section, in the long form or the seed's short form::

    schedule: {type: cron, expression: '0 */6 * * *', timezone: UTC, catchUp: latest}
    schedule: {cron: '0 */4 * * *'}

- ``expression`` (or ``cron``): a five-field cron expression (minute hour day-of-month
  month day-of-week), read by croniter. As in Vixie cron, a restricted day-of-month
  and a restricted day-of-week match either. Nicknames (``@daily``), seconds or year
  fields and random or hashed fields (``R``, ``H``) are refused.
- ``timezone``: the IANA zone the expression is read in (default ``UTC``).
- ``catchUp``: which missed fire times run after downtime, ``none | latest | all``
  (default ``latest``); see :func:`due`.

The expression matches *wall-clock* times in the zone; each matched wall-clock time
fires once, at one UTC instant:

- a time that exists once fires then;
- a time that exists twice (the hour repeated when clocks go back) fires at its
  first occurrence only: a daily 02:30 in Europe/Berlin fires at 02:30 CEST
  (00:30 UTC) on 2026-10-25, not again at 02:30 CET. So a schedule matching every
  few minutes is silent during the repeated hour;
- a time that does not exist (skipped when clocks go forward) fires when the clocks
  jump, at the first instant after the gap: a daily 02:30 in Europe/Berlin fires at
  03:00 CEST (01:00 UTC) on 2026-03-29. Several skipped times fire once, together
  with a fire time at the gap's end if there is one.

Fire times are therefore a fixed, strictly increasing set of UTC instants per
schedule, whatever window they are asked for in: ``fire_times(s, a, c) ==
fire_times(s, a, b) + fire_times(s, b, c)``.

>>> s = Schedule("30 2 * * *", timezone="Europe/Berlin")
>>> [t.isoformat() for t in fire_times(s, datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC))]
['2026-03-29T01:00:00+00:00']
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from .errors import SpecError
from .spec import Section

UTC = timezone.utc
CATCH_UP = ("none", "latest", "all")
GRACE = timedelta(minutes=1)   # how late a fire time may be seen and still count as on time
_RANDOM_FIELD = re.compile(r"(?<![A-Za-z])[HR](?![A-Za-z])")


@dataclass(frozen=True)
class Schedule:
    """A cron schedule: which wall-clock times fire, in which zone, and what runs
    after downtime. Validated at construction; pickles as three strings."""

    expression: str
    timezone: str = "UTC"
    catch_up: str = "latest"

    def __post_init__(self):
        for key, problem in (("expression", _expression_problem(self.expression)),
                             ("timezone", _timezone_problem(self.timezone)),
                             ("catchUp", None if self.catch_up in CATCH_UP
                              else f"{self.catch_up!r} is not one of {', '.join(CATCH_UP)}")):
            if problem:
                raise SpecError(f"schedule.{key}", problem)

    @classmethod
    def from_spec(cls, section: Section) -> "Schedule":
        """Read a ``schedule:`` section (``Section(data, "schedule")``)."""
        section.get("type", "cron", types=str, choices=("cron",))
        if section.has("cron") and section.has("expression"):
            raise SpecError(section.at("cron"), "give either cron or expression, not both")
        key = "cron" if section.has("cron") else "expression"
        expression = section.get(key, types=str, check=_expression_problem)
        zone = section.get("timezone", "UTC", types=str, check=_timezone_problem)
        catch_up = section.get("catch_up", "latest", types=str, choices=CATCH_UP)
        section.done()
        return cls(expression.strip(), zone, catch_up)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        return f"cron {self.expression!r} in {self.timezone}, catch up {self.catch_up}"


def fire_times(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    """The UTC instants in ``(after, until]`` at which ``schedule`` fires, in order.

    ``after`` and ``until`` must be timezone-aware.
    """
    after, until = _aware(after, "after"), _aware(until, "until")
    times: list[datetime] = []
    for instant in _instants(schedule, after):
        if instant > until:
            return times
        if instant > after and (not times or instant > times[-1]):
            times.append(instant)
    return times


def next_fire_time(schedule: Schedule, after: datetime) -> datetime:
    """The first UTC instant strictly after ``after`` at which ``schedule`` fires:
    when a scheduler should wake up next."""
    after = _aware(after, "after")
    return next(t for t in _instants(schedule, after) if t > after)


def due(schedule: Schedule, last_fired: datetime | None, now: datetime,
        grace: timedelta = GRACE) -> list[datetime]:
    """The fire times to run at ``now``, oldest first.

    ``last_fired`` is the last fire time handled (run or skipped); any later instant
    up to which fire times were handled, such as the previous ``now``, works the same.
    The fire times passed since then are those in ``(last_fired, now]``; the most
    recent of them is *on time* if ``now`` is at most ``grace`` past it, and the rest
    were *missed*. ``catchUp`` decides what runs:

    - ``none``: the most recent fire time if it is on time, otherwise nothing;
    - ``latest``: the most recent fire time, on time or missed (one run after downtime);
    - ``all``: every fire time passed, in order.

    A schedule never fired (``last_fired=None``) is not run retroactively: only a fire
    time exactly at ``now`` is due. A scheduler therefore keeps the time it armed a
    schedule as its first ``last_fired``, and after running the result records
    ``now`` (or the last time returned) as handled.
    """
    now = _aware(now, "now")
    if last_fired is None:
        return [now] if fire_times(schedule, now - timedelta(microseconds=1), now) else []
    passed = fire_times(schedule, last_fired, now)
    if not passed or schedule.catch_up == "all":
        return passed
    if schedule.catch_up == "none" and now - passed[-1] > grace:
        return []
    return passed[-1:]


def _instants(schedule: Schedule, after: datetime):
    """The instants of the wall-clock times matched after ``after``'s wall-clock
    time: non-decreasing, and every fire time after ``after`` is among them."""
    zone = schedule.zone
    wall = after.astimezone(zone).replace(tzinfo=None)
    matches = croniter(schedule.expression, wall)
    while True:
        yield _instant(matches.get_next(datetime), zone)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a wall-clock time fires at: its first occurrence, or the end
    of the gap it falls in."""
    early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if early.astimezone(zone).replace(tzinfo=None) == wall:
        return early
    low = int(wall.replace(tzinfo=zone, fold=1).timestamp())   # read with the offset after the gap
    high = int(early.timestamp())   # the clocks jump at a whole second in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _expression_problem(expression: str) -> str | None:
    fields = expression.split()
    if len(fields) != 5:
        return f"expected five cron fields (minute hour day-of-month month day-of-week), got {expression!r}"
    if any(_RANDOM_FIELD.search(f) for f in fields):
        return f"random and hashed fields (R, H) are not supported, got {expression!r}"
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        return f"cron expression {expression!r} never matches a date"
    except CroniterError as e:
        return f"invalid cron expression {expression!r}: {str(e).replace(f'[{expression}] ', '')}"
    return None


def _timezone_problem(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)"
    return None


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC)
