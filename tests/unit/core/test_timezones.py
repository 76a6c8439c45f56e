"""werkstroom.timezones: local days and their UTC bounds (ClickHouse's agreement with them:
tests/integration/test_timezones.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from werkstroom import timezones as tz

AMS, LA, KOL = "Europe/Amsterdam", "America/Los_Angeles", "Asia/Kolkata"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "name", "day"),
    [
        ("2026-07-01T21:59:59.999", AMS, date(2026, 7, 1)),  # CEST: +2
        ("2026-07-01T22:00:00", AMS, date(2026, 7, 2)),
        ("2026-01-15T22:59:59", AMS, date(2026, 1, 15)),  # CET: +1
        ("2026-01-15T23:00:00", AMS, date(2026, 1, 16)),
        ("2026-07-02T06:59:59", LA, date(2026, 7, 1)),  # PDT: -7
        ("2026-07-02T07:00:00", LA, date(2026, 7, 2)),
        ("2026-07-01T18:29:59", KOL, date(2026, 7, 1)),  # +5:30, no daylight saving
        ("2026-07-01T18:30:00", KOL, date(2026, 7, 2)),
        ("2026-07-01T23:59:59", "UTC", date(2026, 7, 1)),
    ],
)
def test_a_day_boundary_in_each_zone(instant: str, name: str, day: date) -> None:
    assert tz.day_of(at(instant), name) == day


def test_the_daylight_saving_days_have_23_and_25_hours() -> None:
    assert tz.hours(date(2026, 3, 29), AMS) == 23  # last Sunday of March
    assert tz.hours(date(2026, 10, 25), AMS) == 25  # last Sunday of October
    assert tz.hours(date(2026, 3, 8), LA) == 23  # second Sunday of March
    assert tz.hours(date(2026, 11, 1), LA) == 25  # first Sunday of November
    assert tz.hours(date(2026, 3, 29), KOL) == 24
    assert tz.hours(date(2026, 6, 1), AMS) == 24
    assert tz.bounds(date(2026, 3, 29), date(2026, 3, 29), AMS) == (
        at("2026-03-28T23:00:00"),
        at("2026-03-29T22:00:00"),
    )
    assert tz.bounds(date(2026, 10, 25), date(2026, 10, 26), AMS) == (
        at("2026-10-24T22:00:00"),
        at("2026-10-26T23:00:00"),
    )


def test_a_zone_that_skips_midnight_starts_its_day_after_the_gap() -> None:
    # America/Havana springs forward at 00:00 (to 01:00) on 2026-03-08.
    start = tz.start_of(date(2026, 3, 8), "America/Havana")
    assert tz.day_of(start, "America/Havana") == date(2026, 3, 8)
    assert tz.day_of(start - timedelta(milliseconds=1), "America/Havana") == date(2026, 3, 7)


def test_utc_days_and_local_days_overlap_as_the_offsets_say() -> None:
    assert tz.utc_days(date(2026, 7, 2), date(2026, 7, 2), AMS) == (date(2026, 7, 1), date(2026, 7, 2))
    assert tz.utc_days(date(2026, 7, 2), date(2026, 7, 2), "UTC") == (date(2026, 7, 2), date(2026, 7, 2))
    assert tz.local_days(date(2026, 7, 2), AMS) == {date(2026, 7, 2), date(2026, 7, 3)}
    assert tz.local_days(date(2026, 7, 2), LA) == {date(2026, 7, 1), date(2026, 7, 2)}
    assert tz.local_days(date(2026, 7, 2), "Pacific/Kiritimati") == {date(2026, 7, 2), date(2026, 7, 3)}
    assert tz.local_days_of([date(2026, 7, 2), date(2026, 7, 3)], "UTC") == {
        date(2026, 7, 2),
        date(2026, 7, 3),
    }


@pytest.mark.parametrize("name", ["Europe/Amsterdam", "UTC", "America/Los_Angeles", "Asia/Kolkata"])
def test_validate_takes_iana_names(name: str) -> None:
    assert tz.validate(f" {name} ") == name


@pytest.mark.parametrize("given", ["", "Mars/Olympus", "+01:00", "europe/amsterdam", "x" * 100, None, 1])
def test_validate_refuses_other_names_saying_why(given: object) -> None:
    with pytest.raises(tz.TimezoneError, match="timezone"):
        tz.validate(given)
