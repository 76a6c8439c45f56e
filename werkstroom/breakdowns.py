"""The breakdowns' figures in SQL, shared by the aggregator's roll-up of settled days
(breakdown_daily) and the API, which computes the same figures for the days not rolled up.
Definitions: docs/definitions.md ("Breakdowns")."""

from __future__ import annotations

from dataclasses import dataclass

from werkstroom.clickhouse.tables import BREAKDOWN_DIMENSIONS, BREAKDOWN_FIGURES, ENTRY_ATTRIBUTES

#: The distinct count of visitors in breakdown_daily: HyperLogLog with 2^12 cells beyond its
#: exact range (a state of about 3 KB; the default 2^17 made a 30-day breakdown merge 100 KB a
#: day and value, 100 ms at 10M events). Standard error about 1.6 %; exact below some hundreds.
VISITORS = "uniqCombined64(12)"

_SESSION_DIMENSIONS = {d: c for d, c in BREAKDOWN_DIMENSIONS.items() if c != "path"}
#: The filters breakdown_daily_by rolls up (migration 0026), by the column they narrow: the
#: attributes of a session's entry page view, each a single value per session.
ROLLED_FILTERS = ENTRY_ATTRIBUTES


def filter_pairs(alias: str = "") -> str:
    """The ROLLED_FILTERS of a breakdown_sessions row as (filter, value) tuples, the elements of
    an array to arrayJoin: the column's name and its value as a String. `alias`: the row's table
    alias with its dot (`s.`), or "" for its own columns."""
    return ", ".join(f"('{c}', toString({alias}{c}))" for c in ROLLED_FILTERS)


def figures_sql(dimensions: list[str], where: str, by_plan: bool = False) -> str:
    """SELECT day, dimension, value and BREAKDOWN_FIGURES of these dimensions, from the
    breakdown tables' live rows that match `where` (conditions on their columns, with
    {p:String} the project): what breakdown_daily holds, and what the breakdowns compute for the
    days it does not have. `by_plan`: from plan_pages and plan_sessions (migrations 0034, 0036:
    the same rows under their person's plan now) instead, per plan too (`plan` after the day):
    breakdown_daily_by's rows under filter 'plan' (figures_by_plan_sql). (The figures are
    computed over renamed columns: an alias that is also a column's name would be read as the
    aggregate inside another one.)"""
    tables = ("plan_pages", "plan_sessions") if by_plan else ("breakdown_pages", "breakdown_sessions")
    pages, sessions = tables
    plan = ", plan" if by_plan else ""
    parts = []
    if "pages" in dimensions:
        parts.append(
            f"""SELECT day{plan}, 'pages' AS dimension, path AS value,
       uniqCombined64State(12)(anonymous_id) AS visitors, count() AS sessions,
       sum(n) AS page_views, countIf(b = 1) AS bounced,
       countIf(e = 1) AS entered, sum(ms) AS time_ms, sum(nt) AS timed
FROM (SELECT day{plan}, path, anonymous_id, views AS n, bounced AS b, is_entry AS e, time_ms AS ms,
             timed_views AS nt
      FROM {pages} FINAL
      WHERE project_id = {{p:String}} AND is_deleted = 0 AND {where})
GROUP BY day{plan}, value"""
        )
    others = [d for d in dimensions if d != "pages"]
    if others:
        pairs = ", ".join(f"('{d}', toString({_SESSION_DIMENSIONS[d]}))" for d in others)
        parts.append(
            f"""SELECT day{plan}, pair.1 AS dimension, pair.2 AS value,
       uniqCombined64State(12)(anonymous_id) AS visitors, count() AS sessions,
       sum(n) AS page_views, countIf(n = 1) AS bounced,
       count() AS entered, toInt64(0) AS time_ms, toUInt64(0) AS timed
FROM (SELECT day{plan}, anonymous_id, page_views AS n, arrayJoin([{pairs}]) AS pair
      FROM {sessions} FINAL
      WHERE project_id = {{p:String}} AND is_deleted = 0 AND {where})
GROUP BY day{plan}, dimension, value"""
        )
    return "\nUNION ALL\n".join(parts)


#: The filter a person's plan is kept under, its value the plan: person_first_by's plan rows (one
#: per person, migration 0033), funnel_levels_by's rows under them (0037), and breakdown_daily_by's
#: breakdowns of each plan (besides ROLLED_FILTERS: a session's rows under its person's plan now,
#: as the `plan` filter and the plan segments keep them; the marker of a day rolled up with them
#: is a row of this filter with no dimension).
PLAN_FILTER = "plan"
#: What md5_key puts between its parts: no project id, funnel id or filter name holds one, so
#: no two lists of parts (all but the last such ids) give the same text.
TAB = "'\\t'"


def md5_key(*parts: str) -> str:
    """The 128-bit key of these SQL expressions (bound parameters such as "{p:String}", or
    columns) as SQL: the MD5 of their texts with a tab between, as a UInt128. The value keys that
    person_first_by (migration 0038: of the project, filter and value) and funnel_levels_by
    (0039: of the project, funnel, filter and value) are sorted by, computed by ClickHouse as
    rows are written."""
    text = parts[0] if len(parts) == 1 else f"concat({f', {TAB}, '.join(parts)})"
    return f"reinterpretAsUInt128(MD5({text}))"


def figures_by_plan_sql(where: str) -> str:
    """figures_sql's figures of every dimension per plan (filter PLAN_FILTER, the plan its
    filter_value), from plan_pages and plan_sessions, over the days `where` picks: breakdown_daily_by's
    rows under a plan, in figures_by_filter_sql's columns."""
    figures = figures_sql(list(BREAKDOWN_DIMENSIONS), where, by_plan=True)
    return (
        f"SELECT day, '{PLAN_FILTER}' AS filter, plan AS filter_value, dimension, value, "
        f"{', '.join(BREAKDOWN_FIGURES)} FROM ({figures})"
    )


def figures_by_filter_sql(where: str) -> str:
    """SELECT day, filter, filter_value, dimension, value and BREAKDOWN_FIGURES of every
    dimension under each ROLLED_FILTERS value, from the breakdown tables' live rows of the days
    `where` picks (a condition on `day`, with {p:String} the project): what breakdown_daily_by
    holds. A session counts under each filter's one value, so a filter's values partition it:
    its rows under a value are figures_sql's over the sessions with that value. Page rows take
    their session's attributes from its breakdown_sessions row (the same key)."""
    filters = filter_pairs()
    pairs = ", ".join(f"('{d}', toString({c}))" for d, c in _SESSION_DIMENSIONS.items())
    live = f"project_id = {{p:String}} AND is_deleted = 0 AND {where}"
    return f"""SELECT day, f.1 AS filter, f.2 AS filter_value, 'pages' AS dimension, path AS value,
       uniqCombined64State(12)(anonymous_id) AS visitors, count() AS sessions,
       sum(n) AS page_views, countIf(b = 1) AS bounced,
       countIf(e = 1) AS entered, sum(ms) AS time_ms, sum(nt) AS timed
FROM (SELECT pg.day AS day, pg.path AS path, pg.anonymous_id AS anonymous_id, pg.views AS n,
             pg.bounced AS b, pg.is_entry AS e, pg.time_ms AS ms, pg.timed_views AS nt,
             arrayJoin([{filters}]) AS f
      FROM (SELECT day, anonymous_id, session_id, path, views, bounced, is_entry, time_ms, timed_views
            FROM breakdown_pages FINAL WHERE {live}) AS pg
      INNER JOIN (SELECT day, anonymous_id, session_id, {", ".join(ROLLED_FILTERS)}
                  FROM breakdown_sessions FINAL WHERE {live}) AS s
          ON pg.day = s.day AND pg.anonymous_id = s.anonymous_id AND pg.session_id = s.session_id)
GROUP BY day, filter, filter_value, value
UNION ALL
SELECT day, f.1 AS filter, f.2 AS filter_value, pair.1 AS dimension, pair.2 AS value,
       uniqCombined64State(12)(anonymous_id) AS visitors, count() AS sessions,
       sum(n) AS page_views, countIf(n = 1) AS bounced,
       count() AS entered, toInt64(0) AS time_ms, toUInt64(0) AS timed
FROM (SELECT day, anonymous_id, page_views AS n, arrayJoin([{filters}]) AS f, arrayJoin([{pairs}]) AS pair
      FROM breakdown_sessions FINAL WHERE {live})
GROUP BY day, filter, filter_value, dimension, value"""


# Each visitor of the project with its live person (visitor_persons, migration 0030, which the
# aggregator writes with persons: the persons row whose anonymous_ids hold it), and with
# `first_day` the columns added after it. A visitor in no live row (not recomputed yet) has no
# row here: it is its own person. Read whole, as the side of a join whose other side is many
# visitors: narrowing it to them first cost more than the read (at 10M events, 2,916 visitors of
# one country's sessions of a day: 63 ms whole, 79 narrowed). Spreading persons' anonymous_ids
# instead (ARRAY JOIN, GROUP BY visitor) cost 190-230 ms at 1M persons, against 30 here.
_EVERY_PERSON = (
    "SELECT visitor, person_id AS person{first_day} FROM visitor_persons FINAL "
    "WHERE project_id = {{p:String}} AND is_deleted = 0"
)
#: (visitor, person) of every visitor of the project (parameter p).
EVERY_PERSON = _EVERY_PERSON.format(first_day="")
#: (visitor, person, first_day) of every visitor of the project, first_day the person's first
#: day in the project's zone (parameters p, tz).
EVERY_PERSON_OF = _EVERY_PERSON.format(first_day=", toDate(first_seen, {tz:String}) AS first_day")
#: A session `s`'s person, where EVERY_PERSON or EVERY_PERSON_OF is joined to the sessions as `m`
#: by an outer join without join_use_nulls (a visitor in no live persons row gets the defaults:
#: visitor ''): its visitor's live person, else the visitor itself.
PERSON_OF_SESSION = "if(m.visitor = '', s.anonymous_id, m.person)"


@dataclass(frozen=True)
class Joined:
    """Sessions, as `s`, with their persons, for SQL that counts persons: `source` the FROM
    clause, `person` a session's person, `first_day` that person's first day (the project's
    zone) and `new` whether the session is on it. By default with_persons' (PERSON_OF_SESSION: a
    visitor in no persons row is its own person, never new)."""

    source: str
    person: str = PERSON_OF_SESSION
    first_day: str = "m.first_day"
    new: str = "m.visitor != '' AND m.first_day = s.day"


def planned(sessions: str) -> Joined:
    """The sessions `sessions` selects from plan_sessions (migration 0034), with its person_id
    and first_seen, which are their persons: no join ({tz:String} the project's zone)."""
    first_day = "toDate(s.first_seen, {tz:String})"
    return Joined(f"({sessions}) AS s", "s.person_id", first_day, f"{first_day} = s.day")


def with_persons(sessions: str, persons: str = EVERY_PERSON_OF, narrowed: bool = False) -> str:
    """The FROM clause joining the sessions `sessions` selects (with `anonymous_id`), as `s`, to
    their visitors' persons `persons` (EVERY_PERSON or EVERY_PERSON_OF, or with `narrowed` some
    of their rows: services.api.filters.Filters.with_persons), as `m`, for PERSON_OF_SESSION.
    Whole, the persons are the outer side: every session is kept, and the sessions are held in
    memory. Narrowed (a condition on the persons), only the sessions of those persons' visitors
    are kept, and the persons, fewer, are held in memory: with segment=premium at 10M events
    (64,042 of 1,026,902 visitors), 30 days of the activity chart 139 -> 103 ms p50 alone,
    against narrowing the sessions to the persons' visitors first and joining every visitor's
    person (bench/README.md, 2026-12-04 stop 38)."""
    if narrowed:
        return f"({sessions}) AS s INNER JOIN ({persons}) AS m ON m.visitor = s.anonymous_id"
    return f"({persons}) AS m RIGHT JOIN ({sessions}) AS s ON m.visitor = s.anonymous_id"


#: The filtered activity chart's figures of a day (activity_daily_by, migration 0029), in the
#: order activity_figures_sql computes them: the distinct persons of the matching sessions that
#: start on it, those of them first seen that day, the sessions, their page views, those that
#: bounced (one page view) and the sum of their durations.
ACTIVITY_FIGURES = ["persons", "new_persons", "sessions", "page_views", "bounced", "duration_ms"]


def activity_figures_sql(joined: Joined, keys: str = "", names: str = "") -> str:
    """SELECT day{names} and ACTIVITY_FIGURES per day{names}, of the sessions that `joined` (a
    with_persons FROM clause, EVERY_PERSON_OF's columns, or `planned`) joins to their persons:
    breakdown_sessions rows with day, anonymous_id, page_views, duration_ms and the columns `keys`
    reads, each visitor resolved to its live person, else itself, never new then: what activity_daily_by
    holds, and what the filtered chart computes for the days it does not have. `keys`: ", "-led
    expressions over the session (`s.`) with their aliases, `names` those aliases, ", "-led. (A
    visitor in no persons row has visitor '' here: never new. The inner columns are renamed: an
    alias that is also a column's name would be read as the aggregate inside another one.)"""
    return f"""SELECT day{names}, uniqExact(who) AS persons, uniqExactIf(who, new) AS new_persons,
       count() AS sessions, sum(n) AS page_views, countIf(n = 1) AS bounced, sum(ms) AS duration_ms
FROM (SELECT s.day AS day{keys}, {joined.person} AS who,
             {joined.new} AS new, s.page_views AS n, s.duration_ms AS ms
      FROM {joined.source})
GROUP BY day{names}"""


def activity_by_filter_sql(where: str) -> str:
    """SELECT day, filter, filter_value and ACTIVITY_FIGURES of the sessions under each
    ROLLED_FILTERS value, from breakdown_sessions' live rows of the days `where` picks (a
    condition on `day`, with {p:String} the project and {tz:String} its zone): what
    activity_daily_by holds. A session has one value of each filter, so a filter's rows under
    a value are activity_figures_sql's over the sessions with that value. The sessions are
    joined to their persons once, then counted under each filter."""
    filters = filter_pairs("s.")
    sessions = (
        f"SELECT day, anonymous_id, page_views, duration_ms, {', '.join(ROLLED_FILTERS)} "
        f"FROM breakdown_sessions FINAL WHERE project_id = {{p:String}} AND is_deleted = 0 AND {where}"
    )
    figures = activity_figures_sql(Joined(with_persons(sessions)), f", arrayJoin([{filters}]) AS f", ", f")
    return f"SELECT day, f.1 AS filter, f.2 AS filter_value, {', '.join(ACTIVITY_FIGURES)} FROM ({figures})"
