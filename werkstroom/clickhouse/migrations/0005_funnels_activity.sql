-- What funnels and the week-over-week metrics need, kept by the aggregator.

-- A narrow copy of every event but heartbeats, sorted by visitor: a person's funnel progress
-- is recomputed from their own events, which `events` (sorted by day) can only find by scanning
-- the whole project. distinct_id = the anonymous id, or the user id when there is none.
-- ReplacingMergeTree: a re-delivered batch writes the same rows (same key, ending in event_id).
CREATE TABLE IF NOT EXISTS visitor_events
(
    project_id  String,
    distinct_id String,
    timestamp   DateTime64(3, 'UTC'),
    event_id    String,
    event       String,
    path        String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
-- ORDER BY (project_id, distinct_id, timestamp, event_id): funnel progress reads one person's
-- ids in time order; event_id last makes the key unique per event for de-duplication.
ORDER BY (project_id, distinct_id, timestamp, event_id);

-- Funnel definitions: steps is a JSON array of {"event": name, "path": glob or ""}, 2 to 8 of
-- them; a deleted funnel is rewritten with is_deleted = 1 (version = change time in ms).
CREATE TABLE IF NOT EXISTS funnels
(
    project_id     String,
    funnel_id      String,
    name           String,
    steps          String,
    window_seconds UInt32,
    created_at     DateTime64(3, 'UTC'),
    is_deleted     UInt8 DEFAULT 0,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, funnel_id): funnels are listed per project and read by id.
ORDER BY (project_id, funnel_id);

-- Each person's progress per funnel: one row per (person, day on which one of their attempts
-- started), level = the steps reached (windowFunnel's definition) counting only attempts that
-- started on that day or later. So the funnel of the last N days is, per person, max(level)
-- over the rows with day >= the first of those days. Rewritten whole for a person whenever
-- their events change (version = recomputation time in ms); merged-away persons get
-- is_deleted = 1. Reads use FINAL.
CREATE TABLE IF NOT EXISTS funnel_progress
(
    project_id String,
    funnel_id  String,
    day        Date,
    person_id  String,
    level      UInt8,
    is_deleted UInt8 DEFAULT 0,
    version    UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, funnel_id, day, person_id): a funnel report reads one funnel over a
-- range of days; the person last is the identity FINAL collapses on.
ORDER BY (project_id, funnel_id, day, person_id);

-- The UTC days on which each person was active (had a session), for churn and week-over-week
-- counts without scanning sessions. Rewritten with the person; merged-away persons' days get
-- is_deleted = 1. Reads use FINAL.
CREATE TABLE IF NOT EXISTS person_activity
(
    project_id String,
    day        Date,
    person_id  String,
    is_deleted UInt8 DEFAULT 0,
    version    UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, day, person_id): "who was active in these 7 days" is a range of days
-- in one project; the person last is the identity FINAL collapses on.
ORDER BY (project_id, day, person_id);

-- The aggregator's progress per topic partition, written after every commit and every few
-- seconds when idle, so a reader can tell a quiet site (recent last_write_at) from a stalled
-- pipeline. worker = the process that owns the partition; last_event_at = the newest event
-- time written from it; lag = messages between the committed offset and the partition's end.
-- version = write time in ms: the newest owner's row wins.
CREATE TABLE IF NOT EXISTS aggregator_status
(
    topic         String,
    partition     UInt32,
    worker        String,
    last_write_at DateTime64(3, 'UTC'),
    last_event_at Nullable(DateTime64(3, 'UTC')),
    lag           UInt64,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (topic, partition): the API reads every partition of its topic; one row each.
ORDER BY (topic, partition);
