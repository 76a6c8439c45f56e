"""The breakdowns' SQL and answers: one dimension of a project's sessions over a date range,
each value with its visitors, sessions and page views, and the same figures for the period of
equal length just before (docs/definitions.md, "Breakdowns").

Read from breakdown_pages (pages) and breakdown_sessions (every other dimension), kept by the
aggregator (migration 0023): one scan over both periods, grouped by the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from services.api.filters import Filters
from werkstroom.breakdowns import figures_sql
from werkstroom.clickhouse.tables import BREAKDOWN_DIMENSIONS, BREAKDOWN_FIGURES

Dimension = Literal[
    "pages",
    "entry_pages",
    "exit_pages",
    "sources",
    "utm_sources",
    "utm_mediums",
    "utm_campaigns",
    "countries",
    "devices",
    "browsers",
    "os",
]
VALUE_COLUMN = BREAKDOWN_DIMENSIONS
#: The longest range a breakdown reads, in days (both ends counted).
MAX_DAYS = 366
DEFAULT_DAYS = 30
#: What a Date column holds, with a year of room for the period before.
EARLIEST = date(1971, 1, 1)
LATEST = date(2149, 1, 1)


@dataclass(frozen=True)
class Period:
    """A range of UTC days, both ends included, and the range of equal length just before."""

    start: date
    end: date

    @property
    def previous(self) -> Period:
        length = self.end - self.start
        end = self.start - timedelta(days=1)
        return Period(end - length, end)


# Sessions that viewed a page (the `page` filter outside the pages dimension), and sessions by
# their exit page (the `exit_page` filter on pages), over both periods.
_SESSIONS_OF = (
    "SELECT session_id FROM {table} FINAL WHERE project_id = {{p:String}} "
    "AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND is_deleted = 0"
)

# Figures of a row, over the current period (`cur`) and the previous one. On breakdown_pages a
# row is a (session, path): sessions that viewed the path; bounces and entries of sessions that
# entered there; time on page over the views whose time is known.
_PAGE_FIGURES = """
    uniqExactIf(anonymous_id, cur) AS n_visitors, countIf(cur) AS n_sessions,
    sumIf(views, cur) AS n_page_views, countIf(cur AND bounced = 1) AS n_bounced,
    countIf(cur AND is_entry = 1) AS n_entered,
    sumIf(time_ms, cur) AS n_time_ms, sumIf(timed_views, cur) AS n_timed,
    uniqExactIf(anonymous_id, NOT cur) AS p_visitors, countIf(NOT cur) AS p_sessions,
    sumIf(views, NOT cur) AS p_page_views"""
_SESSION_FIGURES = """
    uniqExactIf(anonymous_id, cur) AS n_visitors, countIf(cur) AS n_sessions,
    sumIf(page_views, cur) AS n_page_views, countIf(cur AND page_views = 1) AS n_bounced,
    countIf(cur) AS n_entered,
    0 AS n_time_ms, 0 AS n_timed,
    uniqExactIf(anonymous_id, NOT cur) AS p_visitors, countIf(NOT cur) AS p_sessions,
    sumIf(page_views, NOT cur) AS p_page_views"""
_PAGE_COLUMNS = "anonymous_id, path, views, is_entry, bounced, time_ms, timed_views"
_SESSION_COLUMNS = "anonymous_id, page_views"


def breakdown_sql(dimension: str, filters: Filters) -> tuple[str, dict[str, Any]]:
    """The query of one page of a breakdown: rows sorted by visitors (desc) then value, each
    with `total` (the values in the current period). Parameters besides the filters': p, lo
    (the previous period's start), start (the current one's), hi, n, skip."""
    pages = dimension == "pages"
    table = "breakdown_pages" if pages else "breakdown_sessions"
    value = VALUE_COLUMN[dimension]
    where, params = filters.where(table, _SESSIONS_OF)
    read = _PAGE_COLUMNS if pages else _SESSION_COLUMNS
    if value not in read:
        read = f"{read}, {value}"
    sql = f"""
SELECT value, n_visitors, n_sessions, n_page_views, n_bounced, n_entered, n_time_ms, n_timed,
       p_visitors, p_sessions, p_page_views, count() OVER () AS total
FROM (
    SELECT {value} AS value, {_PAGE_FIGURES if pages else _SESSION_FIGURES}
    FROM (
        SELECT {read}, day >= {{start:Date}} AS cur
        FROM {table} FINAL
        WHERE project_id = {{p:String}} AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND is_deleted = 0{where}
    )
    GROUP BY value
    HAVING n_sessions > 0
)
-- ORDER BY n_visitors DESC, value: the answer's order (ties by value, so pages are stable)
ORDER BY n_visitors DESC, value
LIMIT {{n:UInt32}} OFFSET {{skip:UInt64}}
"""
    return sql, params


_ROLLED = (
    "SELECT day FROM breakdown_daily FINAL WHERE project_id = {p:String} AND dimension = '' "
    "AND day BETWEEN {lo:Date} AND {hi:Date} AND day < {today:Date} AND is_deleted = 0"
)


def rolled_sql(dimension: str) -> str:
    """An unfiltered breakdown (parameters as breakdown_sql's, and `rolled`/`live`, the days of
    both periods read from breakdown_daily and from the breakdown tables): the figures of
    breakdown_daily's rows and the same figures computed from the tables, added up per value.
    Visitors are merged distinct-count states (uniqCombined64, docs/definitions.md)."""
    figures = ", ".join(BREAKDOWN_FIGURES)
    live = figures_sql([dimension], "day IN {live:Array(Date)}")
    return f"""
SELECT value, n_visitors, n_sessions, n_page_views, n_bounced, n_entered, n_time_ms, n_timed,
       p_visitors, p_sessions, p_page_views, count() OVER () AS total
FROM (
    SELECT value, uniqCombined64MergeIf(visitors, cur) AS n_visitors, sumIf(sessions, cur) AS n_sessions,
           sumIf(page_views, cur) AS n_page_views, sumIf(bounced, cur) AS n_bounced,
           sumIf(entered, cur) AS n_entered, sumIf(time_ms, cur) AS n_time_ms, sumIf(timed, cur) AS n_timed,
           uniqCombined64MergeIf(visitors, NOT cur) AS p_visitors, sumIf(sessions, NOT cur) AS p_sessions,
           sumIf(page_views, NOT cur) AS p_page_views
    FROM (
        SELECT day >= {{start:Date}} AS cur, value, {figures}
        FROM breakdown_daily FINAL
        WHERE project_id = {{p:String}} AND dimension = {{dimension:String}} AND day IN {{rolled:Array(Date)}}
          AND is_deleted = 0
        UNION ALL
        SELECT day >= {{start:Date}} AS cur, value, {figures} FROM ({live})
    )
    GROUP BY value
    HAVING n_sessions > 0
)
-- ORDER BY n_visitors DESC, value: the answer's order (ties by value, so pages are stable)
ORDER BY n_visitors DESC, value
LIMIT {{n:UInt32}} OFFSET {{skip:UInt64}}
"""


def _percent(part: int, whole: int) -> float | None:
    return round(part * 100 / whole, 1) if whole else None


def breakdown_row(row: Sequence[Any], pages: bool) -> dict[str, Any]:
    value, visitors, sessions, views, bounced, entered, time_ms, timed = row[:8]
    p_visitors, p_sessions, p_views = row[8:11]
    return {
        "value": value,
        "visitors": visitors,
        "sessions": sessions,
        "page_views": views,
        "bounce_rate": _percent(bounced, entered),
        "avg_time_on_page_s": round(time_ms / timed / 1000, 1) if pages and timed else None,
        "previous": {"visitors": p_visitors, "sessions": p_sessions, "page_views": p_views},
    }


def breakdown(
    client: Client,
    project_id: str,
    dimension: str,
    period: Period,
    filters: Filters,
    limit: int,
    offset: int,
    today: date,
) -> tuple[int, list[dict[str, Any]]]:
    """(total, rows) of one page of a breakdown. Unfiltered, the settled days are read from
    their roll-up (breakdown_daily) and the others from the breakdown tables; filtered, all of
    them from the tables."""
    bound: dict[str, Any] = {
        "p": project_id,
        "lo": period.previous.start,
        "start": period.start,
        "hi": period.end,
        "n": limit,
        "skip": offset,
    }
    if filters.values:
        sql, params = breakdown_sql(dimension, filters)
        bound.update(params)
    else:
        sql = rolled_sql(dimension)
        rolled = [d for (d,) in client.query(_ROLLED, parameters={**bound, "today": today}).result_rows]
        every = (
            period.previous.start + timedelta(days=i)
            for i in range((period.end - period.previous.start).days + 1)
        )
        bound.update(dimension=dimension, rolled=rolled, live=sorted(set(every) - set(rolled)))
    found = client.query(sql, parameters=bound).result_rows
    if not found and offset > 0:  # past the end: the total from the first row
        first = client.query(sql, parameters={**bound, "n": 1, "skip": 0}).result_rows
        return (first[0][11] if first else 0), []
    total = found[0][11] if found else 0
    return total, [breakdown_row(r, dimension == "pages") for r in found]
