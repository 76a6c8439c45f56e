"""The funnel report's filtered SQL (services/api/funnel_report.py), without ClickHouse: its
answers are held to the real stack in tests/integration/test_api_funnel_filters.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from services.api.filters import Filters
from services.api.funnel_report import filtered_sql
from werkstroom.breakdowns import md5_key


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


def test_one_entry_page_filter_reads_the_funnels_rows_of_its_value() -> None:
    hostile = "x' OR 1=1 --"
    sql, params = filtered_sql(Filters.parse({"device": hostile}))
    assert params == {"rf": "device_type", "rv": hostile} and hostile not in sql
    assert "FROM funnel_levels_by FINAL" in sql and "breakdown_sessions" not in sql
    assert "person_first_by" not in sql and "FROM funnel_levels FINAL" not in sql
    # a level and a day of the value in the report's days: the earlier of the two on its row
    assert f"PREWHERE value_key = {md5_key('{p:String}', '{f:String}', '{rf:String}', '{rv:String}')}" in sql
    assert "WHERE last_day >= {lo:Date} AND is_deleted = 0" in sql
    assert named(sql) == {"p", "f", "lo", "rf", "rv"}


def test_a_plan_reads_its_rows_and_with_one_rolled_filter_narrows_them_to_its_persons() -> None:
    """segment=premium alone: the funnel's rows under the plan; country=NL&segment=premium: those
    of NL whose person's plan (on the row) is premium."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    sql, params = filtered_sql(Filters.parse({"segment": "premium"}, now))
    assert "FROM funnel_levels_by FINAL" in sql and params == {"rf": "plan", "rv": "premium"}
    assert "person_first_by" not in sql
    sql, params = filtered_sql(Filters.parse({"country": "NL", "plan": "x' OR 1=1 --"}, now))
    assert params == {"rf": "country", "rv": "NL", "rp": "x' OR 1=1 --"} and "x' OR" not in sql
    assert "FROM funnel_levels_by FINAL" in sql and "person_first_by" not in sql
    assert "AND plan = {rp:String}" in sql and named(sql) == {"p", "f", "lo", "rf", "rv", "rp"}


def test_a_plan_with_other_filters_reads_its_persons_from_plan_sessions() -> None:
    """page=/a*&plan=...: the plan's sessions with the value (plan_sessions, migration 0034),
    their persons on the rows."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    sql, params = filtered_sql(Filters.parse({"page": "/a*", "plan": "x' OR 1=1 --"}, now))
    assert "FROM plan_sessions FINAL" in sql and "plan = {pl:String}" in sql
    assert "person_first_by" not in sql and "visitor_persons" not in sql and "breakdown_sessions" not in sql
    assert "person_id IN (SELECT s.person_id FROM" in sql
    assert named(sql) <= set(params) | {"p", "f", "lo", "hi"} and "x' OR" not in sql
