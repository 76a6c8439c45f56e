-- Each person once, under the UTC day of their first visit: what daily_stats counts new users
-- from. They were counted in `persons` (sorted by person) by toDate(first_seen), a scan of the
-- project's persons at every recomputation: 36-45 ms at 500,000 persons, 85-114 ms at 1M
-- (bench/refresh_bench.py), growing with every visitor the site ever had; here a day's count
-- reads that day's new persons.
-- Kept by the aggregator's recomputation (services/aggregator/derived.py) with the persons it
-- rewrites: a row under the person's first day, and a tombstone (is_deleted = 1) under the day
-- it was on before, when a late event or a merge moved the first visit, or the person merged
-- away. ReplacingMergeTree(version, is_deleted): version = the recomputation's. Reads use FINAL.
CREATE TABLE IF NOT EXISTS persons_first_day
(
    project_id String,
    day        Date,
    person_id  String,
    is_deleted UInt8,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, day, person_id): new users of a day are one range; a recomputation
-- checks its persons' rows on their old and new first days; the person makes the key unique.
ORDER BY (project_id, day, person_id);

-- The persons already there. Run with the aggregator stopped (as `werkstroom migrate` before
-- a deploy), like 0010. A rerun inserts the same rows, which collapse on the key.
INSERT INTO persons_first_day (project_id, day, person_id, is_deleted, version)
SELECT project_id, toDate(first_seen), person_id, 0, version
FROM persons FINAL
WHERE is_deleted = 0;
