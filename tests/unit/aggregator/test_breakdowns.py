"""The roll-up of settled days' breakdowns (services/aggregator/breakdowns.py, RollUps): when a
worker rolls a day up. The breakdown rows themselves are recomputed in ClickHouse: held to SQL
over raw events in tests/integration/test_api_breakdowns.py and
tests/integration/test_aggregator_breakdowns.py."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from services.aggregator.breakdowns import (
    BURY,
    BURY_ACTIVITY,
    BURY_BY,
    ROLL_UP,
    ROLL_UP_ACTIVITY,
    ROLL_UP_BY,
    UNMARK,
    UNMARK_ACTIVITY,
    UNMARK_BY,
    RollUps,
)

# Each statement's kind; the unfiltered and the one-filter roll-ups (breakdown_daily_by,
# activity_daily_by) go together.
_KINDS = {UNMARK: "unmark", ROLL_UP: "roll", BURY: "bury"}
_PAIRED = {
    UNMARK_BY: UNMARK,
    UNMARK_ACTIVITY: UNMARK,
    ROLL_UP_BY: ROLL_UP,
    ROLL_UP_ACTIVITY: ROLL_UP,
    BURY_BY: BURY,
    BURY_ACTIVITY: BURY,
}


class _Recorder:
    """A client that records the roll-up statements it is given (which days, marked or not)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[date]]] = []

    def command(self, sql: str, parameters: dict[str, Any]) -> None:
        if sql in _PAIRED:  # the same days as its unfiltered statement, just before
            assert self.calls and self.calls[-1] == (
                _KINDS[_PAIRED[sql]],
                parameters["p"],
                parameters["days"],
            )
            return
        self.calls.append((_KINDS[sql], parameters["p"], parameters["days"]))


def test_a_settled_day_is_rolled_up_at_once_then_at_most_every_so_often_unmarked_meanwhile() -> None:
    rollups, client = RollUps(every=60), _Recorder()
    today, d1, d2 = date(2026, 12, 3), date(2026, 12, 1), date(2026, 12, 2)
    clock = datetime(2026, 12, 3, 12, tzinfo=UTC)
    rollups.refresh(client, {"p": {d1, today}}, 1, clock, now=0)  # today is never rolled up
    assert client.calls == [("roll", "p", [d1]), ("bury", "p", [d1])]
    client.calls.clear()
    rollups.refresh(client, {"p": {d1, d2}}, 2, clock, now=10)  # d1 again, too soon
    assert client.calls == [("unmark", "p", [d1]), ("roll", "p", [d2]), ("bury", "p", [d2])]
    client.calls.clear()
    rollups.refresh(client, {"p": {d1}}, 3, clock, now=20)  # unmarked once, not again
    assert client.calls == []
    rollups.refresh(client, {}, 4, clock, now=61)  # its turn, with no new change
    assert client.calls == [("roll", "p", [d1]), ("bury", "p", [d1])]
    assert rollups.waiting == set() and rollups.unmarked == set()


def test_a_day_is_settled_when_the_project_s_own_day_is_over() -> None:
    """At 2026-12-03 23:30 UTC it is already 12-04 in Amsterdam: 12-03 is settled there, not in
    UTC; a project's zone is remembered for the days that wait for their turn."""
    rollups, client = RollUps(every=60), _Recorder()
    clock = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)
    day = date(2026, 12, 3)
    zones = {"ams": "Europe/Amsterdam", "utc": "UTC"}
    rollups.refresh(client, {"ams": {day}, "utc": {day}}, 1, clock, now=0, zones=zones)
    assert client.calls == [("roll", "ams", [day]), ("bury", "ams", [day])]
