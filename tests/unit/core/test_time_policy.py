"""werkstroom.contract.event_time: Segment's clock-skew correction, then the time policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from werkstroom.contract import EARLIEST_TIME, FUTURE_TOLERANCE, event_time

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("timestamp", "sent_at", "expected"),
    [
        (None, None, (NOW, False)),
        (None, datetime(9999, 1, 1, tzinfo=UTC), (NOW, False)),
        (NOW - 30 * S, None, (NOW - 30 * S, False)),
        (NOW + 3600 * S, None, (NOW, False)),  # without sentAt: never after the arrival
        (NOW + 3 * 3600 * S - 30 * S, NOW + 3 * 3600 * S, (NOW - 30 * S, False)),  # a clock 3 h fast
        (NOW + 60 * S, NOW, (NOW + 60 * S, False)),  # exactly the tolerance: kept
        (NOW + 61 * S, NOW, (NOW, True)),
        (datetime(2150, 1, 1, tzinfo=UTC), NOW, (NOW, True)),
        (datetime(9999, 12, 31, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC), (NOW, True)),  # overflows
        (datetime(1, 1, 1, tzinfo=UTC), datetime(2299, 1, 1, tzinfo=UTC), (None, False)),  # overflows
        (datetime(1999, 12, 31, tzinfo=UTC), None, (None, False)),
        (EARLIEST_TIME, None, (EARLIEST_TIME, False)),
        (datetime(1970, 1, 1, tzinfo=UTC), NOW, (None, False)),
        (
            datetime(1970, 1, 1, 0, 5, tzinfo=UTC),
            datetime(1970, 1, 1, 0, 6, tzinfo=UTC),
            (NOW - 60 * S, False),
        ),
    ],
)
def test_event_time(
    timestamp: datetime | None, sent_at: datetime | None, expected: tuple[datetime | None, bool]
) -> None:
    assert event_time(timestamp, sent_at, NOW) == expected


def test_extreme_zones_and_arrivals_never_raise_and_results_are_utc() -> None:
    west = timezone(-timedelta(hours=23, minutes=59))
    east = timezone(timedelta(hours=23, minutes=59))
    extremes = [
        datetime.min.replace(tzinfo=east),
        datetime.min.replace(tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=east),
        datetime.max.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=west),
    ]
    for arrival in (NOW, EARLIEST_TIME, datetime(2099, 12, 31, 23, 59, tzinfo=UTC)):
        for timestamp in [None, *extremes]:
            for sent_at in [None, *extremes]:
                when, moved = event_time(timestamp, sent_at, arrival)
                if when is not None:
                    assert when.tzinfo is UTC and EARLIEST_TIME <= when <= arrival + FUTURE_TOLERANCE
                    assert not moved or when == arrival
