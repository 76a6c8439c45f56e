"""What the aggregator keeps for the breakdowns (services/aggregator/breakdowns.py): a session's
page views and entry attributes, tombstones when its start moves to another day, and when it
rolls up settled days. The rows the views compute, against SQL over raw events:
tests/integration/test_api_breakdowns.py and test_migrations.py."""

from __future__ import annotations

from datetime import date
from typing import Any

from services.aggregator.breakdowns import ROLL_UP, UNMARK, RollUps, moved_rows
from services.aggregator.sessions import MAX_PAGES, Visitor, session_from_row, session_row
from tests.unit.aggregator.test_sessions import ev, run
from werkstroom.clickhouse.tables import BREAKDOWN_PAGES_COLUMNS, BREAKDOWN_SESSIONS_COLUMNS, SESSIONS_COLUMNS

DAY = date(2026, 11, 20)
MIN = 60_000


def test_a_session_whose_start_moves_to_the_day_before_leaves_tombstones_under_its_old_day() -> None:
    sessions: list[tuple[Any, ...]] = []
    pages: list[tuple[Any, ...]] = []
    visitor, changes = run([ev(14 * 60, path="/a", n=1)])  # 00:00 the next day
    for session in changes.sessions.values():
        moved_rows(session, sessions, pages)
    assert (sessions, pages) == ([], [])  # first written: nothing to bury
    _, changes = run([ev(14 * 60 - 10, path="/late", n=2)], visitor, first_offset=1)  # 23:50
    for session in changes.sessions.values():
        moved_rows(session, sessions, pages)
    s_rows = [dict(zip(BREAKDOWN_SESSIONS_COLUMNS, r, strict=True)) for r in sessions]
    p_rows = [dict(zip(BREAKDOWN_PAGES_COLUMNS, r, strict=True)) for r in pages]
    old = date(2026, 11, 21)
    assert [(r["day"], r["is_deleted"], r["version"]) for r in s_rows] == [(old, 1, 1)]
    assert sorted((r["day"], r["path"], r["is_deleted"]) for r in p_rows) == [
        (old, "/a", 1),
        (old, "/late", 1),
    ]
    # the same day again: nothing more
    _, changes = run([ev(14 * 60 + 1, "track", event="$heartbeat", n=3)], visitor, first_offset=2)
    sessions.clear()
    pages.clear()
    for session in changes.sessions.values():
        moved_rows(session, sessions, pages)
    assert (sessions, pages) == ([], [])


def test_a_reloaded_session_knows_the_day_its_rows_are_under() -> None:
    visitor, _ = run([ev(14 * 60, path="/a", n=1)])
    reloaded = Visitor.from_sessions(
        [session_from_row(dict(zip(SESSIONS_COLUMNS, session_row(s), strict=True))) for s in visitor.sessions]
    )
    _, changes = run([ev(14 * 60 - 10, path="/late", n=2)], reloaded, first_offset=1)
    sessions: list[tuple[Any, ...]] = []
    pages: list[tuple[Any, ...]] = []
    for session in changes.sessions.values():
        moved_rows(session, sessions, pages)
    assert len(sessions) == 1 and sessions[0][1] == date(2026, 11, 21)


def test_a_session_keeps_its_first_page_views_by_time_and_a_late_one_can_be_its_entry() -> None:
    events = [ev(1 + i * 0.01, path=f"/p{i}", n=i + 1) for i in range(MAX_PAGES + 5)]
    visitor, _ = run([*events, ev(0, path="/first", n=999, source="Bing")])
    (session,) = visitor.sessions
    assert len(session.pages) == MAX_PAGES and session.pages[0] == "/first"
    assert session.page_ms == sorted(session.page_ms) and session.entry_attributes[0] == "Bing"
    assert session.page_views == MAX_PAGES + 6


def test_absorbing_a_session_merges_page_views_in_time_order_and_takes_the_earlier_entry() -> None:
    visitor, _ = run([ev(0, path="/a", n=1, source="Google"), ev(40, path="/b", n=2, source="Bing")])
    run([ev(20, path="/mid", n=3)], visitor, first_offset=2)
    (session,) = visitor.sessions
    assert session.pages == ["/a", "/mid", "/b"] and session.entry_attributes[0] == "Google"
    assert session.page_ms == sorted(session.page_ms)


class _Recorder:
    """A client that records the roll-up statements it is given (which days, marked or not)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[date]]] = []

    def command(self, sql: str, parameters: dict[str, Any]) -> None:
        kind = "unmark" if sql == UNMARK else "roll" if sql == ROLL_UP else "bury"
        self.calls.append((kind, parameters["p"], parameters["days"]))


def test_a_settled_day_is_rolled_up_at_once_then_at_most_every_so_often_unmarked_meanwhile() -> None:
    rollups, client = RollUps(every=60), _Recorder()
    today, d1, d2 = date(2026, 12, 3), date(2026, 12, 1), date(2026, 12, 2)
    rollups.refresh(client, {"p": {d1, today}}, 1, today, now=0)  # today is never rolled up
    assert client.calls == [("roll", "p", [d1]), ("bury", "p", [d1])]
    client.calls.clear()
    rollups.refresh(client, {"p": {d1, d2}}, 2, today, now=10)  # d1 again, too soon
    assert client.calls == [("unmark", "p", [d1]), ("roll", "p", [d2]), ("bury", "p", [d2])]
    client.calls.clear()
    rollups.refresh(client, {"p": {d1}}, 3, today, now=20)  # unmarked once, not again
    assert client.calls == []
    rollups.refresh(client, {}, 4, today, now=61)  # its turn, with no new change
    assert client.calls == [("roll", "p", [d1]), ("bury", "p", [d1])]
    assert rollups.waiting == set() and rollups.unmarked == set()
