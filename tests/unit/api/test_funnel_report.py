"""The funnel report's filtered SQL (services/api/funnel_report.py), without ClickHouse: its
answers are held to the real stack in tests/integration/test_api_funnel_filters.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from services.api.filters import Filters
from services.api.funnel_report import filtered_sql


def named(sql: str) -> set[str]:
    return set(re.findall(r"\{(\w+):", sql))


def test_filtered_sql_binds_every_value_and_reads_the_matching_visitors_once() -> None:
    hostile = "x' OR 1=1 --"
    now = datetime(2026, 12, 3, tzinfo=UTC)
    filters = Filters.parse(
        {"country": hostile, "page": "/blog/*", "exit_page": "/a_b", "plan": hostile, "segment": "trial"}, now
    )
    sql, params = filtered_sql(filters)
    assert hostile not in sql and "/blog/" not in sql
    assert params["f_country"] == hostile and params["f_plan"] == hostile
    assert params["f_page"] == "/blog/%" and params["f_exit_page"] == "/a_b"  # no *: an exact path
    # the matching visitors are read once, with every filter (`page` reads breakdown_pages
    # inside), and joined to the persons of every visitor, not narrowed by them (a second read)
    assert sql.count("FROM breakdown_sessions FINAL") == 1
    assert sql.count("FROM breakdown_pages FINAL") == 1
    assert sql.count("country = {f_country:String}") == 1
    assert sql.count("path LIKE {f_page:String}") == 1
    assert sql.count("exit_path = {f_exit_page:String}") == 1
    assert sql.count("plan = {f_plan:String}") == 1
    assert "FROM visitor_persons FINAL" in sql and "visitor IN" not in sql
    # the funnel's own rows: its live levels from the report's first day on, as funnel_counts
    assert "FROM funnel_levels FINAL" in sql and "last_day >= {lo:Date}" in sql
    assert "funnel_id = {f:String}" in sql and "is_deleted = 0" in sql
    # the parameters the SQL names are the filters' and the report's, nothing else
    assert {"p", "f", "lo", "hi", "f_country", "f_page", "f_exit_page", "f_plan"} <= named(sql)
    assert named(sql) <= set(params) | {"p", "f", "lo", "hi"}


def test_a_session_filter_alone_reads_no_pages_and_no_segment_clock() -> None:
    sql, params = filtered_sql(Filters.parse({"entry_page": "/"}))
    assert params == {"f_entry_page": "/"}
    assert "breakdown_pages" not in sql
    assert named(sql) == {"p", "f", "lo", "hi", "f_entry_page"}


def test_one_entry_page_filter_reads_its_persons_from_person_first_by() -> None:
    hostile = "x' OR 1=1 --"
    sql, params = filtered_sql(Filters.parse({"device": hostile}))
    assert params == {"rf": "device_type", "rv": hostile} and hostile not in sql
    assert "FROM person_first_by FINAL" in sql and "breakdown_sessions" not in sql
    assert "visitor_persons" not in sql and "person_activity_by" not in sql
    # a person with a matching day in the report's days: its first by the last, its last from the first
    assert "first_day <= {hi:Date} AND last_day >= {lo:Date}" in sql
    assert named(sql) == {"p", "f", "lo", "hi", "rf", "rv"}


def test_a_plan_with_other_filters_reads_its_persons_from_plan_sessions() -> None:
    """country=NL&segment=premium: the plan's sessions with the value (plan_sessions, migration
    0034), their persons on the rows; a plan alone still reads person_first_by's plan rows."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    for given in ({"country": "NL", "segment": "premium"}, {"page": "/a*", "plan": "x' OR 1=1 --"}):
        sql, params = filtered_sql(Filters.parse(given, now))
        assert "FROM plan_sessions FINAL" in sql and "plan = {pl:String}" in sql, given
        assert (
            "person_first_by" not in sql and "visitor_persons" not in sql and "breakdown_sessions" not in sql
        )
        assert "person_id IN (SELECT s.person_id FROM" in sql
        assert named(sql) <= set(params) | {"p", "f", "lo", "hi"} and "x' OR" not in sql
    sql, params = filtered_sql(Filters.parse({"segment": "premium"}, now))
    assert "FROM person_first_by FINAL" in sql and params == {"rf": "plan", "rv": "premium"}
