-- The time zone each project's day-keyed rows were computed in (services/aggregator/rezone.py):
-- kafka_partition -1 for the derived tables (persons' days, sessions_daily, daily_stats, churn,
-- the breakdowns, the funnels), p >= 0 for events_daily's rows of partition p (each counted by
-- the worker that holds the partition). A project whose zone (projects.timezone) differs from
-- its rows' is recomputed in its zone, then recorded here. No row: computed in UTC (every
-- project before 0024 was UTC; one created elsewhere since is recomputed once, from nothing).
-- ReplacingMergeTree(version): the latest record wins; reads use FINAL (a row per project and
-- partition).
CREATE TABLE IF NOT EXISTS project_zones
(
    project_id      String,
    kafka_partition Int64,
    timezone        String,
    version         UInt64,
    updated_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, kafka_partition): one record per project and partition (-1: derived),
-- which FINAL collapses on; the aggregator reads them all (projects x partitions rows).
ORDER BY (project_id, kafka_partition);
