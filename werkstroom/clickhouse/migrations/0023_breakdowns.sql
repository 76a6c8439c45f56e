-- What the breakdowns read (pages, entry and exit pages, sources, campaigns, countries, devices,
-- browsers, OSes over a date range): a 30-day scan of `events` (about 5M rows on the bench's 10M)
-- cannot answer in 50 ms, so two tables are kept beside it, each row under the UTC day its
-- session starts on:
--   breakdown_sessions  one row per session that has a page view: its entry and exit page, the
--                       attributes of its entry page view (source, utm_*, country, device,
--                       browser, OS), as Plausible counts them, and its page views;
--   breakdown_pages     one row per (session, path) viewed: views, time on page, whether the
--                       session entered, left or bounced there (a filter on the session's
--                       attributes reads its breakdown_sessions row).
-- The aggregator's refresh recomputes them in ClickHouse for the visitors a batch touched
-- (services/aggregator/breakdowns.py), from their sessions and their page views here in
-- `visitor_events`, sorted by visitor.
-- ReplacingMergeTree(version, is_deleted): version = the session's version (the position of its
-- last event); a row the session leaves (it moved to an earlier day, was absorbed) gets a
-- tombstone with a later version. Reads use FINAL and is_deleted = 0.

-- visitor_events (0009, 0014) gets what a session takes from its entry page view, computed by its
-- materialized view from each event. Events written before 0022 have no source or campaign: they
-- are taken from the referrer's host (without www., '' for the page's own host; not grouped into
-- names such as Google, which only ingest does) and from the URL's utm_* parameters.
ALTER TABLE visitor_events
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS utm_source LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS utm_medium LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS utm_campaign LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS device_type LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS browser LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS os LowCardinality(String) DEFAULT '';

DROP VIEW IF EXISTS visitor_events_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS visitor_events_mv TO visitor_events AS
SELECT
    project_id,
    if(anonymous_id != '', anonymous_id, user_id) AS distinct_id,
    timestamp,
    event_id,
    event,
    path,
    if(source != '' OR referrer = '' OR domainWithoutWWW(referrer) IN ('', domainWithoutWWW(url)),
       source, domainWithoutWWW(referrer)) AS source,
    if(utm_source != '', utm_source, extractURLParameter(url, 'utm_source')) AS utm_source,
    if(utm_medium != '', utm_medium, extractURLParameter(url, 'utm_medium')) AS utm_medium,
    if(utm_campaign != '', utm_campaign, extractURLParameter(url, 'utm_campaign')) AS utm_campaign,
    country,
    device_type,
    browser,
    os
FROM events
WHERE event != '$heartbeat';

-- The page views already there, written again with those attributes (the same key: the row
-- inserted last wins). Run with the aggregators stopped, as `werkstroom migrate` before a
-- deploy; a rerun writes the same rows.
INSERT INTO visitor_events (project_id, distinct_id, timestamp, event_id, event, path, source,
    utm_source, utm_medium, utm_campaign, country, device_type, browser, os)
SELECT project_id, if(anonymous_id != '', anonymous_id, user_id), timestamp, event_id, event, path,
       if(source != '' OR referrer = '' OR domainWithoutWWW(referrer) IN ('', domainWithoutWWW(url)),
          source, domainWithoutWWW(referrer)),
       if(utm_source != '', utm_source, extractURLParameter(url, 'utm_source')),
       if(utm_medium != '', utm_medium, extractURLParameter(url, 'utm_medium')),
       if(utm_campaign != '', utm_campaign, extractURLParameter(url, 'utm_campaign')),
       country, device_type, browser, os
FROM events FINAL
WHERE event = '$page';

CREATE TABLE IF NOT EXISTS breakdown_sessions
(
    project_id   String,
    day          Date,
    anonymous_id String,
    session_id   String,
    entry_path   String,
    exit_path    String,
    source       LowCardinality(String),
    utm_source   LowCardinality(String),
    utm_medium   LowCardinality(String),
    utm_campaign LowCardinality(String),
    country      LowCardinality(String),
    device_type  LowCardinality(String),
    browser      LowCardinality(String),
    os           LowCardinality(String),
    page_views   UInt32,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, day, anonymous_id, session_id): a breakdown reads one project's range
-- of days; the session makes the key unique.
ORDER BY (project_id, day, anonymous_id, session_id);

CREATE TABLE IF NOT EXISTS breakdown_pages
(
    project_id   String,
    day          Date,
    anonymous_id String,
    session_id   String,
    path         String,
    views        UInt32,
    timed_views  UInt32,
    time_ms      Int64,
    is_entry     UInt8,
    is_exit      UInt8,
    bounced      UInt8,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, day, anonymous_id, session_id, path): as breakdown_sessions, with the
-- path making the key unique per (session, path).
ORDER BY (project_id, day, anonymous_id, session_id, path);


-- The breakdown rows of the sessions already there, as the refresh computes them
-- (services/aggregator/breakdowns.py; test_migrations holds the two to the same rows).
INSERT INTO breakdown_pages (project_id, day, anonymous_id, session_id, path, views, timed_views,
    time_ms, is_entry, is_exit, bounced, version, is_deleted)
SELECT project_id, day, anonymous_id, session_id, path, toUInt32(count()), toUInt32(sum(timed)),
       toInt64(sum(spent)), toUInt8(max(i = 1)), toUInt8(max(i = n)),
       toUInt8(max(i = 1 AND page_views = 1)), any(version), 0
FROM (
    SELECT project_id, day, anonymous_id, session_id, page_views, version, last_ms, length(views) AS n,
           arrayJoin(arrayEnumerate(views)) AS i, views[i].2 AS path, views[i].1 AS t,
           toUInt8(i < n OR (page_views = n AND last_ms > t)) AS timed,
           if(i < n, views[i + 1].1 - t, if(timed = 1, last_ms - t, 0)) AS spent
    FROM (
    SELECT s.project_id AS project_id, s.anonymous_id AS anonymous_id, s.session_id AS session_id,
           toDate(s.start_at) AS day, toUnixTimestamp64Milli(s.last_event_at) AS last_ms,
           s.page_views AS page_views, s.version AS version,
           arraySlice(arraySort(groupArray((toUnixTimestamp64Milli(v.timestamp), v.path,
               toString(v.source), toString(v.utm_source), toString(v.utm_medium),
               toString(v.utm_campaign), toString(v.country), toString(v.device_type),
               toString(v.browser), toString(v.os)))), 1, 100) AS views
    FROM (SELECT * FROM visitor_events FINAL WHERE event = '$page') AS v
    -- the sessions on the right: ClickHouse holds the right side of a join in memory
    INNER JOIN (SELECT project_id, anonymous_id, session_id, start_at, last_event_at, page_views, version
                FROM sessions FINAL WHERE is_deleted = 0 AND page_views > 0) AS s
        ON v.project_id = s.project_id AND v.distinct_id = s.anonymous_id
    WHERE v.timestamp >= s.start_at AND v.timestamp <= s.last_event_at
    GROUP BY s.project_id, s.anonymous_id, s.session_id, s.start_at, s.last_event_at, s.page_views, s.version
)
)
GROUP BY project_id, day, anonymous_id, session_id, path;

INSERT INTO breakdown_sessions (project_id, day, anonymous_id, session_id, entry_path, exit_path,
    source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os, page_views, version,
    is_deleted)
SELECT project_id, day, anonymous_id, session_id, views[1].2, views[length(views)].2,
       views[1].3, views[1].4, views[1].5, views[1].6, views[1].7, views[1].8, views[1].9, views[1].10,
       page_views, version, 0
FROM (
    SELECT s.project_id AS project_id, s.anonymous_id AS anonymous_id, s.session_id AS session_id,
           toDate(s.start_at) AS day, toUnixTimestamp64Milli(s.last_event_at) AS last_ms,
           s.page_views AS page_views, s.version AS version,
           arraySlice(arraySort(groupArray((toUnixTimestamp64Milli(v.timestamp), v.path,
               toString(v.source), toString(v.utm_source), toString(v.utm_medium),
               toString(v.utm_campaign), toString(v.country), toString(v.device_type),
               toString(v.browser), toString(v.os)))), 1, 100) AS views
    FROM (SELECT * FROM visitor_events FINAL WHERE event = '$page') AS v
    -- the sessions on the right: ClickHouse holds the right side of a join in memory
    INNER JOIN (SELECT project_id, anonymous_id, session_id, start_at, last_event_at, page_views, version
                FROM sessions FINAL WHERE is_deleted = 0 AND page_views > 0) AS s
        ON v.project_id = s.project_id AND v.distinct_id = s.anonymous_id
    WHERE v.timestamp >= s.start_at AND v.timestamp <= s.last_event_at
    GROUP BY s.project_id, s.anonymous_id, s.session_id, s.start_at, s.last_event_at, s.page_views, s.version
);

-- Each settled day's breakdowns (a UTC day before today): a row per (day, dimension, value)
-- with its figures, and visitors as a mergeable distinct count, so a 30-day breakdown adds up
-- 30 rows per value instead of reading every session of the period. Rolled up by the
-- aggregator (services/aggregator/breakdowns.py) from the two tables above, for each settled
-- day a batch changed; a row with dimension '' marks the day as rolled up. The breakdowns read
-- it for the days it has, and the tables above for the others (today, a day not yet rolled up)
-- and for filtered views. Visitors: uniqCombined64(12), HyperLogLog with 2^12 cells (exact up
-- to some hundreds of visitors per value and day, standard error about 1.6 % beyond; states of
-- about 3 KB, where the default 2^17 cells made a 30-day breakdown merge 100 KB a day and value).
-- ReplacingMergeTree(version, is_deleted): a roll-up rewrites the day's rows with a new
-- version; a value the day no longer has gets a tombstone. Reads use FINAL.
CREATE TABLE IF NOT EXISTS breakdown_daily
(
    project_id String,
    dimension  LowCardinality(String),
    day        Date,
    value      String,
    visitors   AggregateFunction(uniqCombined64(12), String),
    sessions   UInt64,
    page_views UInt64,
    bounced    UInt64,
    entered    UInt64,
    time_ms    Int64,
    timed      UInt64,
    version    UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, dimension, day, value): a breakdown reads one dimension of one project
-- over a range of days; the value makes the key unique.
ORDER BY (project_id, dimension, day, value);
