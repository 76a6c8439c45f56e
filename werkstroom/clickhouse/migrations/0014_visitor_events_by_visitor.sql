-- `visitor_events` without monthly partitions, as 0011 did for `sessions`: it is read by
-- person (a funnel's recomputation reads its persons' step events), and each monthly part
-- answered every person's lookup again. With a year of history (36M rows in 13 parts), the
-- step events of 100 persons took 413 ms; from one part, 65 ms (measured with the same query).
-- Rebuilt beside the old table and swapped in, like 0007 and 0011; run it with the aggregators
-- stopped (an insert into `events` during the copy would miss the new table). It copies every
-- event but heartbeats: 36M rows took 27 s to copy on the embedded engine here.
-- The materialized view that fills it (0009) names its target table, so it writes into the
-- new one after the swap (checked by tests/integration/test_migrations.py).
DROP TABLE IF EXISTS visitor_events_rebuild;
CREATE TABLE visitor_events_rebuild AS visitor_events
ENGINE = ReplacingMergeTree
PARTITION BY tuple()  -- said out loud: CREATE TABLE ... AS keeps the old table's partitioning otherwise
-- ORDER BY (project_id, distinct_id, timestamp, event_id): as before; a person's events, in
-- time order, now sit together in one part.
ORDER BY (project_id, distinct_id, timestamp, event_id);
INSERT INTO visitor_events_rebuild SELECT * FROM visitor_events;
EXCHANGE TABLES visitor_events AND visitor_events_rebuild;
DROP TABLE visitor_events_rebuild;
