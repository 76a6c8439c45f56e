"""The metric cards and the users list narrowed by filters (services/api/people.py): their SQL,
and that without filters they are the queries they were."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi import HTTPException

from services.api import people, queries
from services.api.filters import Filters
from services.api.queries import EVERYONE, users_filter
from services.api.routes.filtering import filters_of, session_filters_of, with_segment
from werkstroom import churn
from werkstroom.breakdowns import EVERY_PERSON_OF

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)
HOSTILE = "x' OR 1=1 --"


class _Result:
    def __init__(self, row: list[Any]) -> None:
        self.first_row = row
        self.result_rows: list[list[Any]] = []


class Recording:
    """Not a ClickHouse: records each statement and its parameters, answers zeros."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Mapping[str, Any]]] = []

    def query(self, sql: str, parameters: Mapping[str, Any]) -> _Result:
        self.asked.append((sql, parameters))
        return _Result([0] * 8)


def _filters(**given: str) -> Filters:
    return Filters.parse(given, NOW)


def test_without_filters_the_cards_read_what_they_did() -> None:
    for filtered, plain in (
        (people.persons_counts, queries.persons_counts),
        (people.online_week_ago, queries.online_week_ago),
        (people.churn_counts, queries.churn_counts),
    ):
        ours, theirs = Recording(), Recording()
        filtered(ours, "p1", NOW, Filters())  # type: ignore[arg-type]
        plain(theirs, "p1", NOW)  # type: ignore[arg-type]
        assert ours.asked == theirs.asked and ours.asked, filtered.__name__
    assert people.listed(Filters()) == EVERYONE
    assert users_filter("p1", NOW, "active", "q", EVERYONE) == users_filter("p1", NOW, "active", "q")


def test_filtered_cards_bind_every_value() -> None:
    f = _filters(country=HOSTILE, page="/blog/*", segment="active")
    client = Recording()
    people.persons_counts(client, "p1", NOW, f)  # type: ignore[arg-type]
    people.online_week_ago(client, "p1", NOW, f)  # type: ignore[arg-type]
    (counts, counted), (online, at) = client.asked
    for sql, params in client.asked:
        assert HOSTILE not in sql and "breakdown_sessions FINAL" in sql
        assert params["f_country"] == HOSTILE and params["f_page"] == "/blog/%" and params["p"] == "p1"
    assert (counted["lo"], counted["hi"], counted["t"]) == (people.FIRST_DAY, NOW.date(), NOW.date())
    # a visitor's person as the activity chart resolves it (one definition: EVERY_PERSON_OF)
    assert EVERY_PERSON_OF in counts
    # a week ago: the sessions of that day and the one before, those spanning the moment
    assert (at["lo"], at["hi"], at["w1"]) == (date(2026, 11, 24), date(2026, 11, 25), NOW - queries.WEEK)
    assert at["since"] == NOW - queries.WEEK - queries.ONLINE_WINDOW
    # the matching rows of those two days alone, with their sessions' start and duration
    # (migration 0032), not every session of the project in `sessions`
    assert "FROM sessions" not in online and online.count("FROM breakdown_sessions FINAL") == 1
    assert "AND start_at <= {w1:" in online and "addMilliseconds(start_at, duration_ms) >= {since:" in online


def test_filtered_cards_under_a_plan_read_its_sessions_and_their_persons_from_plan_sessions() -> None:
    """A plan alone with a filter person_first_by does not hold (a page): the plan's sessions
    from plan_sessions (migration 0034), their persons and first days from its rows, no join."""
    f = _filters(country=HOSTILE, page="/blog/*", plan="premium")
    client = Recording()
    people.persons_counts(client, "p1", NOW, f)  # type: ignore[arg-type]
    people.online_week_ago(client, "p1", NOW, f)  # type: ignore[arg-type]
    for sql, params in client.asked:
        assert HOSTILE not in sql and "plan_sessions FINAL" in sql and "breakdown_sessions FINAL" not in sql
        assert "visitor_persons" not in sql and params["pl"] == "premium" and params["f_country"] == HOSTILE
    (counts, _), _ = client.asked
    assert "s.person_id AS person_id" in counts and "toDate(s.first_seen, {tz:String}) AS first_day" in counts


def test_filtered_churn_narrows_the_base_only() -> None:
    f = _filters(entry_page="/a*")
    client = Recording()
    people.churn_counts(client, "p1", NOW, f)  # type: ignore[arg-type]
    [(sql, params)] = client.asked
    base, _ = people.person_days(f)
    assert sql == churn.NARROWED_COUNTS_SQL.format(base=base)
    # the base (matching sessions and their persons, the costly part) is read once
    assert sql.count(base) == 1 and sql.count("FROM breakdown_sessions FINAL") == 1
    assert params["days"] == [date(2026, 11, 25), date(2026, 12, 2)]
    assert (params["lo"], params["hi"]) == (date(2026, 11, 12), date(2026, 12, 2))
    # the activity is every session's: person_activity, not narrowed by the filters
    assert "FROM person_activity FINAL WHERE project_id = {p:String} AND is_deleted = 0" in " ".join(
        sql.split()
    )


def test_one_rolled_filter_reads_the_persons_the_aggregator_keeps_per_value() -> None:
    """One filter on an entry attribute: the persons, their first days and their recent days
    (migration 0033) as the aggregator keeps them per value, for the cards, churn and the list,
    not every matching session joined to every visitor's person."""
    f = _filters(device=HOSTILE)
    client = Recording()
    people.persons_counts(client, "p1", NOW, f)  # type: ignore[arg-type]
    people.churn_counts(client, "p1", NOW, f)  # type: ignore[arg-type]
    where, listed = people.listed(f)
    (counts, counted), (churned, based) = client.asked
    for sql in (counts, churned, where):
        assert "FROM person_first_by FINAL" in sql and "person_activity" not in sql
        assert HOSTILE not in sql and "JOIN" not in sql
        assert "breakdown_sessions" not in sql and "visitor_persons" not in sql
    for params in (counted, based, listed):
        assert (params["rf"], params["rv"]) == ("device_type", HOSTILE)  # the column, its value
    assert (counted["lo"], counted["hi"], counted["t"]) == (people.FIRST_DAY, NOW.date(), NOW.date())
    # the new persons: those first seen in the week, by the day person_first_by keeps
    assert "first_seen_day > {t:Date} - 7 AND first_seen_day <= {t:Date}" in counts
    # churn in the same read: each window's bits
    assert churned == counts and "bitAnd(recent_days, {b0:UInt64})" in counts
    today = NOW.date()
    assert based["b0"] == churn.bits(today - timedelta(days=13), today - timedelta(days=7))
    assert based["a1"] == churn.bits(today - timedelta(days=13), today - timedelta(days=7))
    assert based["a0"] == churn.bits(today - timedelta(days=6), today)
    assert based["b1"] == churn.bits(today - timedelta(days=20), today - timedelta(days=14))
    assert (listed["lo"], listed["hi"]) == (people.FIRST_DAY, people.LAST_DAY)
    # two filters, or a glob, are not one rolled value: every matching session, as before
    for other in (_filters(device="mobile", country="NL"), _filters(entry_page="/a*")):
        assert "person_activity_by" not in people.persons_counts_sql(other)[0]


def test_the_users_list_keeps_persons_with_a_matching_session_on_any_day() -> None:
    where, params = people.listed(_filters(country=HOSTILE, plan=""))
    assert where.startswith(" AND person_id IN (SELECT person_id FROM (")
    assert HOSTILE not in where
    assert (params["lo"], params["hi"]) == (people.FIRST_DAY, people.LAST_DAY)
    # a rolled filter with a plan: the plan's sessions with the value (plan_sessions), not
    # person_first_by's rows, which the cards read (Filters.rolled_persons says why)
    assert (params["f_country"], params["pl"]) == (HOSTILE, "")
    assert "FROM plan_sessions FINAL" in where and "person_first_by" not in where
    assert "person_first_by" in people.listed(_filters(country=HOSTILE))[0]  # one rolled filter alone
    assert "person_first_by" in people.listed(_filters(plan="x"))[0]  # a plan alone
    listed, bound = users_filter("p1", NOW, "trial", "ann", (where, params))
    plain, plain_bound = users_filter("p1", NOW, "trial", "ann")
    assert listed == plain + where  # AND-ed with the list's own segment and search
    assert bound == {**plain_bound, **params}


def test_the_users_list_takes_every_filter_but_segment() -> None:
    given = {"page": "/a*", "country": "NL", "plan": "trial"}
    session = asyncio.run(session_filters_of(NOW, **given))  # type: ignore[arg-type]
    assert session.values == given and session.now == NOW
    assert asyncio.run(filters_of(session, None)) is session
    assert with_segment(session, "active").values == {**given, "segment": "active"}
    for bad in ("all", "vip"):
        with pytest.raises(HTTPException) as info:
            with_segment(session, bad)
        detail = info.value.detail[0]  # type: ignore[index]
        assert (info.value.status_code, detail["loc"], detail["type"]) == (
            422,
            ["query", "segment"],
            "unknown_segment",
        )
