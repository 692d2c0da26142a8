"""Event times in every usual form, as epoch milliseconds."""
import datetime as dt

import pyarrow as pa
import pytest

from etl_actors.windows.times import event_times

MS = 1_700_000_000_000          # 2023-11-14T22:13:20Z
ISO = "2023-11-14T22:13:20"


@pytest.mark.parametrize("column", [
    pa.array([MS, MS + 500]),                                            # epoch ms
    pa.array([MS // 1000, MS // 1000 + 0.5]),                            # epoch seconds, with a fraction
    pa.array([MS, MS + 500], pa.timestamp("ms")),
    pa.array([MS * 1000, MS * 1000 + 500_999], pa.timestamp("us", "Europe/Paris")),
    pa.array([f"{ISO}Z", f"{ISO}.5Z"]),                                   # ISO with a zone
    pa.array([f"{ISO}+00:00", "2023-11-14T23:13:20.500+01:00"]),
    pa.array([ISO, f"{ISO}.500"]),                                        # naive: UTC
    pa.array([f"{ISO}Z", f"{ISO}.5"]),                                    # mixed: read one by one
    pa.array([ISO, f"{ISO}.500123456"]),                                  # nanoseconds
    pa.array([ISO, f"{ISO}.5"]).dictionary_encode(),
], ids=["ms", "seconds", "timestamp-ms", "timestamp-us-tz", "iso-z", "iso-offset", "iso-naive", "iso-mixed",
        "iso-ns", "dictionary"])
def test_reads_each_form_as_epoch_milliseconds(column):
    times = event_times(pa.table({"t": column}), "t", now_ms=0)
    assert times.ms.tolist() == [MS, MS + 500] and times.valid.all() and times.bad == []


def test_dates_are_midnight_utc():
    times = event_times(pa.table({"t": pa.array([dt.date(2024, 1, 2)])}), "t", now_ms=0)
    assert times.ms.tolist() == [1_704_153_600_000]


def test_unreadable_values_are_bad_with_a_reason():
    column = pa.array(["abc", None, f"{ISO}Z", "10000-01-01T00:00:00"])
    times = event_times(pa.table({"t": column}), "t", now_ms=0)
    assert times.valid.tolist() == [False, False, True, False]
    assert times.bad == [(0, "t: cannot read 'abc' as a time"), (1, "t: missing"),
                         (3, "t: cannot read '10000-01-01T00:00:00' as a time")]


def test_not_a_number_and_other_types_are_bad():
    assert event_times(pa.table({"t": [float("nan"), 1e300]}), "t", 0).bad == [
        (0, "t: cannot read nan as a time"), (1, "t: cannot read 1e+300 as a time")]
    assert event_times(pa.table({"t": [True]}), "t", 0).bad == [(0, "t: cannot read True as a time")]


def test_a_missing_column_makes_every_event_bad():
    assert event_times(pa.table({"x": [1, 2]}), "t", 0).bad == [(0, "t: missing"), (1, "t: missing")]


def test_no_field_means_processing_time():
    assert event_times(pa.table({"x": [1, 2]}), None, now_ms=42).ms.tolist() == [42, 42]
