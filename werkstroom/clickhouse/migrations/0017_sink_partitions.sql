-- Where the aggregator stands in each partition of the events topic, and which generation of
-- the partition's log that is (services/aggregator/generations.py). Every version the
-- aggregator compares (sessions.version, online_visitors.version, events_daily.version) is a
-- position, (generation << 40) | Kafka offset, instead of the offset alone: offsets start again
-- at 0 when the log does (the embedded broker keeps its topics in memory, a topic deleted and
-- created again, a partition count changed), and the positions of a new generation are above
-- every position of the ones before, so a returning visitor's new events are not skipped.
-- Generation 0 is the log read before this table existed: the versions written then stay valid.
-- The sink writes a partition's row before it commits the offsets (next_offset = the offset it
-- commits, anchor = a 64-bit hash of the key and value of the message just before it), and when
-- an assignment starts a new generation. At an assignment the row tells whether the log is the
-- one read before: the group's committed offset is there, or the message at next_offset - 1
-- still hashes to anchor.
-- ReplacingMergeTree(version): version = the writer's clock in ms; reads use FINAL.
CREATE TABLE IF NOT EXISTS sink_partitions
(
    topic       String,
    partition   UInt32,
    generation  UInt32,
    next_offset UInt64,
    anchor      UInt64,
    partitions  UInt32,  -- the topic's partition count when the row was written
    worker      String,
    version     UInt64,
    updated_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
-- ORDER BY (topic, partition): an assignment reads every row of its topic (a few, one per
-- partition); one row per partition, which FINAL collapses on.
ORDER BY (topic, partition);
