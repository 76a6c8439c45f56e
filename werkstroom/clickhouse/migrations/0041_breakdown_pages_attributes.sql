-- The attributes of a session's entry page view (source, utm_*, country, device_type, browser, os:
-- werkstroom.clickhouse.tables.ENTRY_ATTRIBUTES) on each of its breakdown_pages rows, as on its
-- breakdown_sessions row, and on its plan_pages rows (0036), as on its plan_sessions row. The top
-- pages narrowed by one of them looked each page row's session up in a set of the matching
-- sessions, built from breakdown_sessions (plan_sessions) under FINAL first: at 10M events,
-- country=NL, today's rows alone took 29 ms of a 30-day breakdown's 34 (bench/README.md,
-- 2026-12-05 stop 51), and over 7 days under country=NL&segment=premium the set held a week of the
-- plan's sessions. With the attributes here the page rows are narrowed by their own columns.
-- A page row takes them from its session's entry page view, as its session's row does: written by
-- the aggregator's refresh (services/aggregator/breakdowns.py, plans.py: a plan's rows copy
-- breakdown_pages') with the row, and a row whose session's entry page view changed is written
-- again (its version is the session's).
ALTER TABLE breakdown_pages
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT '' AFTER bounced,
    ADD COLUMN IF NOT EXISTS utm_source LowCardinality(String) DEFAULT '' AFTER source,
    ADD COLUMN IF NOT EXISTS utm_medium LowCardinality(String) DEFAULT '' AFTER utm_source,
    ADD COLUMN IF NOT EXISTS utm_campaign LowCardinality(String) DEFAULT '' AFTER utm_medium,
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) DEFAULT '' AFTER utm_campaign,
    ADD COLUMN IF NOT EXISTS device_type LowCardinality(String) DEFAULT '' AFTER country,
    ADD COLUMN IF NOT EXISTS browser LowCardinality(String) DEFAULT '' AFTER device_type,
    ADD COLUMN IF NOT EXISTS os LowCardinality(String) DEFAULT '' AFTER browser;

-- The rows already there get their sessions' attributes, as 0032 gave breakdown_sessions its
-- starts: the table is rebuilt beside the old one with its rows as they are (the insert, like a
-- merge, may drop a version that a newer one of its row replaces; FINAL reads the same) and
-- swapped in. A row whose session has no live breakdown_sessions row (a tombstone, or a version
-- FINAL drops) keeps ''. Run with the aggregators stopped, as `werkstroom
-- migrate` before a deploy; a rerun after an interruption starts the rebuild again.
DROP TABLE IF EXISTS breakdown_pages_rebuild;
CREATE TABLE breakdown_pages_rebuild AS breakdown_pages;
INSERT INTO breakdown_pages_rebuild (project_id, day, anonymous_id, session_id, path, views, timed_views,
    time_ms, is_entry, is_exit, bounced, source, utm_source, utm_medium, utm_campaign, country,
    device_type, browser, os, version, is_deleted)
SELECT p.project_id, p.day, p.anonymous_id, p.session_id, p.path, p.views, p.timed_views, p.time_ms,
       p.is_entry, p.is_exit, p.bounced, ifNull(s.source, ''), ifNull(s.utm_source, ''),
       ifNull(s.utm_medium, ''), ifNull(s.utm_campaign, ''), ifNull(s.country, ''),
       ifNull(s.device_type, ''), ifNull(s.browser, ''), ifNull(s.os, ''), p.version, p.is_deleted
FROM breakdown_pages AS p
-- the live session rows on the right: ClickHouse holds the right side of a join in memory
LEFT JOIN (SELECT project_id, day, anonymous_id, session_id, toString(source) AS source,
                  toString(utm_source) AS utm_source, toString(utm_medium) AS utm_medium,
                  toString(utm_campaign) AS utm_campaign, toString(country) AS country,
                  toString(device_type) AS device_type, toString(browser) AS browser, toString(os) AS os
           FROM breakdown_sessions FINAL WHERE is_deleted = 0) AS s
    ON p.project_id = s.project_id AND p.day = s.day AND p.anonymous_id = s.anonymous_id
       AND p.session_id = s.session_id
SETTINGS join_use_nulls = 1;
EXCHANGE TABLES breakdown_pages AND breakdown_pages_rebuild;
DROP TABLE breakdown_pages_rebuild;

ALTER TABLE plan_pages
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT '' AFTER bounced,
    ADD COLUMN IF NOT EXISTS utm_source LowCardinality(String) DEFAULT '' AFTER source,
    ADD COLUMN IF NOT EXISTS utm_medium LowCardinality(String) DEFAULT '' AFTER utm_source,
    ADD COLUMN IF NOT EXISTS utm_campaign LowCardinality(String) DEFAULT '' AFTER utm_medium,
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) DEFAULT '' AFTER utm_campaign,
    ADD COLUMN IF NOT EXISTS device_type LowCardinality(String) DEFAULT '' AFTER country,
    ADD COLUMN IF NOT EXISTS browser LowCardinality(String) DEFAULT '' AFTER device_type,
    ADD COLUMN IF NOT EXISTS os LowCardinality(String) DEFAULT '' AFTER browser;

-- plan_pages' rows the same way, from the same live session rows (a plan's row is a copy of its
-- breakdown_pages row under the person's plan).
DROP TABLE IF EXISTS plan_pages_rebuild;
CREATE TABLE plan_pages_rebuild AS plan_pages;
INSERT INTO plan_pages_rebuild (project_id, plan, day, anonymous_id, session_id, path, views, timed_views,
    time_ms, is_entry, is_exit, bounced, source, utm_source, utm_medium, utm_campaign, country,
    device_type, browser, os, version, is_deleted)
SELECT p.project_id, p.plan, p.day, p.anonymous_id, p.session_id, p.path, p.views, p.timed_views,
       p.time_ms, p.is_entry, p.is_exit, p.bounced, ifNull(s.source, ''), ifNull(s.utm_source, ''),
       ifNull(s.utm_medium, ''), ifNull(s.utm_campaign, ''), ifNull(s.country, ''),
       ifNull(s.device_type, ''), ifNull(s.browser, ''), ifNull(s.os, ''), p.version, p.is_deleted
FROM plan_pages AS p
LEFT JOIN (SELECT project_id, day, anonymous_id, session_id, toString(source) AS source,
                  toString(utm_source) AS utm_source, toString(utm_medium) AS utm_medium,
                  toString(utm_campaign) AS utm_campaign, toString(country) AS country,
                  toString(device_type) AS device_type, toString(browser) AS browser, toString(os) AS os
           FROM breakdown_sessions FINAL WHERE is_deleted = 0) AS s
    ON p.project_id = s.project_id AND p.day = s.day AND p.anonymous_id = s.anonymous_id
       AND p.session_id = s.session_id
SETTINGS join_use_nulls = 1;
EXCHANGE TABLES plan_pages AND plan_pages_rebuild;
DROP TABLE plan_pages_rebuild;
