-- Every mapping of a distinct id to a person, sorted by person: the aggregator's recomputation
-- finds a person's ids backwards (identity.members), and person_distinct_ids, sorted by
-- distinct id, answered that by a scan of its person_id column: 41-58 ms per lookup of 100
-- persons at 2M mappings, one to eight lookups per recomputation, growing with every id the
-- site ever identified.
-- Written by the aggregator with each person_distinct_ids row (same rows: a replay writes them
-- again, as it does those). A row stays when its id is later mapped to another person: a
-- reader takes the ids found here as candidates and keeps those whose latest mapping in
-- person_distinct_ids still names the person.
CREATE TABLE IF NOT EXISTS person_distinct_ids_by_person
(
    project_id  String,
    person_id   String,
    distinct_id String,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, person_id, distinct_id): a person's ids are one range; the id makes
-- the key unique per mapping.
ORDER BY (project_id, person_id, distinct_id)
SETTINGS index_granularity = 256;

-- The mappings already there, every version (a reader checks the latest). Run with the
-- aggregator stopped, like 0010.
INSERT INTO person_distinct_ids_by_person (project_id, person_id, distinct_id, version)
SELECT project_id, person_id, distinct_id, version FROM person_distinct_ids;
