"""Generate a project's worth of analytics data inside ClickHouse, for the API bench.

    .venv/bin/python bench/api_data.py --events 200000 --persons 20000     (generates and checks)

Everything is made by INSERT ... SELECT FROM numbers() in the engine itself, never through HTTP
or Python rows: `events` first, then every table the aggregator derives from events, computed
from those events with the aggregator's definitions (docs/definitions.md, "What the aggregator keeps"):

- a plan of sessions (table `bench_plan`, dropped at the end): person p has 1..3 sessions (3 % of
  persons 8..30), each on its own day slot of the last 60 days, so that no two sessions of one
  visitor come within 30 minutes of each other (the events would otherwise form one session);
  40 % of persons identify (an identify call ends their first session, with plan/email/name
  traits), a tenth of those also from a second device (a second anonymous id);
- `events`: N rows from the plan (page views, tracks, heartbeats, identifies; funnel steps
  $page /pricing -> Signup Started -> Signup Completed -> Order Completed in part of sessions);
- `sessions`, `person_distinct_ids`, `person_traits`, `persons`, `person_activity`,
  `daily_stats`, one 4-step funnel and its `funnel_progress`, derived from the events with
  GROUP BY / windowFunnel (`visitor_events` is filled from `events` by its materialized view);
  `sessions_daily` and the breakdown tables by their migrations' own back-fills (0010, 0023, 0027, 0032);
  the day-keyed tables read under FINAL written again a day at a time (BY_DAY), as the
  aggregator's batches write them;
- then, as the aggregator would keep writing, a "live tail" timed from the moment generation
  ends: a few thousand sessions of existing persons whose last event is minutes old (70 % of
  them within 5 minutes: online; a fifth of those only send heartbeats on one page for over 5
  minutes, so they are stuck, as are others whose last page view is old),
  their `online_visitors` rows, and the persons, activity, daily stats and funnel progress they
  touch rewritten with a newer version (so reads with FINAL have real work to do), and an
  `aggregator_status` row.

Exactly `events` events and `persons` persons result. `check()` verifies the counts and the
consistency of the derived tables with the events (and the funnel against werkstroom.funnels).
Session ids are deterministic hashes of the plan (the aggregator names a session by a hash of its
first event; the value itself does not matter to readers).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from clickhouse_connect.driver.client import Client  # noqa: E402

from services.aggregator.breakdowns import roll_up  # noqa: E402
from services.aggregator.derived import refresh_churn  # noqa: E402
from werkstroom import projects, timezones  # noqa: E402
from werkstroom.breakdowns import (  # noqa: E402
    ACTIVITY_FIGURES,
    ROLLED_FILTERS,
    Joined,
    activity_figures_sql,
    filter_pairs,
    with_persons,
)
from werkstroom.clickhouse.migrate import Migration, load_migrations  # noqa: E402
from werkstroom.clickhouse.tables import (  # noqa: E402
    ENTRY_ATTRIBUTES,
    FUNNELS_COLUMNS,
)
from werkstroom.clickhouse.versions import next_version  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402
from werkstroom.sources import source_of  # noqa: E402

DAYS = 60
DAY_MS = 86_400_000
FUNNEL_STEPS = [
    {"event": "$page", "path": "/pricing"},
    {"event": "Signup Started", "path": ""},
    {"event": "Signup Completed", "path": ""},
    {"event": "Order Completed", "path": ""},
]
FUNNEL_WINDOW = 86_400
PATHS = [
    "/",
    "/pricing",
    "/features",
    "/docs",
    "/blog",
    "/blog/launch",
    "/about",
    "/signup",
    "/login",
    "/contact",
    "/changelog",
    "/careers",
]
TITLES = [
    "Home",
    "Pricing",
    "Features",
    "Docs",
    "Blog",
    "We launched",
    "About us",
    "Sign up",
    "Log in",
    "Contact",
    "Changelog",
    "Careers",
]
REFERRERS = [
    "",
    "",
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "https://twitter.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
]
#: The source ingest gives each referrer (werkstroom/sources.py), as events carry it.
REFERRER_SOURCES = [source_of(r, "https://shop.example/") for r in REFERRERS]
#: A person's country (ISO alpha-2, '' unknown), from a hash of the person.
COUNTRIES = ["NL", "NL", "DE", "US", "US", "US", "GB", "FR", "JP", "BR", ""]
PRICING = PATHS.index("/pricing") + 1  # 1-based, as ClickHouse arrays are


def _arr(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "\\'") + "'" for v in values) + "]"


_COUNTRIES = _arr(COUNTRIES)


# -- per-person attributes: SQL over a column `p` (the person's number) --------------------------
_H = "cityHash64(1, p)"
PERSON = {
    "n": f"toUInt16(if({_H} % 100 < 3, 8 + intDiv({_H}, 100) % 23, 1 + intDiv({_H}, 100) % 3))",
    "identified": f"toUInt8(intDiv({_H}, 10000) % 10 < 4)",
    "twodev": f"toUInt8(intDiv({_H}, 10000) % 10 < 4 AND intDiv({_H}, 100000) % 10 = 0)",
    "anon_a": "concat('anon-', lower(hex(cityHash64(4, p))))",
    "anon_b": "concat('anon-', lower(hex(cityHash64(5, p))))",
    "user": "concat('user-', toString(p))",
    "plan": "multiIf(cityHash64(2, p) % 100 < 15, 'premium', cityHash64(2, p) % 100 < 35, 'trial', 'free')",
}


def _person_columns() -> str:
    return ", ".join(f"{sql} AS {name}" for name, sql in PERSON.items())


# -- per-event columns, over a plan row and j (the event's index in its session) ----------------
# kind: identify closes an identifying session; j = 0 is the entry page view; j in 1..level are
# the funnel's steps in order; other events are page views (60 %), clicks or heartbeats.
_EVENT_SELECT = f"""
    {{project:String}} AS project_id,
    lower(concat(hex(cityHash64(8, salt, j)), hex(cityHash64(9, salt, j)))) AS event_id,
    identify_session AND j = k - 1 AS is_identify,
    if(j >= 1 AND j <= level, j, 0) AS step,
    cityHash64(10, salt, j) % 100 AS rnd,
    1 + intDiv(cityHash64(10, salt, j), 100) % {len(PATHS)} AS rnd_page,
    multiIf(is_identify, 'identify', stuck, if(j <= 1, 'page', 'track'),
            j = 0 OR step = 1 OR (step = 0 AND rnd < 60), 'page', 'track') AS type,
    multiIf(is_identify, '$identify', type = 'page', '$page', stuck, '$heartbeat', step = 2, 'Signup Started',
            step = 3, 'Signup Completed', step = 4, 'Order Completed',
            rnd < 85, 'Button Clicked', '$heartbeat') AS event,
    anonymous_id,
    if(identified AND (NOT identify_session OR j = k - 1), user_id, '') AS user_id,
    '' AS previous_id,
    session_id,
    fromUnixTimestamp64Milli(toInt64(start_ms + j * gap_ms), 'UTC') AS timestamp,
    timestamp AS sent_at,
    timestamp + toIntervalMillisecond(150) AS received_at,
    multiIf(is_identify, 0, j = 0, entry_page, step = 1, {PRICING}, step >= 2, 8, rnd_page) AS page,
    if(page = 0, '', concat('https://shop.example', {_arr(PATHS)}[page])) AS url,
    if(page = 0, '', {_arr(PATHS)}[page]) AS path,
    if(page = 0 OR type != 'page', '', {_arr(TITLES)}[page]) AS title,
    if(j = 0, referrer, '') AS referrer,
    device_type, browser, '131.0' AS browser_version, os, '' AS os_version,
    if(event = 'Order Completed', '{{"revenue":49}}', '{{}}') AS properties,
    if(is_identify, concat('{{"email":"', user_id, '@example.com","name":"Person ', user_id,
                           '","plan":"', plan, '"}}'), '{{}}') AS traits,
    'analytics.js' AS library,
    {_COUNTRIES}[1 + cityHash64(7, p) % {len(COUNTRIES)}] AS country,
    if(j = 0, transform(referrer, {_arr(REFERRERS)}, {_arr(REFERRER_SOURCES)}, ''), '') AS source,
    if(j = 0 AND cityHash64(11, salt) % 100 < 20, ['newsletter', 'partner', 'ads'][1 + intDiv(cityHash64(11, salt), 100) % 3], '') AS utm_source,
    if(utm_source = '', '', ['email', 'referral', 'cpc'][indexOf(['newsletter', 'partner', 'ads'], utm_source)]) AS utm_medium,
    if(utm_source = '', '', ['spring', 'launch', 'black-friday'][1 + intDiv(cityHash64(11, salt), 1000) % 3]) AS utm_campaign,
    toUInt16(1) AS schema_version,
    toUInt32(cityHash64(anonymous_id) % 4) AS kafka_partition,
    toUInt64(off + j) AS kafka_offset
"""
EVENT_COLUMNS = (
    "project_id, event_id, type, event, anonymous_id, user_id, previous_id, session_id, timestamp, "
    "sent_at, received_at, url, path, title, referrer, device_type, browser, browser_version, os, "
    "os_version, properties, traits, library, country, source, utm_source, utm_medium, utm_campaign, "
    "schema_version, kafka_partition, kafka_offset"
)

# Device, browser and OS of a session, from a hash `d`.
_DEVICE = """
    multiIf(d % 10 < 6, 'desktop', d % 10 < 9, 'mobile', 'tablet') AS device_type,
    multiIf(device_type = 'desktop', ['Chrome', 'Firefox', 'Edge', 'Safari'][1 + intDiv(d, 10) % 4],
            device_type = 'mobile', ['Mobile Safari', 'Chrome Mobile'][1 + intDiv(d, 10) % 2],
            'Mobile Safari') AS browser,
    multiIf(device_type = 'desktop', ['Windows', 'Windows', 'Mac OS X', 'Linux'][1 + intDiv(d, 10) % 4],
            device_type = 'mobile', ['iOS', 'Android'][1 + intDiv(d, 10) % 2], 'iOS') AS os
"""

PLAN_TABLE = """
CREATE TABLE bench_plan (
    p UInt32, i UInt16, salt UInt64, n UInt16, stuck UInt8, identified UInt8, identify_session UInt8, anonymous_id String,
    user_id String, plan String, session_id String, start_ms Int64, gap_ms UInt32, k UInt16,
    level UInt8, entry_page UInt8, referrer String, device_type String, browser String, os String,
    off UInt64
) ENGINE = MergeTree ORDER BY off
"""

# One row per planned session, with `off` = the offset of its first event: the running total of
# events over sessions ordered by (i, p), so that cutting at N events drops only later sessions.
PLAN_INSERT = f"""
INSERT INTO bench_plan (p, i, salt, n, stuck, identified, identify_session, anonymous_id, user_id, plan,
    session_id, start_ms, gap_ms, k, level, entry_page, referrer, device_type, browser, os, off)
SELECT p, i, salt, n, 0, identified, identify_session, anonymous_id, user_id, plan, session_id, start_ms,
       gap_ms, k, level, entry_page, referrer, device_type, browser, os,
       toUInt64(sum(k) OVER (ORDER BY i, p ROWS UNBOUNDED PRECEDING) - k) AS off
FROM (
    SELECT p, i, cityHash64(3, p, i) AS hs, cityHash64(3, p, i) AS salt, n, identified,
        toUInt8(identified AND (i = 0 OR (twodev AND i = 1))) AS identify_session,
        if(twodev AND i % 2 = 1, anon_b, anon_a) AS anonymous_id, user AS user_id, plan,
        lower(hex(cityHash64(6, p, i))) AS session_id,
        intDiv(cityHash64(1, p), 1000000) % (61 - n) AS first_day,
        (n - 1) + intDiv(cityHash64(1, p), 100000000) % (61 - n - first_day) AS span,
        first_day + intDiv(i * span, greatest(n - 1, 1)) AS slot,
        {{t0_ms:Int64}} - {DAYS * DAY_MS} + slot * {DAY_MS} + toInt64(hs % (21 * 3600 * 1000)) AS start_ms,
        toUInt32(5000 + intDiv(hs, 7000000) % 85000) AS gap_ms,
        if(intDiv(hs, 7) % 100 < 30, 1, 2 + intDiv(hs, 700) % {{spread:UInt16}}) AS k_raw,
        toUInt16(if(identify_session, greatest(k_raw, 2), k_raw)) AS k,
        toUInt8(multiIf(intDiv(hs, 70000) % 100 < 40, 0, intDiv(hs, 70000) % 100 < 65, 1,
                        intDiv(hs, 70000) % 100 < 80, 2, intDiv(hs, 70000) % 100 < 90, 3, 4)) AS level,
        toUInt8(1 + intDiv(hs, 11) % {len(PATHS)}) AS entry_page,
        {_arr(REFERRERS)}[1 + intDiv(hs, 13) % {len(REFERRERS)}] AS referrer,
        intDiv(hs, 17) AS d, {_DEVICE}
    FROM (SELECT number AS p, {_person_columns()} FROM numbers({{persons:UInt32}}))
    ARRAY JOIN range(n) AS i
)
"""

# The live tail: sessions of existing persons (device a, so after their identify), timed back
# from t1 = the end of generation; `off` continues after the generated events.
TAIL_INSERT = f"""
INSERT INTO bench_plan (p, i, salt, n, stuck, identified, identify_session, anonymous_id, user_id, plan,
    session_id, start_ms, gap_ms, k, level, entry_page, referrer, device_type, browser, os, off)
SELECT p, 65535, salt, n, stuck, identified, 0 AS identify_session, anonymous_id, user_id, plan, session_id,
       start_ms, gap_ms, k, level, entry_page, referrer, device_type, browser, os,
       toUInt64({{base_off:UInt64}} + sum(k) OVER (ORDER BY t ROWS UNBOUNDED PRECEDING) - k) AS off
FROM (
    SELECT t, p, cityHash64(20, t) AS ht, cityHash64(21, t) AS salt, n, identified,
        anon_a AS anonymous_id, user AS user_id, plan,
        lower(hex(cityHash64(22, t))) AS session_id,
        ht % 100 < 70 AS online, online AND intDiv(ht, 100) % 100 < 20 AS stuck,
        toUInt16(if(stuck, 8, 2 + intDiv(ht, 10000) % 7)) AS k,
        toInt64(if(online, 5000 + intDiv(ht, 100000) % 175000, 360000 + intDiv(ht, 100000) % 2640000)) AS ago,
        toInt64(if(stuck, 600000 + intDiv(ht, 1000000) % 900000, 30000 + intDiv(ht, 1000000) % 1500000)) AS dur,
        {{t1_ms:Int64}} - ago - dur AS start_ms,
        toUInt32(intDiv(dur, k - 1)) AS gap_ms,
        toUInt8(if(stuck, 0, multiIf(intDiv(ht, 70000) % 100 < 40, 0, intDiv(ht, 70000) % 100 < 65, 1,
                                     intDiv(ht, 70000) % 100 < 80, 2, intDiv(ht, 70000) % 100 < 90, 3, 4))) AS level,
        toUInt8(if(stuck, {PRICING}, 1 + intDiv(ht, 11) % {len(PATHS)})) AS entry_page,
        {_arr(REFERRERS)}[1 + intDiv(ht, 13) % {len(REFERRERS)}] AS referrer,
        intDiv(ht, 17) AS d, {_DEVICE}
    FROM (SELECT number AS t, intDiv(number * {{persons:UInt32}}, {{tail:UInt32}}) AS p, {_person_columns()}
          FROM numbers({{tail:UInt32}}))
)
"""

# A stuck visitor's events after the first two are heartbeats (they stay online on one page).
EVENTS_INSERT = f"""
INSERT INTO events ({EVENT_COLUMNS})
SELECT {EVENT_COLUMNS} FROM (
    SELECT {_EVENT_SELECT}
    FROM (SELECT *, range(k) AS js FROM bench_plan WHERE off >= {{lo:UInt64}} AND off < {{hi:UInt64}})
    ARRAY JOIN js AS j
    WHERE off + j < {{hi:UInt64}}
)
"""

# Resolution of an anonymous id to its person (identify/alias mapping, else itself).
_MAPPING = (
    "(SELECT distinct_id, argMax(person_id, version) AS person_id FROM person_distinct_ids "
    "WHERE project_id = {project:String} GROUP BY distinct_id)"
)
_RESOLVED = f"""
    SELECT s.anonymous_id AS anonymous_id, if(m.person_id != '', m.person_id, s.anonymous_id) AS person_id,
           s.start_at AS start_at, s.last_event_at AS last_event_at, s.page_views AS page_views
    FROM sessions AS s FINAL LEFT JOIN {_MAPPING} AS m ON m.distinct_id = s.anonymous_id
    WHERE s.project_id = {{project:String}} AND s.is_deleted = 0 {{scope}}
"""

SESSIONS_INSERT = """
INSERT INTO sessions (project_id, anonymous_id, session_id, user_id, start_at, last_event_at, entry_at,
    entry_url, entry_path, referrer, current_url, current_path, current_title, page_entered_at,
    page_views, events, pages, device_type, browser, os, kafka_partition, version, is_deleted)
SELECT project_id, anonymous_id, session_id,
    argMaxIf(user_id, kafka_offset, user_id != ''),
    min(timestamp), max(timestamp),
    if(countIf(type = 'page') > 0, minIf(timestamp, type = 'page'), min(timestamp)),
    argMinIf(url, timestamp, type = 'page'), argMinIf(path, timestamp, type = 'page'),
    argMinIf(referrer, timestamp, type = 'page'),
    argMaxIf(url, timestamp, type = 'page'), argMaxIf(path, timestamp, type = 'page'),
    argMaxIf(title, timestamp, type = 'page'),
    if(countIf(type = 'page') > 0, maxIf(timestamp, type = 'page'), min(timestamp)),
    countIf(type = 'page'), countIf(event != '$heartbeat'),
    arraySlice(arrayMap(x -> x.2, arraySort(x -> x.1, groupArrayIf((kafka_offset, path), type = 'page'))), 1, 100),
    any(device_type), any(browser), any(os), any(kafka_partition), max(kafka_offset), 0
FROM events
WHERE project_id = {project:String} AND kafka_offset >= {lo:UInt64}
GROUP BY project_id, anonymous_id, session_id
"""

IDENTITIES_INSERT = """
INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, version)
SELECT project_id, anonymous_id, argMax(user_id, timestamp), max(toUnixTimestamp64Milli(timestamp))
FROM events
WHERE project_id = {project:String} AND type = 'identify' AND user_id != '' AND anonymous_id != ''
GROUP BY project_id, anonymous_id
"""

TRAITS_INSERT = """
INSERT INTO person_traits (project_id, distinct_id, key, value, version)
SELECT project_id, distinct_id, kv.1, argMax(kv.2, ts), max(ts)
FROM (
    SELECT project_id, if(user_id != '', user_id, anonymous_id) AS distinct_id,
           toUnixTimestamp64Milli(timestamp) AS ts, arrayJoin(JSONExtractKeysAndValuesRaw(traits)) AS kv
    FROM events WHERE project_id = {project:String} AND type = 'identify'
)
GROUP BY project_id, distinct_id, kv.1
"""

# persons.traits is the JSON object of the person's traits with sorted keys, as the aggregator
# writes it (orjson, OPT_SORT_KEYS); plan is the `plan` trait when it is a string.
PERSONS_INSERT = f"""
INSERT INTO persons (project_id, person_id, first_seen, last_seen, sessions, page_views,
    anonymous_ids, traits, plan, is_deleted, version)
SELECT {{project:String}}, v.person_id, v.first_seen, v.last_seen, v.sessions, v.page_views, v.anonymous_ids,
    if(t.distinct_id = '', '{{}}', t.traits), if(t.distinct_id = '', '', t.plan), 0, {{version:UInt64}}
FROM (
    SELECT person_id, min(start_at) AS first_seen, max(last_event_at) AS last_seen, count() AS sessions,
           sum(page_views) AS page_views, arraySort(groupUniqArray(anonymous_id)) AS anonymous_ids
    FROM ({_RESOLVED}) GROUP BY person_id
) AS v
LEFT JOIN (
    SELECT distinct_id,
        concat('{{', arrayStringConcat(arrayMap(x -> concat(toJSONString(x.1), ':', x.2),
                                               arraySort(groupArray((key, value)))), ','), '}}') AS traits,
        if(startsWith(anyIf(value, key = 'plan'), '"'), JSONExtractString(anyIf(value, key = 'plan')), '') AS plan
    FROM person_traits FINAL WHERE project_id = {{project:String}} GROUP BY distinct_id
) AS t ON t.distinct_id = v.person_id
"""

ACTIVITY_INSERT = f"""
INSERT INTO person_activity (project_id, day, person_id, is_deleted, version)
SELECT DISTINCT {{project:String}},
    arrayJoin(arrayMap(d -> toDate(start_at) + d, range(toUInt32(toDate(last_event_at) - toDate(start_at)) + 1))),
    person_id, 0, {{version:UInt64}}
FROM ({_RESOLVED})
"""

DAILY_INSERT = f"""
INSERT INTO daily_stats (project_id, day, active_users, new_users, sessions, page_views, events,
    bounce_rate, avg_session_seconds, version)
SELECT {{project:String}}, a.day, a.active_users, n.new_users, s.sessions, a.page_views, a.events,
    round(s.bounce, 6), round(s.seconds, 3), {{version:UInt64}}
FROM (
    SELECT toDate(e.timestamp) AS day,
        uniqExact(if(m.person_id != '', m.person_id, if(e.anonymous_id != '', e.anonymous_id, e.user_id)))
            AS active_users,
        countIf(e.type = 'page') AS page_views, countIf(e.event != '$heartbeat') AS events
    FROM events AS e LEFT JOIN {_MAPPING} AS m ON m.distinct_id = e.anonymous_id
    WHERE e.project_id = {{project:String}} AND toDate(e.timestamp) IN {{days:Array(Date)}} GROUP BY day
) AS a
LEFT JOIN (
    SELECT toDate(start_at) AS day, count() AS sessions, countIf(page_views = 1) / count() AS bounce,
           avg(dateDiff('millisecond', start_at, last_event_at)) / 1000 AS seconds
    FROM sessions FINAL WHERE project_id = {{project:String}} AND is_deleted = 0
      AND toDate(start_at) IN {{days:Array(Date)}} GROUP BY day
) AS s ON s.day = a.day
LEFT JOIN (
    SELECT toDate(first_seen) AS day, count() AS new_users FROM persons FINAL
    WHERE project_id = {{project:String}} AND is_deleted = 0 AND toDate(first_seen) IN {{days:Array(Date)}}
    GROUP BY day
) AS n ON n.day = a.day
"""


def _step_condition(step: dict[str, str]) -> str:
    from werkstroom.funnels import like_pattern

    cond = f"event = '{step['event']}'"
    if step["path"]:
        cond += f" AND path LIKE '{like_pattern(step['path'])}'"
    return cond


# A person's progress per day on which a step-1 event happened: windowFunnel (default mode) over
# their step events from that day on (werkstroom.funnels.progress, in SQL). The step events of
# the persons in scope are first copied to `bench_funnel_events` (joined with their attempt days
# in one query, the planner picked a cross join).
def _migration(name: str) -> Migration:
    (migration,) = [m for m in load_migrations() if m.name == name]
    return migration


def _backfill(name: str) -> list[tuple[str, str]]:
    """A migration's back-fill statements, each with a name: its table and the migration."""
    migration = _migration(name)
    return [
        (f"{statement.split('(')[0].removeprefix('INSERT INTO').strip()} ({name[:4]})", statement)
        for statement in migration.statements()
        if statement.startswith("INSERT INTO")
    ]


#: What the back-fills read; the tail's statements read its visitors' sessions only.
_ALL_SESSIONS = re.compile(r"FROM sessions FINAL\s+WHERE is_deleted = 0")


def _funnel_events_insert() -> str:
    names = _arr(sorted({s["event"] for s in FUNNEL_STEPS}))
    return f"""
INSERT INTO bench_funnel_events
SELECT o.person_id, toUInt64(toUnixTimestamp64Milli(v.timestamp)), v.event, v.path
FROM visitor_events AS v FINAL
INNER JOIN (SELECT arrayJoin(anonymous_ids) AS distinct_id, person_id FROM persons FINAL
            WHERE project_id = {{project:String}} AND is_deleted = 0 {{scope}}) AS o
    ON o.distinct_id = v.distinct_id
WHERE v.project_id = {{project:String}} AND v.event IN {names}
"""


def _progress_insert() -> str:
    conditions = ", ".join(_step_condition(s) for s in FUNNEL_STEPS)
    return f"""
INSERT INTO funnel_progress (project_id, funnel_id, day, person_id, level, is_deleted, version)
SELECT {{project:String}}, {{funnel:String}}, d.day, d.person_id,
       toUInt8(windowFunnel({FUNNEL_WINDOW * 1000})(e.ms, {conditions.replace("event", "e.event").replace("path", "e.path")})),
       0, {{version:UInt64}}
FROM (SELECT DISTINCT person_id, toDate(fromUnixTimestamp64Milli(toInt64(ms), 'UTC')) AS day
      FROM bench_funnel_events WHERE {_step_condition(FUNNEL_STEPS[0])}) AS d
INNER JOIN bench_funnel_events AS e ON e.person_id = d.person_id
WHERE e.ms >= toUInt64(toUnixTimestamp(toDateTime(d.day, 'UTC'))) * 1000
GROUP BY d.person_id, d.day
"""


FUNNEL_EVENTS_TABLE = (
    "CREATE TABLE bench_funnel_events (person_id String, ms UInt64, event String, path String) "
    "ENGINE = MergeTree ORDER BY (person_id, ms)"
)


@dataclass(frozen=True)
class Clock:
    """The bench's "now": the wall clock, or (`start`, api_bench's --at) a fixed moment that the
    wall clock's progress since then moves on. The data, the checks, the bench's own SQL and the
    API read this one. ClickHouse's clock is still read by 0033's back-fill (`today() - 22`: its
    recent days, a day more or less, wider than any view reads) and by the tables' TTLs
    (online_visitors keeps rows an hour: api_bench.at_clock never picks a past hour)."""

    start: datetime | None = None
    _since: float = field(default_factory=time.monotonic)

    def __call__(self) -> datetime:
        if self.start is None:
            return datetime.now(UTC)
        return self.start + timedelta(seconds=time.monotonic() - self._since)


@dataclass
class Generated:
    project_id: str
    read_key: str
    funnel_id: str
    events: int
    persons: int
    tail_sessions: int
    t1: datetime
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    #: live_day's facts, once measured
    live: dict[str, Any] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def settle_merges(client: Client, limit: float = 120.0) -> None:
    """Wait (up to `limit` s) until the background merges of the bulk inserts are done, so the
    latencies are those of a settled table, not of reads competing with merges for the cores."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not client.query("SELECT count() FROM system.merges").first_row[0]:
            return
        time.sleep(0.5)


#: The day-keyed tables (sorted by project, then day) that are read under FINAL over a range of
#: days. The aggregator writes a batch's day or two at a time, so each of their parts holds a few
#: days and a range's FINAL has few parts to merge per day; one INSERT ... SELECT over the whole
#: history instead leaves parts that each hold every day (its blocks), and every FINAL then
#: merges them all: on breakdown_sessions at 10M events, the sessions of one country over 30
#: days took 361 ms so, 84 ms with the table written a day at a time (the same as without FINAL).
BY_DAY = (
    *("breakdown_sessions", "breakdown_pages", "sessions_daily", "person_activity", "funnel_progress"),
    "person_activity_by",
)


#: The tables a materialized view copies each insert into `table` to (migration 0031): written
#: again with it, they are emptied with it, or they would hold every row twice.
COPIES = {"person_activity_by": "person_activity_by_person"}


def write_by_day(client: Client, table: str) -> None:
    """Write `table` again a day at a time (every row version kept, in its day's order), as the
    aggregator's batches write it, not as one bulk insert over all days; its copy (COPIES), if
    any, follows through its view."""
    client.command("DROP TABLE IF EXISTS bench_by_day")
    client.command(f"CREATE TABLE bench_by_day AS {table}")
    client.command(f"INSERT INTO bench_by_day SELECT * FROM {table}")
    client.command(f"TRUNCATE TABLE {table}")
    if table in COPIES:
        client.command(f"TRUNCATE TABLE {COPIES[table]}")
    for (day,) in client.query("SELECT DISTINCT day FROM bench_by_day ORDER BY day").result_rows:
        client.command(
            f"INSERT INTO {table} SELECT * FROM bench_by_day WHERE day = {{d:Date}}", parameters={"d": day}
        )
    client.command("DROP TABLE bench_by_day")


def generate(
    client: Client,
    settings: Settings,
    *,
    events: int,
    persons: int,
    tail: int | None = None,
    log: Callable[[str], None] = lambda _: None,
    clock: Clock | None = None,
) -> Generated:
    """Fill the (migrated, empty) database of `client` with one project's data."""
    if events < 3 * persons:
        raise ValueError("need at least 3 events per person (every person has a session)")
    tail = tail if tail is not None else min(5000, max(persons // 20, 1))
    clock = clock or Clock()
    started = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str, sql: str, **params: Any) -> None:
        t = time.perf_counter()
        client.command(sql, parameters=params, settings={"max_threads": 2})
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
        log(f"  {name:<24} {time.perf_counter() - t:7.1f} s")

    def by_day(table: str) -> None:
        t = time.perf_counter()
        write_by_day(client, table)
        steps[f"{table} by day"] = time.perf_counter() - t
        log(f"  {table + ' by day':<24} {steps[table + ' by day']:7.1f} s")

    project = projects.create_project(client, "Bench shop")
    p = project.project_id
    t0 = clock()
    client.command("DROP TABLE IF EXISTS bench_plan")
    client.command(PLAN_TABLE)

    # The tail's size in events is known in advance (it does not depend on t1), so that the
    # history is cut at exactly `events - tail_events`.
    step("plan (tail)", TAIL_INSERT, base_off=0, t1_ms=_ms(t0), persons=persons, tail=tail)
    tail_events = int(client.query("SELECT sum(k) FROM bench_plan").first_row[0])
    client.command("TRUNCATE TABLE bench_plan")
    history = events - tail_events
    planned_sessions = int(
        client.query(
            f"SELECT sum(n) FROM (SELECT {PERSON['n']} AS n FROM (SELECT number AS p FROM numbers({{persons:UInt32}})))",
            parameters={"persons": persons},
        ).first_row[0]
    )
    # Non-bounce sessions have 2..spread+1 events: choose spread so the plan holds slightly more
    # than `history` events; the cut drops the surplus from the latest sessions of some persons.
    target = history / planned_sessions * 1.02
    spread = max(1, int(((target - 0.3) / 0.7 - 2) * 2 + 1) + 1)
    step("plan (history)", PLAN_INSERT, t0_ms=_ms(t0), persons=persons, spread=spread)
    planned_events, first_sessions_end = client.query(
        "SELECT sum(k), maxIf(off + k, i = 0) FROM bench_plan"
    ).first_row
    if planned_events < history or first_sessions_end > history:
        raise RuntimeError(
            f"the plan holds {planned_events} events, first sessions end at {first_sessions_end}: "
            f"cannot cut at {history} events and keep every person"
        )
    step("events", EVENTS_INSERT, project=p, lo=0, hi=history)
    step("sessions", SESSIONS_INSERT, project=p, lo=0)
    step("person_distinct_ids", IDENTITIES_INSERT, project=p)
    step("person_traits", TRAITS_INSERT, project=p)
    v1 = next_version()
    step("persons", PERSONS_INSERT.replace("{scope}", ""), project=p, version=v1)
    step("person_activity", ACTIVITY_INSERT.replace("{scope}", ""), project=p, version=v1)
    days = [
        r[0]
        for r in client.query(
            "SELECT DISTINCT toDate(timestamp) FROM events WHERE project_id = {p:String}", parameters={"p": p}
        ).result_rows
    ]
    step("daily_stats", DAILY_INSERT, project=p, version=v1, days=days)
    funnel_id = "f_bench_signup"
    client.insert(
        "funnels",
        [[p, funnel_id, "Signup to order", orjson.dumps(FUNNEL_STEPS).decode(), FUNNEL_WINDOW, t0, 0, v1]],
        column_names=FUNNELS_COLUMNS,
    )
    client.command("DROP TABLE IF EXISTS bench_funnel_events")
    client.command(FUNNEL_EVENTS_TABLE)
    step("funnel events", _funnel_events_insert().replace("{scope}", ""), project=p)
    step("funnel_progress", _progress_insert(), project=p, funnel=funnel_id, version=v1)

    # The live tail, timed from now, and what the aggregator rewrites for it.
    client.command("TRUNCATE TABLE bench_plan")
    # The breakdown tables, by migration 0023's own back-fill statements (the refresh computes the
    # same rows: test_migrations holds them), before the tail is timed (they take minutes at 10M
    # events); the tail's visitors below.
    # Not its visitor_events statement: the events were inserted after the migration, so its
    # materialized view gave their page views the attributes already; writing them again took
    # 26 s at 10M events and left every page view twice in the table until the merges ran.
    breakdowns = [(n, s) for n, s in _backfill("0023_breakdowns.sql") if not n.startswith("visitor_events")]
    # and sessions_daily (where the filtered activity chart read sessions' durations), by 0010's
    breakdowns += _backfill("0010_sessions_daily.sql")
    for name, statement in breakdowns:
        step(name, statement)
    t1 = clock()
    step("tail plan", TAIL_INSERT, base_off=history, t1_ms=_ms(t1), persons=persons, tail=tail)
    step("tail events", EVENTS_INSERT, project=p, lo=history, hi=events)
    step("tail sessions", SESSIONS_INSERT, project=p, lo=history)
    anons = [r[0] for r in client.query("SELECT anonymous_id FROM bench_plan").result_rows]
    # The persons the tail touched, and every anonymous id of theirs (a person may have two).
    touched = client.query(
        f"SELECT person_id, anonymous_ids FROM persons FINAL WHERE project_id = {{p:String}} "
        f"AND person_id IN (SELECT if(m.person_id != '', m.person_id, a) FROM "
        f"(SELECT arrayJoin({{anons:Array(String)}}) AS a) AS x LEFT JOIN "
        f"{_MAPPING.replace('{project:String}', '{p:String}')} AS m ON m.distinct_id = x.a)",
        parameters={"p": p, "anons": anons},
    ).result_rows
    scope_persons = sorted(person for person, _ in touched)
    scope_anons = sorted({a for _, ids in touched for a in ids})
    scope = "AND s.anonymous_id IN {anons:Array(String)}"
    v2 = next_version()
    step(
        "tail persons",
        PERSONS_INSERT.replace("{scope}", scope),
        project=p,
        version=v2,
        anons=scope_anons,
    )
    step(
        "tail person_activity",
        ACTIVITY_INSERT.replace("{scope}", scope),
        project=p,
        version=v2,
        anons=scope_anons,
    )
    tail_days = [
        r[0]
        for r in client.query(
            "SELECT DISTINCT toDate(timestamp) FROM events WHERE project_id = {p:String} AND kafka_offset >= {lo:UInt64}",
            parameters={"p": p, "lo": history},
        ).result_rows
    ]
    step("tail daily_stats", DAILY_INSERT, project=p, version=v2, days=tail_days)
    for name, statement in breakdowns:  # the tail visitors' sessions, all of them
        scoped = _ALL_SESSIONS.sub(
            "FROM sessions FINAL WHERE is_deleted = 0 AND anonymous_id IN {anons:Array(String)}", statement
        )
        assert scoped != statement, name
        step(f"tail {name}", scoped, anons=scope_anons)
    client.command("TRUNCATE TABLE bench_funnel_events")
    step(
        "tail funnel events",
        _funnel_events_insert().replace("{scope}", "AND person_id IN {persons:Array(String)}"),
        project=p,
        persons=scope_persons,
    )
    step("tail funnel_progress", _progress_insert(), project=p, funnel=funnel_id, version=v2)
    # The sessions' durations on breakdown_sessions, which 0023's statements predate (they leave
    # the column 0): migration 0027 run whole, as on a database upgraded to it, once the tail's
    # rows are written too.
    for statement in _migration("0027_breakdown_sessions_duration.sql").statements():
        step("durations (0027)", statement)
    # and their starts, which the filtered cards' "online a week ago" reads: migration 0032 whole
    for statement in _migration("0032_breakdown_sessions_start.sql").statements():
        step("starts (0032)", statement)
    # Each person's first day (persons_first_day: the aggregator's daily_stats count new users
    # from it, the filtered cards their new users), from the persons rows, the tail's included.
    step(
        "persons_first_day",
        "INSERT INTO persons_first_day (project_id, day, person_id, is_deleted, version) "
        "SELECT project_id, toDate(first_seen), person_id, 0, version FROM persons FINAL "
        "WHERE project_id = {project:String} AND is_deleted = 0",
        project=p,
    )
    # Each visitor's person (visitor_persons), which the aggregator writes with persons: here
    # migration 0030's back-fill, once the tail's persons are written.
    for statement in _migration("0030_visitor_persons.sql").statements():
        step("visitor_persons (0030)", statement)
    # Each person's days per filter value (person_activity_by), which the aggregator keeps with
    # breakdown_sessions: here migration 0031's back-fill, from those rows and visitor_persons.
    for statement in _migration("0031_person_activity_by.sql").statements():
        step("person_activity_by (0031)", statement)
    for table in BY_DAY:
        by_day(table)
    # Each person's first and last day per filter value (person_first_by), which the aggregator
    # rewrites with person_activity_by: here migration 0033's back-fill, from its rows.
    for statement in _migration("0033_person_first_by.sql").statements():
        step("person_first_by (0033)", statement)
    # Each session under its person's plan (plan_sessions), which the aggregator rewrites with
    # breakdown_sessions and persons: here migration 0034's back-fill, from them.
    for statement in _migration("0034_plan_sessions.sql").statements():
        step("plan_sessions (0034)", statement)
    # and each page row (plan_pages), from breakdown_pages: migration 0036's back-fill
    for statement in _migration("0036_plan_pages.sql").statements():
        step("plan_pages (0036)", statement)
    # and both tables' page rows get their sessions' entry attributes (the top pages narrowed by
    # one read them), as a database upgraded to it: migration 0041 whole
    for statement in _migration("0041_breakdown_pages_attributes.sql").statements():
        step("page attributes (0041)", statement)
    # and the settled days' roll-up, as the aggregator writes it when a day changes
    t = time.perf_counter()
    settled = {
        r[0]
        for r in client.query(
            "SELECT DISTINCT day FROM breakdown_sessions WHERE project_id = {p:String}", parameters={"p": p}
        ).result_rows
    }
    roll_up(client, p, settled, v2, clock().date(), timezones.DEFAULT)
    steps["breakdown_daily"] = time.perf_counter() - t
    # The tail's online rows, with their last event and page entry moved on by the time the
    # back-fills above took since the tail was timed (t1): on a live site the aggregator keeps
    # writing them, and here those back-fills took 2 to 4 minutes, a slow host's over 5, after
    # which no tail visitor was online any more and the check stopped the run. The sessions keep
    # their times; the online views read these two columns for who is online and stuck.
    late = int((clock() - t1) / timedelta(milliseconds=1))
    step(
        "online_visitors",
        """
        INSERT INTO online_visitors (project_id, anonymous_id, session_id, user_id, start_at, last_event_at,
            current_url, current_path, current_title, page_entered_at, page_views, events, device_type,
            browser, os, version)
        SELECT project_id, anonymous_id, session_id, user_id, start_at,
            addMilliseconds(last_event_at, {late:Int64}), current_url, current_path, current_title,
            addMilliseconds(page_entered_at, {late:Int64}), page_views, events, device_type, browser, os, version
        FROM sessions FINAL
        WHERE project_id = {project:String} AND anonymous_id IN {anons:Array(String)}
          AND last_event_at >= {now:DateTime64(3, 'UTC')} - INTERVAL 1 HOUR
        ORDER BY start_at DESC LIMIT 1 BY anonymous_id
        """,
        project=p,
        anons=scope_anons,
        late=late,
        now=clock(),
    )
    # persons_recent: a row per persons row, every version (as if no tombstone had been written,
    # the worst case for the users pages, which must skip the stale ones).
    step(
        "persons_recent",
        """
        INSERT INTO persons_recent (project_id, last_seen, person_id, first_seen, sessions, page_views, plan,
            is_deleted, version)
        SELECT project_id, last_seen, person_id, first_seen, sessions, page_views, plan, 0, version
        FROM persons WHERE project_id = {project:String} AND is_deleted = 0
        """,
        project=p,
    )
    # The read models the aggregator keeps beside them (migration 0006), from the final state.
    for k in range(1, len(FUNNEL_STEPS) + 1):
        step(
            "funnel_levels",
            """
            INSERT INTO funnel_levels (project_id, funnel_id, level, last_day, person_id, is_deleted, version)
            SELECT project_id, funnel_id, {k:UInt8}, max(day), person_id, 0, {version:UInt64}
            FROM funnel_progress FINAL
            WHERE project_id = {project:String} AND funnel_id = {funnel:String} AND is_deleted = 0
              AND level >= {k:UInt8}
            GROUP BY project_id, funnel_id, person_id
            """,
            project=p,
            funnel=funnel_id,
            version=v2,
            k=k,
        )
    step(
        "funnel_counts",
        """
        INSERT INTO funnel_counts (project_id, funnel_id, level, day, persons, version)
        SELECT project_id, funnel_id, level, last_day, count(), {version:UInt64}
        FROM funnel_levels FINAL WHERE project_id = {project:String} AND is_deleted = 0
        GROUP BY project_id, funnel_id, level, last_day
        """,
        project=p,
        version=v2,
    )
    # Each person's levels under its values (funnel_levels_by), which the aggregator keeps with
    # them: migration 0037's back-fill, from funnel_levels and person_first_by.
    for statement in _migration("0037_funnel_levels_by.sql").statements():
        step("funnel_levels_by (0037)", statement)
    t = time.perf_counter()
    churn_days = {
        r[0]
        for r in client.query(
            "SELECT DISTINCT day FROM person_activity WHERE project_id = {p:String}", parameters={"p": p}
        ).result_rows
    } | {clock().date()}
    refresh_churn(client, p, churn_days, v2)
    steps["churn_daily"] = time.perf_counter() - t
    # online_history around a week ago: the visitors whose sessions span each minute (the
    # aggregator records the live count; sessions are what a generated past can offer).
    week_ago = (clock() - timedelta(days=7)).replace(second=0, microsecond=0)
    for minute in range(-10, 11):
        at = week_ago + timedelta(minutes=minute)
        step(
            "online_history",
            """
            INSERT INTO online_history (project_id, minute, online, version)
            SELECT {project:String}, {at:DateTime('UTC')}, uniqExact(anonymous_id), {version:UInt64}
            FROM sessions WHERE project_id = {project:String}
              AND start_at <= {at:DateTime64(3, 'UTC')}
              AND last_event_at >= {at:DateTime64(3, 'UTC')} - INTERVAL 5 MINUTE
            """,
            project=p,
            at=at,
            version=v2,
        )
        # and under each rolled filter value (online_history_by, migration 0040): the visitors
        # of those sessions with a page view (breakdown_sessions), by their session's values
        step(
            "online_history_by",
            f"""
            INSERT INTO online_history_by (project_id, filter, filter_value, minute, online, version)
            SELECT {{project:String}}, pair.1, pair.2, {{at:DateTime('UTC')}}, uniqExact(anonymous_id),
                   {{version:UInt64}}
            FROM breakdown_sessions FINAL
            ARRAY JOIN [{filter_pairs()}] AS pair
            WHERE project_id = {{project:String}} AND is_deleted = 0
              AND day BETWEEN toDate({{at:DateTime('UTC')}}) - 1 AND toDate({{at:DateTime('UTC')}})
              AND start_at <= {{at:DateTime64(3, 'UTC')}}
              AND addMilliseconds(start_at, duration_ms) >= {{at:DateTime64(3, 'UTC')}} - INTERVAL 5 MINUTE
            GROUP BY pair
            """,
            project=p,
            at=at,
            version=v2,
        )
    last_event = client.query(
        "SELECT max(timestamp) FROM events WHERE project_id = {p:String} AND kafka_offset >= {lo:UInt64}",
        parameters={"p": p, "lo": history},
    ).first_row[0]
    client.insert(
        "aggregator_status",
        [["bench-0", settings.topic_events, clock(), last_event, 0, next_version()]],
        column_names=["worker", "topic", "last_write_at", "last_event_at", "lag", "version"],
    )
    client.command("DROP TABLE IF EXISTS bench_plan")
    client.command("DROP TABLE IF EXISTS bench_funnel_events")
    settle_merges(client)
    return Generated(
        project_id=p,
        read_key=project.read_key,
        funnel_id=funnel_id,
        events=events,
        persons=persons,
        tail_sessions=tail,
        t1=t1,
        seconds=time.perf_counter() - started,
        steps=steps,
        clock=clock,
    )


#: online_visitors' rows online at {now} (an event in the last 5 minutes), and those stuck (on
#: one page for over 5 minutes): check() and describe() count both.
ONLINE = "last_event_at >= {now:DateTime64(3, 'UTC')} - INTERVAL 5 MINUTE"
STUCK = f"{ONLINE} AND page_entered_at < {{now:DateTime64(3, 'UTC')}} - INTERVAL 5 MINUTE"


def check(client: Client, g: Generated, *, sample: int = 300) -> list[str]:
    """Consistency of the generated tables with each other and with the events; returns problems."""
    problems: list[str] = []
    now = g.clock()
    params = {"p": g.project_id, "f": g.funnel_id, "now": now, "today": now.date()}

    def one(sql: str) -> Any:
        return client.query(sql, parameters=params).first_row

    def expect(name: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{name}: {got} != {want}")

    n_events, n_ids, pages, non_hb = one(
        "SELECT count(), uniqExact(event_id), countIf(type = 'page'), countIf(event != '$heartbeat') "
        "FROM events WHERE project_id = {p:String}"
    )
    expect("events", n_events, g.events)
    expect("distinct event ids", n_ids, g.events)
    n_sessions, s_pages, s_events, s_ids = one(
        "SELECT count(), sum(page_views), sum(events), uniqExact(session_id) FROM sessions FINAL "
        "WHERE project_id = {p:String} AND is_deleted = 0"
    )
    expect(
        "sessions = distinct session ids of events",
        n_sessions,
        one("SELECT uniqExact(session_id) FROM events WHERE project_id = {p:String}")[0],
    )
    expect("session ids unique", s_ids, n_sessions)
    expect("sum of sessions.page_views", s_pages, pages)
    expect("sum of sessions.events", s_events, non_hb)
    # The aggregator's definition: a new session after 30 minutes without events.
    expect(
        "visitor's sessions 30 min apart",
        one(
            "SELECT countIf(start_at < prev + INTERVAL 30 MINUTE) FROM (SELECT start_at, "
            "lagInFrame(last_event_at, 1, toDateTime64('1970-01-01', 3, 'UTC')) OVER (PARTITION BY anonymous_id "
            "ORDER BY start_at ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS prev FROM sessions FINAL "
            "WHERE project_id = {p:String})"
        )[0],
        0,
    )
    # The breakdown tables: every session with a page view once, every page view once.
    b_sessions, b_pages, b_duration, b_starts = one(
        "SELECT count(), sum(page_views), sum(duration_ms), sum(toUnixTimestamp64Milli(start_at)) "
        "FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0"
    )
    expect(
        "breakdown_sessions rows",
        b_sessions,
        one(
            "SELECT countIf(page_views > 0) FROM sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0"
        )[0],
    )
    expect("breakdown_sessions.page_views sum", b_pages, pages)
    expect(
        "breakdown_sessions.duration_ms sum",
        b_duration,
        one(
            "SELECT sumIf(dateDiff('millisecond', start_at, last_event_at), page_views > 0) FROM sessions FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0"
        )[0],
    )
    expect(
        "breakdown_sessions.start_at sum",
        b_starts,
        one(
            "SELECT sumIf(toUnixTimestamp64Milli(start_at), page_views > 0) FROM sessions FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0"
        )[0],
    )
    expect(
        "visitor_persons (each live person's visitors)",
        one(
            "SELECT count(), sum(cityHash64(visitor, person_id, first_seen, last_seen, plan)) "
            "FROM visitor_persons FINAL WHERE project_id = {p:String} AND is_deleted = 0"
        ),
        one(
            "SELECT count(), sum(cityHash64(visitor, person_id, first_seen, last_seen, plan)) FROM persons FINAL "
            "ARRAY JOIN anonymous_ids AS visitor WHERE project_id = {p:String} AND is_deleted = 0"
        ),
    )
    expect(
        "persons_first_day (each live person's first day)",
        one(
            "SELECT count(), sum(cityHash64(person_id, day)) FROM persons_first_day FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0"
        ),
        one(
            "SELECT count(), sum(cityHash64(person_id, toDate(first_seen))) FROM persons FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0"
        ),
    )
    # person_activity_by (migration 0031): each live session's day and entry attributes under its
    # visitor's person (persons' anonymous_ids here, not visitor_persons, which it is copied from)
    pairs = filter_pairs("s.")
    expect(
        "person_activity_by (each person's days per filter value)",
        one(
            "SELECT count(), sum(cityHash64(day, filter, filter_value, person_id)) FROM person_activity_by "
            "FINAL WHERE project_id = {p:String} AND is_deleted = 0"
        ),
        one(
            "SELECT count(), sum(cityHash64(day, f.1, f.2, who)) FROM (SELECT DISTINCT s.day AS day, "
            f"arrayJoin([{pairs}]) AS f, if(m.visitor = '', s.anonymous_id, m.person_id) AS who "
            "FROM (SELECT * FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0) AS s "
            "LEFT JOIN (SELECT visitor, person_id FROM persons FINAL ARRAY JOIN anonymous_ids AS visitor "
            "WHERE project_id = {p:String} AND is_deleted = 0) AS m ON m.visitor = s.anonymous_id)"
        ),
    )
    # its copy sorted by person, filled by a view on every insert: the same stored rows, each once
    stored = (
        "SELECT count(), sum(cityHash64(day, filter, filter_value, person_id, version, is_deleted)) FROM {t}"
    )
    expect(
        "person_activity_by_person (person_activity_by's copy, row for row)",
        one(stored.format(t="person_activity_by_person")),
        one(stored.format(t="person_activity_by")),
    )
    # person_first_by (migration 0033): person_activity_by's days folded per person and value,
    # and per person under its plan (its country rows: every session has one)
    expect(
        "person_first_by (each person's first and last day per filter value)",
        one(
            "SELECT count(), sum(cityHash64(filter, filter_value, person_id, first_day, last_day)) "
            "FROM person_first_by FINAL WHERE project_id = {p:String} AND is_deleted = 0 AND filter != 'plan'"
        ),
        one(
            "SELECT count(), sum(cityHash64(filter, filter_value, person_id, f, l)) FROM ("
            "SELECT filter, filter_value, person_id, min(day) AS f, max(day) AS l FROM person_activity_by FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0 GROUP BY filter, filter_value, person_id)"
        ),
    )
    # plan_sessions (migration 0034): each live session under its visitor's person's plan, with
    # the person and its first_seen (persons' anonymous_ids here, not visitor_persons)
    expect(
        "plan_sessions (each session under its person's plan)",
        one(
            "SELECT count(), sum(cityHash64(plan, day, anonymous_id, session_id, person_id, first_seen, "
            "country, page_views)) FROM plan_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0"
        ),
        one(
            "SELECT count(), sum(cityHash64(m.plan, s.day, s.anonymous_id, s.session_id, m.person_id, "
            "m.first_seen, s.country, s.page_views)) "
            "FROM (SELECT * FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0) AS s "
            "INNER JOIN (SELECT visitor, person_id, first_seen, plan FROM persons FINAL ARRAY JOIN anonymous_ids "
            "AS visitor WHERE project_id = {p:String} AND is_deleted = 0) AS m ON m.visitor = s.anonymous_id"
        ),
    )
    # breakdown_pages' entry attributes (migration 0041): each live page row's are its session's
    attributes = ", ".join(ENTRY_ATTRIBUTES)
    of_s = ", ".join(f"s.{a}" for a in ENTRY_ATTRIBUTES)  # as columns of the table aliased s
    expect(
        "breakdown_pages' entry attributes (its session's)",
        one(
            f"SELECT count(), sum(cityHash64(session_id, path, {attributes})) FROM breakdown_pages FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0"
        ),
        one(
            f"SELECT count(), sum(cityHash64(g.session_id, g.path, {of_s})) "
            "FROM (SELECT * FROM breakdown_pages FINAL WHERE project_id = {p:String} AND is_deleted = 0) AS g "
            "INNER JOIN (SELECT * FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0) "
            "AS s ON s.day = g.day AND s.anonymous_id = g.anonymous_id AND s.session_id = g.session_id"
        ),
    )
    # plan_pages (migration 0036): each live page row under its visitor's person's plan, with its
    # entry attributes (0041)
    expect(
        "plan_pages (each page row under its person's plan)",
        one(
            "SELECT count(), sum(cityHash64(plan, day, anonymous_id, session_id, path, views, time_ms, "
            f"{attributes})) FROM plan_pages FINAL WHERE project_id = {{p:String}} AND is_deleted = 0"
        ),
        one(
            "SELECT count(), sum(cityHash64(m.plan, s.day, s.anonymous_id, s.session_id, s.path, s.views, "
            f"s.time_ms, {of_s})) FROM (SELECT * FROM breakdown_pages FINAL WHERE project_id = {{p:String}} "
            "AND is_deleted = 0) AS s INNER JOIN (SELECT visitor, plan FROM persons FINAL ARRAY JOIN "
            "anonymous_ids AS visitor WHERE project_id = {p:String} AND is_deleted = 0) AS m "
            "ON m.visitor = s.anonymous_id"
        ),
    )
    expect(
        "person_first_by (each person's first and last day under its plan)",
        one(
            "SELECT count(), sum(cityHash64(filter_value, person_id, first_day, last_day)) "
            "FROM person_first_by FINAL WHERE project_id = {p:String} AND is_deleted = 0 AND filter = 'plan'"
        ),
        one(
            "SELECT count(), sum(cityHash64(m.plan, a.person_id, a.f, a.l)) FROM ("
            "SELECT person_id, min(day) AS f, max(day) AS l FROM person_activity_by FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0 AND filter = 'country' GROUP BY person_id) AS a "
            "INNER JOIN (SELECT person_id, plan FROM persons FINAL WHERE project_id = {p:String} "
            "AND is_deleted = 0) AS m ON m.person_id = a.person_id"
        ),
    )
    # funnel_levels_by (migration 0037): each live level under each value of its person, with the
    # person's plan
    expect(
        "funnel_levels_by (each level under each value of its person)",
        one(
            "SELECT count(), sum(cityHash64(filter, filter_value, level, person_id, last_day, plan)) "
            "FROM funnel_levels_by FINAL WHERE project_id = {p:String} AND is_deleted = 0"
        ),
        one(
            "SELECT count(), sum(cityHash64(v.filter, v.filter_value, l.level, l.person_id, "
            "least(l.last_day, v.last_day), m.plan)) FROM (SELECT * FROM person_first_by FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0) AS v INNER JOIN (SELECT * FROM funnel_levels FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0) AS l ON l.person_id = v.person_id "
            "INNER JOIN (SELECT person_id, plan FROM persons FINAL WHERE project_id = {p:String} "
            "AND is_deleted = 0) AS m ON m.person_id = v.person_id"
        ),
    )
    # activity_daily_by (migration 0029): each filter's values partition the settled days'
    # sessions, and one country's days are the figures computed from the tables (the API's
    # live part, werkstroom.breakdowns.activity_figures_sql).
    settled = "FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0 AND day < {today:Date}"
    sums = one(f"SELECT count(), sum(page_views), sum(duration_ms) {settled}")
    by_filter = client.query(
        "SELECT filter, sum(sessions), sum(page_views), sum(duration_ms) FROM activity_daily_by FINAL "
        "WHERE project_id = {p:String} AND filter != '' AND is_deleted = 0 GROUP BY filter ORDER BY filter",
        parameters=params,
    ).result_rows
    expect("activity_daily_by filters", [r[0] for r in by_filter], sorted(ROLLED_FILTERS))
    for name, *figures in by_filter:
        expect(f"activity_daily_by {name} sums", tuple(figures), tuple(sums))
    live = activity_figures_sql(
        Joined(
            with_persons(f"SELECT day, anonymous_id, page_views, duration_ms {settled} AND country = 'NL'")
        )
    )
    expect(
        "activity_daily_by country NL",
        client.query(
            f"SELECT day, {', '.join(ACTIVITY_FIGURES)} FROM activity_daily_by FINAL WHERE project_id = {{p:String}} "
            "AND filter = 'country' AND filter_value = 'NL' AND is_deleted = 0 ORDER BY day",
            parameters=params,
        ).result_rows,
        client.query(f"{live} ORDER BY day", parameters={**params, "tz": timezones.DEFAULT}).result_rows,
    )
    # breakdown_daily_by's rows under each plan (filter 'plan'): the settled days' sessions and
    # page views per plan, as plan_sessions and plan_pages hold them.
    for dimension, table, figures in (
        ("sources", "plan_sessions", "count(), sum(page_views)"),
        ("pages", "plan_pages", "count(), sum(views)"),
    ):
        expect(
            f"breakdown_daily_by {dimension} under each plan",
            client.query(
                "SELECT filter_value, sum(sessions), sum(page_views) FROM breakdown_daily_by FINAL "
                "WHERE project_id = {p:String} AND filter = 'plan' AND dimension = {d:String} "
                "AND is_deleted = 0 GROUP BY filter_value ORDER BY filter_value",
                parameters={**params, "d": dimension},
            ).result_rows,
            client.query(
                f"SELECT plan, {figures} FROM {table} FINAL WHERE project_id = {{p:String}} "
                "AND day < {today:Date} AND is_deleted = 0 GROUP BY plan ORDER BY plan",
                parameters=params,
            ).result_rows,
        )
    expect(
        "sessions_daily rows",
        one("SELECT count() FROM sessions_daily FINAL WHERE project_id = {p:String} AND is_deleted = 0")[0],
        one("SELECT count() FROM sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0")[0],
    )
    expect(
        "breakdown_pages.views sum",
        one("SELECT sum(views) FROM breakdown_pages FINAL WHERE project_id = {p:String} AND is_deleted = 0")[
            0
        ],
        pages,
    )
    expect(
        "sessions by source (breakdown_sessions against the entry page views of events)",
        one(
            "SELECT count() FROM (SELECT source, count() AS n FROM breakdown_sessions FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0 GROUP BY source) AS b FULL JOIN ("
            "SELECT source, count() AS n FROM (SELECT session_id, argMin(source, (timestamp, event_id)) "
            "AS source FROM events WHERE project_id = {p:String} AND type = 'page' GROUP BY session_id) "
            "GROUP BY source) AS e USING (source) WHERE b.n != e.n"
        )[0],
        0,
    )
    n_persons, p_sessions, p_pages, deleted = one(
        "SELECT countIf(is_deleted = 0), sumIf(sessions, is_deleted = 0), sumIf(page_views, is_deleted = 0), "
        "countIf(is_deleted = 1) FROM persons FINAL WHERE project_id = {p:String}"
    )
    expect("persons", n_persons, g.persons)
    expect("persons.sessions sum", p_sessions, n_sessions)
    expect("persons.page_views sum", p_pages, pages)
    expect("deleted persons", deleted, 0)
    expect(
        "persons with person_activity",
        one(
            "SELECT uniqExact(person_id) FROM person_activity FINAL WHERE project_id = {p:String} AND is_deleted = 0"
        )[0],
        g.persons,
    )
    mapped, identified = one(
        "SELECT (SELECT count() FROM person_distinct_ids FINAL WHERE project_id = {p:String}), "
        "(SELECT countIf(startsWith(person_id, 'user-')) FROM persons FINAL WHERE project_id = {p:String})"
    )
    if not identified or mapped < identified:
        problems.append(f"identities: {mapped} mappings for {identified} identified persons")
    d_sessions, d_new, d_pages, d_events, d_days = one(
        "SELECT sum(sessions), sum(new_users), sum(page_views), sum(events), count() FROM daily_stats FINAL "
        "WHERE project_id = {p:String}"
    )
    expect("daily_stats.sessions sum", d_sessions, n_sessions)
    expect("daily_stats.new_users sum", d_new, g.persons)
    expect("daily_stats.page_views sum", d_pages, pages)
    expect("daily_stats.events sum", d_events, non_hb)
    if not 60 <= d_days <= 62:
        problems.append(f"daily_stats: {d_days} days")
    expect(
        "visitor_events",
        one("SELECT count() FROM visitor_events FINAL WHERE project_id = {p:String}")[0],
        non_hb,
    )
    online, stuck, rows = one(
        f"SELECT countIf({ONLINE}), countIf({STUCK}), count() FROM online_visitors FINAL "
        "WHERE project_id = {p:String}"
    )
    expect("online_visitors rows = tail sessions", rows, g.tail_sessions)
    if not online or not stuck:
        problems.append(f"online now {online}, stuck {stuck}: expected some of each")
    expect("aggregator_status rows", one("SELECT count() FROM aggregator_status FINAL")[0], 1)

    # The funnel against werkstroom.funnels (the shared Python definition) for a sample of persons.
    from werkstroom import funnels

    steps = [funnels.Step(s["event"], s["path"]) for s in FUNNEL_STEPS]
    sampled = client.query(
        "SELECT person_id, anonymous_ids FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
        "ORDER BY cityHash64(person_id) LIMIT {n:UInt32}",
        parameters={"p": g.project_id, "n": sample},
    ).result_rows
    owner = {d: person for person, ids in sampled for d in ids}
    events: dict[str, list[tuple[int, str, str]]] = {person: [] for person, _ in sampled}
    for distinct_id, ms, name, path in client.query(
        "SELECT distinct_id, toUnixTimestamp64Milli(timestamp), event, path FROM visitor_events FINAL "
        "WHERE project_id = {p:String} AND distinct_id IN {ids:Array(String)}",
        parameters={"p": g.project_id, "ids": sorted(owner)},
    ).result_rows:
        events[owner[distinct_id]].append((int(ms), name, path))
    want = {
        (person, day): level
        for person, evs in events.items()
        for day, level in funnels.progress(steps, FUNNEL_WINDOW * 1000, evs).items()
    }
    got = {
        (person, day): level
        for person, day, level in client.query(
            "SELECT person_id, day, level FROM funnel_progress FINAL WHERE project_id = {p:String} "
            "AND funnel_id = {f:String} AND is_deleted = 0 AND person_id IN {ids:Array(String)}",
            parameters={"p": g.project_id, "f": g.funnel_id, "ids": [s[0] for s in sampled]},
        ).result_rows
    }
    if got != want:
        wrong = sorted(set(got.items()) ^ set(want.items()))[:5]
        problems.append(
            f"funnel_progress differs from werkstroom.funnels.progress for sampled persons: {wrong}"
        )
    if not any(want.values()):
        problems.append("funnel: no sampled person reached any step")
    return problems


def describe(client: Client, g: Generated) -> str:
    """A line of facts about the generated data, for the bench's output."""
    sessions, online, stuck, identified, premium, active, progress = client.query(
        "SELECT (SELECT count() FROM sessions FINAL WHERE project_id = {p:String}), "
        f"(SELECT countIf({ONLINE}) FROM online_visitors FINAL WHERE project_id = {{p:String}}), "
        f"(SELECT countIf({STUCK}) FROM online_visitors FINAL WHERE project_id = {{p:String}}), "
        "(SELECT count() FROM person_distinct_ids FINAL WHERE project_id = {p:String}), "
        "(SELECT countIf(plan = 'premium') FROM persons FINAL WHERE project_id = {p:String}), "
        "(SELECT countIf(last_seen >= {now:DateTime64(3, 'UTC')} - INTERVAL 7 DAY) FROM persons FINAL "
        "WHERE project_id = {p:String}), "
        "(SELECT count() FROM funnel_progress FINAL WHERE project_id = {p:String})",
        parameters={"p": g.project_id, "now": g.clock()},
    ).first_row
    return (
        f"{g.events:,} events, {g.persons:,} persons, {sessions:,} sessions, {identified:,} identified "
        f"anonymous ids, {premium:,} premium, {active:,} active in 7 days, {progress:,} funnel_progress "
        f"rows, {online:,} online now ({stuck:,} stuck)"
    )


def live_day(client: Client, g: Generated) -> dict[str, Any]:
    """How far into its UTC day the data's "today" is. Today is never rolled up: the breakdowns
    read its rows live (breakdown_pages, breakdown_sessions), and the history's last day window
    ends 3 hours before generation started, so those endpoints are slower late in the day than
    just after midnight, when today holds the live tail alone (at 10M events, top pages 7 days p95
    38.9 ms at 01:55 UTC against 56.8 ms at 23:41, bench/README.md, 2026-12-05).
    `sessions_share` is today's sessions against the mean of the 28 settled days before it."""
    now = g.clock()
    today = now.date()
    today_sessions, settled = client.query(
        "SELECT countIf(day = {t:Date}), countIf(day < {t:Date}) / 28 FROM breakdown_sessions FINAL "
        "WHERE project_id = {p:String} AND is_deleted = 0 AND day >= {t:Date} - 28",
        parameters={"p": g.project_id, "t": today},
    ).first_row
    return {
        "utc_time": now.strftime("%H:%M"),
        "day_share": round((now - timezones.start_of(today, timezones.DEFAULT)) / timedelta(days=1), 3),
        "today_sessions": int(today_sessions),
        "sessions_share": round(today_sessions / settled, 3) if settled else 0.0,
    }


def open_database(work: Path) -> tuple[Settings, Client]:
    """Settings and a migrated, empty database under `work`."""
    from werkstroom.serve import prepare_clickhouse

    settings = Settings(data_dir=work, clickhouse_database="bench", demo=False)
    return settings, prepare_clickhouse(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--persons", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-apidata-"))
    try:
        _, client = open_database(work)
        g = generate(client, Settings(), events=args.events, persons=args.persons, log=print)
        print(f"generated in {g.seconds:.1f} s: {describe(client, g)}")
        t = time.perf_counter()
        problems = check(client, g)
        print(f"checked in {time.perf_counter() - t:.1f} s: " + ("OK" if not problems else "PROBLEMS"))
        for problem in problems:
            print("  " + problem)
        if problems:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
