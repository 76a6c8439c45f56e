"""The breakdown rows the aggregator writes from its sessions (services/aggregator/breakdowns.py):
what they hold, that only changed rows are written again, and the tombstones of rows a session
leaves. The rows against SQL over raw events: tests/integration/test_api_breakdowns.py."""

from __future__ import annotations

import random
from datetime import date
from typing import Any

import pytest

from services.aggregator.breakdowns import ROLL_UP, UNMARK, RollUps, breakdown_rows
from services.aggregator.sessions import MAX_PAGES, Changes, Visitor, session_from_row, session_row
from tests.unit.aggregator.test_sessions import ev, run
from werkstroom.clickhouse.tables import BREAKDOWN_PAGES_COLUMNS, BREAKDOWN_SESSIONS_COLUMNS, SESSIONS_COLUMNS

DAY = date(2026, 11, 20)
MIN = 60_000


def written(changes: Changes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of one batch's changed sessions, as dicts by column."""
    sessions: list[list[Any]] = []
    pages: list[list[Any]] = []
    for session in changes.sessions.values():
        breakdown_rows(session, sessions, pages)
    return (
        [dict(zip(BREAKDOWN_SESSIONS_COLUMNS, r, strict=True)) for r in sessions],
        [dict(zip(BREAKDOWN_PAGES_COLUMNS, r, strict=True)) for r in pages],
    )


def test_a_sessions_rows_hold_entry_exit_time_on_page_and_the_entry_attributes() -> None:
    _, changes = run(
        [
            ev(0, path="/", n=1, source="Google", utm_campaign="winter", country="NL"),
            ev(2, path="/pricing", n=2, source="", country="DE"),
            ev(3, path="/", n=3),
            ev(5, "track", event="$heartbeat", n=4),
        ]
    )
    (session,), page_rows = written(changes)
    pages = {r["path"]: r for r in page_rows}
    assert (session["entry_path"], session["exit_path"], session["page_views"]) == ("/", "/", 3)
    assert (session["source"], session["utm_campaign"], session["country"]) == ("Google", "winter", "NL")
    assert session["day"] == DAY
    figures = {
        p: (r["views"], r["timed_views"], r["time_ms"], r["is_entry"], r["is_exit"]) for p, r in pages.items()
    }
    assert figures == {
        "/": (2, 2, 2 * MIN + 2 * MIN, 1, 1),  # 0-2 min, and 3-5 min (until the heartbeat)
        "/pricing": (1, 1, 1 * MIN, 0, 0),
    }
    assert all(r["bounced"] == 0 and r["is_deleted"] == 0 for r in pages.values())


def test_the_last_page_view_of_a_session_ending_on_it_has_no_time_and_one_view_bounces() -> None:
    _, changes = run([ev(0, path="/only", n=1)])
    _, pages = written(changes)
    assert [(r["views"], r["timed_views"], r["time_ms"], r["bounced"]) for r in pages] == [(1, 0, 0, 1)]


def test_only_the_rows_that_changed_are_written_again() -> None:
    visitor, changes = run([ev(0, path="/a", n=1), ev(1, path="/b", n=2), ev(2, path="/c", n=3)])
    assert len(written(changes)[1]) == 3
    # A heartbeat changes the time on the last page, nothing else.
    _, changes = run([ev(4, "track", event="$heartbeat", n=4)], visitor, first_offset=3)
    sessions, pages = written(changes)
    assert [r["path"] for r in pages] == ["/c"] and pages[0]["time_ms"] == 2 * MIN
    assert sessions == []
    # A page view: the new exit, and the old exit's row (its time and is_exit changed).
    _, changes = run([ev(5, path="/d", n=5)], visitor, first_offset=4)
    assert sorted(r["path"] for r in written(changes)[1]) == ["/c", "/d"]
    # Nothing changed: nothing written (a replayed offset is not applied at all).
    _, changes = run([ev(5, path="/d", n=5)], visitor, first_offset=4)
    assert written(changes) == ([], [])


def test_a_session_whose_start_moves_to_the_day_before_leaves_tombstones_under_its_old_day() -> None:
    visitor, changes = run([ev(14 * 60, path="/a", n=1)])  # 00:00 the next day
    written(changes)
    _, changes = run([ev(14 * 60 - 10, path="/late", n=2)], visitor, first_offset=1)  # 23:50
    sessions, pages = written(changes)
    old, new = date(2026, 11, 21), date(2026, 11, 20)
    assert {(r["day"], r["is_deleted"]) for r in sessions} == {(old, 1), (new, 0)}
    assert sorted((r["day"], r["path"], r["is_deleted"]) for r in pages) == [
        (new, "/a", 0),
        (new, "/late", 0),
        (old, "/a", 1),
    ]
    assert {r["version"] for r in sessions + pages} == {1}  # above the rows it buries (0)


def test_an_absorbed_session_buries_all_its_rows() -> None:
    visitor, changes = run([ev(0, path="/a", n=1), ev(40, path="/b", n=2)])
    written(changes)
    later = visitor.sessions[1].session_id
    _, changes = run([ev(20, "track", n=3)], visitor, first_offset=2)
    sessions, pages = written(changes)
    gone = [r for r in sessions + pages if r["session_id"] == later]
    assert gone and all(r["is_deleted"] == 1 and r["version"] == 2 for r in gone)
    kept = [r for r in pages if r["session_id"] != later]
    assert sorted(r["path"] for r in kept) == ["/a", "/b"]


def test_a_reloaded_session_writes_all_its_rows_and_buries_under_the_day_it_was_on() -> None:
    visitor, changes = run([ev(0, path="/a", n=1), ev(1, path="/b", n=2)])
    reloaded = Visitor.from_sessions(
        [session_from_row(dict(zip(SESSIONS_COLUMNS, session_row(s), strict=True))) for s in visitor.sessions]
    )
    _, changes = run([ev(2, "track", event="$heartbeat", n=3)], reloaded, first_offset=2)
    sessions, pages = written(changes)
    assert len(sessions) == 1 and sorted(r["path"] for r in pages) == ["/a", "/b"]


def test_a_row_from_before_page_times_were_kept_is_left_to_the_migration() -> None:
    visitor, _ = run([ev(0, path="/a", n=1)])
    row = dict(zip(SESSIONS_COLUMNS, session_row(visitor.sessions[0]), strict=True))
    row["page_times_ms"] = []  # as migration 0023 left a session whose page views were gone
    legacy = Visitor.from_sessions([session_from_row(row)])
    _, changes = run([ev(1, path="/b", n=2)], legacy, first_offset=1)
    assert written(changes) == ([], [])
    assert legacy.sessions[0].pages == ["/a", "/b"]


def test_a_session_keeps_its_first_page_views_by_time_and_a_late_one_can_be_its_entry() -> None:
    events = [ev(1 + i * 0.01, path=f"/p{i}", n=i + 1) for i in range(MAX_PAGES + 5)]
    visitor, _ = run([*events, ev(0, path="/first", n=999, source="Bing")])
    (session,) = visitor.sessions
    assert len(session.pages) == MAX_PAGES and session.pages[0] == "/first"
    assert session.page_ms == sorted(session.page_ms) and session.entry_attributes[0] == "Bing"
    assert session.page_views == MAX_PAGES + 6


def _table(rows: list[list[Any]], table: dict[tuple[Any, ...], list[Any]], key_width: int) -> None:
    """Rows into a table as ReplacingMergeTree(version, is_deleted) keeps them: per key, the
    highest version (the later insert at equal versions)."""
    for r in rows:
        key = tuple(r[:key_width])
        if key not in table or table[key][-2] <= r[-2]:
            table[key] = r


def _live(table: dict[tuple[Any, ...], list[Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[:-2]) for r in table.values() if r[-1] == 0)


@pytest.mark.parametrize("seed", range(300))
def test_rows_written_change_by_change_add_up_to_the_rows_worked_out_at_once(seed: int) -> None:
    """Whatever the order and batching of page views (late ones included), heartbeats, custom
    events and restarts, the tables as the written rows leave them equal the rows of the final
    sessions worked out from nothing."""
    rng = random.Random(seed)
    events = []
    for n in range(rng.randint(1, 40)):
        minutes = rng.uniform(0, 90) if rng.random() < 0.2 else n * rng.uniform(0.1, 3)
        kind = rng.choice(["page", "page", "page", "heartbeat", "track"])
        if kind == "heartbeat":
            events.append(ev(minutes, "track", event="$heartbeat", n=n))
        else:
            events.append(ev(minutes, kind, path=f"/{rng.randint(0, 5)}", n=n))
    visitor = Visitor()
    sessions: dict[tuple[Any, ...], list[Any]] = {}
    pages: dict[tuple[Any, ...], list[Any]] = {}
    at = 0
    while at < len(events):
        batch = events[at : at + rng.randint(1, 4)]
        visitor, changes = run(batch, visitor, first_offset=at)
        at += len(batch)
        s_rows: list[list[Any]] = []
        p_rows: list[list[Any]] = []
        for session in changes.sessions.values():
            breakdown_rows(session, s_rows, p_rows)
        _table(s_rows, sessions, 4)
        _table(p_rows, pages, 5)
        if rng.random() < 0.15:  # a restart: the visitor reloaded from its `sessions` rows
            visitor = Visitor.from_sessions(
                [
                    session_from_row(dict(zip(SESSIONS_COLUMNS, session_row(s), strict=True)))
                    for s in visitor.sessions
                ]
            )
    fresh_s: list[list[Any]] = []
    fresh_p: list[list[Any]] = []
    for session in visitor.sessions:
        session.written = None
        breakdown_rows(session, fresh_s, fresh_p)
    assert _live(sessions) == sorted(tuple(r[:-2]) for r in fresh_s)
    assert _live(pages) == sorted(tuple(r[:-2]) for r in fresh_p)


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
