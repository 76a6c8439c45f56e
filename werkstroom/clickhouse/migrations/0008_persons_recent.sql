-- Persons sorted by last seen, for the users pages: "the 50 persons seen most recently" reads
-- the last granules of this table instead of sorting every person (persons is sorted by id).
-- The aggregator writes a row here with every persons row (same columns and version), and a
-- tombstone (is_deleted = 1) for the row it replaces when last_seen moved, or when the person
-- was merged away. Reads do NOT use FINAL (it would merge the whole project before the LIMIT):
-- they take the newest rows as candidates and keep those that are still the person's final row
-- in persons. Tombstones and the rows they shadow collapse in merges; the TTL then drops them.
CREATE TABLE IF NOT EXISTS persons_recent
(
    project_id String,
    last_seen  DateTime64(3, 'UTC'),
    person_id  String,
    first_seen DateTime64(3, 'UTC'),
    sessions   UInt32,
    page_views UInt32,
    plan       LowCardinality(String),
    is_deleted UInt8 DEFAULT 0,
    version    UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, last_seen, person_id): a users page reads one project newest first,
-- and a segment (active, inactive, churned) is a range of last_seen.
ORDER BY (project_id, last_seen, person_id)
TTL toDateTime(updated_at) + INTERVAL 1 DAY DELETE WHERE is_deleted = 1;

INSERT INTO persons_recent (project_id, last_seen, person_id, first_seen, sessions, page_views, plan, version)
SELECT project_id, last_seen, person_id, first_seen, sessions, page_views, plan, version
FROM persons FINAL WHERE is_deleted = 0;
