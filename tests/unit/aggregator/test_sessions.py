from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from services.aggregator.processor import RecentIds, SessionsProcessor
from services.aggregator.sessions import (
    Changes,
    DayCount,
    Visitor,
    apply,
    identity_rows,
    online_row,
    session_from_row,
    session_row,
)
from werkstroom.clickhouse.tables import EVENTS_DAILY_COLUMNS as DAY_COUNT_COLUMNS
from werkstroom.clickhouse.tables import ONLINE_VISITORS_COLUMNS as ONLINE_COLUMNS
from werkstroom.clickhouse.tables import SESSIONS_COLUMNS as SESSION_COLUMNS
from werkstroom.contract import Event

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def ev(minutes: float, kind: str = "page", path: str = "/", n: int = 0, **extra: Any) -> Event:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "project_id": "p",
        "anonymous_id": "a",
        "user_id": "",
        "event_id": f"e{n}",
        "type": kind,
        "event": {"page": "$page", "identify": "$identify", "alias": "$alias"}.get(kind, "Click"),
        "timestamp": T0 + timedelta(minutes=minutes),
        "received_at": T0,
        "path": path,
        "url": f"https://x{path}",
        "title": path,
        "device_type": "desktop",
        "browser": "Chrome",
        "os": "Windows",
    }
    return Event(**{**fields, **extra})


def run(
    events: list[dict[str, Any]], visitor: Visitor | None = None, first_offset: int = 0
) -> tuple[Visitor, Changes]:
    visitor = visitor or Visitor()
    changes = Changes()
    for i, event in enumerate(events):
        apply(visitor, event, 0, first_offset + i, changes)
    return visitor, changes


def test_thirty_minutes_of_silence_end_a_session_exactly_thirty_do_not() -> None:
    visitor, _ = run([ev(0, n=1), ev(30, n=2), ev(60.001, n=3), ev(61, "track", n=4)])
    assert [(s.page_views, s.events) for s in visitor.sessions] == [(2, 2), (1, 2)]
    first, second = visitor.sessions
    assert (first.entry_path, first.current_path) == ("/", "/")
    assert second.session_id != first.session_id


def test_replayed_offsets_change_nothing() -> None:
    visitor, _ = run([ev(0, n=1), ev(1, n=2)])
    before = [session_row(s) for s in visitor.sessions]
    changes = Changes()
    assert apply(visitor, ev(1, n=2), 0, 1, changes) is False
    assert apply(visitor, ev(0, n=1), 0, 0, changes) is False
    assert [session_row(s) for s in visitor.sessions] == before and not changes.sessions


def test_current_page_time_on_page_and_entry_follow_event_time() -> None:
    visitor, _ = run([ev(0, path="/a", n=1), ev(2, path="/b", n=2), ev(1, path="/late", n=3)])
    (s,) = visitor.sessions
    assert (s.entry_path, s.current_path, s.page_views) == ("/a", "/b", 3)
    assert s.page_entered_ms == int((T0 + timedelta(minutes=2)).timestamp() * 1000)
    assert s.pages == ["/a", "/b", "/late"]


def test_heartbeats_keep_a_session_alive_but_are_not_events() -> None:
    visitor, _ = run(
        [ev(0, n=1), ev(20, "track", event="$heartbeat", n=2), ev(45, "track", event="$heartbeat", n=3)]
    )
    (s,) = visitor.sessions
    assert (s.page_views, s.events) == (1, 1)
    assert s.last_ms - s.start_ms == 45 * 60 * 1000


def test_a_late_event_filling_the_gap_merges_sessions_and_deletes_one() -> None:
    visitor, _ = run([ev(0, path="/a", n=1), ev(40, path="/b", n=2)])
    assert len(visitor.sessions) == 2
    later = visitor.sessions[1].session_id
    visitor, changes = run([ev(20, "track", n=3)], visitor, first_offset=2)
    (s,) = visitor.sessions
    assert (s.page_views, s.events, s.entry_path, s.current_path) == (2, 3, "/a", "/b")
    assert changes.sessions[later].deleted and changes.sessions[later].version == 2


def test_a_very_late_event_lands_in_its_own_old_session() -> None:
    visitor, _ = run([ev(0, n=1), ev(300, n=2), ev(100, "track", n=3)])
    assert [(s.page_views, s.events) for s in visitor.sessions] == [(1, 1), (0, 1), (1, 1)]


def test_a_visitor_reloaded_from_its_rows_continues_exactly_like_one_kept_in_memory() -> None:
    events = [ev(0, path="/a", n=1), ev(3, path="/b", n=2), ev(50, n=3), ev(51, "identify", n=4, user_id="u")]
    rest = [ev(52, path="/c", n=5), ev(10, "track", n=6), ev(200, n=7)]
    kept, _ = run(events)
    reloaded = Visitor.from_sessions(
        [session_from_row(dict(zip(SESSION_COLUMNS, session_row(s), strict=True))) for s in kept.sessions]
    )
    assert reloaded.last_offset == kept.last_offset == 3
    a, _ = run(rest, kept, first_offset=4)
    b, _ = run(rest, reloaded, first_offset=4)
    assert [session_row(s) for s in a.sessions] == [session_row(s) for s in b.sessions]


def test_identify_and_alias_map_ids_to_the_user_latest_wins() -> None:
    changes = Changes()
    identity_rows(ev(0, "identify", user_id="u1", n=1), changes)
    identity_rows(ev(5, "identify", user_id="u2", n=2), changes)
    identity_rows(ev(1, "identify", user_id="u0", n=3), changes)  # older: loses
    identity_rows(ev(2, "alias", user_id="u2", previous_id="old-id", anonymous_id="", n=4), changes)
    identity_rows(ev(3, "page", user_id="u9", n=5), changes)  # a page with a user id maps nothing
    assert {k: v[0] for k, v in changes.identities.items()} == {("p", "a"): "u2", ("p", "old-id"): "u2"}


def test_processor_skips_server_side_calls_for_sessions_and_forgets_revoked_partitions() -> None:
    processor = SessionsProcessor()
    batch = [(ev(0, n=1), 0, 0), (ev(1, "track", n=2, anonymous_id="", user_id="u"), 1, 0)]
    rows, dirty = processor.process(batch)
    assert dirty.ids == {("p", "a"), ("p", "u")} and dirty.days == {("p", T0.date())}
    assert len(rows["sessions"][1]) == 1 and len(rows["online_visitors"][1]) == 1
    assert list(processor.visitors) == [("p", "a")]
    processor.revoke({1})
    assert list(processor.visitors) == [("p", "a")]
    processor.revoke({0})
    assert processor.visitors == {}


def test_idle_visitors_are_forgotten_only_once_their_rows_are_written() -> None:
    processor = SessionsProcessor()
    old = [(ev(0, n=1), 0, 0)]
    processor.process(old, seq=1)  # batch 1 changed "a"
    processor.process([(ev(600, n=2, anonymous_id="b"), 0, 1)])  # event time moves 10 h on
    assert processor.evict_idle(written_seq=0) == 0  # batch 1 not written yet: keep "a"
    assert processor.evict_idle(written_seq=1) == 1
    assert list(processor.visitors) == [("p", "b")]


def test_an_event_from_a_clock_far_ahead_does_not_make_everyone_else_idle() -> None:
    now = datetime.now(UTC)
    minutes_ago = (now - T0) / timedelta(minutes=1)
    processor = SessionsProcessor()
    processor.process([(ev(minutes_ago, n=1), 0, 0)], seq=1)  # "a", browsing now
    ahead = ev(minutes_ago + 365 * 24 * 60, n=2, anonymous_id="skewed")  # a year ahead
    processor.process([(ahead, 0, 1)], seq=1)
    assert processor.evict_idle(written_seq=0) == 0  # nothing written yet
    # "a" is not idle: its time is now. "skewed" is not held for a year: it is reloaded from
    # its rows if it comes back.
    assert processor.evict_idle(written_seq=1) == 1
    assert set(processor.visitors) == {("p", "a")}
    assert len(processor.day_counts) == 2  # nor is today's count "before yesterday"
    # Real time still counts: a visitor quiet for longer than the eviction horizon goes.
    processor.process([(ev(minutes_ago - 2 * 60, n=3, anonymous_id="quiet"), 1, 0)], seq=1)
    assert processor.evict_idle(written_seq=1) == 1
    assert ("p", "quiet") not in processor.visitors


def test_a_row_does_not_change_when_its_session_changes_after_it_was_built() -> None:
    visitor, _ = run([ev(0, path="/a", n=1)])
    row = session_row(visitor.sessions[0])  # queued for the writer
    run([ev(1, path="/b", n=2)], visitor, first_offset=1)
    assert row[SESSION_COLUMNS.index("pages")] == ["/a"] and row[SESSION_COLUMNS.index("page_views")] == 1


def test_the_live_row_is_the_newest_session_row_cut_down_to_the_online_columns() -> None:
    visitor, _ = run([ev(0, path="/a", n=1), ev(1, "track", n=2), ev(2, path="/b", n=3, user_id="u1")])
    full = dict(zip(SESSION_COLUMNS, session_row(visitor.sessions[-1]), strict=True))
    expected = [full[c] for c in ONLINE_COLUMNS if c != "version"] + [visitor.last_offset]
    assert online_row(visitor) == expected
    assert ONLINE_COLUMNS[-1] == "version"


def test_a_session_dirties_every_day_it_spans_also_when_its_event_is_replayed() -> None:
    """The daily recomputation recounts the days a changed session spans (sessions_daily keeps
    it under its start day, and it may have been counted on a later one before). An event
    re-read after a crash changes nothing, but its session may not have been counted yet."""
    processor = SessionsProcessor()
    evening, morning = date(2026, 11, 20), date(2026, 11, 21)
    _rows, dirty = processor.process([(ev(830, n=1), 0, 0), (ev(850, n=2), 0, 1)])  # 23:50, 00:10
    assert {day for _p, day in dirty.days} == {evening, morning}
    rows, dirty = processor.process([(ev(850, n=2), 0, 1)])  # offset 1 again: a replay
    assert rows["sessions"][1] == []
    assert {day for _p, day in dirty.days} == {evening, morning}


def test_a_days_counts_skip_replayed_offsets_per_partition_and_day() -> None:
    """events_daily: page views and events (heartbeats are not) per project, day and partition,
    versioned by the last offset counted. A batch re-read after a crash counts nothing twice;
    a row reloaded from ClickHouse (events_daily) continues where it was written."""
    processor = SessionsProcessor()
    late = ev(-24 * 60, n=4)  # yesterday, from the offline queue
    batch = [
        (ev(0, n=1), 0, 5),
        (ev(1, "track", n=2), 0, 6),
        (ev(2, "heartbeat", n=3, event="$heartbeat"), 0, 7),
    ]
    rows, _ = processor.process([*batch, (late, 0, 8), (ev(3, n=5, anonymous_id="b"), 1, 3)])
    today, yesterday = T0.date(), T0.date() - timedelta(days=1)
    assert sorted(rows["events_daily"][1]) == [
        ["p", yesterday, 0, 1, 1, 8],
        ["p", today, 0, 1, 2, 7],
        ["p", today, 1, 1, 1, 3],
    ]
    rows, _ = processor.process(batch)  # the replay
    assert rows["events_daily"][1] == []

    reloaded = SessionsProcessor()
    reloaded.day_counts[("p", today, 0)] = DayCount(1, 2, 7)  # as resolve_days adds the stored row
    rows, _ = reloaded.process([*batch, (ev(4, n=6), 0, 9)])
    assert rows["events_daily"][1] == [["p", today, 0, 2, 3, 9]]
    assert DAY_COUNT_COLUMNS[-1] == "version"


def test_counts_of_old_days_are_forgotten_once_written_and_revoked_partitions_at_once() -> None:
    processor = SessionsProcessor()
    processor.process([(ev(-3 * 24 * 60, n=1), 0, 0), (ev(0, n=2, anonymous_id="b"), 1, 0)], seq=1)
    assert len(processor.day_counts) == 2
    processor.evict_idle(written_seq=0)
    assert len(processor.day_counts) == 2  # not written yet
    processor.evict_idle(written_seq=1)
    assert list(processor.day_counts) == [("p", T0.date(), 1)]  # today stays
    processor.revoke({1})
    assert processor.day_counts == {}


def test_an_event_sent_again_counts_once_while_a_replay_of_its_position_goes_through() -> None:
    """A client's retry (a 503 after the broker took the events, a lost 200) is the same event
    id at a later position: counted once in sessions and day counts. The same event at the same
    position (a re-read after a crash) is left to the versions."""
    processor = SessionsProcessor()
    first = [(ev(0, n=1), 0, 5), (ev(1, "track", n=2), 0, 6)]
    rows, _ = processor.process(first)
    assert [r[3:5] for r in rows["events_daily"][1]] == [[1, 2]]
    retry = [(ev(0, n=1), 0, 9), (ev(1, "track", n=2), 0, 10), (ev(2, n=3), 0, 11)]
    rows, _ = processor.process(retry)
    assert [r[3:5] for r in rows["events_daily"][1]] == [[2, 3]]  # only e3 is new
    (session,) = processor.visitors[("p", "a")].sessions
    assert (session.page_views, session.events) == (2, 3)
    assert processor.seen.first_at("p", "e1", 5) == 5  # the replay of a position: unchanged
    assert processor.seen.first_at("other", "e1", 12) == 12  # ids are per project


def test_recent_ids_remember_between_one_and_two_windows() -> None:
    seen = RecentIds(size=3)
    for i in range(3):
        assert seen.first_at("p", f"e{i}", i) == i
    for i in range(3):  # the first window moved to "previous": still remembered
        assert seen.first_at("p", f"e{i}", 10 + i) == i
    for i in range(3, 9):
        seen.first_at("p", f"e{i}", i)
    assert seen.first_at("p", "e0", 20) == 20  # two windows later: forgotten


def test_only_identify_sets_a_persons_traits_and_screens_and_groups_are_activity() -> None:
    """context.traits of page/screen/track/group/alias calls stay on their events (ingest keeps
    them); a person's traits come from identify calls only. A screen (an app's page) counts as
    an event of the session, not as a page view; so does a group call."""
    traits = msgspec.Raw(b'{"plan":"free"}')
    batch = [
        (ev(0, n=1, traits=traits), 0, 0),
        (ev(1, "screen", event="$screen", n=2, traits=traits), 0, 1),
        (ev(2, "track", n=3, user_id="u", traits=traits), 0, 2),
        (ev(3, "group", event="$group", n=4, user_id="u", traits=msgspec.Raw(b'{"name":"Acme"}')), 0, 3),
        (ev(4, "alias", n=5, user_id="u", previous_id="old", traits=traits), 0, 4),
        (ev(5, "identify", n=6, user_id="u", traits=msgspec.Raw(b'{"plan":"premium"}')), 0, 5),
    ]
    rows, _dirty = SessionsProcessor().process(batch)
    assert [tuple(r[1:4]) for r in rows["person_traits"][1]] == [("u", "plan", '"premium"')]
    (session,) = rows["sessions"][1]
    named = dict(zip(SESSION_COLUMNS, session, strict=True))
    assert (named["page_views"], named["events"]) == (1, 6)
