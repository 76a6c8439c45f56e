-- Each settled day's activity chart narrowed by one attribute of the session's entry page view
-- (source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os): a row per
-- (filter, filter value, day) with the chart's figures of the matching sessions that start on
-- the day (docs/definitions.md, "Filters"): persons (each visitor's live person, else the
-- visitor), new persons (first seen that day), sessions, page views, bounced sessions and the
-- sum of their durations. The filtered chart then reads a row per day instead of every
-- matching session of the range with every visitor's person (30 days of one country at 10M
-- events: about 0.5 s; bench/README.md, 2026-12-04).
-- Rolled up by the aggregator with breakdown_daily_by (services/aggregator/breakdowns.py), for
-- the same days: a settled day a batch changed, and the days whose persons changed, whose
-- distinct persons may change with them: the days of the sessions of a visitor that joined or
-- left a person (identify, alias), the days a person's first day moved from or to.
-- A row with filter '' marks the day as rolled up here; a day without one is read from the
-- breakdown tables and persons, exactly. The days rolled up before this migration have no
-- marker: the next aggregator to start rolls them up, one day at a time beside its batches.
-- ReplacingMergeTree(version, is_deleted), as breakdown_daily_by: a roll-up rewrites the day's
-- rows with a new version; a row the day no longer has gets a tombstone. Reads use FINAL.
CREATE TABLE IF NOT EXISTS activity_daily_by
(
    project_id   String,
    filter       LowCardinality(String),
    filter_value String,
    day          Date,
    persons      UInt64,
    new_persons  UInt64,
    sessions     UInt64,
    page_views   UInt64,
    bounced      UInt64,
    duration_ms  Int64,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, filter, filter_value, day): the filtered chart reads one project under
-- one filter value over a range of days; the day makes the key unique.
ORDER BY (project_id, filter, filter_value, day);
