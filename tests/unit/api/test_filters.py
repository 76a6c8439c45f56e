"""The filter model and its SQL (services/api/filters.py), and the period rules of breakdowns."""

from __future__ import annotations

from datetime import date

import pytest
from fastapi import HTTPException

from services.api.breakdowns import Period, breakdown_sql
from services.api.filters import COLUMNS, Filters, _like, matches
from services.api.routes.breakdowns import period_of
from werkstroom.clickhouse.tables import SESSION_ATTRIBUTES

SUB = "SELECT session_id FROM {table} WHERE x"


def test_every_filter_names_a_session_attribute_or_the_path() -> None:
    assert set(COLUMNS.values()) - {"path"} <= set(SESSION_ATTRIBUTES)


def test_parse_keeps_given_values_only_and_empty_is_a_value() -> None:
    f = Filters.parse({"country": "NL", "source": "", "os": None})
    assert f.values == {"source": "", "country": "NL"}
    with pytest.raises(KeyError):
        Filters.parse({"nope": "x"})


def test_sql_binds_values_and_never_splices_them() -> None:
    hostile = "x' OR 1=1 --"
    sql, params = Filters.parse({"country": hostile, "entry_page": "/blog/*"}).where(
        "breakdown_sessions", SUB
    )
    assert sql == " AND entry_path LIKE {f_entry_page:String} AND country = {f_country:String}"
    assert params == {"f_entry_page": "/blog/%", "f_country": hostile}
    assert hostile not in sql


def test_page_narrows_sessions_that_viewed_it_outside_the_pages_table() -> None:
    f = Filters.parse({"page": "/pricing"})
    assert f.where("breakdown_pages", SUB)[0] == " AND path = {f_page:String}"
    pages = SUB.format(table="breakdown_pages")
    assert (
        f.where("breakdown_sessions", SUB)[0] == f" AND session_id IN ({pages} AND path = {{f_page:String}})"
    )


def test_on_the_pages_table_the_sessions_attributes_are_read_from_breakdown_sessions() -> None:
    f = Filters.parse({"page": "/a*", "exit_page": "/bye", "country": "NL"})
    sessions = SUB.format(table="breakdown_sessions")
    assert f.where("breakdown_sessions", SUB)[0].endswith(
        " AND exit_path = {f_exit_page:String} AND country = {f_country:String}"
    )
    assert f.where("breakdown_pages", SUB)[0] == (
        " AND path LIKE {f_page:String}"
        f" AND session_id IN ({sessions} AND exit_path = {{f_exit_page:String}} AND country = {{f_country:String}})"
    )


def test_like_escapes_its_own_wildcards() -> None:
    assert _like("/a_b%c\\d*") == "/a\\_b\\%c\\\\d%"
    assert _like("*") == "%"


@pytest.mark.parametrize(
    ("glob", "value", "hit"),
    [
        ("/blog/*", "/blog/launch", True),
        ("/blog/*", "/blog/", True),
        ("/blog/*", "/blogs", False),
        ("*/edit", "/posts/1/edit", True),
        ("/a*b*c", "/abc", True),
        ("/a*b*c", "/acb", False),
        ("/a*a", "/a", False),
        ("/x_y", "/xzy", False),
        ("/pricing", "/pricing", True),
    ],
)
def test_glob_matches(glob: str, value: str, hit: bool) -> None:
    assert matches(glob, value) is hit


def test_breakdown_sql_reads_the_right_table() -> None:
    pages, _ = breakdown_sql("pages", Filters())
    assert "FROM breakdown_pages FINAL" in pages and "path AS value" in pages
    os_sql, _ = breakdown_sql("os", Filters.parse({"page": "/"}))
    assert "FROM breakdown_sessions FINAL" in os_sql and "session_id IN (" in os_sql


def test_periods() -> None:
    today = date(2026, 12, 2)
    assert period_of(None, None, today) == Period(date(2026, 11, 3), today)
    assert period_of(None, None, today).previous == Period(date(2026, 10, 4), date(2026, 11, 2))
    assert period_of(date(2026, 12, 1), None, today) == Period(date(2026, 12, 1), today)
    assert period_of(None, date(2026, 1, 30), today) == Period(date(2026, 1, 1), date(2026, 1, 30))
    assert period_of(date(2026, 1, 1), date(2026, 12, 31), today).previous.end == date(2025, 12, 31)
    for start, end, field, reason in [
        (date(2026, 12, 2), date(2026, 12, 1), "to", "to_before_from"),
        (date(2025, 1, 1), date(2026, 1, 2), "to", "range_too_long"),
        (date(1, 1, 1), date(1, 1, 2), "from", "out_of_range"),
        (date(2026, 1, 1), date(9999, 1, 1), "to", "out_of_range"),
    ]:
        with pytest.raises(HTTPException) as info:
            period_of(start, end, today)
        assert info.value.status_code == 422
        detail = info.value.detail[0]  # type: ignore[index]
        assert (detail["loc"], detail["type"]) == (["query", field], reason)
