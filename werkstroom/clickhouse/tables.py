"""The column lists of the tables Werkstroom writes and reads, each written once, here.

A writer inserts rows in a list's order; a reader selects the columns it names. The tables
themselves are the migrations' (migrations/NNNN_*.sql); tests/integration/test_tables.py
holds each list to the table ClickHouse has, and tests/unit/core/test_definitions.py fails
when a list is written out again elsewhere.
"""

from __future__ import annotations

from werkstroom.contract import FIELDS

#: `events`: every field of the contract, and where the message came from.
EVENTS_COLUMNS = [*FIELDS, "kafka_partition", "kafka_offset"]
#: What a session takes from its entry page view for the breakdowns: `visitor_events` holds them
#: for each page view (migration 0023), breakdown_sessions for each session.
ENTRY_ATTRIBUTES = [
    "source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "country",
    "device_type",
    "browser",
    "os",
]

SESSIONS_COLUMNS = [
    "project_id",
    "anonymous_id",
    "session_id",
    "user_id",
    "start_at",
    "last_event_at",
    "entry_at",
    "entry_url",
    "entry_path",
    "referrer",
    "current_url",
    "current_path",
    "current_title",
    "page_entered_at",
    "page_views",
    "events",
    "pages",
    "device_type",
    "browser",
    "os",
    "kafka_partition",
    "version",
    "is_deleted",
]
#: `online_visitors`: a visitor's newest session, cut down to what the live view shows.
ONLINE_VISITORS_COLUMNS = [
    "project_id",
    "anonymous_id",
    "session_id",
    "user_id",
    "start_at",
    "last_event_at",
    "current_url",
    "current_path",
    "current_title",
    "page_entered_at",
    "page_views",
    "events",
    "device_type",
    "browser",
    "os",
    "version",
]
#: What the API reads of an online visitor, in this order (services.api.queries.online_user):
#: the live view's columns without the project (it filters on it), the counters and the version.
ONLINE_VISITOR_READ = [
    c for c in ONLINE_VISITORS_COLUMNS if c not in ("project_id", "page_views", "events", "version")
]
#: `person_distinct_ids` and `person_distinct_ids_by_person` (the same rows, sorted by person).
PERSON_DISTINCT_IDS_COLUMNS = ["project_id", "distinct_id", "person_id", "version"]
PERSON_TRAITS_COLUMNS = ["project_id", "distinct_id", "key", "value", "version"]
EVENTS_DAILY_COLUMNS = ["project_id", "day", "kafka_partition", "page_views", "events", "version"]

PERSONS_COLUMNS = [
    "project_id",
    "person_id",
    "first_seen",
    "last_seen",
    "sessions",
    "page_views",
    "anonymous_ids",
    "traits",
    "plan",
    "is_deleted",
    "version",
]
#: `persons_recent`: a copy of each persons row, sorted by last_seen (the users page's candidates).
PERSONS_RECENT_COLUMNS = [
    "project_id",
    "last_seen",
    "person_id",
    "first_seen",
    "sessions",
    "page_views",
    "plan",
    "is_deleted",
    "version",
]
SESSIONS_DAILY_COLUMNS = [
    "project_id",
    "day",
    "anonymous_id",
    "session_id",
    "page_views",
    "duration_ms",
    "version",
    "is_deleted",
]
#: A session's attributes in the breakdown tables: its entry and exit page, and those of its
#: entry page view (docs/definitions.md). The API's filters name these columns.
SESSION_ATTRIBUTES = ["entry_path", "exit_path", *ENTRY_ATTRIBUTES]
#: `breakdown_sessions`: one row per session with a page view, under the day it starts on, with
#: its page views and duration (migration 0027) and its start (0032).
BREAKDOWN_SESSIONS_COLUMNS = [
    *("project_id", "day", "anonymous_id", "session_id"),
    *SESSION_ATTRIBUTES,
    *("page_views", "duration_ms", "start_at", "version", "is_deleted"),
]
#: `plan_sessions` (migration 0034): breakdown_sessions' live rows under their visitor's person's
#: plan now, with that person and its first moment.
PLAN_SESSIONS_COLUMNS = [
    *("project_id", "plan", "day", "anonymous_id", "session_id", "person_id", "first_seen"),
    *SESSION_ATTRIBUTES,
    *("page_views", "duration_ms", "start_at", "version", "is_deleted"),
]
#: `breakdown_pages`: one row per (session, path viewed), with its figures and the attributes of
#: the session's entry page view (migration 0041: a filter on one of them narrows the page rows
#: by their own column; the entry and exit page are read from breakdown_sessions).
BREAKDOWN_PAGES_COLUMNS = [
    *("project_id", "day", "anonymous_id", "session_id", "path"),
    *("views", "timed_views", "time_ms", "is_entry", "is_exit", "bounced"),
    *ENTRY_ATTRIBUTES,
    *("version", "is_deleted"),
]
#: `plan_pages` (migration 0036): breakdown_pages' live rows under their visitor's person's plan
#: now: its columns, with the plan after the project.
PLAN_PAGES_COLUMNS = ["project_id", "plan", *BREAKDOWN_PAGES_COLUMNS[1:]]
#: Each breakdown's dimension and the column of its values: `path` on breakdown_pages, the
#: others on breakdown_sessions. breakdown_daily has a row per (day, dimension, value).
BREAKDOWN_DIMENSIONS: dict[str, str] = {
    "pages": "path",
    "entry_pages": "entry_path",
    "exit_pages": "exit_path",
    "sources": "source",
    "utm_sources": "utm_source",
    "utm_mediums": "utm_medium",
    "utm_campaigns": "utm_campaign",
    "countries": "country",
    "devices": "device_type",
    "browsers": "browser",
    "os": "os",
}
#: `breakdown_daily`'s figures of a (day, dimension, value), in the order the roll-up and the
#: breakdowns' live part compute them.
BREAKDOWN_FIGURES = ["visitors", "sessions", "page_views", "bounced", "entered", "time_ms", "timed"]
ONLINE_HISTORY_COLUMNS = ["project_id", "minute", "online", "version"]
#: `online_history_by` (migration 0040): the online count of a minute under each rolled filter value.
ONLINE_HISTORY_BY_COLUMNS = ["project_id", "filter", "filter_value", "minute", "online", "version"]
#: `daily_stats`'s figures of a day, in the order the API answers them (and exports them).
DAILY_STATS_FIGURES = [
    "active_users",
    "new_users",
    "sessions",
    "page_views",
    "events",
    "bounce_rate",
    "avg_session_seconds",
]
DAILY_STATS_COLUMNS = ["project_id", "day", *DAILY_STATS_FIGURES, "version"]
#: `person_activity` and `persons_first_day`: one row per (day, person).
PERSON_DAYS_COLUMNS = ["project_id", "day", "person_id", "is_deleted", "version"]
CHURN_DAILY_COLUMNS = ["project_id", "day", "base", "churned", "version"]

AGGREGATOR_STATUS_COLUMNS = [
    "topic",
    "partition",
    "worker",
    "last_write_at",
    "last_event_at",
    "lag",
    "version",
]
SINK_PARTITIONS_COLUMNS = [
    "topic",
    "partition",
    "generation",
    "next_offset",
    "anchor",
    "partitions",
    "worker",
    "version",
    "generation_began_ms",
]

FUNNELS_COLUMNS = [
    *("project_id", "funnel_id", "name", "steps"),
    *("window_seconds", "created_at", "is_deleted", "version"),
]
FUNNEL_PROGRESS_COLUMNS = ["project_id", "funnel_id", "day", "person_id", "level", "is_deleted", "version"]
FUNNEL_LEVELS_COLUMNS = ["project_id", "funnel_id", "level", "last_day", "person_id", "is_deleted", "version"]
FUNNEL_COUNTS_COLUMNS = ["project_id", "funnel_id", "level", "day", "persons", "version"]
#: `funnel_levels_by` (migration 0037): a person's level under each of its filter values, with the
#: earlier of the level's last day and the value's, and the person's plan.
FUNNEL_LEVELS_BY_COLUMNS = [
    *("project_id", "funnel_id", "filter", "filter_value", "level", "person_id", "last_day", "plan"),
    *("version", "is_deleted"),
]
FUNNEL_BACKFILLS_COLUMNS = ["project_id", "funnel_id", "rows", "version"]
#: `projects` (migrations 0001, 0024): one row per site, a change is a new row.
PROJECTS_COLUMNS = [
    *("project_id", "name", "write_key", "read_key_hash", "timezone"),
    *("created_at", "updated_at", "deleted"),
]
#: `project_zones` (migration 0025): the zone a project's rows were computed in, per partition.
PROJECT_ZONES_COLUMNS = ["project_id", "kafka_partition", "timezone", "version"]

#: `visitor_persons` (migration 0030): each visitor's live person, with what the filters read.
VISITOR_PERSONS_COLUMNS = [
    *("project_id", "visitor", "person_id", "first_seen", "last_seen", "plan"),
    *("is_deleted", "version"),
]

#: `person_activity_by` (migration 0031): the days a person had a session of a filter's value.
PERSON_ACTIVITY_BY_COLUMNS = [
    "project_id",
    "day",
    "filter",
    "filter_value",
    "person_id",
    "is_deleted",
    "version",
]

#: `person_first_by` (migration 0033): a person's first and last day with a session of a filter's
#: value, the day it was first seen, and its recent days of the value and active days (bits).
PERSON_FIRST_BY_COLUMNS = [
    *("project_id", "filter", "filter_value", "person_id", "first_day", "last_day", "first_seen_day"),
    *("recent_days", "recent_active"),
    *("is_deleted", "version"),
]

#: `person_refreshes` (migration 0035): a person's row as a refresh found it, open until the
#: refresh has written what derives from it.
PERSON_REFRESHES_COLUMNS = [
    *("project_id", "person_id", "refresh", "first_seen", "last_seen", "anonymous_ids", "plan", "done"),
]

#: Each table and the columns written to it (test_tables checks them against ClickHouse).
WRITTEN: dict[str, list[str]] = {
    "events": EVENTS_COLUMNS,
    "sessions": SESSIONS_COLUMNS,
    "online_visitors": ONLINE_VISITORS_COLUMNS,
    "person_distinct_ids": PERSON_DISTINCT_IDS_COLUMNS,
    "person_distinct_ids_by_person": PERSON_DISTINCT_IDS_COLUMNS,
    "person_traits": PERSON_TRAITS_COLUMNS,
    "events_daily": EVENTS_DAILY_COLUMNS,
    "persons": PERSONS_COLUMNS,
    "persons_recent": PERSONS_RECENT_COLUMNS,
    "visitor_persons": VISITOR_PERSONS_COLUMNS,
    "sessions_daily": SESSIONS_DAILY_COLUMNS,
    "breakdown_sessions": BREAKDOWN_SESSIONS_COLUMNS,
    "plan_sessions": PLAN_SESSIONS_COLUMNS,
    "plan_pages": PLAN_PAGES_COLUMNS,
    "breakdown_pages": BREAKDOWN_PAGES_COLUMNS,
    "online_history": ONLINE_HISTORY_COLUMNS,
    "online_history_by": ONLINE_HISTORY_BY_COLUMNS,
    "daily_stats": DAILY_STATS_COLUMNS,
    "person_activity": PERSON_DAYS_COLUMNS,
    "persons_first_day": PERSON_DAYS_COLUMNS,
    "person_activity_by": PERSON_ACTIVITY_BY_COLUMNS,
    "person_first_by": PERSON_FIRST_BY_COLUMNS,
    "person_refreshes": PERSON_REFRESHES_COLUMNS,
    "churn_daily": CHURN_DAILY_COLUMNS,
    "aggregator_status": AGGREGATOR_STATUS_COLUMNS,
    "sink_partitions": SINK_PARTITIONS_COLUMNS,
    "funnels": FUNNELS_COLUMNS,
    "funnel_progress": FUNNEL_PROGRESS_COLUMNS,
    "funnel_levels": FUNNEL_LEVELS_COLUMNS,
    "funnel_counts": FUNNEL_COUNTS_COLUMNS,
    "funnel_levels_by": FUNNEL_LEVELS_BY_COLUMNS,
    "funnel_backfills": FUNNEL_BACKFILLS_COLUMNS,
    "project_zones": PROJECT_ZONES_COLUMNS,
    "projects": PROJECTS_COLUMNS,
}
