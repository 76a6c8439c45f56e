-- What the breakdowns read (pages, entry and exit pages, sources, campaigns, countries, devices,
-- browsers, OSes per date range): a 30-day scan of `events` (about 5M rows on the bench's 10M)
-- cannot answer in 50 ms, so the aggregator keeps two tables of sessions beside it, each under
-- the UTC day its session starts on, like sessions_daily (0010):
--   breakdown_sessions  one row per session that has a page view: its entry and exit page and
--                       the attributes of its entry page view (source, utm_*, country, device,
--                       browser, OS), as Plausible counts them, with its page views and duration;
--   breakdown_pages     one row per (session, path) viewed: views, time on page, whether the
--                       session entered or left there, and the session's attributes copied,
--                       so that a filter needs no join.
-- Both are recomputed by the aggregator (services/aggregator/breakdowns.py) for the visitors and
-- days it recomputes, from `sessions` and `visitor_pages` (below): a session that moved to
-- another day, was absorbed, or no longer views a path gets a tombstone (is_deleted = 1).
-- ReplacingMergeTree(version, is_deleted): version = the session's version (the position of its
-- last event); a tombstone has the row's version + 1. Reads use FINAL and is_deleted = 0.

-- Every page view, sorted by visitor, narrowed to what a session's breakdown rows need:
-- filled by ClickHouse from each insert into `events` (a materialized view, as visitor_events
-- is), so the recomputation reads a visitor's page views instead of scanning `events` by day.
CREATE TABLE IF NOT EXISTS visitor_pages
(
    project_id   String,
    anonymous_id String,
    timestamp    DateTime64(3, 'UTC'),
    event_id     String,
    path         String,
    source       LowCardinality(String),
    utm_source   LowCardinality(String),
    utm_medium   LowCardinality(String),
    utm_campaign LowCardinality(String),
    country      LowCardinality(String),
    device_type  LowCardinality(String),
    browser      LowCardinality(String),
    os           LowCardinality(String)
)
ENGINE = ReplacingMergeTree
-- ORDER BY (project_id, anonymous_id, timestamp, event_id): the recomputation reads its
-- visitors' page views from a day on, in time order; event_id last makes the key unique per
-- event, so a re-delivered batch's rows collapse.
ORDER BY (project_id, anonymous_id, timestamp, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS visitor_pages_mv TO visitor_pages AS
SELECT project_id, anonymous_id, timestamp, event_id, path, source, utm_source, utm_medium,
       utm_campaign, country, device_type, browser, os
FROM events
WHERE type = 'page' AND anonymous_id != '';

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
    duration_ms  Int64,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, day, anonymous_id, session_id): a breakdown reads one project's range
-- of days; within a day the recomputation reads the rows of the visitors it recomputes; the
-- session makes the key unique.
ORDER BY (project_id, day, anonymous_id, session_id);

CREATE TABLE IF NOT EXISTS breakdown_pages
(
    project_id    String,
    day           Date,
    anonymous_id  String,
    session_id    String,
    path          String,
    views         UInt32,
    timed_views   UInt32,
    time_ms       Int64,
    is_entry      UInt8,
    is_exit       UInt8,
    entry_path    String,
    exit_path     String,
    source        LowCardinality(String),
    utm_source    LowCardinality(String),
    utm_medium    LowCardinality(String),
    utm_campaign  LowCardinality(String),
    country       LowCardinality(String),
    device_type   LowCardinality(String),
    browser       LowCardinality(String),
    os            LowCardinality(String),
    session_views UInt32,
    version       UInt64,
    is_deleted    UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, day, anonymous_id, session_id, path): as breakdown_sessions, with the
-- path making the key unique per (session, path).
ORDER BY (project_id, day, anonymous_id, session_id, path);

-- The page views already there. Run with the aggregators stopped, as `werkstroom migrate`
-- before a deploy (like 0010); a rerun inserts the same rows, which collapse on the key.
-- Events written before 0022 have no source or campaign: they are taken from the referrer's
-- host (without www., '' for the page's own host; not grouped into names such as Google,
-- which only ingest does) and from the URL's utm_* parameters.
INSERT INTO visitor_pages
SELECT project_id, anonymous_id, timestamp, event_id, path,
       if(source != '' OR referrer = '' OR domainWithoutWWW(referrer) IN ('', domainWithoutWWW(url)),
          source, domainWithoutWWW(referrer)),
       if(utm_source != '', utm_source, extractURLParameter(url, 'utm_source')),
       if(utm_medium != '', utm_medium, extractURLParameter(url, 'utm_medium')),
       if(utm_campaign != '', utm_campaign, extractURLParameter(url, 'utm_campaign')),
       country, device_type, browser, os
FROM events FINAL
WHERE type = 'page' AND anonymous_id != '';

-- The breakdown rows of the live sessions already there, by the definitions the aggregator
-- recomputes them with (services/aggregator/breakdowns.py, docs/definitions.md): the session's
-- page views are those of its visitor between its start and its last event; time on a page
-- lasts until the next page view, or for the last one until the session's last event, and is
-- unknown for a last page view that is the session's last event.
INSERT INTO breakdown_pages
SELECT project_id, toDate(start_at), anonymous_id, session_id, path, count(),
       countIf(timed), sumIf(spent_ms, timed), max(n = 1), max(n = views_in_session),
       any(entry_path), any(exit_path), any(e_source), any(e_utm_source), any(e_utm_medium),
       any(e_utm_campaign), any(e_country), any(e_device_type), any(e_browser), any(e_os),
       any(views_in_session), any(version), 0
FROM (
    SELECT *,
           row_number() OVER w AS n,
           count() OVER (PARTITION BY session_id) AS views_in_session,
           leadInFrame(toNullable(timestamp)) OVER (w ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS next_at,
           dateDiff('millisecond', timestamp, ifNull(next_at, last_event_at)) AS spent_ms,
           next_at IS NOT NULL OR last_event_at > timestamp AS timed,
           first_value(path) OVER w_all AS entry_path, last_value(path) OVER w_all AS exit_path,
           first_value(v_source) OVER w_all AS e_source,
           first_value(v_utm_source) OVER w_all AS e_utm_source,
           first_value(v_utm_medium) OVER w_all AS e_utm_medium,
           first_value(v_utm_campaign) OVER w_all AS e_utm_campaign,
           first_value(v_country) OVER w_all AS e_country,
           first_value(v_device_type) OVER w_all AS e_device_type,
           first_value(v_browser) OVER w_all AS e_browser,
           first_value(v_os) OVER w_all AS e_os
    FROM (
        SELECT s.project_id AS project_id, s.anonymous_id AS anonymous_id, s.session_id AS session_id,
               s.start_at AS start_at, s.last_event_at AS last_event_at, s.version AS version,
               v.timestamp AS timestamp, v.event_id AS event_id, v.path AS path, v.source AS v_source,
               v.utm_source AS v_utm_source, v.utm_medium AS v_utm_medium, v.utm_campaign AS v_utm_campaign,
               v.country AS v_country, v.device_type AS v_device_type, v.browser AS v_browser, v.os AS v_os
        FROM (SELECT project_id, anonymous_id, session_id, start_at, last_event_at, version
              FROM sessions FINAL WHERE is_deleted = 0) AS s
        INNER JOIN visitor_pages AS v ON v.project_id = s.project_id AND v.anonymous_id = s.anonymous_id
        WHERE v.timestamp >= s.start_at AND v.timestamp <= s.last_event_at
    )
    WINDOW w AS (PARTITION BY session_id ORDER BY timestamp, event_id),
           w_all AS (PARTITION BY session_id ORDER BY timestamp, event_id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
GROUP BY project_id, start_at, anonymous_id, session_id, path;

INSERT INTO breakdown_sessions
SELECT project_id, day, anonymous_id, session_id, any(entry_path), any(exit_path), any(source),
       any(utm_source), any(utm_medium), any(utm_campaign), any(country), any(device_type),
       any(browser), any(os), sum(views), any(s.duration_ms), any(p.version), 0
FROM breakdown_pages AS p
INNER JOIN (SELECT session_id, dateDiff('millisecond', start_at, last_event_at) AS duration_ms
            FROM sessions FINAL WHERE is_deleted = 0) AS s USING (session_id)
GROUP BY project_id, day, anonymous_id, session_id;
