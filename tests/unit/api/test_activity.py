"""The activity chart's days (services.api.queries.activity_days) and its filtered SQL
(services/api/activity.py), without ClickHouse: the answers are held to the real stack in
tests/integration/test_api_activity_filters.py."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from services.api.activity import filtered_sql
from services.api.filters import Filters
from services.api.models import Day
from services.api.queries import DAY_COLUMNS, activity_days


def test_days_are_zero_filled_oldest_first_with_each_days_bots() -> None:
    since = date(2026, 11, 29)
    stored = {date(2026, 11, 30): (date(2026, 11, 30), 3, 1, 4, 9, 9, 0.25, 61.5)}
    days = activity_days(since, 3, stored, {date(2026, 11, 29): 2, date(2026, 12, 1): 5})
    assert [d["day"] for d in days] == [date(2026, 11, 29), date(2026, 11, 30), date(2026, 12, 1)]
    assert days[0] == {"day": since, **dict.fromkeys(DAY_COLUMNS[1:6], 0), "bounce_rate": 0.0,
                       "avg_session_seconds": 0.0, "bots": 2}  # fmt: skip
    assert days[1] == {
        "day": date(2026, 11, 30),
        "active_users": 3,
        "new_users": 1,
        "sessions": 4,
        "page_views": 9,
        "events": 9,
        "bounce_rate": 0.25,
        "avg_session_seconds": 61.5,
        "bots": 0,
    }
    assert days[2]["bots"] == 5 and days[2]["sessions"] == 0
    for d in days:  # what the answer's model takes, field for field
        assert Day.model_validate(d).model_dump() == d


def test_filtered_sql_binds_every_value_and_reads_the_matching_sessions() -> None:
    hostile = "x' OR 1=1 --"
    now = datetime(2026, 12, 3, tzinfo=UTC)
    filters = Filters.parse({"country": hostile, "page": "/blog/*", "plan": hostile, "segment": "trial"}, now)
    sql, params = filtered_sql(filters)
    assert hostile not in sql
    assert params["f_country"] == hostile and params["f_plan"] == hostile and params["f_page"] == "/blog/%"
    # the matching sessions are read once, with every filter; the persons of every visitor are
    # joined to them, not narrowed to their visitors first (a second read of them)
    assert sql.count("FROM breakdown_sessions FINAL") == 1
    assert sql.count("country = {f_country:String}") == 1
    assert sql.count("plan = {f_plan:String}") == 1
    assert "FROM visitor_persons FINAL" in sql and "visitor IN" not in sql
    # their durations are on their own rows (migration 0027): sessions_daily is not joined
    assert "sessions_daily" not in sql and "duration_ms FROM breakdown_sessions FINAL" in sql
    # the parameters the SQL names are the filters', the range's and the zone's, nothing else
    named = set(re.findall(r"\{(\w+):", sql))
    assert (
        {"p", "lo", "hi", "tz", "f_country", "f_page", "f_plan"}
        <= named
        <= set(params) | {"p", "lo", "hi", "tz"}
    )


def test_no_filter_is_still_a_query_of_the_range() -> None:
    sql, params = filtered_sql(Filters())
    assert params == {}
    assert set(re.findall(r"\{(\w+):", sql)) == {"p", "lo", "hi", "tz"}


def test_one_filter_on_an_entry_page_attribute_reads_its_rolled_up_days() -> None:
    hostile = "x' OR 1=1 --"
    sql, params = filtered_sql(Filters.parse({"device": hostile}))
    assert hostile not in sql
    assert params == {"f_device": hostile, "rf": "device_type", "rv": hostile}
    # the rolled days' rows from activity_daily_by (which days they are: its markers, read
    # before: split_days), the others from the matching sessions of those days only, each once
    assert sql.count("FROM activity_daily_by FINAL") == 1 and "has({rolled:Array(Date)}, day)" in sql
    assert sql.count("filter = {rf:String} AND filter_value = {rv:String}") == 2
    assert sql.count("FROM breakdown_sessions FINAL") == 1
    assert "device_type = {f_device:String} AND has({live:Array(Date)}, day)" in sql
    # the live days' persons from person_activity_by and their first days, not every visitor's
    # person (visitor_persons), so no zone: the tables hold the project's days
    assert sql.count("FROM person_activity_by FINAL") == 1 and sql.count("has({live:Array(Date)}, day)") == 3
    assert "FROM persons_first_day FINAL" in sql and "visitor_persons" not in sql
    named = set(re.findall(r"\{(\w+):", sql))
    assert named == {"p", "lo", "hi", "rolled", "live", "f_device", "rf", "rv"}


def test_other_filter_sets_compute_every_day_from_the_sessions() -> None:
    for given in ({"page": "/blog/*"}, {"plan": "trial"}, {"country": "NL", "device": "mobile"}):
        sql, _ = filtered_sql(Filters.parse(given))
        assert "activity_daily_by" not in sql and "live:" not in sql, given


def test_a_plan_reads_its_sessions_and_their_persons_from_plan_sessions() -> None:
    """segment=premium (with a page): the plan's sessions (plan_sessions, migration 0034), each
    with its person and first_seen, so no visitor's person is joined."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    sql, params = filtered_sql(Filters.parse({"page": "/blog/*", "segment": "premium"}, now))
    assert sql.count("FROM plan_sessions FINAL") == 1 and "plan = {pl:String}" in sql
    assert "visitor_persons" not in sql and "breakdown_sessions" not in sql
    assert "uniqExact(who)" in sql and "s.person_id AS who" in sql
    assert "toDate(s.first_seen, {tz:String}) = s.day AS new" in sql
    assert params == {"f_page": "/blog/%", "pl": "premium"}
