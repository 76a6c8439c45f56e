-- Which funnels the aggregator has back-filled: a new funnel's definition is stored by the API
-- or the CLI, and the aggregator computes every person's progress in it from the events stored
-- before (services/aggregator/funnels.py), then writes its row here. Until then the funnel's
-- report counts only the persons whose events arrived since, and says so (`backfilled`).
-- ReplacingMergeTree(version): a back-fill done twice (two workers, a restart) leaves one row.
CREATE TABLE IF NOT EXISTS funnel_backfills
(
    project_id String,
    funnel_id  String,
    rows       UInt64,
    done_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, funnel_id): looked up per project and funnel, one row each.
ORDER BY (project_id, funnel_id);

-- The funnels that exist already were back-filled when they were created.
INSERT INTO funnel_backfills (project_id, funnel_id, rows, version)
SELECT project_id, funnel_id, 0, version FROM funnels FINAL WHERE is_deleted = 0;
