-- Each person per filter value it had a session of: a row per (filter, filter value, person),
-- person_activity_by (0031) folded over its days, and a row per person under filter 'plan' and
-- its plan (persons' `plan`: what the `plan` filter and the plan segments keep) folded over all
-- its sessions' days, with what the metric cards narrowed by one such filter need of the person:
-- - first_day, last_day: its first and last day of the value (person_activity_by's days);
-- - first_seen_day: the day it was first seen (persons_first_day's: its persons row's
--   first_seen in the project's zone), for "new this week";
-- - recent_days, recent_active: churn's (werkstroom.churn.RECENT_BITS) recent days of the value
--   and recent active days of the person (person_activity's), a bit per day: bit
--   (toUInt16(day) % 64) for each day from 22 days before the write's UTC day on.
-- What the cards ("total users", "new this week", churn), the users list and a funnel's persons
-- over its last N days count with one such filter (a plan's persons were every matching session
-- joined to every visitor's person): they read every day's row of the value from
-- person_activity_by, about two per person over 30 days and more with every month kept, and
-- joined every person's activity for churn, where this holds one row per person.
-- The aggregator keeps it (services/aggregator/derived.py, FIRST_BY_INSERT): after writing a
-- batch's persons' person_activity_by rows, it rewrites all their rows here (a tombstone for a
-- value a person no longer has) at the batch's version, as it does their other rows.
-- ReplacingMergeTree(version, is_deleted): reads use FINAL and is_deleted = 0.
CREATE TABLE IF NOT EXISTS person_first_by
(
    project_id     String,
    filter         LowCardinality(String),
    filter_value   String,
    person_id      String,
    first_day      Date,
    last_day       Date,
    first_seen_day Date,
    recent_days    UInt64,
    recent_active  UInt64,
    is_deleted     UInt8,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- No partitions: a row has no day of its own (its days change), and a view reads all of one
-- value's rows.
PARTITION BY tuple()
-- ORDER BY (project_id, filter, filter_value, person_id): a view reads one value's persons, a
-- contiguous run. The person makes the key unique. The aggregator writes without reading it.
ORDER BY (project_id, filter, filter_value, person_id);

-- The rows of person_activity_by written so far. Run with the aggregators stopped, as the other
-- migrations that copy a table: a person rewritten meanwhile by an older aggregator would not be
-- here until its next rewrite.
INSERT INTO person_first_by
    (project_id, filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days,
     recent_active, is_deleted, version)
SELECT a.project_id, a.filter, a.filter_value, a.person_id, a.first_day, a.last_day, f.day, a.recent,
       r.recent, 0, 0
FROM (
    SELECT project_id, filter, filter_value, person_id, min(day) AS first_day, max(day) AS last_day,
           groupBitOrIf(bitShiftLeft(toUInt64(1), toUInt16(day) % 64), day >= today() - 22) AS recent
    FROM person_activity_by FINAL
    WHERE is_deleted = 0
    GROUP BY project_id, filter, filter_value, person_id
    UNION ALL
    -- the persons' plans, over the days of their sessions: every session has a country ('' too),
    -- so a person's `country` rows are its days
    SELECT v.project_id, 'plan', m.plan, v.person_id, v.first_day, v.last_day, v.recent
    FROM (
        SELECT project_id, person_id, min(day) AS first_day, max(day) AS last_day,
               groupBitOrIf(bitShiftLeft(toUInt64(1), toUInt16(day) % 64), day >= today() - 22) AS recent
        FROM person_activity_by FINAL
        WHERE is_deleted = 0 AND filter = 'country'
        GROUP BY project_id, person_id
    ) AS v
    INNER JOIN (SELECT project_id, person_id, plan FROM persons FINAL WHERE is_deleted = 0) AS m
        ON m.project_id = v.project_id AND m.person_id = v.person_id
) AS a
LEFT JOIN (SELECT project_id, person_id, day FROM persons_first_day FINAL WHERE is_deleted = 0) AS f
    ON f.project_id = a.project_id AND f.person_id = a.person_id
LEFT JOIN (
    SELECT project_id, person_id, groupBitOr(bitShiftLeft(toUInt64(1), toUInt16(day) % 64)) AS recent
    FROM person_activity FINAL
    WHERE is_deleted = 0 AND day >= today() - 22
    GROUP BY project_id, person_id
) AS r ON r.project_id = a.project_id AND r.person_id = a.person_id;
