-- Events ingest filtered as bots (crawlerdetect on the User-Agent: crawlers, curl, scripts,
-- headless browsers), read from the bots topic (`werkstroom.bots.v1`) by the aggregator's bots
-- consumer (services/aggregator/bots.py), so that the dashboard can say how many were filtered.
-- Never part of the visitor figures. Only what a "filtered as bots" line needs is kept.
-- ReplacingMergeTree: the bots topic is read again from its start whenever its offsets start
-- over (the embedded broker's restarts and topic swaps); the same event collapses into one row
-- on the sorting key, and reads count uniqExact(event_id), exact before any merge.
CREATE TABLE IF NOT EXISTS bot_events
(
    project_id   String,
    day          Date,
    timestamp    DateTime64(3, 'UTC'),
    event_id     String,
    type         LowCardinality(String),
    event        String,
    path         String,
    device_type  LowCardinality(String),
    browser      LowCardinality(String),
    os           LowCardinality(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, day, event_id): the API counts one project's bot events per day (the
-- activity days, today's in the freshness line); event_id last is what a replay collapses on.
ORDER BY (project_id, day, event_id)
-- Informational only: 35 days cover the dashboard's 30-day chart and bound the storage.
TTL day + INTERVAL 35 DAY;
