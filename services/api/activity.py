"""The activity chart narrowed by filters (docs/definitions.md, "Filters"): each day's
figures computed from the matching sessions that start on it, instead of read from daily_stats.
Days are the project's local days (werkstroom.timezones), as the tables keep them.

The matching sessions are the rows of breakdown_sessions that `Filters.where` selects (what the
breakdowns count), with their page views and durations; their persons come from the live persons
rows whose anonymous_ids hold their visitors.
Unfiltered, the chart is daily_stats' (services.api.queries.activity), unchanged.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.api import queries
from services.api.filters import EVERY_PERSON_OF, Filters
from werkstroom import timezones

# Per day: the matching sessions, with their durations (migration 0027: joining sessions_daily
# for them cost 262 ms of 643 for one country over 30 days at 10M events), and each visitor's
# live person with its first day (filters.EVERY_PERSON_OF). The matching sessions are the join's
# right side, held in memory: fewer than the project's visitors, and narrowing the persons to
# the matching visitors first cost more than reading them all (at 10M events, one country over
# 30 days: 618 -> 511 ms; segment=premium 800 -> 473 ms). A visitor in no live persons row (not
# recomputed yet) is its own person, never new. Events: the page views, as a session's other
# events are kept only in `sessions`, sorted by visitor (docs/definitions.md).
_FILTERED = """
SELECT s.day, uniqExact(ifNull(m.person, s.anonymous_id)),
       uniqExactIf(m.person, ifNull(m.first_day = s.day, 0)),
       count(), sum(s.page_views), sum(s.page_views),
       round(countIf(s.page_views = 1) / count(), 6), round(avg(s.duration_ms) / 1000, 3)
FROM ({persons}) AS m
RIGHT JOIN ({matching}) AS s ON m.visitor = s.anonymous_id
GROUP BY s.day
SETTINGS join_use_nulls = 1
"""


def filtered_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The per-day figures (day, then queries.DAY_COLUMNS' figures in order) of the sessions
    `filters` matches over {lo:Date}..{hi:Date} of project {p:String}, and the filters'
    parameters. Every value is a parameter; the SQL is chosen from constants only."""
    matching, params = filters.matching("day, anonymous_id, page_views, duration_ms")
    sql = _FILTERED.format(matching=matching, persons=EVERY_PERSON_OF)
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
