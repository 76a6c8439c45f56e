"""werkstroom.contract.event_time: the clock-skew correction with its soft tolerance, then the
time policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from werkstroom.contract import CLOCK_TOLERANCE, EARLIEST_TIME, FUTURE_TOLERANCE, event_time

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("timestamp", "sent_at", "expected"),
    [
        (None, None, (NOW, False)),
        (None, datetime(9999, 1, 1, tzinfo=UTC), (NOW, False)),
        (NOW - 30 * S, None, (NOW - 30 * S, False)),
        (NOW + 3600 * S, None, (NOW, False)),  # without sentAt: never after the arrival
        # A clock 3 h fast is brought to within the tolerance of ours (never past it).
        (NOW + 3 * 3600 * S - 30 * S, NOW + 3 * 3600 * S, (NOW - 20 * S, False)),
        (NOW - 3 * 3600 * S - 30 * S, NOW - 3 * 3600 * S, (NOW - 40 * S, False)),  # 3 h slow
        # Within the tolerance, either way, the client's own time is kept exactly.
        (NOW - 30 * S, NOW + 10 * S, (NOW - 30 * S, False)),
        (NOW - 30 * S, NOW - 10 * S, (NOW - 30 * S, False)),
        (NOW - 30 * S, NOW + 10.5 * S, (NOW - 30.5 * S, False)),  # past it: by the excess only
        (NOW - 30 * S, NOW - 10.5 * S, (NOW - 29.5 * S, False)),
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
            (NOW - 70 * S, False),  # a clock reset to 1970: a minute ago, to within the tolerance
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


def test_the_correction_is_continuous_in_the_clock_offset() -> None:
    """No jump at the tolerance: a change of the offset moves the time by at most that much."""
    happened = NOW - 30 * S
    ms = timedelta(milliseconds=1)
    edges = (CLOCK_TOLERANCE, -CLOCK_TOLERANCE)
    offsets = [edge + k * ms for edge in edges for k in range(-3, 4)] + [k * 997 * ms for k in range(-30, 31)]
    offsets.sort()
    times = []
    for offset in offsets:
        when, _ = event_time(happened + offset, NOW + offset, NOW)  # a clock `offset` ahead
        assert when is not None
        times.append(when)
    for (a, b), (ta, tb) in zip(pairwise(offsets), pairwise(times), strict=True):
        assert abs(tb - ta) <= b - a
    assert max(times) - min(times) <= 2 * CLOCK_TOLERANCE  # every clock ends up within it


# -- concurrent requests: the Node SDK's page -> identify -> track ------------------------------
MS = timedelta(milliseconds=1)


def segment_formula(timestamp: datetime, sent_at: datetime, received_at: datetime) -> datetime:
    """Segment's per-request correction, used here before the tolerance."""
    return received_at + (timestamp - sent_at)


def concurrent_requests(
    n: int, clock_offset: timedelta, seed: int
) -> list[tuple[int, datetime, datetime, datetime, datetime]]:
    """`n` events 1 ms apart by a client clock `clock_offset` ahead of ours, each sent in its own
    request (sentAt 0-2 ms after the event) with 0-300 ms of transit, in arrival order:
    (client order, true time, timestamp, sentAt, arrival)."""
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        true_time = NOW + i * MS
        timestamp = true_time + clock_offset
        delay = timedelta(microseconds=rng.randrange(0, 2000))
        transit = timedelta(microseconds=rng.randrange(0, 300_000))
        requests.append((i, true_time, timestamp, timestamp + delay, true_time + delay + transit))
    requests.sort(key=lambda r: r[4])
    return requests


def swapped_pairs(times_in_client_order: list[datetime]) -> int:
    return sum(1 for a, b in pairwise(times_in_client_order) if a > b)


def in_client_order(
    requests: list[tuple[int, datetime, datetime, datetime, datetime]], times: list[datetime]
) -> list[datetime]:
    """`times`, one per request in arrival order, put back in the order the client made them."""
    ordered = [datetime.min] * len(times)
    for request, when in zip(requests, times, strict=True):
        ordered[request[0]] = when
    return ordered


@pytest.mark.parametrize("clock_offset", [0 * S, 3 * S, -3 * S])
def test_a_clock_within_the_tolerance_keeps_its_order_whatever_the_network_does(
    clock_offset: timedelta,
) -> None:
    requests = concurrent_requests(1000, clock_offset, seed=19)
    assert [r[0] for r in requests] != list(range(1000))  # the arrivals are shuffled
    stored = []
    for _i, _true, timestamp, sent_at, received_at in requests:
        when, moved = event_time(timestamp, sent_at, received_at)
        assert when == timestamp and not moved  # the client's own times, exactly
        stored.append(when)
    assert swapped_pairs(in_client_order(requests, stored)) == 0


def test_segments_per_request_correction_swapped_about_half_of_the_neighbours() -> None:
    """The measurement behind CLOCK_TOLERANCE (docs/contract.md): with Segment's formula a
    perfect clock's events 1 ms apart swap with a neighbour about half the time."""
    requests = concurrent_requests(1000, 0 * S, seed=19)
    old = [segment_formula(ts, sent, arrival) for _i, _true, ts, sent, arrival in requests]
    new = [event_time(ts, sent, arrival)[0] for _i, _true, ts, sent, arrival in requests]
    assert swapped_pairs(in_client_order(requests, old)) > 400
    assert swapped_pairs(in_client_order(requests, new)) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("clock_offset", [3600 * S, -3600 * S])
def test_a_clock_an_hour_off_is_brought_to_within_the_tolerance(clock_offset: timedelta) -> None:
    transit = 300 * MS
    for _i, true_time, timestamp, sent_at, received_at in concurrent_requests(200, clock_offset, seed=7):
        when, moved = event_time(timestamp, sent_at, received_at)
        assert when is not None and not moved
        assert abs(when - true_time) <= CLOCK_TOLERANCE + transit
