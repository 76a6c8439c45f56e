"""The breakdowns' figures in SQL, shared by the aggregator's roll-up of settled days
(breakdown_daily) and the API, which computes the same figures for the days not rolled up.
Definitions: docs/definitions.md ("Breakdowns")."""

from __future__ import annotations

from werkstroom.clickhouse.tables import BREAKDOWN_DIMENSIONS

#: The distinct count of visitors in breakdown_daily: HyperLogLog with 2^12 cells beyond its
#: exact range (a state of about 3 KB; the default 2^17 made a 30-day breakdown merge 100 KB a
#: day and value, 100 ms at 10M events). Standard error about 1.6 %; exact below some hundreds.
VISITORS = "uniqCombined64(12)"

_SESSION_DIMENSIONS = {d: c for d, c in BREAKDOWN_DIMENSIONS.items() if c != "path"}


def figures_sql(dimensions: list[str], where: str) -> str:
    """SELECT day, dimension, value and BREAKDOWN_FIGURES of these dimensions, from the
    breakdown tables' live rows that match `where` (conditions on their columns, with
    {p:String} the project): what breakdown_daily holds, and what the breakdowns compute for the
    days it does not have. (The figures are computed over renamed columns: an alias that is
    also a column's name would be read as the aggregate inside another one.)"""
    parts = []
    if "pages" in dimensions:
        parts.append(
            f"""SELECT day, 'pages' AS dimension, path AS value,
       uniqCombined64State(12)(anonymous_id) AS visitors, count() AS sessions,
       sum(n) AS page_views, countIf(b = 1) AS bounced,
       countIf(e = 1) AS entered, sum(ms) AS time_ms, sum(nt) AS timed
FROM (SELECT day, path, anonymous_id, views AS n, bounced AS b, is_entry AS e, time_ms AS ms,
             timed_views AS nt
      FROM breakdown_pages FINAL
      WHERE project_id = {{p:String}} AND is_deleted = 0 AND {where})
GROUP BY day, value"""
        )
    others = [d for d in dimensions if d != "pages"]
    if others:
        pairs = ", ".join(f"('{d}', toString({_SESSION_DIMENSIONS[d]}))" for d in others)
        parts.append(
            f"""SELECT day, pair.1 AS dimension, pair.2 AS value,
       uniqCombined64State(12)(anonymous_id) AS visitors, count() AS sessions,
       sum(n) AS page_views, countIf(n = 1) AS bounced,
       count() AS entered, toInt64(0) AS time_ms, toUInt64(0) AS timed
FROM (SELECT day, anonymous_id, page_views AS n, arrayJoin([{pairs}]) AS pair
      FROM breakdown_sessions FINAL
      WHERE project_id = {{p:String}} AND is_deleted = 0 AND {where})
GROUP BY day, dimension, value"""
        )
    return "\nUNION ALL\n".join(parts)
