-- The days each person had a session matching one filter value: a row per (day, filter, filter
-- value, person) for the attributes of a session's entry page view that activity_daily_by rolls
-- up (source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os), the day
-- being the one a breakdown_sessions row is under (the local day its session starts on), the
-- person its visitor's live person (visitor_persons), else the visitor. What the metric cards,
-- churn's base and the users list narrowed by one such filter count: they computed it from every
-- matching session of the project's days joined to every visitor's person (the cards 0.5 s at
-- 10M events, the users list 0.24 s; bench/README.md, 2026-12-04).
-- The aggregator keeps it as person_activity (services/aggregator/derived.py): for the persons a
-- batch rewrites, over the days it dirtied and the days of the sessions of visitors that joined
-- or left them, a row for each day and value they now have and a tombstone for each they no
-- longer have (a merged-away person has none).
-- ReplacingMergeTree(version, is_deleted): reads use FINAL and is_deleted = 0.
CREATE TABLE IF NOT EXISTS person_activity_by
(
    project_id   String,
    day          Date,
    filter       LowCardinality(String),
    filter_value String,
    person_id    String,
    is_deleted   UInt8,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, day, filter, filter_value, person_id): the aggregator reads a few
-- persons' rows of the days a batch dirtied (every filter); a view reads one value's rows of a
-- range of days, a contiguous run within each day. The person makes the key unique.
ORDER BY (project_id, day, filter, filter_value, person_id);

-- The same rows sorted by person, for the aggregator: it compares a batch's persons' rows over
-- the days the batch touched, which in person_activity_by (sorted by day, then value) is a read
-- of every row of those days (an identify of a visitor with 34 days of sessions: 640 ms at 10M
-- events), here a range per person. Written by the view below with every insert into
-- person_activity_by, the same rows and versions; only the aggregator reads it.
CREATE TABLE IF NOT EXISTS person_activity_by_person AS person_activity_by
ENGINE = ReplacingMergeTree(version, is_deleted)
-- No partitions: a person's rows of every month in one range of a part (monthly partitions
-- would make each lookup one per month).
PARTITION BY tuple()
-- ORDER BY (project_id, person_id, day, filter, filter_value): the aggregator reads a few
-- persons' rows of some days; the key is person_activity_by's, reordered. Granules of 256 rows
-- and small compressed blocks, as the other tables read by id (0007, 0016): a person has about
-- 20 rows, and 100 persons read 186 granules of 8,192 rows (50-68 ms at 10M events).
ORDER BY (project_id, person_id, day, filter, filter_value)
SETTINGS index_granularity = 256, min_compress_block_size = 4096, max_compress_block_size = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS person_activity_by_person_mv TO person_activity_by_person AS
SELECT project_id, day, filter, filter_value, person_id, is_deleted, version FROM person_activity_by;

-- The rows of the sessions and persons written so far (into both tables, by the view). Run with
-- the aggregators stopped, as the other migrations that copy a table: a person rewritten
-- meanwhile by an older aggregator would not be here until its next rewrite.
INSERT INTO person_activity_by (project_id, day, filter, filter_value, person_id, is_deleted, version)
SELECT DISTINCT s.project_id, s.day, s.f.1, s.f.2, if(m.visitor = '', s.anonymous_id, m.person_id), 0, 0
FROM (SELECT project_id, day, anonymous_id,
             arrayJoin([('source', toString(source)), ('utm_source', toString(utm_source)),
                        ('utm_medium', toString(utm_medium)), ('utm_campaign', toString(utm_campaign)),
                        ('country', toString(country)), ('device_type', toString(device_type)),
                        ('browser', toString(browser)), ('os', toString(os))]) AS f
      FROM breakdown_sessions FINAL WHERE is_deleted = 0) AS s
LEFT JOIN (SELECT project_id, visitor, person_id FROM visitor_persons FINAL WHERE is_deleted = 0) AS m
    ON m.project_id = s.project_id AND m.visitor = s.anonymous_id;
