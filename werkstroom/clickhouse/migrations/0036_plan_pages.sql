-- breakdown_pages' rows again, sorted by their person's plan, as plan_sessions (0034) holds
-- breakdown_sessions': each live (session, path) row under the plan its visitor's live person has
-- now (visitor_persons, 0030). What the top pages narrowed by a plan (`plan=`, segment=premium
-- or trial) read: they read every page row of their range from breakdown_pages and kept those
-- whose visitor is in the plan's set of visitors (at 10M events, 64,042 premium visitors, 5.8M
-- page rows over 60 days: ~100 ms of looking up every row's visitor; the top pages of 30 days
-- under segment=premium 300 ms, plan= 850 ms). Here a plan's page rows are a contiguous run.
-- The aggregator keeps it beside plan_sessions, over the same days and persons
-- (services/aggregator/plans.py): each of the persons' members' breakdown_pages rows under the
-- person's plan, a row for each one that differs and a tombstone for each held row that is no
-- longer there (the old plan's, after a change).
-- ReplacingMergeTree(version, is_deleted): reads use FINAL and is_deleted = 0.
CREATE TABLE IF NOT EXISTS plan_pages
(
    project_id   String,
    plan         LowCardinality(String),
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
-- ORDER BY (project_id, plan, day, anonymous_id, session_id, path): a view under a plan reads one
-- plan's range of days; the rest is breakdown_pages' key, which makes a row unique.
ORDER BY (project_id, plan, day, anonymous_id, session_id, path);

-- The page rows already there, each under its visitor's person now (a visitor in no
-- visitor_persons row has no person yet, and no plan filter keeps it: no row, as the aggregator
-- writes none). Run with the aggregators stopped, as the other migrations that copy a table.
INSERT INTO plan_pages (project_id, plan, day, anonymous_id, session_id, path, views, timed_views,
    time_ms, is_entry, is_exit, bounced, version, is_deleted)
SELECT s.project_id, m.plan, s.day, s.anonymous_id, s.session_id, s.path, s.views, s.timed_views,
       s.time_ms, s.is_entry, s.is_exit, s.bounced, 0, 0
FROM (SELECT * FROM breakdown_pages FINAL WHERE is_deleted = 0) AS s
-- the persons on the right: ClickHouse holds the right side of a join in memory
INNER JOIN (SELECT project_id, visitor, plan FROM visitor_persons FINAL WHERE is_deleted = 0) AS m
    ON m.project_id = s.project_id AND m.visitor = s.anonymous_id;
