-- Users online under each rolled filter value (werkstroom.breakdowns.ROLLED_FILTERS: the
-- attributes of a session's entry page view), recorded by the aggregator once a minute beside
-- online_history: the visitors online whose current session has a breakdown_sessions row with
-- that value, as the "online now" card counts them under that filter. The filtered "online a
-- week ago" card reads a row here instead of every session of two days of the value (at 10M
-- events, country=NL, 10 ms of CPU of the filtered cards' 60). A value nobody was online with has
-- no row. A minute is recorded for a filter when it has a row of that filter (every online
-- visitor with a breakdown_sessions row gives each filter a value, '' too); then its missing
-- values are 0. version = write time in ms. Kept 8 days: its one reader looks a week back, and
-- a minute has a row per value online then (hundreds on a busy site: ~1 GB a year kept whole).
CREATE TABLE IF NOT EXISTS online_history_by
(
    project_id   String,
    filter       LowCardinality(String),
    filter_value String,
    minute       DateTime('UTC'),
    online       UInt32,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(minute)
-- ORDER BY (project_id, filter, minute, filter_value): the card reads one filter's rows of the
-- few minutes around a week ago (its value's, and whether the minute was recorded); the value
-- makes the key unique.
ORDER BY (project_id, filter, minute, filter_value)
TTL minute + INTERVAL 8 DAY;
