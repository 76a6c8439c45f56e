"""The activity chart narrowed by filters (docs/definitions.md, "Filters"): each day's
figures computed from the matching sessions that start on it, instead of read from daily_stats.
Days are the project's local days (werkstroom.timezones), as the tables keep them.

The matching sessions are the rows of breakdown_sessions that `Filters.where` selects (what the
breakdowns count), with their page views and durations; their persons are the live persons rows
whose anonymous_ids hold their visitors (visitor_persons, migration 0030). With one filter on an
attribute of the entry page view, the settled days are read from their roll-up
(activity_daily_by, migration 0029), and the other days' persons from person_activity_by (0031).
With a plan (and no segment of last_seen), the sessions and their persons are plan_sessions'
rows of that plan (0034).
Unfiltered, the chart is daily_stats' (services.api.queries.activity), unchanged.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.api import queries
from services.api.breakdowns import LIVE, ROLLED, ROLLED_DAYS, RolledDays
from services.api.filters import Filters
from werkstroom.breakdowns import ACTIVITY_FIGURES, EVERY_PERSON_OF, activity_figures_sql

# A day's chart figures (queries.DAY_COLUMNS after the day) from its ACTIVITY_FIGURES: events
# are the page views, as a session's other events are kept only in `sessions`, sorted by
# visitor (docs/definitions.md).
_DAY = (
    "SELECT day, persons, new_persons, sessions, page_views, page_views, "
    "round(bounced / sessions, 6), round(duration_ms / sessions / 1000, 3) FROM ("
)
# The figures of the matching sessions per day (werkstroom.breakdowns.activity_figures_sql), with
# their durations (migration 0027: joining sessions_daily for them cost 262 ms of 643 for one
# country over 30 days at 10M events), and each visitor's live person with its first day. The
# matching sessions are the join's right side, held in memory: fewer than the project's
# visitors, and narrowing the persons to the matching visitors first cost more than reading
# them all (at 10M events, one country over 30 days: 618 -> 511 ms; segment=premium 800 -> 473
# ms). With `plan` or `segment`, the persons are narrowed by them instead (Filters.with_persons)
# and the sessions are not; when they name a plan alone, the plan's sessions are read from
# plan_sessions with their persons on the rows, no join (segment=premium, 30 days, alone: 140 ->
# 37 ms; bench/README.md, 2026-12-04 stop 42).
_SESSIONS = "day, anonymous_id, page_views, duration_ms"
# With one filter on an attribute of the entry page view (Filters.rolled), the days the
# aggregator rolled up (a marker row, filter '', in activity_daily_by, migration 0029; only days
# before today) are read from there, and the others (`live`, as an array of the days, so that
# breakdown_sessions' key (project_id, day, ...) narrows the read to them) computed as above:
# the breakdowns' split of the days (services.api.breakdowns.ROLLED_DAYS, split_days).
_ROLLED_DAYS = ROLLED_DAYS.format(table="activity_daily_by", marker="filter = ''")
_ROLLED = f"""SELECT day, {", ".join(ACTIVITY_FIGURES)} FROM activity_daily_by FINAL
WHERE project_id = {{p:String}} AND filter = {{rf:String}} AND filter_value = {{rv:String}}
  AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND {ROLLED} AND is_deleted = 0
UNION ALL
"""


# The live days under one rolled-up filter: the sessions' figures from the matching rows alone,
# and the persons of each day from person_activity_by (migration 0031: the same persons of the
# day's matching sessions, kept by the aggregator; services.api.filters.ROLLED_PERSON_DAYS), new
# when persons_first_day has that day for them. Computing them as above read every visitor's
# person (visitor_persons whole) for a day or two of sessions: at 10M events, the 30-day chart
# of one country, device or source, p50 alone: 64-85 ms -> 31-38 ms (bench/README.md,
# 2026-12-04 stop 37).
_LIVE = """SELECT s.day AS day, w.persons AS persons, w.new_persons AS new_persons, s.n AS sessions,
       s.views AS page_views, s.bounces AS bounced, s.ms AS duration_ms
FROM (SELECT day, count() AS n, sum(page_views) AS views, countIf(page_views = 1) AS bounces,
             sum(duration_ms) AS ms
      FROM ({matching} AND {live}) GROUP BY day) AS s
LEFT JOIN (
    SELECT a.day AS day, count() AS persons, countIf(f.day = a.day) AS new_persons
    FROM ({persons} AND {live}) AS a
    LEFT JOIN (SELECT person_id, day FROM persons_first_day FINAL
               WHERE project_id = {{p:String}} AND {live} AND is_deleted = 0) AS f
        ON a.person_id = f.person_id
    GROUP BY a.day
) AS w ON s.day = w.day"""


def filtered_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The per-day figures (day, then queries.DAY_COLUMNS' figures in order) of the sessions
    `filters` matches over {lo:Date}..{hi:Date} of project {p:String} in zone {tz:String}, and
    the filters' parameters; with one rolled-up filter also {rolled:Array(Date)} and
    {live:Array(Date)} (split_days over _ROLLED_DAYS), the rolled days read from
    activity_daily_by. Every value is a parameter; the SQL is chosen from constants only."""
    rolled = filters.rolled_person_days()
    if rolled is None:
        joined, params = filters.with_persons(_SESSIONS, EVERY_PERSON_OF)
        return f"{_DAY}{activity_figures_sql(joined)})", params
    matching, params = filters.matching(_SESSIONS)
    persons, rolled_params = rolled
    live = _LIVE.format(matching=matching, persons=persons, live=LIVE)
    return f"{_DAY}{_ROLLED}{live})", {**params, **rolled_params}


def activity(
    client: Client,
    project_id: str,
    today: date,
    days: int,
    filters: Filters,
    zone: str,
    rolled_days: RolledDays,
) -> list[dict[str, Any]]:
    """Exactly `days` entries ending `today` (the project's, in its time `zone`), oldest first,
    zero-filled: daily_stats' days without filters, the matching sessions' with them. Bots are
    the day's, filtered or not. Which days are rolled up is read through `rolled_days` (the
    API's)."""
    if not filters.values:
        return queries.activity(client, project_id, today, days, zone)
    since = today - timedelta(days=days - 1)
    sql, params = filtered_sql(filters)
    bound = {**params, "p": project_id, "lo": since, "hi": today, "today": today, "tz": zone}
    if filters.rolled() is not None:  # filtered_sql reads the rolled days' rows: which they are
        bound.update(rolled_days.split(client, _ROLLED_DAYS, bound))
    rows = client.query(sql, parameters=bound).result_rows
    bots = queries.bots_per_day(client, project_id, since, today, zone)
    return queries.activity_days(since, days, {r[0]: r for r in rows}, bots)
