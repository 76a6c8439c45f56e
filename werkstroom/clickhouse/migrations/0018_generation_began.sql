-- When each partition's generation began (services/aggregator/generations.py), so that the rows
-- of `events` a generation wrote can be told apart from older generations' rows at the same
-- offsets: `events.kafka_offset` is the raw Kafka offset, and offsets start again at 0 with the
-- log. A process killed between a batch's inserts and its commit leaves rows in `events` that
-- the aggregations never counted; when the log is then found to have started over (the
-- embedded broker keeps its topics in memory), those rows are the only copy of the batch, and
-- the aggregator replays them from `events`: the rows of partition p at offsets >= next_offset
-- inserted at or after generation_began_ms.
-- ClickHouse's clock (now64), the clock inserted_at is written with, read when the generation
-- is decided, before any of its messages is read; carried forward in every later row of the
-- same generation. NULL: written before 0018, unknown (the aggregator sets it at its next
-- assignment, from then on).
-- A column here rather than a generation column on `events`: the events insert is the
-- aggregator's hot path (raw JSON lines parsed by ClickHouse), and the offsets already on
-- every row plus one time per partition tell the generations apart.
ALTER TABLE sink_partitions ADD COLUMN IF NOT EXISTS generation_began_ms Nullable(UInt64);
-- The replay's look-up reads the rows inserted since a generation began: a min-max index on
-- inserted_at skips the granules written before (parts written from now on; older parts are
-- read in full until they are merged).
ALTER TABLE events ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;
