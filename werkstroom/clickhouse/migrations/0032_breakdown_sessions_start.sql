-- A session's start on its breakdown_sessions row: the metric cards narrowed by a filter count
-- the visitors whose matching session spanned the moment a week ago ("online a week ago"), which
-- they read from `sessions`, sorted by visitor: every session's start and last event of the
-- project, for one moment (74-96 ms at 10M events; bench/README.md, 2026-12-04 stop 37). With
-- the start here (and duration_ms, 0027), the two days' matching rows alone answer it (13-41 ms).
-- start_at = the session's first event, as in `sessions`. Written by the aggregator's refresh
-- (services/aggregator/breakdowns.py) with the row.
ALTER TABLE breakdown_sessions
    ADD COLUMN IF NOT EXISTS start_at DateTime64(3, 'UTC') DEFAULT toDateTime64(0, 3, 'UTC') AFTER duration_ms;

-- The rows already there get their sessions' starts, as 0027 gave them their durations: the
-- table is rebuilt beside the old one with every row version as it is (a row whose session is
-- no longer live keeps 1970) and swapped in. Run with the aggregators stopped, as `werkstroom
-- migrate` before a deploy; a rerun after an interruption starts the rebuild again.
DROP TABLE IF EXISTS breakdown_sessions_rebuild;
CREATE TABLE breakdown_sessions_rebuild AS breakdown_sessions;
INSERT INTO breakdown_sessions_rebuild (project_id, day, anonymous_id, session_id, entry_path, exit_path,
    source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os, page_views,
    duration_ms, start_at, version, is_deleted)
SELECT b.project_id, b.day, b.anonymous_id, b.session_id, b.entry_path, b.exit_path, b.source,
       b.utm_source, b.utm_medium, b.utm_campaign, b.country, b.device_type, b.browser, b.os,
       b.page_views, b.duration_ms, ifNull(s.start_at, toDateTime64(0, 3, 'UTC')), b.version, b.is_deleted
FROM breakdown_sessions AS b
-- the live sessions on the right: ClickHouse holds the right side of a join in memory
LEFT JOIN (SELECT project_id, anonymous_id, session_id, start_at
           FROM sessions FINAL WHERE is_deleted = 0) AS s
    ON b.project_id = s.project_id AND b.anonymous_id = s.anonymous_id AND b.session_id = s.session_id
SETTINGS join_use_nulls = 1;
EXCHANGE TABLES breakdown_sessions AND breakdown_sessions_rebuild;
DROP TABLE breakdown_sessions_rebuild;
