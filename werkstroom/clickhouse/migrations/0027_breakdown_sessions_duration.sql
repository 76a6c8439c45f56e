-- A session's duration on its breakdown_sessions row: the activity chart narrowed by a filter
-- counts the matching sessions' average duration, which it read from sessions_daily joined on
-- the same key. That join cost more than the rest of the chart's sessions: 262 ms of 643 for
-- one country over 30 days at 10M events (bench/README.md, 2026-12-03), for a figure the
-- refresh has at hand when it writes the row (the session's start and last event).
-- duration_ms = the session's last event minus its start, in ms, as in sessions_daily (0010).
-- Written by the aggregator's refresh (services/aggregator/breakdowns.py) with the row.
ALTER TABLE breakdown_sessions ADD COLUMN IF NOT EXISTS duration_ms Int64 DEFAULT 0 AFTER page_views;

-- The rows already there get their sessions' durations: the table is rebuilt beside the old one
-- with every row version as it is (a row whose session is no longer live keeps 0) and swapped
-- in, as 0007 did. Writing the rows again at their own versions instead would leave two rows of
-- equal version per session, which FINAL must merge until the parts are merged, and of which
-- only the order of the parts says which wins. Run with the aggregators stopped, as `werkstroom
-- migrate` before a deploy; a rerun after an interruption starts the rebuild again.
DROP TABLE IF EXISTS breakdown_sessions_rebuild;
CREATE TABLE breakdown_sessions_rebuild AS breakdown_sessions;
INSERT INTO breakdown_sessions_rebuild (project_id, day, anonymous_id, session_id, entry_path, exit_path,
    source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os, page_views,
    duration_ms, version, is_deleted)
SELECT b.project_id, b.day, b.anonymous_id, b.session_id, b.entry_path, b.exit_path, b.source,
       b.utm_source, b.utm_medium, b.utm_campaign, b.country, b.device_type, b.browser, b.os,
       b.page_views, ifNull(dateDiff('millisecond', s.start_at, s.last_event_at), 0), b.version,
       b.is_deleted
FROM breakdown_sessions AS b
-- the live sessions on the right: ClickHouse holds the right side of a join in memory
LEFT JOIN (SELECT project_id, anonymous_id, session_id, start_at, last_event_at
           FROM sessions FINAL WHERE is_deleted = 0) AS s
    ON b.project_id = s.project_id AND b.anonymous_id = s.anonymous_id AND b.session_id = s.session_id
SETTINGS join_use_nulls = 1;
EXCHANGE TABLES breakdown_sessions AND breakdown_sessions_rebuild;
DROP TABLE breakdown_sessions_rebuild;
