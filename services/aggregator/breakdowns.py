"""The breakdown tables (migration 0023), recomputed in ClickHouse for the visitors a batch
touched, and the roll-up of settled days.

`breakdown_sessions` holds a row per session with a page view (entry and exit page, the
attributes of its entry page view, page views, duration) and `breakdown_pages` a row per path it viewed
(views, time on page, whether it entered or left there, whether it bounced there, and the entry
page view's attributes again: migration 0041), all under
the UTC day the session starts on. The refresh (services.aggregator.derived) recomputes them
for the visitors it staged, over the dirty days, from their live sessions (as it staged them)
and their page views in `visitor_events` (sorted by visitor; migration 0023 gave it the
attributes a session takes from its entry page view), then writes only the rows that differ
from what the tables hold, with a tombstone (is_deleted = 1) for each row no longer there: a
session whose start moved to an earlier day or that another absorbed. A recomputation gives the
same rows whatever came before, so a replay after a crash, or two workers, change nothing.

The aggregator wrote these rows itself from its in-memory sessions before: that cost it a third
more CPU per event (bench/README.md, 2026-12-03); here the work is a few statements per refresh,
in C++, for the ids the refresh already staged.

Definitions (docs/definitions.md): a session's page views are its first MAX_PAGES, in (time,
path) order; its entry page is the first, its exit page the last; its source, campaign,
country, device, browser and OS are those of its entry page view. Time on a page view lasts
until the next page view or, for the last one, until the session's last event; it is unknown
when that last page view is the session's last event (or when later page views were not kept).
A session bounced when it has one page view; the row of its entry page says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache

from clickhouse_connect.driver.client import Client

from werkstroom import timezones
from werkstroom.breakdowns import (
    ACTIVITY_FIGURES,
    PLAN_FILTER,
    activity_by_filter_sql,
    figures_by_filter_sql,
    figures_by_plan_sql,
    figures_sql,
)
from werkstroom.clickhouse.tables import (
    BREAKDOWN_DIMENSIONS,
    BREAKDOWN_FIGURES,
    BREAKDOWN_PAGES_COLUMNS,
    BREAKDOWN_SESSIONS_COLUMNS,
    ENTRY_ATTRIBUTES,
)
from werkstroom.clickhouse.versions import next_version

MAX_PAGES = 100  # page views counted per session: its first ones, by (time, path)
VIEWS = "refresh_views"  # the staged sessions' page views, once per refresh
_KEY_AND_VERSION = {"project_id", "day", "anonymous_id", "session_id", "path", "version", "is_deleted"}
VIEWS_CREATE = f"""
CREATE TEMPORARY TABLE {VIEWS} (anonymous_id String, session_id String, day Date, last_ms Int64,
    page_views UInt32, duration_ms Int64, version UInt64,
    views Array(Tuple(Int64, String, {", ".join("String" for _ in ENTRY_ATTRIBUTES)}))) ENGINE = Memory
"""


@cache
def statements(member_ids: str, sessions: str) -> tuple[str, str, str]:
    """The recomputation's three statements over the refresh's staged ids (`member_ids`, a
    subquery) and their live sessions (`sessions`, a table with anonymous_id, session_id,
    start_at, last_event_at, page_views and version): stage the page views, then write the
    pages' rows and the sessions' rows that changed."""
    attributes = ", ".join(ENTRY_ATTRIBUTES)
    views = f"""
INSERT INTO {VIEWS}
SELECT s.anonymous_id, s.session_id, toDate(s.start_at, {{tz:String}}),
       toUnixTimestamp64Milli(s.last_event_at), s.page_views,
       dateDiff('millisecond', s.start_at, s.last_event_at), s.version,
       arraySlice(arraySort(groupArray((toUnixTimestamp64Milli(v.timestamp), v.path,
           {", ".join(f"toString(v.{a})" for a in ENTRY_ATTRIBUTES)}))), 1, {MAX_PAGES})
FROM (
    SELECT distinct_id, timestamp, path, {attributes} FROM visitor_events FINAL
    PREWHERE distinct_id IN {member_ids}
    WHERE project_id = {{p:String}} AND event = '$page'
      AND timestamp >= toDateTime64(arrayMin({{days:Array(Date)}}), 3, {{tz:String}})
) AS v
INNER JOIN (SELECT * FROM {sessions} WHERE toDate(start_at, {{tz:String}}) IN {{days:Array(Date)}}) AS s
    ON v.distinct_id = s.anonymous_id
WHERE v.timestamp >= s.start_at AND v.timestamp <= s.last_event_at
GROUP BY s.anonymous_id, s.session_id, s.start_at, s.last_event_at, s.page_views, s.version
"""
    # The attributes of a session's entry page view: its first staged view's, after the time and
    # path. A session's row and each of its page rows hold them (the page rows since 0041).
    entry_view = {a: f"views[1].{i + 3}" for i, a in enumerate(ENTRY_ATTRIBUTES)}
    entry_of_pages = ", ".join(f"any(entry_{a}) AS {a}" for a in ENTRY_ATTRIBUTES)
    entry_views = ", ".join(f"{view} AS entry_{a}" for a, view in entry_view.items())
    pages = _changed_rows(
        "breakdown_pages",
        BREAKDOWN_PAGES_COLUMNS,
        f"""
    SELECT day, anonymous_id, session_id, path, toUInt32(count()) AS views,
           toUInt32(sum(timed)) AS timed_views, toInt64(sum(spent)) AS time_ms,
           toUInt8(max(i = 1)) AS is_entry, toUInt8(max(i = n)) AS is_exit,
           toUInt8(max(i = 1 AND page_views = 1)) AS bounced, {entry_of_pages}, any(version) AS version,
           toUInt8(1) AS current
    FROM (
        SELECT day, anonymous_id, session_id, page_views, version, last_ms, length(views) AS n,
               {entry_views},
               arrayJoin(arrayEnumerate(views)) AS i, views[i].2 AS path, views[i].1 AS t,
               toUInt8(i < n OR (page_views = n AND last_ms > t)) AS timed,
               if(i < n, views[i + 1].1 - t, if(timed = 1, last_ms - t, 0)) AS spent
        FROM {VIEWS}
    )
    GROUP BY day, anonymous_id, session_id, path""",
        member_ids,
    )
    entry = ", ".join(f"{view} AS {a}" for a, view in entry_view.items())
    sessions_rows = _changed_rows(
        "breakdown_sessions",
        BREAKDOWN_SESSIONS_COLUMNS,
        f"""
    SELECT day, anonymous_id, session_id, views[1].2 AS entry_path, views[length(views)].2 AS exit_path,
           {entry}, page_views, duration_ms,
           fromUnixTimestamp64Milli(last_ms - duration_ms, 'UTC') AS start_at, version, toUInt8(1) AS current
    FROM {VIEWS}""",
        member_ids,
    )
    return views, pages, sessions_rows


def _changed_rows(table: str, columns: list[str], current: str, member_ids: str) -> str:
    """Write to `table` what differs between its `current` rows (a SELECT of the key, the
    figures, version and current = 1) and the rows it holds for these visitors and days
    (current = 0), as sessions_daily's refresh does: the new rows, the rows whose version
    changed, and a tombstone for each held row with no current one."""
    figures = [c for c in columns if c not in _KEY_AND_VERSION]
    key = ", ".join(
        c for c in columns if c in _KEY_AND_VERSION and c not in ("project_id", "version", "is_deleted")
    )
    # LowCardinality as stored, String as computed: the UNION's two sides read as one type
    held = ", ".join(f"toString({f})" if f in ENTRY_ATTRIBUTES else f for f in figures)
    return f"""
INSERT INTO {table} (project_id, {key}, {", ".join(figures)}, version, is_deleted)
SELECT {{p:String}}, {key}, {", ".join(f"argMax({f}, current)" for f in figures)},
       if(max(current) = 1, argMax(version, current), max(version) + 1), toUInt8(max(current) = 0)
FROM (
{current}
    UNION ALL
    SELECT {key}, {held}, version, toUInt8(0)
    FROM {table} FINAL PREWHERE anonymous_id IN {member_ids}
    WHERE project_id = {{p:String}} AND day IN {{days:Array(Date)}} AND is_deleted = 0
)
GROUP BY {key}
HAVING max(current) = 0 OR min(current) = 1 OR min(version) != max(version)
"""


def recompute(
    client: Client, project_id: str, days: set[date], member_ids: str, sessions: str, zone: str
) -> None:
    """The breakdown rows of the staged visitors' sessions on `days`, local days of the
    project's time `zone` (see the module's doc)."""
    if not days:
        return
    params = {"p": project_id, "days": sorted(days), "tz": zone}
    client.command(f"DROP TEMPORARY TABLE IF EXISTS {VIEWS}")
    client.command(VIEWS_CREATE)
    for sql in statements(member_ids, sessions):
        # one thread: beside the aggregator's own on two cores, more only adds contention
        client.command(sql, parameters=params, settings={"max_threads": 1})


# -- the roll-up of settled days (breakdown_daily, breakdown_daily_by) ----------------------------

# A breakdown roll-up's columns after the day, and a day's marker row's values for them: every key
# column '' but the day, no figures.
_BREAKDOWN = ["value", *BREAKDOWN_FIGURES]
_MARKER = "'', uniqCombined64State(12)(''), 0, 0, 0, 0, 0, 0"
_DAYS = "(SELECT arrayJoin({days:Array(Date)}) AS day) GROUP BY day"


def _statements(
    table: str,
    keys: list[str],
    figures: str,
    after: list[str] = _BREAKDOWN,
    marker: str = _MARKER,
    marked: tuple[str, ...] = (),
) -> tuple[str, str, str]:
    """A roll-up table's three statements over the days {days} of project {p} at version {v}:
    roll up (its rows from `figures`, a SELECT of `keys`, day and the `after` columns, and the
    days' markers, `marker` their values of `after`), bury (a tombstone for each row of those
    days not rolled up again: gone from the day) and unmark (the markers taken back: the days
    are read from the breakdown tables until they are rolled up again). `keys`: the key columns
    before the day. A day's marker has every key '', and one more marker is written for each
    of `marked`, its first key that value (a literal), the others ''."""
    rest = ", ".join(after)
    columns = f"project_id, {', '.join(keys)}, day, {rest}, version, is_deleted"
    blanks = ", ".join("''" for _ in keys)
    others = [", ".join([first, *("''" for _ in keys[1:])]) for first in marked]

    def markers(deleted: int) -> str:
        return "\nUNION ALL\n".join(
            f"SELECT {{p:String}}, {key}, day, {marker}, {{v:UInt64}}, {deleted} FROM {_DAYS}"
            for key in [blanks, *others]
        )

    roll_up = f"""
INSERT INTO {table} ({columns})
SELECT {{p:String}}, {", ".join(keys)}, day, {rest}, {{v:UInt64}}, 0
FROM ({figures})
UNION ALL
{markers(0)}
"""
    bury = f"""
INSERT INTO {table} ({columns})
SELECT project_id, {", ".join(keys)}, day, {rest}, {{v:UInt64}}, 1
FROM {table} FINAL
WHERE project_id = {{p:String}} AND day IN {{days:Array(Date)}} AND version < {{v:UInt64}}
"""
    unmark = f"""
INSERT INTO {table} ({columns})
{markers(1)}
"""
    return roll_up, bury, unmark


_SETTLED = "day IN {days:Array(Date)}"
ROLL_UP, BURY, UNMARK = _statements(
    "breakdown_daily", ["dimension"], figures_sql(list(BREAKDOWN_DIMENSIONS), _SETTLED)
)
# The same days under each one-attribute filter (migration 0026), with their own markers, and
# under each plan (filter PLAN_FILTER: from plan_pages and plan_sessions, under the persons' plans
# as the refresh left them), with a marker of their own (filter PLAN_FILTER, no dimension): a day
# rolled up before they were has the first and not the second, and its plans are read from the
# plan tables until it is rolled up again (roll_up_backlog). A day is rolled up again when a
# person with sessions on it changes plan (services.aggregator.plans.refresh's days).
ROLL_UP_BY, BURY_BY, UNMARK_BY = _statements(
    "breakdown_daily_by",
    ["filter", "filter_value", "dimension"],
    f"{figures_by_filter_sql(_SETTLED)}\nUNION ALL\n{figures_by_plan_sql(_SETTLED)}",
    marked=(f"'{PLAN_FILTER}'",),
)
# The activity chart's figures of the same days under each one-attribute filter (migration 0029),
# with their own markers; its persons are the days' visitors' persons as the refresh left them
# (parameter tz: the project's zone, for each person's first day).
ROLL_UP_ACTIVITY, BURY_ACTIVITY, UNMARK_ACTIVITY = _statements(
    "activity_daily_by",
    ["filter", "filter_value"],
    activity_by_filter_sql(_SETTLED),
    ACTIVITY_FIGURES,
    ", ".join("0" for _ in ACTIVITY_FIGURES),
)
#: A day held back (changed again too soon) is unmarked in every roll-up table.
UNMARKS = (UNMARK, UNMARK_BY, UNMARK_ACTIVITY)


@dataclass
class RollUps:
    """Which settled days a worker rolls up when: a day a batch changed is rolled up at once
    unless this worker rolled it up less than `every` seconds ago; then its marker is taken back
    (the breakdowns read it from the tables, exactly) and it waits for its turn. A worker that
    stops with days waiting leaves them unmarked: read from the tables until they change again."""

    every: float
    last: dict[tuple[str, date], float] = field(default_factory=dict)  # (project, day) -> when
    waiting: set[tuple[str, date]] = field(default_factory=set)
    unmarked: set[tuple[str, date]] = field(default_factory=set)  # waiting, marker taken back
    zones: dict[str, str] = field(default_factory=dict)  # project -> its time zone, as last given

    def refresh(
        self,
        client: Client,
        days: dict[str, set[date]],
        version: int,
        clock: datetime,
        now: float,
        zones: Mapping[str, str] | None = None,
    ) -> None:
        """`days`: each project's changed local days in its time zone (`zones`, remembered:
        UTC when never given); a day before the project's today at `clock` is settled."""
        self.zones.update(zones or {})

        def today(project_id: str) -> date:
            return timezones.today(clock, self.zones.get(project_id, timezones.DEFAULT))

        todays = {p: today(p) for p in days}
        self.waiting.update((p, d) for p, project_days in days.items() for d in project_days if d < todays[p])
        due = {k for k in self.waiting if now - self.last.get(k, -self.every) >= self.every}
        hold = self.waiting - due - self.unmarked
        for project_id, held in _by_project(hold).items():
            for sql in UNMARKS:
                client.command(sql, parameters={"p": project_id, "days": sorted(held), "v": version})
        self.unmarked |= hold
        for project_id, rolled in _by_project(due).items():
            zone = self.zones.get(project_id, timezones.DEFAULT)
            roll_up(client, project_id, rolled, version, today(project_id), zone)
        for key in due:
            self.last[key] = now
        self.waiting -= due
        self.unmarked -= due
        for key in [k for k, at in self.last.items() if now - at >= self.every and k not in self.waiting]:
            del self.last[key]


def _by_project(keys: set[tuple[str, date]]) -> dict[str, set[date]]:
    grouped: dict[str, set[date]] = {}
    for project_id, day in keys:
        grouped.setdefault(project_id, set()).add(day)
    return grouped


def roll_up(client: Client, project_id: str, days: set[date], version: int, today: date, zone: str) -> None:
    """Rewrite breakdown_daily, breakdown_daily_by and activity_daily_by for the settled days
    among `days` (before `today`), from the breakdown tables and persons as written, with
    `version` (taken before reading: a newer roll-up wins); `zone` is the project's, whose days
    the persons' first days are."""
    settled = sorted(d for d in days if d < today)
    if not settled:
        return
    params = {"p": project_id, "days": settled, "v": version, "tz": zone}
    for sql in (ROLL_UP, ROLL_UP_BY, ROLL_UP_ACTIVITY, BURY, BURY_BY, BURY_ACTIVITY):
        client.command(sql, parameters=params)


# The settled days rolled up in breakdown_daily and not in breakdown_daily_by (or without its
# plans' marker) or not in activity_daily_by: the days an aggregator older than migration 0026
# or 0029, or than the plans' roll-up, rolled up, which no batch has changed since.
_UNROLLED = f"""
SELECT project_id, groupArray(day) FROM breakdown_daily FINAL
WHERE dimension = '' AND is_deleted = 0
  AND ((project_id, day) NOT IN (
           SELECT project_id, day FROM breakdown_daily_by FINAL WHERE filter = '' AND is_deleted = 0)
       OR (project_id, day) NOT IN (
           SELECT project_id, day FROM breakdown_daily_by FINAL
           WHERE filter = '{PLAN_FILTER}' AND dimension = '' AND is_deleted = 0)
       OR (project_id, day) NOT IN (
           SELECT project_id, day FROM activity_daily_by FINAL WHERE filter = '' AND is_deleted = 0))
GROUP BY project_id ORDER BY project_id
"""


def roll_up_backlog(
    client: Client, clock: datetime, zone_of: Callable[[str], str], should_stop: Callable[[], bool]
) -> int | None:
    """Roll up again, one day at a time, the days rolled up before breakdown_daily_by or
    activity_daily_by existed, so that their one-filter breakdowns and activity charts read
    them too (until then they read the tables, exactly).
    Returns the days rolled up; None when `should_stop` cut it short between two days (the rest
    stay in the backlog for the next call)."""
    done = 0
    for project_id, days in client.query(_UNROLLED).result_rows:
        zone = zone_of(project_id)
        today = timezones.today(clock, zone)
        for day in sorted(days):
            if should_stop():
                return None
            roll_up(client, project_id, {day}, next_version(), today, zone)
            done += 1
    return done
