-- Sessions, derived by the aggregator from event time for every visitor (project, anonymous_id):
-- a session ends after 30 minutes without events; the next event starts a new one.
-- ReplacingMergeTree(version, is_deleted): each update rewrites the whole row with
-- version = the Kafka offset of the last event applied to it (a visitor's events all come
-- from one partition, so versions only grow). A re-applied event gives the same row and the
-- same version; a session absorbed by another (a late event bridged the gap) is written
-- with is_deleted = 1. Reads use FINAL.
CREATE TABLE IF NOT EXISTS sessions
(
    project_id      String,
    anonymous_id    String,
    session_id      String,
    user_id         String,
    start_at        DateTime64(3, 'UTC'),
    last_event_at   DateTime64(3, 'UTC'),
    entry_at        DateTime64(3, 'UTC'),
    entry_url       String,
    entry_path      String,
    referrer        String,
    current_url     String,
    current_path    String,
    current_title   String,
    page_entered_at DateTime64(3, 'UTC'),
    page_views      UInt32,
    events          UInt32,
    pages           Array(String),
    device_type     LowCardinality(String),
    browser         LowCardinality(String),
    os              LowCardinality(String),
    kafka_partition UInt32,
    version         UInt64,
    is_deleted      UInt8 DEFAULT 0,
    updated_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(start_at)
-- ORDER BY (project_id, anonymous_id, session_id): the aggregator reloads a visitor's recent
-- sessions by (project_id, anonymous_id), and a person's session history reads the same prefix.
ORDER BY (project_id, anonymous_id, session_id);

-- The live view: one row per visitor, their newest session, kept for an hour after their
-- last event (TTL), so "who is online now" reads a small table instead of all sessions.
CREATE TABLE IF NOT EXISTS online_visitors
(
    project_id      String,
    anonymous_id    String,
    session_id      String,
    user_id         String,
    start_at        DateTime64(3, 'UTC'),
    last_event_at   DateTime64(3, 'UTC'),
    current_url     String,
    current_path    String,
    current_title   String,
    page_entered_at DateTime64(3, 'UTC'),
    page_views      UInt32,
    events          UInt32,
    device_type     LowCardinality(String),
    browser         LowCardinality(String),
    os              LowCardinality(String),
    version         UInt64,
    updated_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, anonymous_id): the online query reads one project's visitors; the
-- visitor is the identity FINAL collapses on.
ORDER BY (project_id, anonymous_id)
TTL toDateTime(last_event_at) + INTERVAL 1 HOUR;

-- Who is who: identify maps an anonymous id to a user id, alias maps previous_id to user_id.
-- A person is person_id when a mapping exists, else the user id, else the anonymous id; this
-- is resolved when reading, so sessions from before an identify join the person too.
-- version = the identify/alias event time in ms: the latest mapping of a distinct id wins.
CREATE TABLE IF NOT EXISTS person_distinct_ids
(
    project_id  String,
    distinct_id String,
    person_id   String,
    version     UInt64,
    updated_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (project_id, distinct_id): resolving a distinct id is a point lookup in one project.
ORDER BY (project_id, distinct_id);
