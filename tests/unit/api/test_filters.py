"""The filter model and its SQL (services/api/filters.py), and the period rules of breakdowns."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi import HTTPException

from services.api.breakdowns import (
    MARKERS_SECONDS,
    ROLLED_DAYS,
    Period,
    RolledDays,
    breakdown_sql,
    rolled_days_sql,
    rolled_sql,
    split_days,
)
from services.api.deps import ProjectScope
from services.api.filters import (
    COLUMNS,
    ON_PAGE_ROWS,
    ONE_FINAL_THREAD,
    ONLINE_SESSIONS_OF,
    PLAN,
    ROLLED_PERSONS,
    SEGMENTS,
    SESSION_SETS,
    SESSIONS_OF,
    WITH_PLAN,
    Filters,
    rolled_persons_sql,
)
from services.api.queries import (
    ACTIVE_DAYS,
    EVERYONE,
    INACTIVE_DAYS,
    ONLINE_EXPORT_SQL,
    ONLINE_SQL,
    SEGMENT_WHERE,
    online_export_sql,
    online_sql,
)
from services.api.routes.breakdowns import BreakdownArgs, breakdown_args, period_of
from services.api.routes.filtering import filters_of, session_filters_of
from werkstroom.breakdowns import EVERY_PERSON, Joined, planned, with_persons
from werkstroom.clickhouse.tables import ENTRY_ATTRIBUTES, SESSION_ATTRIBUTES
from werkstroom.funnels import glob_matches, like_pattern

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


def test_one_filter_on_an_entry_page_attribute_is_read_from_its_roll_up() -> None:
    """breakdown_daily_by holds each settled day under one such filter: only a single filter on
    an entry page attribute reads it; a path, a person or a second filter reads the tables."""
    assert Filters.parse({"device": "mobile"}).rolled() == ("device_type", "mobile")
    assert Filters.parse({"source": ""}).rolled() == ("source", "")  # Direct / None is a value
    hostile = "x' OR 1=1 --"
    assert Filters.parse({"country": hostile}).rolled() == ("country", hostile)
    for many in ({}, {"page": "/"}, {"entry_page": "/"}, {"plan": "trial"}, {"country": "NL", "os": "iOS"}):
        assert Filters.parse(many).rolled() is None, many
    sql = rolled_sql("pages", "country")
    assert "filter = 'country' AND filter_value = {fv:String}" in sql and hostile not in sql
    # which days are rolled up is read first; the statement takes them as parameters
    assert "{rolled:Array(Date)}" in sql and "{live:Array(Date)}" in sql and "WITH" not in sql
    assert rolled_days_sql("country") == ROLLED_DAYS.format(table="breakdown_daily_by", marker="filter = ''")


def test_the_days_split_into_those_rolled_up_and_the_others() -> None:
    d = [date(2026, 3, 28) + timedelta(days=i) for i in range(4)]

    class Client:
        def query(self, sql: str, parameters: dict[str, object]) -> object:
            assert sql == rolled_days_sql() and parameters["p"] == "p1"
            return type("R", (), {"first_row": ([d[2], d[0]],)})()

    bound = {"p": "p1", "lo": d[0], "hi": d[3], "today": d[3]}
    assert split_days(Client(), rolled_days_sql(), bound) == {  # type: ignore[arg-type]
        "rolled": [d[0], d[2]],
        "live": [d[1], d[3]],
    }


def test_a_read_of_the_markers_is_kept_a_few_seconds_per_statement_project_range_and_day() -> None:
    d = [date(2026, 3, 28) + timedelta(days=i) for i in range(4)]
    reads: list[tuple[str, str]] = []
    marked = {"p1": [d[0]], "p2": [d[1]]}

    class Client:
        def query(self, sql: str, parameters: dict[str, object]) -> object:
            reads.append((sql, str(parameters["p"])))
            return type("R", (), {"first_row": (list(marked[str(parameters["p"])]),)})()

    clock = [100.0]
    days = RolledDays(clock=lambda: clock[0])
    client: Any = Client()
    bound = {"p": "p1", "lo": d[0], "hi": d[3], "today": d[3]}
    first = days.split(client, rolled_days_sql(), bound)
    assert first == {"rolled": [d[0]], "live": d[1:]}
    marked["p1"].append(d[1])  # rolled up meanwhile: not seen until the read expires
    clock[0] += MARKERS_SECONDS - 0.1
    assert days.split(client, rolled_days_sql(), {**bound, "n": 5}) == first and len(reads) == 1
    # another statement's markers, project, range or day: read on their own
    assert days.split(client, rolled_days_sql("country"), bound) == {"rolled": d[:2], "live": d[2:]}
    assert days.split(client, rolled_days_sql(), {**bound, "p": "p2"})["rolled"] == [d[1]]
    days.split(client, rolled_days_sql(), {**bound, "lo": d[1]})
    days.split(client, rolled_days_sql(), {**bound, "today": d[2]})
    assert len(reads) == 5
    clock[0] += 0.2  # expired: read anew
    assert days.split(client, rolled_days_sql(), bound) == {"rolled": d[:2], "live": d[2:]}
    assert len(reads) == 6
    marked["p1"].append(d[2])
    marked["p2"].append(d[2])
    days.forget("p1")  # its zone changed: its reads go, another project's stay
    assert days.split(client, rolled_days_sql(), bound)["rolled"] == d[:3]
    assert days.split(client, rolled_days_sql(), {**bound, "p": "p2"})["rolled"] == [d[1]]
    assert len(reads) == 7

    # a read under way while the zone changes answers its request, but is not kept
    class Changing(Client):
        def query(self, sql: str, parameters: dict[str, object]) -> object:
            found = super().query(sql, parameters)
            days.forget("p1")
            return found

    days.split(Changing(), rolled_days_sql(), {**bound, "lo": d[2]})  # type: ignore[arg-type]
    days.split(client, rolled_days_sql(), {**bound, "lo": d[2]})
    assert len(reads) == 9


def test_one_rolled_filter_a_plan_or_a_plan_segment_reads_person_first_by() -> None:
    """person_first_by (migration 0033) holds the persons per rolled value and per plan: the
    `plan` filter and the segments that are plans read its plan rows; a segment of last_seen (it
    moves with the clock), a path, a second rolled filter or two plans do not."""
    now = datetime(2026, 12, 4, tzinfo=UTC)
    assert Filters.parse({"country": "NL"}).first_by() == ("country", "NL")
    assert Filters.parse({"plan": ""}).first_by() == ("plan", "")  # no plan is a value
    assert Filters.parse({"segment": "premium"}, now).first_by() == ("plan", "premium")
    assert Filters.parse({"segment": "trial"}, now).first_by() == ("plan", "trial")
    for many in (
        {},
        {"segment": "active"},
        {"segment": "churned"},
        {"page": "/"},
        {"plan": "a", "os": "iOS", "device": "mobile"},
        {"plan": "a", "page": "/"},  # a page is not rolled
        {"country": "NL", "segment": "active"},  # a segment of last_seen
        {"country": "NL", "plan": "trial", "segment": "premium"},  # two plans
        {"plan": "trial", "segment": "premium"},
    ):
        assert Filters.parse(many, now).first_by() is None, many
        assert Filters.parse(many, now).rolled_persons() is None, many
    assert Filters.parse({"plan": "trial"}).rolled() is None  # the breakdowns' roll-ups hold no plans


def test_a_rolled_filter_with_a_plan_reads_the_values_rows_of_the_persons_with_the_plan() -> None:
    """country=NL&segment=premium (the issue's "Dutch premium users"): NL's person_first_by rows,
    narrowed to the persons whose plan row is premium; the plan is a parameter."""
    now = datetime(2026, 12, 4, tzinfo=UTC)
    for given, plan in (
        ({"country": "NL", "segment": "premium"}, "premium"),
        ({"country": "NL", "plan": "x' OR 1=1 --"}, "x' OR 1=1 --"),
        ({"country": "NL", "plan": ""}, ""),
        ({"country": "NL", "plan": "trial", "segment": "trial"}, "trial"),
    ):
        f = Filters.parse(given, now)
        assert f.first_by() == ("country", "NL"), given
        sql, params = f.rolled_persons()  # type: ignore[misc]
        assert sql == rolled_persons_sql(WITH_PLAN)  # the plan is bound, never spliced
        assert params == {"rf": "country", "rv": "NL", "rp": plan}, given
    assert Filters.parse({"country": "NL"}).rolled_persons() == (
        ROLLED_PERSONS,
        {"rf": "country", "rv": "NL"},
    )


def test_page_narrows_sessions_that_viewed_it_outside_the_pages_table() -> None:
    f = Filters.parse({"page": "/pricing"})
    assert f.where("breakdown_pages", SUB)[0] == " AND path = {f_page:String}"
    pages = SUB.format(table="breakdown_pages")
    assert (
        f.where("breakdown_sessions", SUB)[0] == f" AND session_id IN ({pages} AND path = {{f_page:String}})"
    )


def test_on_the_page_rows_the_entry_attributes_are_their_own_and_the_others_the_sessions() -> None:
    """The page rows hold their session's entry attributes (migration 0041); its entry and exit
    pages are read from the sessions (breakdown_sessions; plan_sessions for a plan's page rows)."""
    f = Filters.parse({"page": "/a*", "exit_page": "/bye", "country": "NL", "device": "mobile"})
    sessions = SUB.format(table="breakdown_sessions")
    assert f.where("breakdown_sessions", SUB)[0].endswith(
        " AND exit_path = {f_exit_page:String} AND country = {f_country:String}"
        " AND device_type = {f_device:String}"
    )
    assert f.where("breakdown_pages", SUB)[0] == (
        " AND path LIKE {f_page:String} AND country = {f_country:String} AND device_type = {f_device:String}"
        f" AND session_id IN ({sessions} AND exit_path = {{f_exit_page:String}})"
    )
    assert ON_PAGE_ROWS == set(ENTRY_ATTRIBUTES)
    of_plan = Filters.parse({"country": "NL", "exit_page": "/bye", "plan": "premium"})
    assert of_plan.where("plan_pages", SUB)[0] == (
        f" AND country = {{f_country:String}} AND session_id IN ({SUB.format(table='plan_sessions')} AND {PLAN}"
        f" AND exit_path = {{f_exit_page:String}}) AND {PLAN}"
    )


NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
PERSONS = "SELECT visitor FROM visitor_persons FINAL WHERE project_id = {p:String} AND is_deleted = 0"


def test_segments_are_the_users_lists() -> None:
    assert SEGMENTS == ("active", "inactive", "churned", "premium", "trial")
    assert set(SEGMENTS) == set(SEGMENT_WHERE) - {"all"}


def test_plan_narrows_to_the_visitors_of_persons_with_that_plan_on_either_table() -> None:
    hostile = "x' OR 1=1 --"
    f = Filters.parse({"plan": hostile})
    want = f" AND anonymous_id IN ({PERSONS} AND plan = {{f_plan:String}})"
    for table in ("breakdown_sessions", "breakdown_pages"):
        assert f.where(table, SUB) == (want, {"f_plan": hostile})
    assert Filters.parse({"plan": ""}).where("breakdown_sessions", SUB)[1] == {"f_plan": ""}


@pytest.mark.parametrize("segment", SEGMENTS)
def test_segment_is_the_users_lists_condition_at_the_apis_clock(segment: str) -> None:
    sql, params = Filters.parse({"segment": segment}, NOW).where("breakdown_pages", SUB)
    assert sql == f" AND anonymous_id IN ({PERSONS}{SEGMENT_WHERE[segment]})"
    assert params == {"active_since": NOW - ACTIVE_DAYS, "inactive_since": NOW - INACTIVE_DAYS}


def test_person_filters_are_one_condition_after_the_sessions_ones() -> None:
    f = Filters.parse({"segment": "active", "country": "NL", "plan": "premium"}, NOW)
    assert list(f.values) == ["country", "plan", "segment"]
    sql, params = f.where("breakdown_sessions", SUB)
    assert sql == (
        " AND country = {f_country:String}"
        f" AND anonymous_id IN ({PERSONS} AND plan = {{f_plan:String}}{SEGMENT_WHERE['active']})"
    )
    assert set(params) == {"f_country", "f_plan", "active_since", "inactive_since"}
    assert f.where("breakdown_pages", SUB)[0] == (
        " AND country = {f_country:String}"
        f" AND anonymous_id IN ({PERSONS} AND plan = {{f_plan:String}}{SEGMENT_WHERE['active']})"
    )
    assert f.where("breakdown_pages", SUB)[0] == f.where("breakdown_sessions", SUB)[0]
    filtered, _ = breakdown_sql("os", f)
    assert "FROM visitor_persons FINAL" in filtered and "FROM breakdown_sessions FINAL" in filtered


def test_joined_to_persons_the_person_filters_narrow_the_persons_not_the_sessions() -> None:
    f = Filters.parse({"segment": "active", "country": "NL", "plan": "premium"}, NOW)
    assert f.where("breakdown_sessions", SUB, person=False) == (
        " AND country = {f_country:String}",
        {"f_country": "NL"},
    )
    joined, params = f.with_persons("anonymous_id", EVERY_PERSON)
    matching = f.matching("anonymous_id", person=False)[0]
    persons = f"{EVERY_PERSON} AND plan = {{f_plan:String}}{SEGMENT_WHERE['active']}"
    assert joined == Joined(with_persons(matching, persons, narrowed=True))
    assert params == {
        "f_country": "NL",
        "f_plan": "premium",
        "active_since": NOW - ACTIVE_DAYS,
        "inactive_since": NOW - INACTIVE_DAYS,
    }
    nl = Filters.parse({"country": "NL"})
    assert nl.with_persons("anonymous_id", EVERY_PERSON) == (
        Joined(with_persons(nl.matching("anonymous_id")[0], EVERY_PERSON, narrowed=False)),
        {"f_country": "NL"},
    )


HOSTILE = "x' OR 1=1 --"


@pytest.mark.parametrize(
    ("given", "plan"),
    [
        ({"plan": HOSTILE}, HOSTILE),
        ({"plan": ""}, ""),  # no plan is a value
        ({"segment": "premium"}, "premium"),
        ({"segment": "trial", "plan": "trial"}, "trial"),
        ({"country": "NL", "segment": "premium"}, "premium"),
        ({"page": "/blog/*", "device": "mobile", "plan": "team"}, "team"),
    ],
)
def test_filters_naming_a_plan_alone_read_that_plans_sessions(given: dict[str, str], plan: str) -> None:
    """plan_sessions and plan_pages (migrations 0034, 0036) hold each session and page row under
    its person's plan now: filters whose person filters are one plan read its rows there, the
    plan bound as a parameter, and their persons from the rows (no visitor_persons); the other
    filters read the same plan's rows of the other table."""
    f = Filters.parse(given, NOW)
    assert f.plan() == plan and f.sessions_table() == "plan_sessions" and f.pages_table() == "plan_pages"
    for table, other in (("plan_sessions", "plan_pages"), ("plan_pages", "plan_sessions")):
        sql, params = f.where(table, SUB)
        assert sql.endswith(f" AND {PLAN}") and params["pl"] == plan and HOSTILE not in sql
        # the other table's read, when a filter needs it, is the plan's too
        assert sql.count(f"FROM {other} ") == sql.count(f"FROM {other} WHERE x AND {PLAN}")
        assert "breakdown_" not in sql
    matching, _ = f.matching("day, anonymous_id")
    assert matching.startswith("SELECT day, anonymous_id FROM plan_sessions FINAL") and matching.endswith(
        PLAN
    )
    for read in (matching, breakdown_sql("os", f)[0], f.online(NOW.date())[0]):
        assert "plan_sessions FINAL" in read and "visitor_persons" not in read, read
    pages = breakdown_sql("pages", f)[0]
    assert "FROM plan_pages FINAL" in pages and "visitor_persons" not in pages and "breakdown_" not in pages
    joined, joined_params = f.with_persons("day, anonymous_id", EVERY_PERSON)
    assert joined == planned(f.matching("day, anonymous_id, person_id, first_seen")[0])
    assert joined.person == "s.person_id" and joined_params["pl"] == plan


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"country": "NL"},
        {"segment": "active"},
        {"segment": "premium", "plan": "trial"},
        {"plan": "a", "segment": "churned"},
    ],
)
def test_other_filters_read_breakdown_sessions(given: dict[str, str]) -> None:
    """No person filter, a segment of last_seen (it moves with the clock) or two plans (no one):
    breakdown_sessions, with the visitors' condition for the person filters."""
    f = Filters.parse(given, NOW)
    assert f.plan() is None and f.sessions_table() == "breakdown_sessions"
    assert "plan_sessions" not in f.matching("anonymous_id")[0] + breakdown_sql("os", f)[0]


def test_a_segment_must_be_known_and_have_a_clock() -> None:
    for bad, now in (("all", NOW), ("premium ", NOW), ("active", None)):
        with pytest.raises(ValueError):
            Filters.parse({"segment": bad}, now)


def _args(**given: str) -> BreakdownArgs:
    async def args() -> BreakdownArgs:
        values = {name: given.get(name) for name in [*COLUMNS, "plan"]}
        session = await session_filters_of(NOW, **values)  # type: ignore[arg-type]
        filters = await filters_of(session, given.get("segment"))
        return await breakdown_args(ProjectScope("p"), NOW, filters, None, None)

    return asyncio.run(args())


def test_the_route_refuses_an_unknown_segment_naming_the_field_and_reason() -> None:
    for bad in ("all", "", "Premium", "vip"):
        with pytest.raises(HTTPException) as info:
            _args(segment=bad)
        assert info.value.status_code == 422
        detail = info.value.detail[0]  # type: ignore[index]
        assert (detail["loc"], detail["type"], detail["input"]) == (
            ["query", "segment"],
            "unknown_segment",
            bad,
        )
    args = _args(segment="trial", plan="", country="NL")
    assert args.filters.values == {"country": "NL", "plan": "", "segment": "trial"}
    assert args.filters.now == NOW


def test_like_escapes_its_own_wildcards() -> None:
    assert like_pattern("/a_b%c\\d*") == "/a\\_b\\%c\\\\d%"
    assert like_pattern("*") == "%"


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
    assert glob_matches(glob, value) is hit


def test_breakdown_sql_reads_the_right_table() -> None:
    pages, _ = breakdown_sql("pages", Filters())
    assert "FROM breakdown_pages FINAL" in pages and "path AS value" in pages
    os_sql, _ = breakdown_sql("os", Filters.parse({"page": "/"}))
    assert "FROM breakdown_sessions FINAL" in os_sql and "session_id IN (" in os_sql


def test_a_breakdown_s_sets_of_sessions_are_not_analysed_with_the_primary_key() -> None:
    """A set of session ids never narrows a breakdown table's granules (a day's rows are sorted
    by visitor first): SESSION_SETS. A set of visitors (plan, segment off the plan tables) may."""
    unkeyed = f"SETTINGS {SESSION_SETS}"
    for values in (
        {},
        {"country": "NL"},
        {"page": "/", "source": "Google"},
        {"country": "NL", "segment": "premium"},
    ):
        sql, _ = breakdown_sql("pages", Filters.parse(values, NOW))
        assert sql.rstrip().endswith(unkeyed), values
    for values in ({"segment": "active"}, {"country": "NL", "plan": "premium", "segment": "active"}):
        sql, _ = breakdown_sql("pages", Filters.parse(values, NOW))
        assert "anonymous_id IN (" in sql and SESSION_SETS not in sql, values
    # the page rows hold their session's entry attributes (migration 0041): no set at all
    rolled = rolled_sql("pages", "country")
    assert " IN (" not in rolled and rolled.rstrip().endswith(f"SETTINGS {ONE_FINAL_THREAD}")


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


# -- who is online, narrowed ------------------------------------------------------------------


def test_unfiltered_online_is_the_same_sql() -> None:
    assert Filters().online(date(2026, 12, 2)) == ("", {})
    assert online_sql("") == ONLINE_SQL and online_export_sql("") == ONLINE_EXPORT_SQL
    assert EVERYONE == ("", {})


def test_filtered_online_keeps_the_visitors_whose_current_session_matches() -> None:
    hostile = "x' OR 1=1 --"
    today = date(2026, 12, 2)
    where, params = Filters.parse({"page": "/blog/*", "country": hostile, "plan": "premium"}).online(today)
    # a plan alone: that plan's sessions and page rows (plan_sessions, plan_pages: migrations 0034
    # and 0036); the page rows of the visitors online alone, the sessions of the two days whole
    online = SESSIONS_OF.format(table="plan_sessions")
    pages = ONLINE_SESSIONS_OF.format(table="plan_pages")
    assert where == (
        f" AND session_id IN ({online}"
        f" AND session_id IN ({pages} AND {PLAN} AND path LIKE {{f_page:String}})"
        f" AND country = {{f_country:String}} AND {PLAN})"
    )
    # today and yesterday (UTC): a session online now that began before midnight is yesterday's
    assert params == {
        "f_page": "/blog/%",
        "f_country": hostile,
        "pl": "premium",
        "lo": date(2026, 12, 1),
        "hi": today,
    }
    assert hostile not in where
    # the page rows are read for the visitors online only (the online read's p, since); the
    # sessions of the two days whole (the outer session ids narrow them)
    visitors_online = "FROM online_visitors WHERE project_id = {p:String} AND last_event_at >= {since:"
    assert pages.count(visitors_online) == 1 and online.count(visitors_online) == 0
    assert where.count(visitors_online) == 1
    sql = online_sql(where)
    assert sql.index(where) < sql.index("ORDER BY last_event_at DESC") < sql.index("LIMIT {n:UInt32}")


def test_a_segment_on_who_is_online_is_decided_at_the_given_clock() -> None:
    later = NOW + ACTIVE_DAYS
    f = Filters.parse({"segment": "active"}, NOW)
    _, params = replace(f, now=later).online(later.date())
    assert params["active_since"] == NOW and params["hi"] == later.date()
