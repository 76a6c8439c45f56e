-- Traits as identify calls set them, one row per (distinct id, trait): the latest call wins
-- (version = the identify's event time in ms). A person's traits are those of all its ids.
CREATE TABLE IF NOT EXISTS person_traits
(
    project_id  String,
    distinct_id String,
    key         String,
    value       String, -- the trait's JSON value
    version     UInt64,
    updated_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, distinct_id, key): a person's traits are read by its distinct ids.
ORDER BY (project_id, distinct_id, key);

-- Persons, recomputed by the aggregator from sessions, identities and traits whenever one of
-- their ids had events (a person absorbed into another by identify/alias gets is_deleted = 1).
-- version = the recomputation time in ms; a recomputation gives the same row, so a replay
-- after a crash changes nothing. Reads use FINAL.
CREATE TABLE IF NOT EXISTS persons
(
    project_id    String,
    person_id     String,
    first_seen    DateTime64(3, 'UTC'),
    last_seen     DateTime64(3, 'UTC'),
    sessions      UInt32,
    page_views    UInt32,
    anonymous_ids Array(String),
    traits        String,
    plan          LowCardinality(String),
    is_deleted    UInt8 DEFAULT 0,
    version       UInt64,
    updated_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, person_id): users pages and person lookups read one project, and the
-- person is the identity FINAL collapses on.
ORDER BY (project_id, person_id);

-- Daily statistics per project and UTC day (event time), recomputed for every day that got
-- events (late ones included) from events, sessions and persons. version as for persons.
CREATE TABLE IF NOT EXISTS daily_stats
(
    project_id          String,
    day                 Date,
    active_users        UInt32,
    new_users           UInt32,
    sessions            UInt32,
    page_views          UInt32,
    events              UInt32,
    bounce_rate         Float64,
    avg_session_seconds Float64,
    version             UInt64,
    updated_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, day): the activity chart reads one project's last N days.
ORDER BY (project_id, day);

-- Segments, from persons: active = seen in the last 7 days, inactive = 7 to 30 days ago,
-- churned = more than 30 days; premium and trial come from the `plan` trait.
CREATE VIEW IF NOT EXISTS person_segments AS
SELECT
    project_id,
    person_id,
    plan,
    last_seen,
    multiIf(last_seen >= now64(3) - INTERVAL 7 DAY, 'active',
            last_seen >= now64(3) - INTERVAL 30 DAY, 'inactive',
            'churned') AS activity
FROM persons FINAL
WHERE is_deleted = 0;
