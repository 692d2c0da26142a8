"""Schedules as pure functions of an explicit clock: fire times in UTC and across
daylight-saving changes, what runs after downtime under each catchUp, and spec errors
that name their path."""
import glob
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from etl_actors.errors import SpecError
from etl_actors.schedules import Schedule, due, fire_times, next_fire_time
from etl_actors.spec import Section
from etl_actors.specfile import load_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(times, zone=BERLIN) -> list[str]:
    return [t.astimezone(zone).strftime("%m-%d %H:%M %Z") for t in times]


def from_spec(data) -> Schedule:
    return Schedule.from_spec(Section(data, "schedule"))


# --- fire times ---------------------------------------------------------------------

def test_every_six_hours_in_utc_fires_after_the_start_up_to_and_including_the_end():
    every_6h = from_spec({"type": "cron", "expression": "0 */6 * * *", "timezone": "UTC"})
    assert fire_times(every_6h, at(2026, 1, 1, 0), at(2026, 1, 2, 0)) == [
        at(2026, 1, 1, 6), at(2026, 1, 1, 12), at(2026, 1, 1, 18), at(2026, 1, 2, 0)]
    assert fire_times(every_6h, at(2026, 1, 1, 6), at(2026, 1, 1, 11, 59)) == []
    assert next_fire_time(every_6h, at(2026, 1, 1, 6)) == at(2026, 1, 1, 12)


def test_daily_0230_in_berlin_fires_once_on_spring_forward_day_when_the_clocks_jump():
    # 2026-03-29: 01:59:59 CET -> 03:00:00 CEST; 02:30 does not exist that day.
    daily = Schedule("30 2 * * *", timezone="Europe/Berlin")
    fired = fire_times(daily, at(2026, 3, 27, 12), at(2026, 3, 31, 12))
    assert local(fired) == ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]
    assert fired[1] == at(2026, 3, 29, 1, 0)
    assert next_fire_time(daily, at(2026, 3, 28, 12)) == at(2026, 3, 29, 1, 0)


def test_daily_0230_in_berlin_fires_once_on_fall_back_day_at_the_first_occurrence():
    # 2026-10-25: 02:59:59 CEST -> 02:00:00 CET; 02:30 happens twice, fires at the first.
    daily = Schedule("30 2 * * *", timezone="Europe/Berlin")
    fired = fire_times(daily, at(2026, 10, 23, 12), at(2026, 10, 26, 12))
    assert local(fired) == ["10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]
    assert fired[1] == at(2026, 10, 25, 0, 30)
    assert fire_times(daily, at(2026, 10, 25, 0, 30), at(2026, 10, 25, 12)) == []


def test_times_skipped_by_spring_forward_fire_once_together_at_the_gap_end():
    quarterly = Schedule("*/15 * * * *", timezone="Europe/Berlin")
    fired = fire_times(quarterly, at(2026, 3, 29, 0, 30), at(2026, 3, 29, 1, 30))
    assert local(fired) == ["03-29 01:45 CET", "03-29 03:00 CEST", "03-29 03:15 CEST", "03-29 03:30 CEST"]


def test_a_zone_shifting_by_half_an_hour_fires_once_per_day_at_the_gap_end_or_first_occurrence():
    lord_howe = ZoneInfo("Australia/Lord_Howe")   # 02:00 -> 02:30 on 2026-10-04; 02:00 -> 01:30 on 2026-04-05
    spring = fire_times(Schedule("15 2 * * *", "Australia/Lord_Howe"), at(2026, 10, 2), at(2026, 10, 5))
    assert [t.astimezone(lord_howe).strftime("%d %H:%M %z") for t in spring] == [
        "03 02:15 +1030", "04 02:30 +1100", "05 02:15 +1100"]
    autumn = fire_times(Schedule("45 1 * * *", "Australia/Lord_Howe"), at(2026, 4, 3), at(2026, 4, 6))
    assert [t.astimezone(lord_howe).strftime("%d %H:%M %z") for t in autumn] == [
        "04 01:45 +1100", "05 01:45 +1100", "06 01:45 +1030"]


# --- catchUp after downtime ---------------------------------------------------------
#
#  last fired        down for 3 days (12 fire times pass)          now
#  01-01 00:00 |--06--12--18--00--06-- ... --18--00(01-04)--------| 01-04 03:00

DOWNTIME_LAST, DOWNTIME_NOW = at(2026, 1, 1, 0), at(2026, 1, 4, 3)


def every_6h(catch_up: str) -> Schedule:
    return from_spec({"expression": "0 */6 * * *", "catchUp": catch_up})


def test_catch_up_none_runs_nothing_missed_during_downtime():
    assert due(every_6h("none"), DOWNTIME_LAST, DOWNTIME_NOW) == []


def test_catch_up_latest_runs_only_the_most_recent_missed_fire_time():
    assert due(every_6h("latest"), DOWNTIME_LAST, DOWNTIME_NOW) == [at(2026, 1, 4, 0)]


def test_catch_up_all_runs_every_missed_fire_time_in_order():
    runs = due(every_6h("all"), DOWNTIME_LAST, DOWNTIME_NOW)
    assert len(runs) == 12
    assert runs == [DOWNTIME_LAST + timedelta(hours=6 * i) for i in range(1, 13)]


@pytest.mark.parametrize("catch_up", ["none", "latest", "all"])
def test_every_catch_up_runs_a_fire_time_seen_on_time(catch_up):
    fired_at = at(2026, 1, 1, 6)
    assert due(every_6h(catch_up), at(2026, 1, 1, 0), fired_at + timedelta(seconds=30)) == [fired_at]
    assert due(every_6h(catch_up), fired_at, fired_at + timedelta(hours=5)) == []


def test_catch_up_none_skips_a_fire_time_seen_past_the_grace():
    late = at(2026, 1, 1, 6) + timedelta(minutes=2)
    assert due(every_6h("none"), at(2026, 1, 1, 0), late) == []
    assert due(every_6h("none"), at(2026, 1, 1, 0), late, grace=timedelta(minutes=5)) == [at(2026, 1, 1, 6)]


def test_a_schedule_never_fired_is_not_run_retroactively():
    assert due(every_6h("all"), None, at(2026, 1, 1, 5, 59)) == []
    assert due(every_6h("all"), None, at(2026, 1, 1, 6)) == [at(2026, 1, 1, 6)]


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        fire_times(every_6h("all"), datetime(2026, 1, 1), at(2026, 1, 2))


# --- properties ---------------------------------------------------------------------

EXPRESSIONS = ["0 */6 * * *", "30 2 * * *", "*/20 * * * *", "15 1-3 * * 0", "0 0 1 * *", "45 23 * * 1-5"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
MOMENTS = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC))
SPANS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(EXPRESSIONS), st.sampled_from(ZONES), MOMENTS, SPANS, SPANS)
def test_fire_times_increase_stay_in_the_window_and_split_at_any_instant(expression, zone, a, ab, bc):
    schedule = Schedule(expression, timezone=zone)
    b, c = a + ab, a + ab + bc
    whole = fire_times(schedule, a, c)
    assert all(x < y for x, y in zip(whole, whole[1:]))
    assert all(a < t <= c for t in whole)
    assert whole == fire_times(schedule, a, b) + fire_times(schedule, b, c)
    if whole:
        assert next_fire_time(schedule, a) == whole[0]


# --- spec ---------------------------------------------------------------------------

def test_the_seeds_short_and_long_forms_and_every_example_are_accepted():
    assert from_spec({"cron": "0 */4 * * *"}) == Schedule("0 */4 * * *", "UTC", "latest")
    assert from_spec({"cron": "0 2 * * *", "timezone": "Europe/Berlin"}).timezone == "Europe/Berlin"
    assert from_spec({"type": "cron", "expression": "0 */6 * * *", "timezone": "UTC"}) == Schedule("0 */6 * * *")
    assert from_spec({"expression": "0 * * * *", "catch_up": "all"}).catch_up == "all"
    found = [load_file(p)["schedule"] for p in sorted(glob.glob(str(EXAMPLES / "*.yaml"))) if "schedule" in load_file(p)]
    assert found, "examples/*.yaml hold schedule sections"
    assert all(isinstance(from_spec(section), Schedule) for section in found)


def test_a_schedule_pickles_to_an_equal_schedule_that_fires_the_same():
    daily = Schedule("30 2 * * *", "Europe/Berlin", "all")
    copy = pickle.loads(pickle.dumps(daily))
    assert copy == daily
    assert fire_times(copy, at(2026, 3, 28), at(2026, 3, 30)) == fire_times(daily, at(2026, 3, 28), at(2026, 3, 30))


@pytest.mark.parametrize("data, path, words", [
    ({}, "schedule.expression", "is required"),
    ({"expression": "61 * * * *"}, "schedule.expression", "out of range"),
    ({"expression": "0 */6 * *"}, "schedule.expression", "five cron fields"),
    ({"expression": "@daily"}, "schedule.expression", "five cron fields"),
    ({"expression": "0 0 30 2 *"}, "schedule.expression", "never matches"),
    ({"expression": "R * * * *"}, "schedule.expression", "random"),
    ({"expression": 6}, "schedule.expression", "expected a string"),
    ({"cron": "0 * * * *", "expression": "0 * * * *"}, "schedule.cron", "not both"),
    ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "schedule.timezone", "unknown time zone"),
    ({"cron": "0 * * * *", "catchUp": "some"}, "schedule.catchUp", "not one of none, latest, all"),
    ({"type": "interval", "expression": "0 * * * *"}, "schedule.type", "not one of cron"),
    ({"cron": "0 * * * *", "timeZone": "UTC"}, "schedule.timeZone", "did you mean 'timezone'"),
])
def test_spec_errors_name_their_path(data, path, words):
    with pytest.raises(SpecError) as error:
        from_spec(data)
    assert error.value.path == path
    assert words in str(error.value)


def test_a_schedule_built_in_code_is_validated_too():
    with pytest.raises(SpecError, match="schedule.timezone"):
        Schedule("0 * * * *", timezone="Berlin/Europe")


def test_a_spec_with_a_bad_schedule_is_refused_naming_the_path(tmp_path):
    from etl_actors.errors import SpecError
    from etl_actors.spec import parse

    with pytest.raises(SpecError) as caught:
        parse({"name": "s", "schedule": {"type": "cron", "expression": "0 */6 * *", "timezone": "UTC"},
               "pipeline": {"source": {"type": "file", "path": str(tmp_path), "format": "csv"},
                            "destination": {"type": "file", "path": str(tmp_path / "out")}}})
    assert str(caught.value).startswith("schedule.expression")
