-- breakdown_sessions' rows again, sorted by their person's plan: each live session under the
-- plan its visitor's live person has now (visitor_persons, 0030), with that person and the
-- moment it was first seen. What the views narrowed by a plan (`plan=`, segment=premium or
-- trial) read: the activity chart, the breakdowns, "online now" and funnels under a plan read
-- every session of their range from breakdown_sessions and kept those whose visitor is in the
-- plan's set of visitors (at 10M events, 64,042 premium visitors of 1.48M sessions over 30
-- days: 80-95 ms of reading and hashing every session's visitor and building the set; the
-- sessions of the range alone read in 27 ms). Here a plan's sessions are a contiguous run.
-- The aggregator keeps it (services/aggregator/plans.py): over the days a batch can change a
-- row of (its dirty days, the days of the members that moved between persons, and every day of
-- the members of a person whose plan or first moment changed), each of the persons' members'
-- breakdown_sessions rows under the person's plan, a row for each one that differs and a
-- tombstone for each held row that is no longer there (the old plan's, after a change).
-- ReplacingMergeTree(version, is_deleted): reads use FINAL and is_deleted = 0.
CREATE TABLE IF NOT EXISTS plan_sessions
(
    project_id   String,
    plan         LowCardinality(String),
    day          Date,
    anonymous_id String,
    session_id   String,
    person_id    String,
    first_seen   DateTime64(3, 'UTC'),
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
    start_at     DateTime64(3, 'UTC'),
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, plan, day, anonymous_id, session_id): a view under a plan reads one
-- plan's range of days; the rest is breakdown_sessions' key, which makes a row unique.
ORDER BY (project_id, plan, day, anonymous_id, session_id);

-- The sessions already there, each under its visitor's person now (a visitor in no
-- visitor_persons row has no person yet, and no plan filter keeps it: no row, as the aggregator
-- writes none). Run with the aggregators stopped, as the other migrations that copy a table.
INSERT INTO plan_sessions (project_id, plan, day, anonymous_id, session_id, person_id, first_seen,
    entry_path, exit_path, source, utm_source, utm_medium, utm_campaign, country, device_type, browser,
    os, page_views, duration_ms, start_at, version, is_deleted)
SELECT s.project_id, m.plan, s.day, s.anonymous_id, s.session_id, m.person_id, m.first_seen, s.entry_path,
       s.exit_path, s.source, s.utm_source, s.utm_medium, s.utm_campaign, s.country, s.device_type,
       s.browser, s.os, s.page_views, s.duration_ms, s.start_at, 0, 0
FROM (SELECT * FROM breakdown_sessions FINAL WHERE is_deleted = 0) AS s
-- the persons on the right: ClickHouse holds the right side of a join in memory
INNER JOIN (SELECT project_id, visitor, person_id, first_seen, plan FROM visitor_persons FINAL
            WHERE is_deleted = 0) AS m
    ON m.project_id = s.project_id AND m.visitor = s.anonymous_id;
