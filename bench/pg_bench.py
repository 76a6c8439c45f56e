"""The seed's design as a baseline (issue 24): the same CRM views over the same events in
PostgreSQL, in the seed's schema, against Werkstroom's API over ClickHouse.

    make bench-pg     (or: .venv/bin/python bench/pg_bench.py --events 200000 --persons 20000)

Opt-in (not in `make bench`): it needs Debian's PostgreSQL (`make bench-pg` installs it when
root) and root, to run the server as the `postgres` user; otherwise it says why and exits 0.

1. bench/api_data.py generates the events and persons into a temporary chdb database, exactly
   as bench/api_bench.py does at the same scale (and every table Werkstroom derives from them).
2. A throwaway PostgreSQL cluster (initdb into a temp dir owned by `postgres`, a private socket
   dir, no TCP) gets the seed's tables (site_users, site_sessions, user_events,
   daily_user_stats, funnel_steps: SCHEMA below), loaded with COPY from files ClickHouse writes
   (EXPORTS below): a person's row, a session's row and an event's row each carry the person
   (the seed's snippet kept them as it went; here they come from Werkstroom's resolution of
   anonymous ids, so both sides count the same persons). Then the indexes (INDEXES, each with
   the query it serves), daily_user_stats filled by calculate_daily_stats() once per day, as
   the seed's cron did, and VACUUM ANALYZE.
3. Each CRM view is answered on both sides at one fixed instant (`now`: the minute after the
   generated live tail ends; the API app's clock is fixed to it and the SQL takes it as a
   parameter), and the answers are compared: a comparison of different answers is worthless.
   Werkstroom: the real API app (services.api.app.create_app) over HTTP on loopback, one
   keep-alive connection, as api_bench.py serves and times it. PostgreSQL: psycopg 3 over the
   Unix socket, one connection, the SQL in this file (one statement per view, two for the
   funnel: its definition, then the report). No HTTP on the PostgreSQL side, so its figures
   are a floor for the seed's API: the ratios favour PostgreSQL.
4. Per view, interleaved (PostgreSQL, then Werkstroom): 3 warm-up requests, then --requests
   timed one after another (PostgreSQL stops early at --pg-budget seconds a view, after at
   least 5). Printed: both p95s, the ratio PostgreSQL / Werkstroom, the target (>= 20x) met or
   not, whether the answers are the same. Saved as JSON under bench/results/.

Where the seed's definitions differ from Werkstroom's (docs/definitions.md), both sides use
Werkstroom's: churn (persons active 7-13 days ago with no active day in the last 7, UTC days),
the funnel (ClickHouse's windowFunnel within 24 h, per person, attempts started in the last 30
days), daily active users (persons with an event that day), segments (active < 7 days, inactive
7-30, churned > 30, premium/trial by plan). Werkstroom serves no per-segment counts: the
segment views are the first users page of each segment on both sides, and the counts are
compared once, untimed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from api_bench import Figure, QueryLog, measure, save_results, start_api, stop_api  # noqa: E402
from api_data import FUNNEL_STEPS, FUNNEL_WINDOW, Generated, describe, generate  # noqa: E402
from clickhouse_connect.driver.client import Client  # noqa: E402

from services.api.app import create_app  # noqa: E402
from werkstroom.clickhouse import connect  # noqa: E402
from werkstroom.embedded import free_port  # noqa: E402
from werkstroom.funnels import like_pattern  # noqa: E402
from werkstroom.logging import configure_logging  # noqa: E402
from werkstroom.serve import prepare_clickhouse  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402

TARGET_RATIO = 20.0
SEGMENTS = ("active", "inactive", "premium", "trial", "churned")
PAGE = 50  # the users page's default size (services/api/routes/users.py)
SESSIONS_PAGE = 20  # a person's sessions, the route's default
ONLINE_LIST = 100  # the online list's default

# -- the seed's schema -----------------------------------------------------------------------
# site_users: one row per person (the seed's snippet upserted it on every event: first_seen,
# last_seen, totals); site_sessions: one per session (current page and when it was entered,
# kept by the snippet's page views and 30 s heartbeats); user_events: one per event;
# daily_user_stats: calculate_daily_stats()'s output; funnel_steps: the funnel's definition.
# Ids are C-collated text, so ORDER BY id sorts bytewise as ClickHouse does.

SCHEMA = """
CREATE TABLE site_users (
    id text COLLATE "C" NOT NULL,
    project_id text NOT NULL,
    anonymous_ids text[] NOT NULL,
    email text,
    name text,
    plan text,
    traits jsonb NOT NULL DEFAULT '{}',
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    total_sessions integer NOT NULL,
    total_page_views integer NOT NULL,
    PRIMARY KEY (project_id, id)
);
CREATE TABLE site_sessions (
    id text COLLATE "C" PRIMARY KEY,
    project_id text NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    anonymous_id text COLLATE "C" NOT NULL,
    started_at timestamptz NOT NULL,
    last_activity timestamptz NOT NULL,
    current_page text NOT NULL,
    current_url text NOT NULL,
    current_title text NOT NULL,
    page_entered_at timestamptz NOT NULL,
    entry_page text NOT NULL,
    referrer text NOT NULL,
    page_views integer NOT NULL,
    events_count integer NOT NULL,
    device text NOT NULL,
    browser text NOT NULL,
    os text NOT NULL,
    is_active boolean NOT NULL
);
CREATE TABLE user_events (
    id text COLLATE "C" PRIMARY KEY,  -- the event id (the tracker's message id)
    project_id text NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    anonymous_id text COLLATE "C" NOT NULL,
    session_id text COLLATE "C" NOT NULL,
    event_type text NOT NULL,
    event_name text NOT NULL,
    page_url text NOT NULL,
    page_path text COLLATE "C" NOT NULL,
    page_title text NOT NULL,
    referrer text NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);
CREATE TABLE daily_user_stats (
    project_id text NOT NULL,
    date date NOT NULL,
    active_users integer NOT NULL,
    new_users integer NOT NULL,
    sessions integer NOT NULL,
    page_views integer NOT NULL,
    events integer NOT NULL,
    bounce_rate double precision,
    avg_session_seconds double precision,
    PRIMARY KEY (project_id, date)
);
CREATE TABLE funnel_steps (
    project_id text NOT NULL,
    funnel_id text NOT NULL,
    funnel_name text NOT NULL,
    step_order integer NOT NULL,
    event_name text NOT NULL,
    path_pattern text NOT NULL,  -- a LIKE pattern, '' for any path
    window_seconds integer NOT NULL,  -- not in the seed (no window there): Werkstroom's 24 h
    PRIMARY KEY (project_id, funnel_id, step_order)
);
"""

# The seed's calculate_daily_stats(project, date), with Werkstroom's definitions: active users
# are persons with an event that day, new users persons first seen that day, sessions those
# started that day, events all but heartbeats. Run per day (the seed ran it from a cron).
DAILY_STATS_FUNCTION = """
CREATE FUNCTION calculate_daily_stats(p_project text, p_date date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := p_date::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (p_date + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    INSERT INTO daily_user_stats AS d (project_id, date, active_users, new_users, sessions,
        page_views, events, bounce_rate, avg_session_seconds)
    SELECT p_project, p_date, e.active_users, u.new_users, s.sessions, e.page_views, e.events,
           s.bounce_rate, s.avg_session_seconds
    FROM (SELECT count(DISTINCT user_id) AS active_users,
                 count(*) FILTER (WHERE event_type = 'page') AS page_views,
                 count(*) FILTER (WHERE event_name <> '$heartbeat') AS events
          FROM user_events WHERE project_id = p_project AND created_at >= lo AND created_at < hi) e,
         (SELECT count(*) AS new_users FROM site_users
          WHERE project_id = p_project AND first_seen >= lo AND first_seen < hi) u,
         (SELECT count(*) AS sessions,
                 avg((page_views = 1)::int) AS bounce_rate,
                 avg(extract(epoch FROM last_activity - started_at)) AS avg_session_seconds
          FROM site_sessions WHERE project_id = p_project AND started_at >= lo AND started_at < hi) s
    ON CONFLICT (project_id, date) DO UPDATE SET
        active_users = EXCLUDED.active_users, new_users = EXCLUDED.new_users,
        sessions = EXCLUDED.sessions, page_views = EXCLUDED.page_views, events = EXCLUDED.events,
        bounce_rate = EXCLUDED.bounce_rate, avg_session_seconds = EXCLUDED.avg_session_seconds;
END $$;
"""

# A competent engineer's indexes, each with the query it serves.
INDEXES = [
    # calculate_daily_stats: a day's events
    "CREATE INDEX user_events_project_time ON user_events (project_id, created_at)",
    # a user's events (the seed's profile and timeline)
    "CREATE INDEX user_events_user_time ON user_events (user_id, created_at)",
    # a session's pages (session history) and its newest event (the live table's last event)
    "CREATE INDEX user_events_session_time ON user_events (session_id, created_at)",
    # the funnel: each step's events of the last N days, by name (and path for page steps),
    # with the person, so the steps are read from the index alone
    "CREATE INDEX user_events_funnel ON user_events (project_id, event_name, page_path, created_at) "
    "INCLUDE (user_id)",
    # online now and the live table; churn's and "online a week ago"'s session windows, from the
    # index alone
    "CREATE INDEX site_sessions_project_activity ON site_sessions (project_id, last_activity) "
    "INCLUDE (started_at, user_id, anonymous_id)",
    # calculate_daily_stats: sessions started on a day
    "CREATE INDEX site_sessions_project_started ON site_sessions (project_id, started_at)",
    # a user's session history, newest first
    "CREATE INDEX site_sessions_user_started ON site_sessions (user_id, started_at DESC, id DESC)",
    # the users list and the activity segments (active/inactive/churned), newest first
    "CREATE INDEX site_users_project_last_seen ON site_users (project_id, last_seen DESC, id)",
    # the plan segments (premium, trial), newest first
    "CREATE INDEX site_users_project_plan ON site_users (project_id, plan, last_seen DESC, id)",
    # new users of a day (calculate_daily_stats)
    "CREATE INDEX site_users_project_first_seen ON site_users (project_id, first_seen)",
]

# -- export from ClickHouse: (table, its columns, the SELECT that gives them) ----------------------
# Each person's anonymous ids, the resolution Werkstroom keeps (persons.anonymous_ids).
_OWNER = (
    "(SELECT arrayJoin(anonymous_ids) AS anonymous_id, person_id FROM persons FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0)"
)
EXPORTS: list[tuple[str, list[str], str]] = [
    (
        "site_users",
        "id project_id anonymous_ids email name plan traits first_seen last_seen total_sessions "
        "total_page_views".split(),
        "SELECT person_id, project_id, concat('{', arrayStringConcat(anonymous_ids, ','), '}'), "
        "nullIf(JSONExtractString(traits, 'email'), ''), nullIf(JSONExtractString(traits, 'name'), ''), "
        "nullIf(plan, ''), traits, first_seen, last_seen, sessions, page_views "
        "FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0",
    ),
    (
        "site_sessions",
        "id project_id user_id anonymous_id started_at last_activity current_page current_url "
        "current_title page_entered_at entry_page referrer page_views events_count device browser os "
        "is_active".split(),
        "SELECT s.session_id, s.project_id, o.person_id, s.anonymous_id, s.start_at, s.last_event_at, "
        "s.current_path, s.current_url, s.current_title, s.page_entered_at, s.entry_path, s.referrer, "
        "s.page_views, s.events, s.device_type, s.browser, s.os, "
        "toUInt8(s.last_event_at >= {now:DateTime64(3, 'UTC')} - INTERVAL 30 MINUTE) "
        f"FROM sessions AS s FINAL INNER JOIN {_OWNER} AS o ON o.anonymous_id = s.anonymous_id "
        "WHERE s.project_id = {p:String} AND s.is_deleted = 0",
    ),
    (
        "user_events",
        "id project_id user_id anonymous_id session_id event_type event_name page_url page_path "
        "page_title referrer properties created_at".split(),
        "SELECT e.event_id, e.project_id, o.person_id, e.anonymous_id, e.session_id, e.type, e.event, "
        "e.url, e.path, e.title, e.referrer, e.properties, e.timestamp "
        f"FROM events AS e INNER JOIN {_OWNER} AS o ON o.anonymous_id = e.anonymous_id "
        "WHERE e.project_id = {p:String}",
    ),
]

# -- the views in PostgreSQL -----------------------------------------------------------------------
# Parameters: p (project), now, and per view the rest; `now` is the answer's instant.

ONLINE_SQL = """
WITH online AS (  -- each visitor's newest session with an event in the last 5 minutes
    SELECT DISTINCT ON (anonymous_id) id, anonymous_id, user_id, current_page, page_entered_at,
           started_at, last_activity
    FROM site_sessions
    WHERE project_id = %(p)s AND last_activity >= %(now)s - interval '5 minutes'
    ORDER BY anonymous_id, last_activity DESC
), listed AS (
    SELECT *, count(*) OVER () AS online FROM online
    ORDER BY last_activity DESC, anonymous_id LIMIT %(n)s
)
SELECT l.online, l.anonymous_id, l.user_id, l.current_page, l.page_entered_at, l.started_at,
       l.last_activity, last.event_name
FROM listed AS l
LEFT JOIN LATERAL (  -- what they did last, heartbeats aside
    SELECT event_name FROM user_events AS e
    WHERE e.session_id = l.id AND e.event_name <> '$heartbeat'
    ORDER BY e.created_at DESC LIMIT 1
) AS last ON true
ORDER BY l.last_activity DESC, l.anonymous_id
"""

# One statement for the four cards: totals and new users from daily_user_stats (as the seed's
# cards did), online now and a week ago from the sessions, churn from the sessions' active days
# for today and the same day a week ago.
METRICS_SQL = """
WITH days AS (
    SELECT coalesce(sum(new_users) FILTER (WHERE date <= %(t)s), 0) AS total,
           coalesce(sum(new_users) FILTER (WHERE date <= %(t)s - 7), 0) AS total_before,
           coalesce(sum(new_users) FILTER (WHERE date > %(t)s - 7 AND date <= %(t)s), 0) AS new,
           coalesce(sum(new_users) FILTER (WHERE date > %(t)s - 14 AND date <= %(t)s - 7), 0) AS new_before
    FROM daily_user_stats WHERE project_id = %(p)s
), online AS (
    SELECT count(DISTINCT anonymous_id) AS now FROM site_sessions
    WHERE project_id = %(p)s AND last_activity >= %(now)s - interval '5 minutes'
), online_before AS (
    SELECT count(DISTINCT anonymous_id) AS before FROM site_sessions
    WHERE project_id = %(p)s AND last_activity >= %(now)s - interval '7 days 5 minutes'
      AND started_at <= %(now)s - interval '7 days'
), active AS (  -- each person's active days (the days their sessions span) in both windows
    SELECT DISTINCT s.user_id, d::date AS day
    FROM site_sessions AS s,
         generate_series(s.started_at::date, s.last_activity::date, interval '1 day') AS d
    WHERE s.project_id = %(p)s AND s.last_activity >= (%(t)s - 20)::timestamp AT TIME ZONE 'UTC'
      AND s.started_at < (%(t)s + 1)::timestamp AT TIME ZONE 'UTC'
), churn AS (
    SELECT c.day, count(*) FILTER (WHERE c.base) AS base,
           count(*) FILTER (WHERE c.base AND NOT c.recent) AS churned
    FROM (SELECT w.day, a.user_id,
                 bool_or(a.day BETWEEN w.day - 13 AND w.day - 7) AS base,
                 bool_or(a.day BETWEEN w.day - 6 AND w.day) AS recent
          FROM active AS a JOIN (VALUES (%(t)s::date), (%(t)s::date - 7)) AS w(day)
            ON a.day BETWEEN w.day - 13 AND w.day
          GROUP BY w.day, a.user_id) AS c
    GROUP BY c.day
)
SELECT d.total, d.total_before, d.new, d.new_before, o.now, ob.before,
       coalesce((SELECT base FROM churn WHERE day = %(t)s), 0),
       coalesce((SELECT churned FROM churn WHERE day = %(t)s), 0),
       coalesce((SELECT base FROM churn WHERE day = %(t)s - 7), 0),
       coalesce((SELECT churned FROM churn WHERE day = %(t)s - 7), 0)
FROM days AS d, online AS o, online_before AS ob
"""

ACTIVITY_SQL = """
SELECT g.day::date, coalesce(s.active_users, 0), coalesce(s.new_users, 0), coalesce(s.sessions, 0),
       coalesce(s.page_views, 0), coalesce(s.events, 0)
FROM generate_series(%(since)s::date, %(t)s::date, interval '1 day') AS g(day)
LEFT JOIN daily_user_stats AS s ON s.project_id = %(p)s AND s.date = g.day::date
ORDER BY g.day
"""

FUNNEL_DEFINITION_SQL = """
SELECT step_order, event_name, path_pattern, window_seconds FROM funnel_steps
WHERE project_id = %(p)s AND funnel_id = %(f)s ORDER BY step_order
"""


def funnel_sql(steps: list[tuple[int, str, str, int]]) -> Any:
    """The funnel report as one statement, built from the definition's rows (event names and
    path patterns as literals, so each step's events come from user_events_funnel).

    Werkstroom's definition (windowFunnel, default mode): a person reaches step k when they did
    steps 1..k in order within the window from step 1's time. Over a person's step events in
    (time, step) order, the chain reaching step k-1 with the latest start is the one to extend
    (a later start leaves more of the window), and that start only grows over time; so one
    window pass per step carries it: `start` is the start of the chain a row extends (NULL if
    none), and a step-k row extends the latest start among the step-(k-1) rows before it."""
    from psycopg import sql

    window = sql.Literal(timedelta(seconds=steps[0][3]))
    parts = []
    for order, event, pattern, _ in steps:
        cond = sql.SQL("event_name = {}").format(sql.Literal(event))
        if pattern:
            cond = sql.SQL("{} AND page_path LIKE {}").format(cond, sql.Literal(pattern))
        parts.append(
            sql.SQL(
                "SELECT user_id, created_at AS ts, {k} AS step FROM user_events "
                "WHERE project_id = %(p)s AND created_at >= %(since)s AND {cond}"
            ).format(k=sql.Literal(order), cond=cond)
        )
    ctes = [
        sql.SQL("s AS ({})").format(sql.SQL(" UNION ALL ").join(parts)),
        sql.SQL("p1 AS (SELECT user_id, ts, step, CASE WHEN step = 1 THEN ts END AS start FROM s)"),
    ]
    for k in range(2, len(steps) + 1):
        ctes.append(
            sql.SQL(
                "p{k} AS (SELECT user_id, ts, step, CASE WHEN step = {k} THEN "
                "(CASE WHEN ts <= prev + {w} THEN prev END) ELSE start END AS start "
                "FROM (SELECT *, max(start) FILTER (WHERE step = {k1}) OVER (PARTITION BY user_id "
                "ORDER BY ts, step ROWS UNBOUNDED PRECEDING) AS prev FROM p{k1}) AS x)"
            ).format(k=sql.SQL(str(k)), k1=sql.SQL(str(k - 1)), w=window)
        )
    counts = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE level >= {})").format(sql.Literal(k))
        for k in range(1, len(steps) + 1)
    )
    return sql.SQL(
        "WITH {ctes}, levels AS (SELECT user_id, max(step) FILTER (WHERE start IS NOT NULL) AS level "
        "FROM p{n} GROUP BY user_id) SELECT {counts} FROM levels"
    ).format(ctes=sql.SQL(", ").join(ctes), n=sql.SQL(str(len(steps))), counts=counts)


USER_SEGMENT = """CASE WHEN last_seen >= %(now)s - interval '7 days' THEN 'active'
    WHEN last_seen >= %(now)s - interval '30 days' THEN 'inactive' ELSE 'churned' END"""
SEGMENT_WHERE = {
    "all": "",
    "active": " AND last_seen >= %(now)s - interval '7 days'",
    "inactive": " AND last_seen < %(now)s - interval '7 days' AND last_seen >= %(now)s - interval '30 days'",
    "churned": " AND last_seen < %(now)s - interval '30 days'",
    "premium": " AND plan = 'premium'",
    "trial": " AND plan = 'trial'",
}


def users_sql(segment: str) -> str:
    """A users page (the first; one row more says whether another follows)."""
    return (
        f"SELECT id, first_seen, last_seen, total_sessions, total_page_views, plan, {USER_SEGMENT} "
        f"FROM site_users WHERE project_id = %(p)s{SEGMENT_WHERE[segment]} "
        "ORDER BY last_seen DESC, id LIMIT %(n)s"
    )


SEGMENT_COUNTS_SQL = """
SELECT count(*) FILTER (WHERE last_seen >= %(now)s - interval '7 days'),
       count(*) FILTER (WHERE last_seen < %(now)s - interval '7 days' AND last_seen >= %(now)s - interval '30 days'),
       count(*) FILTER (WHERE plan = 'premium'), count(*) FILTER (WHERE plan = 'trial'),
       count(*) FILTER (WHERE last_seen < %(now)s - interval '30 days')
FROM site_users WHERE project_id = %(p)s
"""

SESSIONS_SQL = """
SELECT s.id, s.started_at, s.last_activity, s.page_views, s.events_count, s.entry_page, s.referrer,
       s.device, s.browser, s.os, coalesce(pages.paths, '{}')
FROM (SELECT * FROM site_sessions WHERE user_id = %(u)s AND project_id = %(p)s
      ORDER BY started_at DESC, id DESC LIMIT %(n)s) AS s
LEFT JOIN LATERAL (  -- the pages visited, in order (the first 100, as Werkstroom keeps)
    SELECT array_agg(page_path ORDER BY created_at) AS paths
    FROM (SELECT page_path, created_at FROM user_events AS e
          WHERE e.session_id = s.id AND e.event_type = 'page' ORDER BY created_at LIMIT 100) AS v
) AS pages ON true
ORDER BY s.started_at DESC, s.id DESC
"""

# -- PostgreSQL, a throwaway cluster ---------------------------------------------------------------

# A bench database: durability is not measured (fsync off), and COPY into tables created in the
# same transaction writes no WAL (wal_level minimal). Memory as for a small dedicated server.
PG_CONF = """
listen_addresses = ''
timezone = 'UTC'
shared_buffers = '1GB'
work_mem = '64MB'
maintenance_work_mem = '512MB'
effective_cache_size = '8GB'
random_page_cost = 1.1
max_wal_size = '8GB'
wal_level = minimal
max_wal_senders = 0
fsync = off
synchronous_commit = off
full_page_writes = off
# JIT off, as for any short-query workload: the planner's 1,000-row guess for generate_series
# made it compile for most of a sub-second metrics query (bench/README.md, 2026-12-03).
jit = off
"""


def postgres_bin() -> tuple[Path | None, str]:
    """The newest installed PostgreSQL's bin directory, or None and why the bench cannot run."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3].split(".")[0])
    )
    if not found:
        return (
            None,
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres; `make bench-pg` installs it as root)",
        )
    if os.geteuid() != 0:
        return None, "not root: the bench runs PostgreSQL as the `postgres` user"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None, "no `postgres` user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        return None, "psycopg is not installed (the `bench` extra: pip install -e '.[bench]')"
    return found[-1].parent, ""


@dataclass
class Postgres:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            cwd=self.root,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        self.run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--locale=C",
            "--encoding=UTF8",
            "--no-sync",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(PG_CONF + f"port = {self.port}\nunix_socket_directories = '{self.root}'\n")
        self.run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start"
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres")


@contextlib.contextmanager
def postgres(bindir: Path) -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="werkstroom-pgbench-pg-"))
    os.chown(root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    server = Postgres(bindir, root, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- loading ---------------------------------------------------------------------------------------


def load(client: Client, pg: Postgres, data: Generated, now: datetime, work: Path) -> dict[str, float]:
    """The seed's tables from the generated data; returns the seconds of each step."""
    steps: dict[str, float] = {}
    params = {"p": data.project_id, "now": now}
    with pg.connect() as conn:
        with conn.transaction():
            conn.execute(SCHEMA)
            conn.execute(DAILY_STATS_FUNCTION)
            for table, columns, select in EXPORTS:
                t = time.perf_counter()
                path = work / f"{table}.tsv"
                client.command(
                    f"INSERT INTO FUNCTION file('{path}', 'TabSeparated') {select}",
                    parameters=params,
                    settings={"max_threads": 2},
                )
                steps[f"export {table}"] = time.perf_counter() - t
                t = time.perf_counter()
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
                    path.open("rb") as source,
                ):
                    while chunk := source.read(1 << 20):
                        copy.write(chunk)
                steps[f"copy {table}"] = time.perf_counter() - t
                path.unlink()
            conn.execute(
                "INSERT INTO funnel_steps VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(FUNNEL_STEPS)),
                [
                    v
                    for k, s in enumerate(FUNNEL_STEPS, 1)
                    for v in (
                        data.project_id,
                        data.funnel_id,
                        "Signup to order",
                        k,
                        s["event"],
                        like_pattern(s["path"]) if s["path"] else "",
                        FUNNEL_WINDOW,
                    )
                ],
            )
        t = time.perf_counter()
        for statement in INDEXES:
            conn.execute(statement)
            conn.commit()
        steps["indexes"] = time.perf_counter() - t
        t = time.perf_counter()
        days = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM user_events WHERE project_id = %s",
                [data.project_id],
            )
        ]
        for day in days:
            conn.execute("SELECT calculate_daily_stats(%s, %s)", [data.project_id, day])
        conn.commit()
        steps["calculate_daily_stats"] = time.perf_counter() - t
        t = time.perf_counter()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        steps["vacuum analyze"] = time.perf_counter() - t
    return steps


# -- the views, both sides, as comparable answers --------------------------------------------------


def _ms(value: datetime | str) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(value.timestamp() * 1000)


def _drop_offs(counts: list[int]) -> list[float | None]:
    """As services/api/routes/funnels.report_steps: from the previous step, in %, 1 decimal."""
    return [
        round((counts[i - 1] - c) / counts[i - 1] * 100, 1) if i and counts[i - 1] else None
        for i, c in enumerate(counts)
    ]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole * 100, 1) if whole else None


@dataclass
class View:
    """One CRM view: how PostgreSQL answers it, how Werkstroom's API is asked, and both answers
    reduced to the same comparable shape."""

    name: str
    pg: Callable[[Any, int], Any]  # (connection, request number) -> answer
    path: Callable[[int], tuple[str, dict[str, Any]]]  # request number -> (path, query)
    ws_answer: Callable[[dict[str, Any]], Any]


def views(data: Generated, now: datetime, persons: list[str]) -> list[View]:
    p, today = data.project_id, now.date()
    base = {"p": p, "now": now, "t": today}

    def online_pg(conn: Any, _i: int) -> Any:
        rows = conn.execute(ONLINE_SQL, {**base, "n": ONLINE_LIST}).fetchall()
        count = rows[0][0] if rows else 0
        listed = [
            (
                aid,
                person,
                path,
                now - entered > timedelta(minutes=5),
                event or "",
                max(0, int((now - entered).total_seconds())),
            )
            for _, aid, person, path, entered, _, _, event in rows
        ]
        return count, listed

    def online_ws(body: dict[str, Any]) -> Any:
        listed = [
            (
                u["anonymous_id"],
                u["person_id"],
                u["current_path"],
                u["stuck"],
                u["last_event"],
                u["time_on_page_seconds"],
            )
            for u in body["users"]
        ]
        return body["online"], listed

    def metrics_pg(conn: Any, _i: int) -> Any:
        total, total_b, new, new_b, online, online_b, base_n, churned, base_b, churned_b = conn.execute(
            METRICS_SQL, base
        ).fetchone()
        return {
            "total_users": (total, total_b),
            "new_this_week": (new, new_b),
            "online_now": (online, online_b),
            "churn_rate": (_rate(churned, base_n), _rate(churned_b, base_b)),
        }

    def metrics_ws(body: dict[str, Any]) -> Any:
        m = body["metrics"]
        return {
            k: (m[k]["value"], m[k]["previous"])
            for k in ("total_users", "new_this_week", "online_now", "churn_rate")
        }

    since30 = today - timedelta(days=29)

    def activity_pg(conn: Any, _i: int) -> Any:
        return [
            (d.isoformat(), *map(int, figures))
            for d, *figures in conn.execute(ACTIVITY_SQL, {**base, "since": since30})
        ]

    def activity_ws(body: dict[str, Any]) -> Any:
        return [
            (d["day"], d["active_users"], d["new_users"], d["sessions"], d["page_views"], d["events"])
            for d in body["days"]
        ]

    def funnel_pg(conn: Any, _i: int) -> Any:
        steps = conn.execute(FUNNEL_DEFINITION_SQL, {"p": p, "f": data.funnel_id}).fetchall()
        since = datetime(since30.year, since30.month, since30.day, tzinfo=UTC)
        counts = list(conn.execute(funnel_sql(steps), {"p": p, "since": since}).fetchone())
        return list(zip(counts, _drop_offs(counts), strict=True))

    def funnel_ws(body: dict[str, Any]) -> Any:
        return [(s["count"], s["drop_off_pct"]) for s in body["steps"]]

    def users_pg(segment: str) -> Callable[[Any, int], Any]:
        statement = users_sql(segment)

        def answer(conn: Any, _i: int) -> Any:
            rows = conn.execute(statement, {**base, "n": PAGE + 1}).fetchall()
            return [(r[0], _ms(r[2]), r[6]) for r in rows[:PAGE]], len(rows) > PAGE

        return answer

    def users_ws(body: dict[str, Any]) -> Any:
        return [(u["person_id"], _ms(u["last_seen"]), u["segment"]) for u in body["users"]], bool(
            body["next_cursor"]
        )

    def sessions_pg(conn: Any, i: int) -> Any:
        rows = conn.execute(SESSIONS_SQL, {"p": p, "u": persons[i % len(persons)], "n": SESSIONS_PAGE})
        return [(r[0], _ms(r[1]), _ms(r[2]), r[3], r[4], list(r[10])) for r in rows]

    def sessions_ws(body: dict[str, Any]) -> Any:
        return [
            (
                s["session_id"],
                _ms(s["start_at"]),
                _ms(s["last_event_at"]),
                s["page_views"],
                s["events"],
                s["pages"],
            )
            for s in body["sessions"]
        ]

    def fixed(path: str, **query: Any) -> Callable[[int], tuple[str, dict[str, Any]]]:
        return lambda _i: (path, query)

    quoted = [quote(person, safe="") for person in persons]
    out = [
        View("online now + live table", online_pg, fixed("online"), online_ws),
        View("metric cards", metrics_pg, fixed("metrics"), metrics_ws),
        View("activity, 30 days", activity_pg, fixed("activity", days=30), activity_ws),
        View("funnel, 30 days", funnel_pg, fixed(f"funnels/{data.funnel_id}", days=30), funnel_ws),
        View("users list (first page)", users_pg("all"), fixed("users"), users_ws),
    ]
    out += [
        View(f"segment {s} (first page)", users_pg(s), fixed("users", segment=s), users_ws) for s in SEGMENTS
    ]
    out.append(
        View(
            "a user's session history",
            sessions_pg,
            lambda i: (f"users/{quoted[i % len(quoted)]}/sessions", {}),
            sessions_ws,
        )
    )
    return out


def segment_counts(client: Client, conn: Any, data: Generated, now: datetime) -> tuple[list[int], list[int]]:
    """(PostgreSQL, ClickHouse) counts of active, inactive, premium, trial, churned persons."""
    pg = list(conn.execute(SEGMENT_COUNTS_SQL, {"p": data.project_id, "now": now}).fetchone())
    ch = list(
        client.query(
            "SELECT countIf(last_seen >= {a:DateTime64(3, 'UTC')}), "
            "countIf(last_seen < {a:DateTime64(3, 'UTC')} AND last_seen >= {i:DateTime64(3, 'UTC')}), "
            "countIf(plan = 'premium'), countIf(plan = 'trial'), countIf(last_seen < {i:DateTime64(3, 'UTC')}) "
            "FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0",
            parameters={"p": data.project_id, "a": now - timedelta(days=7), "i": now - timedelta(days=30)},
        ).first_row
    )
    return pg, ch


class Recorder:
    """A connection that remembers the last statement it ran (for --explain)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.last: tuple[Any, Any] = ("", None)

    def execute(self, query: Any, params: Any = None) -> Any:
        self.last = (query, params)
        return self.conn.execute(query, params)


def explain(conn: Any, query: Any, params: Any) -> list[str]:
    from psycopg import sql

    statement = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + (sql.SQL(query) if isinstance(query, str) else query)
    return [str(r[0]) for r in conn.execute(statement, params)]


def time_pg(name: str, call: Callable[[int], Any], requests: int, budget: float, warmup: int = 3) -> Figure:
    """As api_bench.measure, for a synchronous call; stops after `budget` seconds (>= 5 timed)."""
    for i in range(warmup):
        call(i)
    figure = Figure(name, [])
    deadline = time.perf_counter() + budget
    for i in range(requests):
        started = time.perf_counter()
        call(i)
        figure.samples_ms.append((time.perf_counter() - started) * 1000)
        if i >= 4 and time.perf_counter() > deadline:
            break
    return figure


def _diff(a: Any, b: Any) -> str:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        for x, y in zip(a, b, strict=True):
            if x != y:
                return _diff(x, y)
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f"{k}: " + _diff(a.get(k), b.get(k))
    return f"PostgreSQL {str(a)[:160]} vs Werkstroom {str(b)[:160]}"


# -- the run ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, bindir: Path) -> int:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="werkstroom-pgbench-"))
    settings = Settings(
        data_dir=work, clickhouse_database="bench", demo=False, api_port=free_port(), log_level="WARNING"
    )
    server = None
    serving: asyncio.Task[Any] | None = None
    app: Any = None
    try:
        client = await asyncio.to_thread(prepare_clickhouse, settings)
        print(f"generating {args.events:,} events and {args.persons:,} persons in ClickHouse ({work}) ...")
        data: Generated = await asyncio.to_thread(
            generate, client, settings, events=args.events, persons=args.persons
        )
        print(f"generation: {data.seconds:.1f} s")
        print(f"  data: {await asyncio.to_thread(describe, client, data)}")
        # One instant for every answer: the minute after the live tail's last event (a whole
        # minute, so "online a week ago" is the minute the generator recorded, as the API reads it).
        now = (data.t1 + timedelta(minutes=1)).replace(second=0, microsecond=0)
        print(f"answers as of {now.isoformat()}")
        persons = [
            r[0]
            for r in client.query(
                "SELECT person_id FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
                "ORDER BY cityHash64(person_id) LIMIT {n:UInt32}",
                parameters={"p": data.project_id, "n": args.requests + 3},
            ).result_rows
        ]

        with postgres(bindir) as pg:
            t = time.perf_counter()
            steps = await asyncio.to_thread(load, client, pg, data, now, work)
            load_seconds = time.perf_counter() - t
            print(
                f"PostgreSQL {bindir.parts[-2]}: loaded in {load_seconds:.1f} s ("
                + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
                + ")"
            )
            conn = Recorder(pg.connect())
            sizes = conn.execute(
                "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables ORDER BY relname"
            ).fetchall()
            print(
                "  " + ", ".join(f"{name} {rows:,} rows {size / 2**20:,.0f} MB" for name, rows, size in sizes)
            )

            def factory() -> Client:
                return connect(settings.effective_clickhouse_url, settings.clickhouse_database)

            app = create_app(settings, clickhouse=factory, admin_token="bench-admin", clock=lambda: now)
            server, serving = await start_api(app, settings)

            base = f"{settings.api_url}/api/projects/{data.project_id}"
            log = QueryLog()
            results: list[dict[str, Any]] = []
            plans: dict[str, list[str]] = {}
            failed = False
            async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {data.read_key}"}, timeout=120
            ) as http:

                async def ask(view: View, i: int) -> httpx.Response:
                    path, query = view.path(i)
                    return await http.get(f"{base}/{path}", params=query)

                health = await measure(
                    "/health", lambda _i: http.get(f"{settings.api_url}/health"), args.requests, log
                )
                for view in views(data, now, persons):
                    # The same answer? For the session history, every sampled person's.
                    checked = len(persons) if view.name.startswith("a user's") else 1
                    same, why = True, ""
                    for i in range(checked):
                        response = await ask(view, i)
                        if response.status_code != 200:
                            same, why = (
                                False,
                                f"Werkstroom answered {response.status_code}: {response.text[:200]}",
                            )
                            break
                        mine, theirs = view.pg(conn, i), view.ws_answer(response.json())
                        if mine != theirs:
                            same, why = False, _diff(mine, theirs)
                            break
                    pg_figure = time_pg(
                        view.name, lambda i, v=view: v.pg(conn, i), args.requests, args.pg_budget
                    )
                    ws_figure = await measure(view.name, lambda i, v=view: ask(v, i), args.requests, log)
                    ratio = pg_figure.p95 / ws_figure.p95
                    failed |= not same or bool(ws_figure.errors)
                    results.append(
                        {
                            "view": view.name,
                            "pg_p50_ms": round(pg_figure.p50, 2),
                            "pg_p95_ms": round(pg_figure.p95, 2),
                            "pg_requests": len(pg_figure.samples_ms),
                            "werkstroom_p50_ms": round(ws_figure.p50, 2),
                            "werkstroom_p95_ms": round(ws_figure.p95, 2),
                            "werkstroom_requests": len(ws_figure.samples_ms),
                            "ratio": round(ratio, 2),
                            "target_met": ratio >= TARGET_RATIO,
                            "same_answer": same,
                            "difference": why,
                            "werkstroom_errors": len(ws_figure.errors),
                        }
                    )
                    if args.explain and pg_figure.p95 > ws_figure.p95:
                        plans[view.name] = explain(conn.conn, *conn.last)
                    if args.verbose:
                        print(
                            f"  {view.name}: PostgreSQL p95 {pg_figure.p95:.1f} ms, Werkstroom {ws_figure.p95:.1f} ms"
                        )
            pg_counts, ch_counts = segment_counts(client, conn, data, now)
            conn.conn.close()

        print()
        print(
            f"CRM views, PostgreSQL (the seed's schema, SQL in bench/pg_bench.py, no HTTP) vs Werkstroom "
            f"(the API over HTTP); {data.events:,} events, {data.persons:,} persons; "
            f"target: PostgreSQL p95 / Werkstroom p95 >= {TARGET_RATIO:.0f}"
        )
        print(
            f"  {'view':<30} {'PG p50':>8} {'PG p95':>8} {'WS p50':>8} {'WS p95':>8} {'PG/WS':>8}  "
            f"{'>= 20x':<8} same answer"
        )
        for r in results:
            print(
                f"  {r['view']:<30} {r['pg_p50_ms']:8.1f} {r['pg_p95_ms']:8.1f} {r['werkstroom_p50_ms']:8.1f} "
                f"{r['werkstroom_p95_ms']:8.1f} {r['ratio']:8.2f}  {'met' if r['target_met'] else 'not met':<8} "
                f"{'yes' if r['same_answer'] else 'NO: ' + r['difference']}"
            )
        print(
            f"  (ms; PostgreSQL {min(r['pg_requests'] for r in results)}-{max(r['pg_requests'] for r in results)} "
            f"timed requests a view, Werkstroom {args.requests}; Werkstroom's /health over the same HTTP "
            f"client: p50 {health.p50:.1f} ms, p95 {health.p95:.1f} ms)"
        )
        print(
            "  segment counts (active, inactive, premium, trial, churned): "
            f"PostgreSQL {pg_counts}, Werkstroom {ch_counts}: {'same' if pg_counts == ch_counts else 'DIFFERENT'}"
        )
        failed |= pg_counts != ch_counts
        for name, plan in plans.items():
            print(f"\nEXPLAIN (ANALYZE, BUFFERS) of PostgreSQL's {name} (its last statement):")
            for line in plan:
                print("    " + line)
        met = sum(r["target_met"] for r in results)
        print()
        print(
            f"pg: {met}/{len(results)} views >= {TARGET_RATIO:.0f}x faster in Werkstroom; answers "
            f"{'the same in every view' if not failed else 'DIFFER (see above)'}"
        )
        _save(args, data, now, steps, load_seconds, sizes, results, health, pg_counts, ch_counts, bindir)
        return 1 if failed else 0
    finally:
        if server is not None and serving is not None:
            await stop_api(app, server, serving)
        shutil.rmtree(work, ignore_errors=True)


def _save(
    args: argparse.Namespace,
    data: Generated,
    now: datetime,
    steps: dict[str, float],
    load_seconds: float,
    sizes: list[tuple[str, int, int]],
    results: list[dict[str, Any]],
    health: Figure,
    pg_counts: list[int],
    ch_counts: list[int],
    bindir: Path,
) -> None:
    save_results(
        "pg",
        {
            "postgresql": bindir.parts[-2],
            "events": data.events,
            "persons": data.persons,
            "answers_as_of": now.isoformat(),
            "generation_seconds": round(data.seconds, 1),
            "load_seconds": round(load_seconds, 1),
            "load_steps": {k: round(v, 1) for k, v in steps.items()},
            "tables": {name: {"rows": rows, "bytes": size} for name, rows, size in sizes},
            "requests": args.requests,
            "pg_budget_seconds": args.pg_budget,
            "target_ratio": TARGET_RATIO,
            "werkstroom_health_ms": {"p50": round(health.p50, 2), "p95": round(health.p95, 2)},
            "views": results,
            "segment_counts": {"postgresql": pg_counts, "werkstroom": ch_counts},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per view and side")
    parser.add_argument(
        "--pg-budget",
        type=float,
        default=60.0,
        help="seconds of timed PostgreSQL requests per view (>= 5 requests)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="EXPLAIN ANALYZE PostgreSQL's statement of each view it answers slower",
    )
    parser.add_argument("--verbose", action="store_true", help="print each view's figures as it is timed")
    args = parser.parse_args()
    bindir, why = postgres_bin()
    if bindir is None:
        print(f"pg: skipped: {why}")
        return
    raise SystemExit(asyncio.run(run(args, bindir)))


if __name__ == "__main__":
    main()
