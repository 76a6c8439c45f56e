"""The funnel logic as pure functions: validation, path patterns, windowFunnel's level and the
per-day progress rows, on hand-computed cases."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from werkstroom.funnels import (
    FunnelError,
    Step,
    level,
    like_pattern,
    progress,
    validate,
)

MIN = 60_000
HOUR = 60 * MIN
STEPS = [Step("$page", "/pricing"), Step("Signed Up"), Step("Order Completed")]


def at(day: int, hour: int = 12, minute: int = 0) -> int:
    return int(datetime(2026, 11, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def test_steps_in_order_within_the_window_reach_every_step() -> None:
    events = [
        (at(1), "$page", "/pricing"),
        (at(1, 12, 5), "Signed Up", "/signup"),
        (at(1, 12, 9), "Order Completed", "/checkout"),
    ]
    assert level(STEPS, HOUR, events) == 3


def test_order_matters_and_the_window_counts_from_step_one() -> None:
    out_of_order = [(at(1), "Signed Up", "/"), (at(1, 12, 1), "$page", "/pricing")]
    assert level(STEPS, HOUR, out_of_order) == 1
    too_late = [
        (at(1), "$page", "/pricing"),
        (at(1, 12, 30), "Signed Up", "/"),
        (at(1, 13, 1), "Order Completed", "/"),  # 61 minutes after step 1
    ]
    assert level(STEPS, HOUR, too_late) == 2
    exactly_at_the_edge = [*too_late[:2], (at(1, 13, 0), "Order Completed", "/")]
    assert level(STEPS, HOUR, exactly_at_the_edge) == 3


def test_a_later_start_can_complete_what_an_earlier_one_could_not() -> None:
    events = [
        (at(1, 10), "$page", "/pricing"),
        (at(1, 12), "$page", "/pricing"),  # a new attempt
        (at(1, 12, 10), "Signed Up", "/"),
        (at(1, 12, 20), "Order Completed", "/"),
    ]
    assert level(STEPS, HOUR, events) == 3
    assert level(STEPS, HOUR, events[:1] + events[2:]) == 1  # the first attempt alone expired


def test_path_patterns_and_event_names() -> None:
    steps = [Step("$page", "/blog/*"), Step("$page", "/signup")]
    assert level(steps, HOUR, [(at(1), "$page", "/blog"), (at(1, 12, 1), "$page", "/signup")]) == 0
    assert level(steps, HOUR, [(at(1), "$page", "/blog/kafka"), (at(1, 12, 1), "$page", "/signup")]) == 2
    assert level(steps, HOUR, [(at(1), "$page", "/blog/x"), (at(1, 12, 1), "Signup", "/signup")]) == 1
    assert Step("$page", "/a*b").matches("$page", "/a/x/b") and not Step("$page", "/a*b").matches(
        "$page", "/ab/c"
    )
    assert Step("$page", "/100%_off").matches("$page", "/100%_off")
    assert not Step("$page", "/100%_off").matches("$page", "/100xyoff")


def test_like_pattern_escapes_like_wildcards() -> None:
    assert like_pattern("/blog/*") == "/blog/%"
    assert like_pattern("/100%_off\\") == "/100\\%\\_off\\\\"


def test_progress_is_per_start_day_over_the_events_from_that_day_on() -> None:
    events = [
        (at(1, 23, 50), "$page", "/pricing"),
        (at(2, 0, 10), "Signed Up", "/"),  # 20 minutes later, the next day
        (at(3, 9), "$page", "/pricing"),
        (at(3, 9, 5), "Signed Up", "/"),
        (at(3, 9, 6), "Order Completed", "/"),
    ]
    assert progress(STEPS, HOUR, events) == {date(2026, 11, 1): 3, date(2026, 11, 3): 3}
    assert progress(STEPS, HOUR, events[:2]) == {date(2026, 11, 1): 2}
    # From day 3 on, only day 3's attempt counts; from day 1 on, the best of both.
    mixed = [*events[:2], (at(3, 9), "$page", "/pricing")]
    assert progress(STEPS, HOUR, mixed) == {date(2026, 11, 1): 2, date(2026, 11, 3): 1}


@pytest.mark.parametrize(
    ("name", "steps", "window", "field"),
    [
        ("", [{"event": "a"}, {"event": "b"}], 3600, "name"),
        ("f", [{"event": "a"}], 3600, "steps"),
        ("f", [{"event": str(i)} for i in range(9)], 3600, "steps"),
        ("f", [{"event": "a"}, "b"], 3600, "steps[1]"),
        ("f", [{"event": "a"}, {"event": ""}], 3600, "steps[1].event"),
        ("f", [{"event": "a"}, {"event": "b", "path": 3}], 3600, "steps[1].path"),
        ("f", [{"event": "a"}, {"event": "b", "extra": 1}], 3600, "steps[1]"),
        ("f", [{"event": "$heartbeat"}, {"event": "b"}], 3600, "steps[0].event"),
        ("f", [{"event": "a"}, {"event": "b"}], 59, "window_seconds"),
        ("f", [{"event": "a"}, {"event": "b"}], "3600", "window_seconds"),
        ("f", [{"event": "a"}, {"event": "b"}], True, "window_seconds"),
    ],
)
def test_bad_definitions_name_the_field(name: object, steps: object, window: object, field: str) -> None:
    with pytest.raises(FunnelError) as caught:
        validate(name, steps, window)
    assert caught.value.field == field


def test_a_good_definition_is_cleaned() -> None:
    name, steps, window = validate(" Checkout ", [{"event": "$page", "path": "/pricing"}, {"event": "Buy "}])
    assert (name, steps, window) == ("Checkout", [Step("$page", "/pricing"), Step("Buy", "")], 86400)
