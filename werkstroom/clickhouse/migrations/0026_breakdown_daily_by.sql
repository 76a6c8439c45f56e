-- Each settled day's breakdowns narrowed by one attribute of the session's entry page view
-- (source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os): a row per
-- (day, filter, filter value, dimension, value) with breakdown_daily's figures. A breakdown with
-- one such filter (the dashboard's first click: "country = NL") then adds up a day's rows per
-- value instead of reading every session of the period (60 days of breakdown_sessions under
-- FINAL, 0.2-2.5 s at 10M events: bench/README.md, 2026-12-03). Other filters (a page, an entry
-- or exit page, plan, segment, two filters at once) are still computed from the breakdown tables.
-- Rolled up by the aggregator with breakdown_daily (services/aggregator/breakdowns.py), from the
-- same rows; a row with filter '' marks the day as rolled up here. The days rolled up before
-- this migration have no marker: the next aggregator to start rolls them up, one day at a time
-- beside its batches; until then they are read from the tables.
-- ReplacingMergeTree(version, is_deleted), as breakdown_daily: a roll-up rewrites the day's rows
-- with a new version; a row the day no longer has gets a tombstone. Reads use FINAL.
CREATE TABLE IF NOT EXISTS breakdown_daily_by
(
    project_id   String,
    filter       LowCardinality(String),
    filter_value String,
    dimension    LowCardinality(String),
    day          Date,
    value        String,
    visitors     AggregateFunction(uniqCombined64(12), String),
    sessions     UInt64,
    page_views   UInt64,
    bounced      UInt64,
    entered      UInt64,
    time_ms      Int64,
    timed        UInt64,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, filter, filter_value, dimension, day, value): a filtered breakdown reads
-- one dimension of one project under one filter value over a range of days; the value makes the
-- key unique.
ORDER BY (project_id, filter, filter_value, dimension, day, value)
-- 256-row granules: a row's visitors state is up to 3 KB, so a default 8,192-row granule is up
-- to 24 MB read for the few hundred rows a breakdown wants (at 10M events, country = NL over
-- 7 and 30 days with every day rolled up: 71-116 ms with 8,192 rows a granule, 38-47 with 256).
SETTINGS index_granularity = 256;
