"""The activity chart narrowed by filters (docs/definitions.md, "Filters"): each day's
figures computed from the matching sessions that start on it, instead of read from daily_stats.
Days are the project's local days (werkstroom.timezones), as the tables keep them.

The matching sessions are the rows of breakdown_sessions that `Filters.where` selects (what the
breakdowns count); their durations come from sessions_daily (the same (project, day, visitor,
session) key), their persons from the live persons rows whose anonymous_ids hold their visitors.
Unfiltered, the chart is daily_stats' (services.api.queries.activity), unchanged.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.api import queries
from services.api.filters import PERSON_OF, Filters
from werkstroom import timezones

# Per day: the matching sessions with their durations (sessions_daily, the same (project, day,
# visitor, session) key; the range's rows are read whole and joined to the matching sessions,
# which are the join's table: narrowing sessions_daily to their keys first cost more than the
# read, 338 ms against 26 ms for one country over 30 days at 10M events); each visitor's live
# person and its first day, read for the matching visitors only (persons is sorted by person,
# so this reads the project's persons once, as the plan and segment filters do). A visitor in no
# live persons row (not recomputed yet) is its own person, never new. Events: the page views, as
# a session's other events are kept only in `sessions`, sorted by visitor (docs/definitions.md).
_FILTERED = """
SELECT s.day, uniqExact(ifNull(m.person, s.anonymous_id)),
       uniqExactIf(m.person, ifNull(m.first_day = s.day, 0)),
       count(), sum(s.page_views), sum(s.page_views),
       round(countIf(s.page_views = 1) / count(), 6), round(ifNull(avg(s.duration_ms), 0) / 1000, 3)
FROM (
    SELECT x.day AS day, x.anonymous_id AS anonymous_id, x.page_views AS page_views,
           d.duration_ms AS duration_ms
    FROM (
        SELECT day, anonymous_id, session_id, duration_ms FROM sessions_daily FINAL
        WHERE project_id = {{p:String}} AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND is_deleted = 0
    ) AS d
    RIGHT JOIN ({matching}) AS x
        ON d.day = x.day AND d.anonymous_id = x.anonymous_id AND d.session_id = x.session_id
) AS s
LEFT JOIN ({persons}) AS m ON m.visitor = s.anonymous_id
GROUP BY s.day
SETTINGS join_use_nulls = 1
"""


def filtered_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The per-day figures (day, then queries.DAY_COLUMNS' figures in order) of the sessions
    `filters` matches over {lo:Date}..{hi:Date} of project {p:String}, and the filters'
    parameters. Every value is a parameter; the SQL is chosen from constants only."""
    matching, params = filters.matching("day, anonymous_id, session_id, page_views")
    sql = _FILTERED.format(
        matching=matching,
        persons=PERSON_OF.format(visitors=filters.matching("DISTINCT anonymous_id")[0]),
    )
    return sql, params


def activity(
    client: Client, project_id: str, today: date, days: int, filters: Filters, zone: str = timezones.DEFAULT
) -> list[dict[str, Any]]:
    """Exactly `days` entries ending `today` (the project's, in its time `zone`), oldest first,
    zero-filled: daily_stats' days without filters, the matching sessions' with them. Bots are
    the day's, filtered or not."""
    if not filters.values:
        return queries.activity(client, project_id, today, days, zone)
    since = today - timedelta(days=days - 1)
    sql, params = filtered_sql(filters)
    bound = {**params, "p": project_id, "lo": since, "hi": today, "tz": zone}
    rows = client.query(sql, parameters=bound).result_rows
    bots = queries.bots_per_day(client, project_id, since, today, zone)
    return queries.activity_days(since, days, {r[0]: r for r in rows}, bots)
