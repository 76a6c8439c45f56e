-- What the breakdowns read (pages, entry and exit pages, sources, campaigns, countries, devices,
-- browsers, OSes over a date range): a 30-day scan of `events` (about 5M rows on the bench's 10M)
-- cannot answer in 50 ms, so the aggregator writes two tables beside it from the sessions it
-- holds (services/aggregator/breakdowns.py), each row under the UTC day its session starts on:
--   breakdown_sessions  one row per session that has a page view: its entry and exit page, the
--                       attributes of its entry page view (source, utm_*, country, device,
--                       browser, OS), as Plausible counts them, and its page views;
--   breakdown_pages     one row per (session, path) viewed: views, time on page, whether the
--                       session entered, left or bounced there (a filter on the session's
--                       attributes reads its breakdown_sessions row).
-- ReplacingMergeTree(version, is_deleted): version = the session's version (the position of its
-- last event); a row the session leaves (it moved to an earlier day, was absorbed, no longer
-- lists the path) gets a tombstone with a later version. Reads use FINAL and is_deleted = 0.

-- The sessions keep what the aggregator computes those rows from, so that a visitor reloaded
-- after a restart goes on exactly: the times of its page views (`pages`, now its first page
-- views in (time, path) order, up to 100) and the attributes of its entry page view.
ALTER TABLE sessions
    ADD COLUMN IF NOT EXISTS page_times_ms Array(Int64) DEFAULT [] AFTER pages,
    ADD COLUMN IF NOT EXISTS entry_source LowCardinality(String) DEFAULT '' AFTER os,
    ADD COLUMN IF NOT EXISTS entry_utm_source LowCardinality(String) DEFAULT '' AFTER entry_source,
    ADD COLUMN IF NOT EXISTS entry_utm_medium LowCardinality(String) DEFAULT '' AFTER entry_utm_source,
    ADD COLUMN IF NOT EXISTS entry_utm_campaign LowCardinality(String) DEFAULT '' AFTER entry_utm_medium,
    ADD COLUMN IF NOT EXISTS entry_country LowCardinality(String) DEFAULT '' AFTER entry_utm_campaign,
    ADD COLUMN IF NOT EXISTS entry_device_type LowCardinality(String) DEFAULT '' AFTER entry_country,
    ADD COLUMN IF NOT EXISTS entry_browser LowCardinality(String) DEFAULT '' AFTER entry_device_type,
    ADD COLUMN IF NOT EXISTS entry_os LowCardinality(String) DEFAULT '' AFTER entry_browser;

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

-- The sessions already there, rewritten with their page views' times and entry attributes from
-- `events` (same version: the row inserted last wins). Run with the aggregators stopped, as
-- `werkstroom migrate` before a deploy; a rerun writes the same rows. Events written before 0022
-- have no source or campaign: they are taken from the referrer's host (without www., '' for the
-- page's own host; not grouped into names such as Google, which only ingest does) and from the
-- URL's utm_* parameters. A session whose page views are gone from `events` keeps its row, and
-- the aggregator leaves its breakdown rows alone (it has none).
INSERT INTO sessions (project_id, anonymous_id, session_id, user_id, start_at, last_event_at,
    entry_at, entry_url, entry_path, referrer, current_url, current_path, current_title,
    page_entered_at, page_views, events, pages, page_times_ms, device_type, browser, os,
    entry_source, entry_utm_source, entry_utm_medium, entry_utm_campaign, entry_country, entry_device_type, entry_browser, entry_os,
    kafka_partition, version, is_deleted, updated_at)
SELECT s.project_id, s.anonymous_id, s.session_id, s.user_id, s.start_at, s.last_event_at,
       s.entry_at, s.entry_url, s.entry_path, s.referrer, s.current_url, s.current_path,
       s.current_title, s.page_entered_at, s.page_views, s.events,
       arrayMap(x -> x.2, v.views), arrayMap(x -> x.1, v.views), s.device_type, s.browser, s.os,
       v.views[1].3, v.views[1].4, v.views[1].5, v.views[1].6, v.views[1].7, v.views[1].8, v.views[1].9, v.views[1].10,
       s.kafka_partition, s.version, 0, s.updated_at
FROM (SELECT * FROM sessions FINAL WHERE is_deleted = 0 AND page_views > 0) AS s
INNER JOIN (
    SELECT s.session_id AS session_id,
           arraySlice(arraySort(x -> (x.1, x.2), groupArray((toUnixTimestamp64Milli(e.timestamp), e.path,
               e.source, e.utm_source, e.utm_medium, e.utm_campaign, e.country, e.device_type,
               e.browser, e.os))), 1, 100) AS views
    FROM (
        SELECT project_id, anonymous_id, timestamp, path,
               if(source != '' OR referrer = '' OR domainWithoutWWW(referrer) IN ('', domainWithoutWWW(url)),
                  source, domainWithoutWWW(referrer)) AS source,
               if(utm_source != '', utm_source, extractURLParameter(url, 'utm_source')) AS utm_source,
               if(utm_medium != '', utm_medium, extractURLParameter(url, 'utm_medium')) AS utm_medium,
               if(utm_campaign != '', utm_campaign, extractURLParameter(url, 'utm_campaign')) AS utm_campaign,
               country, device_type, browser, os
        FROM events FINAL
        WHERE type = 'page' AND anonymous_id != ''
    ) AS e
    -- the sessions on the right: ClickHouse holds the right side of a join in memory
    INNER JOIN (SELECT project_id, anonymous_id, session_id, start_at, last_event_at
                FROM sessions FINAL WHERE is_deleted = 0 AND page_views > 0) AS s
        ON e.project_id = s.project_id AND e.anonymous_id = s.anonymous_id
    WHERE e.timestamp >= s.start_at AND e.timestamp <= s.last_event_at
    GROUP BY s.session_id
) AS v ON v.session_id = s.session_id;

-- Their breakdown rows, by the definitions the aggregator writes them with
-- (services/aggregator/breakdowns.py, docs/definitions.md).
INSERT INTO breakdown_pages (project_id, day, anonymous_id, session_id, path, views, timed_views,
    time_ms, is_entry, is_exit, bounced, version, is_deleted)
SELECT project_id, toDate(start_at), anonymous_id, session_id, path, toUInt32(count()),
       toUInt32(sum(timed)), sum(spent), toUInt8(max(i = 1)), toUInt8(max(i = n)),
       toUInt8(max(i = 1 AND page_views = 1)), any(version), 0
FROM (
    SELECT project_id, start_at, anonymous_id, session_id, pages, page_views, version,
           length(pages) AS n, arrayJoin(arrayEnumerate(pages)) AS i, pages[i] AS path,
           page_times_ms[i] AS t, toUnixTimestamp64Milli(last_event_at) AS last_ms,
           toUInt8(i < n OR (page_views = n AND last_ms > t)) AS timed,
           if(i < n, page_times_ms[i + 1] - t, if(timed = 1, last_ms - t, 0)) AS spent
    FROM sessions FINAL WHERE is_deleted = 0
      AND length(pages) > 0 AND length(page_times_ms) = length(pages)
)
GROUP BY project_id, start_at, anonymous_id, session_id, path;

INSERT INTO breakdown_sessions (project_id, day, anonymous_id, session_id, entry_path, exit_path,
    source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os, page_views, version,
    is_deleted)
SELECT project_id, toDate(start_at), anonymous_id, session_id, pages[1], pages[length(pages)],
       entry_source, entry_utm_source, entry_utm_medium, entry_utm_campaign, entry_country,
       entry_device_type, entry_browser, entry_os, page_views, version, 0
FROM sessions FINAL WHERE is_deleted = 0
  AND length(pages) > 0 AND length(page_times_ms) = length(pages);

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
