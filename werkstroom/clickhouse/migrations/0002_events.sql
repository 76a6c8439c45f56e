-- Every accepted event, as the contract `werkstroom.events.v1` describes it, one row each.
-- Written by the events sink in batches; kafka_partition/kafka_offset say where it came from.
-- ReplacingMergeTree: a batch re-delivered after a crash writes the same rows again with the
-- same sorting key, and they collapse into one. Reads that must not double count use FINAL
-- or uniqExact(event_id).
CREATE TABLE IF NOT EXISTS events
(
    project_id      String,
    event_id        String,
    type            LowCardinality(String),
    event           String,
    anonymous_id    String,
    user_id         String,
    previous_id     String,
    session_id      String,
    timestamp       DateTime64(3, 'UTC'),
    sent_at         Nullable(DateTime64(3, 'UTC')),
    received_at     DateTime64(3, 'UTC'),
    url             String,
    path            String,
    title           String,
    referrer        String,
    device_type     LowCardinality(String),
    browser         LowCardinality(String),
    browser_version String,
    os              LowCardinality(String),
    os_version      String,
    properties      String CODEC(ZSTD(3)),
    traits          String CODEC(ZSTD(3)),
    library         LowCardinality(String),
    schema_version  UInt16,
    kafka_partition UInt32,
    kafka_offset    UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
-- ORDER BY (project_id, toDate(timestamp), event_id): every read is one project over a date
-- range (daily stats, back-fills, exports), so those lead; event_id last makes the key unique
-- per event, which is what ReplacingMergeTree de-duplicates re-delivered rows on.
ORDER BY (project_id, toDate(timestamp), event_id);
