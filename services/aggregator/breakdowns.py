"""The breakdown tables (migration 0023): each session's entry and exit page, attributes, page
views and duration (`breakdown_sessions`), and each (session, path) it viewed (`breakdown_pages`),
recomputed in ClickHouse for the visitors and days a refresh recomputes.

Called by derived.refresh after it staged the persons' members and their live sessions
(derived.SESSIONS): the same visitors and days as sessions_daily, so every day a changed
session was ever on is rewritten. Each recomputation computes the rows from `sessions` and
`visitor_pages` alone, whatever the tables held, so a replay or a second worker writes the same
rows (and rows that did not change are not written again).

Definitions (docs/definitions.md): a session's page views are its visitor's between the
session's start and its last event, in (time, event id) order; its entry page is the first,
its exit page the last; its source, campaign, country, device, browser and OS are those of its
entry page view. Time on a page view lasts until the next page view of the session or, for the
last one, until the session's last event; it is unknown when that last page view is the
session's last event.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse.tables import (
    BREAKDOWN_PAGES_COLUMNS,
    BREAKDOWN_SESSIONS_COLUMNS,
    SESSION_ATTRIBUTES,
    VISITOR_PAGES_ATTRIBUTES,
)

_ENTRY = VISITOR_PAGES_ATTRIBUTES  # what a session takes from its entry page view


def computed_pages(sessions: str, pages: str) -> str:
    """The breakdown_pages rows (columns of BREAKDOWN_PAGES_COLUMNS from `day` to `version`)
    of the sessions of `sessions` (anonymous_id, session_id, start_at, last_event_at, version)
    from the page views of `pages` (a visitor_pages relation)."""
    firsts = ",\n           ".join(f"first_value(v_{a}) OVER whole AS e_{a}" for a in _ENTRY)
    page_columns = ", ".join(f"v.{a} AS v_{a}" for a in _ENTRY)
    attributes = ", ".join(f"any(e_{a}) AS {a}" for a in _ENTRY)
    return f"""
SELECT toDate(start_at) AS day, anonymous_id, session_id, path, toUInt32(count()) AS views,
       toUInt32(countIf(timed)) AS timed_views, sumIf(spent_ms, timed) AS time_ms,
       toUInt8(max(n = 1)) AS is_entry, toUInt8(max(n = in_session)) AS is_exit,
       any(entry) AS entry_path, any(exit) AS exit_path, {attributes},
       toUInt32(any(in_session)) AS session_views, any(version) AS version
FROM (
    SELECT *,
           row_number() OVER ordered AS n,
           count() OVER (PARTITION BY session_id) AS in_session,
           leadInFrame(toNullable(timestamp))
               OVER (ordered ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS next_at,
           dateDiff('millisecond', timestamp, ifNull(next_at, last_event_at)) AS spent_ms,
           next_at IS NOT NULL OR last_event_at > timestamp AS timed,
           first_value(path) OVER whole AS entry, last_value(path) OVER whole AS exit,
           {firsts}
    FROM (
        SELECT s.anonymous_id AS anonymous_id, s.session_id AS session_id, s.start_at AS start_at,
               s.last_event_at AS last_event_at, s.version AS version, v.timestamp AS timestamp,
               v.event_id AS event_id, v.path AS path, {page_columns}
        FROM {sessions} AS s
        INNER JOIN {pages} AS v ON v.anonymous_id = s.anonymous_id
        WHERE v.timestamp >= s.start_at AND v.timestamp <= s.last_event_at
    )
    WINDOW ordered AS (PARTITION BY session_id ORDER BY timestamp, event_id),
           whole AS (PARTITION BY session_id ORDER BY timestamp, event_id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
GROUP BY day, anonymous_id, session_id, path
"""


def computed_sessions(sessions: str, pages: str) -> str:
    """The breakdown_sessions rows (from `day` to `version`), from the same inputs: a session's
    rows of computed_pages added up."""
    attributes = ", ".join(f"any({a}) AS {a}" for a in SESSION_ATTRIBUTES)
    return f"""
SELECT p.day AS day, p.anonymous_id AS anonymous_id, p.session_id AS session_id, {attributes},
       toUInt32(sum(p.views)) AS page_views, any(s.duration_ms) AS duration_ms, any(p.version) AS version
FROM ({computed_pages(sessions, pages)}) AS p
INNER JOIN (SELECT session_id, dateDiff('millisecond', start_at, last_event_at) AS duration_ms
            FROM {sessions}) AS s ON s.session_id = p.session_id
GROUP BY day, anonymous_id, session_id
"""


def _diff_insert(table: str, columns: list[str], key: list[str], computed: str, members: str) -> str:
    """INSERT the rows of `table` that change: `computed` against the stored live rows of the
    members over the days ({days:Array(Date)}); a stored row not computed again gets a
    tombstone (its version + 1), a row with the same version is left alone (as sessions_daily)."""
    values = [c for c in columns if c not in ("project_id", *key, "version", "is_deleted")]
    picked = ", ".join(f"argMax({c}, current)" for c in values)
    listed = ", ".join(c for c in columns if c not in ("project_id", "is_deleted"))
    return f"""
INSERT INTO {table} ({", ".join(columns)})
SELECT {{p:String}}, {", ".join(key)}, {picked},
       if(max(current) = 1, argMax(version, current), max(version) + 1), toUInt8(max(current) = 0)
FROM (
    SELECT {listed}, toUInt8(1) AS current FROM ({computed}) WHERE day IN {{days:Array(Date)}}
    UNION ALL
    SELECT {listed}, toUInt8(0) FROM {table} FINAL PREWHERE anonymous_id IN {members}
    WHERE project_id = {{p:String}} AND day IN {{days:Array(Date)}} AND is_deleted = 0
)
GROUP BY {", ".join(key)}
HAVING max(current) = 0 OR min(current) = 1 OR min(version) != max(version)
"""


def inserts(sessions: str, members: str) -> list[str]:
    """The two statements of a refresh, for the staged `sessions` (their visitors are `members`,
    a subquery of anonymous ids). Their page views are read from {since:DateTime64(3)} on (the
    first recomputed day's start: no session starting on a recomputed day has one before)."""
    pages = f"""(SELECT anonymous_id, timestamp, event_id, path, {", ".join(VISITOR_PAGES_ATTRIBUTES)}
     FROM visitor_pages FINAL PREWHERE anonymous_id IN {members}
     WHERE project_id = {{p:String}} AND timestamp >= {{since:DateTime64(3, 'UTC')}})"""
    key = ["day", "anonymous_id", "session_id"]
    return [
        _diff_insert(
            "breakdown_pages",
            BREAKDOWN_PAGES_COLUMNS,
            [*key, "path"],
            computed_pages(sessions, pages),
            members,
        ),
        _diff_insert(
            "breakdown_sessions", BREAKDOWN_SESSIONS_COLUMNS, key, computed_sessions(sessions, pages), members
        ),
    ]


def refresh_breakdowns(client: Client, project_id: str, days: set[date], sessions: str, members: str) -> None:
    """Bring both tables up to date for the staged visitors over `days` (module docstring)."""
    if not days:
        return
    params = {
        "p": project_id,
        "days": sorted(days),
        "since": datetime.combine(min(days), time(), tzinfo=UTC),
    }
    staged = (
        f"(SELECT anonymous_id, session_id, start_at, last_event_at, version FROM {sessions} "
        "WHERE toDate(start_at) IN {days:Array(Date)})"
    )
    for sql in inserts(staged, members):
        client.command(sql, parameters=params)
