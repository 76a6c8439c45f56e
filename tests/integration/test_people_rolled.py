"""The metric cards' persons and churn figures with one rolled filter, read from person_first_by
(services.api.people.rolled_cards), and "online a week ago" under one, read from
online_history_by (people.online_week_ago), on the real engine: rows written here as the
aggregator writes them, the figures the definitions give (docs/definitions.md, "Filters")."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from services.api import people
from services.api.filters import Filters
from werkstroom import churn
from werkstroom.clickhouse.migrate import migrate
from werkstroom.clickhouse.params import insert_rows
from werkstroom.clickhouse.tables import (
    BREAKDOWN_SESSIONS_COLUMNS,
    ONLINE_HISTORY_BY_COLUMNS,
    PERSON_FIRST_BY_COLUMNS,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
D = timedelta(days=1)


def row(person: str, days: list[date], active: list[date], first_seen: date) -> list[object]:
    """An NL person_first_by row as the aggregator writes it on the day of its last NL day (its
    recent days kept from 22 days before that)."""
    since = max(days) - timedelta(days=churn.RECENT_DAYS)
    recent = sum(churn.bit(d) for d in set(days) if d >= since)
    recent_active = sum(churn.bit(d) for d in set(active) if d >= since)
    return ["p", "country", "NL", person, min(days), max(days), first_seen, recent, recent_active, 0, 1]


def test_churn_counts_each_window_from_the_kept_days_and_no_older_row(database: Client) -> None:
    migrate(database)
    rows = [
        # today's base (an NL day 10 days ago), active since: not churned
        row("stays", [TODAY - 10 * D], [TODAY - 10 * D, TODAY - 2 * D], TODAY - 10 * D),
        # today's base, no activity in the last 7 days: churned
        row("goes", [TODAY - 9 * D], [TODAY - 9 * D], TODAY - 30 * D),
        # a week ago's base (16 days ago), active 10 days ago: not churned then; today: no base
        row("earlier", [TODAY - 16 * D], [TODAY - 16 * D, TODAY - 10 * D], TODAY - 16 * D),
        # new this week, no base
        row("new", [TODAY - D], [TODAY - D], TODAY - D),
        # 75 days ago: its day's bit is the bit of 11 days ago (64 apart), in today's base window
        row("old", [TODAY - 75 * D], [TODAY - 75 * D], TODAY - 75 * D),
    ]
    insert_rows(database, "person_first_by", rows, PERSON_FIRST_BY_COLUMNS)
    assert churn.bit(TODAY - 75 * D) == churn.bit(TODAY - 11 * D)

    persons, churned = people.rolled_cards(database, "p", NOW, Filters.parse({"country": "NL"}, NOW))

    # total 5 (4 by a week ago: all but "new"); new this week: "new"; the week before: "stays"
    assert persons == (5, 4, 1, 1)
    # today: base stays + goes, goes churned; a week ago: base earlier, not churned
    assert churned == (2, 1, 1, 0)


def test_online_a_week_ago_under_a_rolled_filter_is_the_recorded_minute_else_the_sessions(
    database: Client,
) -> None:
    migrate(database)
    database.command("SYSTEM STOP MERGES online_history_by")  # a minute's two writes stay two rows
    # the table keeps 8 days (its TTL): a week before the wall clock's minute, not NOW's
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    then = now - timedelta(days=7)
    m = timedelta(minutes=1)
    # An NL desktop visitor whose session spans that moment: what the sessions give.
    session = dict.fromkeys(BREAKDOWN_SESSIONS_COLUMNS, "")
    session.update(
        project_id="p",
        day=then.date(),
        anonymous_id="a1",
        session_id="s1",
        country="NL",
        device_type="desktop",
        page_views=2,
        duration_ms=20 * 60_000,
        start_at=then - 10 * m,
        version=1,
        is_deleted=0,
    )
    insert_rows(database, "breakdown_sessions", [list(session.values())], BREAKDOWN_SESSIONS_COLUMNS)

    def week_ago(**given: str) -> int:
        return people.online_week_ago(database, "p", now, Filters.parse(given, now))

    def record(
        minute: datetime, filter_value: str, online: int, version: int = 1, project: str = "p"
    ) -> None:
        row = [project, "country", filter_value, minute, online, version]
        insert_rows(database, "online_history_by", [row], ONLINE_HISTORY_BY_COLUMNS)

    assert week_ago(country="NL") == 1  # nothing recorded: the sessions spanning the moment
    # Recorded a minute before (country DE alone: nobody NL was online then), two minutes after
    # (NL), and three before (out of reach): the nearest recorded minute says 0.
    record(then - m, "DE", 5)
    record(then + 2 * m, "NL", 7)
    record(then - 3 * m, "NL", 9)
    assert week_ago(country="NL") == 0
    assert week_ago(country="DE") == 5
    # The minute itself, written twice (the newer write counts), and another project's.
    record(then, "NL", 4)
    record(then, "NL", 6, version=2)
    record(then, "NL", 50, project="q")
    assert week_ago(country="NL") == 6
    assert week_ago(country="DE") == 0  # that minute has the filter, not the value
    # A filter never recorded (device), and two filters (not one rolled filter): the sessions.
    assert week_ago(device="desktop") == 1
    assert week_ago(country="NL", device="desktop") == 1
