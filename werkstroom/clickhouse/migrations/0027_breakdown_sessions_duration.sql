-- A session's duration on its breakdown_sessions row: the activity chart narrowed by a filter
-- counts the matching sessions' average duration, which it read from sessions_daily joined on
-- the same key. That join cost more than the rest of the chart's sessions: 262 ms of 643 for
-- one country over 30 days at 10M events (bench/README.md, 2026-12-03), for a figure the
-- refresh has at hand when it writes the row (the session's start and last event).
-- duration_ms = the session's last event minus its start, in ms, as in sessions_daily (0010).
-- Written by the aggregator's refresh (services/aggregator/breakdowns.py) with the row.
ALTER TABLE breakdown_sessions ADD COLUMN IF NOT EXISTS duration_ms Int64 DEFAULT 0 AFTER page_views;

-- The rows already there, written again with their sessions' durations, at the same version (of
-- equal versions the row inserted last wins). Run with the aggregators stopped, as `werkstroom
-- migrate` before a deploy; a rerun writes the same rows. A row whose session changed since
-- it was written keeps its older version, and the refresh rewrites it when the session's
-- visitor has events again, as before.
INSERT INTO breakdown_sessions (project_id, day, anonymous_id, session_id, entry_path, exit_path,
    source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os, page_views,
    duration_ms, version, is_deleted)
SELECT b.project_id, b.day, b.anonymous_id, b.session_id, b.entry_path, b.exit_path, b.source,
       b.utm_source, b.utm_medium, b.utm_campaign, b.country, b.device_type, b.browser, b.os,
       b.page_views, dateDiff('millisecond', s.start_at, s.last_event_at), b.version, 0
FROM (SELECT * FROM breakdown_sessions FINAL WHERE is_deleted = 0) AS b
-- the sessions on the right: ClickHouse holds the right side of a join in memory
INNER JOIN (SELECT project_id, anonymous_id, session_id, start_at, last_event_at
            FROM sessions FINAL WHERE is_deleted = 0) AS s
    ON b.project_id = s.project_id AND b.anonymous_id = s.anonymous_id AND b.session_id = s.session_id;
