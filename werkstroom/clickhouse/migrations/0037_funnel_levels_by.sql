-- funnel_levels' rows again under each filter value of their person (person_first_by, 0033: a
-- row per person and value of a filter on the session's entry page view, or per person and
-- plan): a funnel's report narrowed by one such filter, or a plan, counts a person at level k when
-- its level-k row's last day and its last day of the value are both in the report's days. It read
-- the value's persons from person_first_by and looked each of the funnel's rows up in them (at
-- 10M events / 1M persons, country=NL over 30 days: 133k persons against 975k rows, 90-105 ms).
-- Here one value's rows of a funnel are a contiguous run, with the earlier of the two days.
-- The aggregator keeps it after each refresh's funnel levels, for the refreshed persons (and
-- those merged away): each of their live levels under each of their live values, and a tombstone
-- for every other pair they ever had (services/aggregator/funnels.py). About 20 rows per
-- funnel_levels row (a person has a value of each of 8 filters, some more than one, and a plan:
-- 14.5 at 10M events).
-- ReplacingMergeTree(version, is_deleted): reads use FINAL and is_deleted = 0.
CREATE TABLE IF NOT EXISTS funnel_levels_by
(
    project_id   String,
    funnel_id    String,
    filter       LowCardinality(String),
    filter_value String,
    level        UInt8,
    person_id    String,
    -- the earlier of the level's last day (funnel_levels) and the value's (person_first_by)
    last_day     Date,
    -- the person's plan (its person_first_by plan row's): a rolled filter with a plan keeps the
    -- value's rows of that plan, where it looked each row up in the plan's persons
    plan         LowCardinality(String),
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY tuple()
-- ORDER BY (project_id, funnel_id, filter, filter_value, level, person_id): a filtered report reads
-- one funnel's rows of one value; the person last is the identity FINAL collapses on (the day is
-- not in the key: a row changes its day in place).
ORDER BY (project_id, funnel_id, filter, filter_value, level, person_id);

-- The rows already there: each live funnel_levels row under each live person_first_by row of its
-- person, with its plan row's plan. Run with the aggregators stopped, as the other migrations
-- that copy a table.
INSERT INTO funnel_levels_by (project_id, funnel_id, filter, filter_value, level, person_id, last_day,
    plan, version, is_deleted)
SELECT v.project_id, l.funnel_id, v.filter, v.filter_value, l.level, v.person_id, least(l.last_day, v.last_day),
       pl.plan, 0, 0
FROM (SELECT project_id, person_id, filter, filter_value, last_day FROM person_first_by FINAL
      WHERE is_deleted = 0) AS v
-- the levels and the plans on the right, the smaller sides: ClickHouse holds the right side of a
-- join in memory
INNER JOIN (SELECT project_id, funnel_id, level, person_id, last_day FROM funnel_levels FINAL
            WHERE is_deleted = 0) AS l
    ON l.project_id = v.project_id AND l.person_id = v.person_id
LEFT JOIN (SELECT project_id, person_id, filter_value AS plan FROM person_first_by FINAL
           WHERE filter = 'plan' AND is_deleted = 0) AS pl
    ON pl.project_id = v.project_id AND pl.person_id = v.person_id
-- The joins' right sides (every level, every plan row) in buckets of at most 50 MB, the others
-- on disk (grace_hash), instead of whole in memory (the default hash join): at 10M events the
-- SELECT alone took 0.4-1 GB that way, and it grows with the persons; so 300 MB, 9.0 -> 12.3 s
-- (bench/README.md, 2026-12-05 stop 47). As services/aggregator/funnels.py BOUNDED_JOINS.
SETTINGS join_algorithm = 'grace_hash', grace_hash_join_initial_buckets = 8, max_bytes_in_join = 50000000;
