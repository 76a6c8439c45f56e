-- person_activity sorted by person. Each recomputation compares its persons' stored active
-- days with their sessions (ACTIVITY_DIFF in services/aggregator/derived.py). person_activity
-- is sorted by day, so finding a few persons' days read the project's whole person_id column:
-- 59-70 ms for 100 persons at 2M rows (a month of a site with 60,000 sessions a day), and it
-- grows with every day of history, since active days are kept for good.
-- Filled by ClickHouse from every insert into person_activity (a materialized view): the same
-- rows and versions. ClickHouse writes an insert into person_activity before the view's, so
-- after a crash between the two this copy can only lag behind; the recomputation after the
-- replay then finds the same difference and writes it again.
CREATE TABLE IF NOT EXISTS person_activity_by_person
(
    project_id String,
    person_id  String,
    day        Date,
    is_deleted UInt8,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, person_id, day): a recomputation reads a few persons' days; small
-- granules, as for the other lookup tables (0007).
ORDER BY (project_id, person_id, day)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS person_activity_by_person_mv TO person_activity_by_person AS
SELECT project_id, person_id, day, is_deleted, version
FROM person_activity;

-- The days already there (after the view exists, so none written meanwhile is missed; rows
-- written twice collapse on the key).
INSERT INTO person_activity_by_person (project_id, person_id, day, is_deleted, version)
SELECT project_id, person_id, day, is_deleted, version
FROM person_activity;
