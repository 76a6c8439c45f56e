"""A project's time zone, defined once: its days, the UTC instants they start at, and its
"today". Everything here is what Python and ClickHouse agree on: a local day of an instant is
`toDate(instant, zone)` in SQL and `day_of(instant, zone)` here; both read the IANA database.

A local day is not 24 hours where the zone changes its offset: Europe/Amsterdam's last Sunday
of March has 23 hours, of October 25. So a range of local days is bounded by the instants
its first day starts at and the day after its last starts at (`bounds`), never by adding
hours; and a UTC day overlaps up to three local days (offsets run from -12 to +14 hours).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DEFAULT = "UTC"
#: The longest zone name accepted (the IANA database's longest is 32 characters).
MAX_NAME = 64


class TimezoneError(ValueError):
    """An unknown or malformed zone name; the message says why."""


@lru_cache(maxsize=1)
def names() -> frozenset[str]:
    """The zone names accepted: the IANA database's, as Python's zoneinfo finds it."""
    return frozenset(available_timezones())


def validate(name: object) -> str:
    """The zone name, checked: an IANA name such as Europe/Amsterdam (case as the database has
    it), or UTC. Offsets such as +01:00 are refused: they do not follow daylight saving."""
    if not isinstance(name, str):
        raise TimezoneError("timezone: must be a string")
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME:
        raise TimezoneError(
            f"timezone: must be an IANA zone name such as Europe/Amsterdam, at most {MAX_NAME} characters"
        )
    if cleaned not in names():
        raise TimezoneError(
            f"timezone: {cleaned!r} is not an IANA zone name "
            "(such as Europe/Amsterdam, America/Los_Angeles or UTC)"
        )
    return cleaned


@lru_cache(maxsize=1024)
def zone(name: str) -> tzinfo:
    """The tzinfo of a validated name (UTC is datetime's own, the fast path)."""
    if name == DEFAULT:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimezoneError(f"timezone: {name!r} is not an IANA zone name") from exc


def day_of(instant: datetime, name: str) -> date:
    """The local day an instant (aware) falls on in the zone."""
    if name == DEFAULT:
        return instant.astimezone(UTC).date()
    return instant.astimezone(zone(name)).date()


def today(now: datetime, name: str) -> date:
    """The zone's today at `now` (aware)."""
    return day_of(now, name)


def start_of(day: date, name: str) -> datetime:
    """The UTC instant a local day starts at: its first instant, which is midnight except where
    the zone skips midnight (then the first instant after the gap)."""
    local = datetime.combine(day, time(0), zone(name))
    start = local.astimezone(UTC)
    # A zone that springs forward at midnight has no 00:00: zoneinfo reads it with the offset
    # before the gap (fold=0), an instant of the day before; the day starts one gap later.
    while day_of(start, name) < day:
        start += timedelta(minutes=15)
    return start


def bounds(first: date, last: date, name: str) -> tuple[datetime, datetime]:
    """The UTC instants [start, end) of the local days first..last."""
    return start_of(first, name), start_of(last + timedelta(days=1), name)


def hours(day: date, name: str) -> float:
    """How long a local day lasts (23, 24 or 25 hours where daylight saving changes)."""
    start, end = bounds(day, day, name)
    return (end - start).total_seconds() / 3600


def utc_days(first: date, last: date, name: str) -> tuple[date, date]:
    """The UTC days the local days first..last overlap: what a table sorted by UTC day reads."""
    start, end = bounds(first, last, name)
    return start.date(), (end - timedelta(microseconds=1)).date()


def local_days(utc_day: date, name: str) -> set[date]:
    """The local days a UTC day overlaps (one for UTC, two or three elsewhere)."""
    start = datetime.combine(utc_day, time(0), UTC)
    end = start + timedelta(days=1) - timedelta(microseconds=1)
    first, last = day_of(start, name), day_of(end, name)
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


def local_days_of(utc_days: Iterable[date], name: str) -> set[date]:
    """local_days over several UTC days."""
    if name == DEFAULT:
        return set(utc_days)
    out: set[date] = set()
    for day in utc_days:
        out |= local_days(day, name)
    return out
