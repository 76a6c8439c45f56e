"""The breakdowns' SQL and answers: one dimension of a project's sessions over a date range,
each value with its visitors, sessions and page views, and the same figures for the period of
equal length just before (docs/definitions.md, "Breakdowns").

Read from breakdown_pages (pages) and breakdown_sessions (every other dimension), kept by the
aggregator (migration 0023): one statement over both periods, grouped by the value. Unfiltered,
the days rolled up in breakdown_daily are read from there; with one filter on an attribute of
the session's entry page (country, source, a UTM field, device, browser, OS), or a plan alone,
the days rolled up in breakdown_daily_by (migration 0026; a plan's from plan_pages and
plan_sessions).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from services.api.filters import ONE_FINAL_THREAD, SESSION_SETS, SESSIONS_OF, Filters
from werkstroom.breakdowns import PLAN_FILTER, VISITORS, figures_sql
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
    """A range of the project's days, both ends included, and the range of equal length just before."""

    start: date
    end: date

    @property
    def previous(self) -> Period:
        length = self.end - self.start
        end = self.start - timedelta(days=1)
        return Period(end - length, end)


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
    table = filters.pages_table() if pages else filters.sessions_table()
    value = VALUE_COLUMN[dimension]
    where, params = filters.where(table, SESSIONS_OF)
    read = _PAGE_COLUMNS if pages else _SESSION_COLUMNS
    if value not in read:
        read = f"{read}, {value}"
    settings = "" if filters.visitor_set(table) else f"SETTINGS {SESSION_SETS}\n"
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
{settings}"""
    return sql, params


#: The days {lo}..{hi} that a roll-up `{table}` has done: a marker row (`{marker}`: in
#: breakdown_daily dimension '', in breakdown_daily_by and activity_daily_by filter ''; only days
#: before {today} are rolled up). Read on its own first (split_days); the statement that reads
#: the rolled days' rows and computes the others (`live`) from the breakdown tables takes both
#: as parameters ({rolled:Array(Date)}, {live:Array(Date)}: ROLLED, LIVE), so that the tables'
#: primary key (project_id, day, ...) narrows each read to its days (a NOT IN the rolled days
#: does not). As a WITH of that statement (its subqueries each had the arrays' expressions),
#: at 10M events, p50 alone, pages 30 days under country=NL took 41 ms; with the parameters 31,
#: and this read 4 (bench/README.md, 2026-12-05 stop 49).
ROLLED_DAYS = """
SELECT groupArray(day) FROM {table} FINAL WHERE project_id = {{p:String}} AND {marker}
  AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND day < {{today:Date}} AND is_deleted = 0
"""
#: A row's day is one of the rolled days / one of the others (split_days' parameters).
ROLLED = "has({rolled:Array(Date)}, day)"
LIVE = "has({live:Array(Date)}, day)"


def split_days(client: Client, days_sql: str, bound: dict[str, Any]) -> dict[str, list[date]]:
    """The days {lo}..{hi} of `bound` (with p and today) that `days_sql` (a ROLLED_DAYS) finds
    rolled up, and the others: the parameters `rolled` and `live`, oldest first."""
    rolled = set(client.query(days_sql, parameters=bound).first_row[0])
    lo: date = bound["lo"]
    every = [lo + timedelta(days=i) for i in range((bound["hi"] - lo).days + 1)]
    return {"rolled": sorted(rolled), "live": [day for day in every if day not in rolled]}


#: How long an API process keeps a read of the markers (RolledDays), in seconds: as long as it
#: keeps a project's verified read key and time zone (deps.AUTH_CACHE_SECONDS).
MARKERS_SECONDS = 5.0
#: Reads kept at most; past it, the expired ones are dropped.
MARKERS_KEPT = 10_000


class RolledDays:
    """split_days, each read of the markers kept MARKERS_SECONDS per (statement, project, range,
    today): a dashboard's breakdowns and chart under one filter (a dozen answers, each once per
    range) share one read instead of each reading them first (4-5 ms of a 40 ms answer at 10M
    events, bench/README.md 2026-12-05 stop 50).

    What a kept read can miss:
    - a day rolled up since: computed from the breakdown tables, which keep its rows and give
      the same figures;
    - a marker taken back since (a past day changed again too soon after its roll-up, held
      back by the aggregator's RollUps): its rolled rows, as of that roll-up, are still read,
      so a late event of that past day shows up to MARKERS_SECONDS later;
    - a change of the project's time zone: drops its reads in this process (forget); other
      processes keep theirs as long as their read-key cache keeps the old zone, while the
      aggregator recomputes the days anyway (the answers mix the two zones' days until it is
      done, docs/timezones.md)."""

    def __init__(self, seconds: float = MARKERS_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._kept: dict[tuple[Any, ...], tuple[float, dict[str, list[date]]]] = {}
        self._lock = threading.Lock()  # the pool's threads read and keep; forget runs on the loop
        self._forgets = 0  # a read begun before a forget is not kept

    def split(self, client: Client, days_sql: str, bound: dict[str, Any]) -> dict[str, list[date]]:
        """split_days(client, days_sql, bound), read at most once per MARKERS_SECONDS."""
        key = (days_sql, bound["p"], bound["lo"], bound["hi"], bound["today"])
        now = self._clock()
        found = self._kept.get(key)
        if found is not None and found[0] > now:
            return found[1]
        forgets = self._forgets
        split = split_days(client, days_sql, bound)
        with self._lock:
            if forgets != self._forgets:
                return split
            if len(self._kept) >= MARKERS_KEPT:
                self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
            self._kept[key] = (now + self._seconds, split)
        return split

    def forget(self, project_id: str) -> None:
        """Drop the project's reads (its zone changed): its next answers read the markers anew."""
        with self._lock:
            self._forgets += 1
            self._kept = {k: v for k, v in self._kept.items() if k[1] != project_id}


def rolled_days_sql(column: str | None = None) -> str:
    """ROLLED_DAYS of rolled_sql's roll-up (the same `column`): breakdown_daily's markers
    unfiltered, breakdown_daily_by's with one rolled filter, a plan's own there with
    PLAN_FILTER (services.aggregator.breakdowns.ROLL_UP_BY)."""
    if column is None:
        return ROLLED_DAYS.format(table="breakdown_daily", marker="dimension = ''")
    marker = f"filter = '{PLAN_FILTER}' AND dimension = ''" if column == PLAN_FILTER else "filter = ''"
    return ROLLED_DAYS.format(table="breakdown_daily_by", marker=marker)


def rolled_sql(dimension: str, column: str | None = None) -> str:
    """One page of a breakdown, in breakdown_sql's columns, in one statement: the rolled-up
    days (per day and value: figures and a distinct-count state of the visitors,
    werkstroom.breakdowns.VISITORS, merged here), the other days computed from the breakdown
    tables into the same shape (figures_sql), both periods in one pass; the days split by
    split_days over rolled_days_sql(column). Unfiltered (`column` None) from breakdown_daily;
    with one filter on a ROLLED_FILTERS `column` (its value the parameter fv) from
    breakdown_daily_by; with PLAN_FILTER (a plan alone, fv), from its rows there, the days not
    rolled up with them from the plan tables (plan_pages, plan_sessions)."""
    figures = ", ".join(BREAKDOWN_FIGURES)
    merge_if = VISITORS.replace("(", "MergeIf(", 1)
    by_plan = column == PLAN_FILTER
    if column is None:
        table, narrow, live_where = "breakdown_daily", "", LIVE
    else:
        table = "breakdown_daily_by"
        narrow = f" AND filter = '{column}' AND filter_value = {{fv:String}}"
        # the page rows hold their session's entry attributes (migration 0041), the column too
        own = "plan = {fv:String}" if by_plan else f"{column} = {{fv:String}}"
        live_where = f"{LIVE} AND {own}"
    live = figures_sql([dimension], live_where, by_plan)
    return f"""
SELECT value, n_visitors, n_sessions, n_page_views, n_bounced, n_entered, n_time_ms, n_timed,
       p_visitors, p_sessions, p_page_views, count() OVER () AS total
FROM (
    SELECT value,
           {merge_if}(visitors, cur) AS n_visitors, sumIf(sessions, cur) AS n_sessions,
           sumIf(page_views, cur) AS n_page_views, sumIf(bounced, cur) AS n_bounced,
           sumIf(entered, cur) AS n_entered, sumIf(time_ms, cur) AS n_time_ms, sumIf(timed, cur) AS n_timed,
           {merge_if}(visitors, NOT cur) AS p_visitors, sumIf(sessions, NOT cur) AS p_sessions,
           sumIf(page_views, NOT cur) AS p_page_views
    FROM (
        SELECT day >= {{start:Date}} AS cur, value, {figures}
        FROM {table} FINAL
        WHERE project_id = {{p:String}}{narrow} AND dimension = {{dimension:String}}
          AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND {ROLLED} AND is_deleted = 0
        UNION ALL
        SELECT day >= {{start:Date}} AS cur, value, {figures} FROM ({live})
    )
    GROUP BY value
    HAVING n_sessions > 0
)
-- ORDER BY n_visitors DESC, value: the answer's order (ties by value, so pages are stable)
ORDER BY n_visitors DESC, value
LIMIT {{n:UInt32}} OFFSET {{skip:UInt64}}
SETTINGS {ONE_FINAL_THREAD}
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
    days: RolledDays,
) -> tuple[int, list[dict[str, Any]]]:
    """(total, rows) of one page of a breakdown. Unfiltered, the settled days are read from
    their roll-up (breakdown_daily), and with one filter on an entry page attribute, or a plan
    alone, from theirs (breakdown_daily_by), the others from the breakdown tables; otherwise all
    of them from the tables. Which days are rolled up is read through `days` (the API's)."""
    bound: dict[str, Any] = {
        "p": project_id,
        "lo": period.previous.start,
        "start": period.start,
        "hi": period.end,
        "n": limit,
        "skip": offset,
    }
    rolled = filters.rolled()
    plan = filters.plan_alone()
    if not filters.values:
        sql = rolled_sql(dimension)
        bound.update(dimension=dimension, today=today)
        bound.update(days.split(client, rolled_days_sql(), bound))
    elif rolled is not None or plan is not None:
        column, value = rolled or (PLAN_FILTER, plan)
        sql = rolled_sql(dimension, column)
        bound.update(dimension=dimension, today=today, fv=value)
        bound.update(days.split(client, rolled_days_sql(column), bound))
    else:
        sql, params = breakdown_sql(dimension, filters)
        bound.update(params)

    def read(n: int, skip: int) -> list[tuple[Any, ...]]:
        return client.query(sql, parameters={**bound, "n": n, "skip": skip}).result_rows

    found = read(limit, offset)
    if not found and offset > 0:  # past the end: the total from the first row
        first = read(1, 0)
        return (first[0][11] if first else 0), []
    total = found[0][11] if found else 0
    return total, [breakdown_row(r, dimension == "pages") for r in found]
