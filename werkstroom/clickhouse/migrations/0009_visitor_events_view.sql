-- visitor_events (0005) is now filled by ClickHouse from every insert into `events`, instead
-- of by the aggregator building a second row per event in Python: the same rows (the
-- anonymous id, or the user id when there is none; no heartbeats), computed in the insert.
-- A re-delivered batch inserts the same events again, and their visitor_events rows collapse
-- on the sorting key as before. The rows written before this migration are already there.
CREATE MATERIALIZED VIEW IF NOT EXISTS visitor_events_mv TO visitor_events AS
SELECT
    project_id,
    if(anonymous_id != '', anonymous_id, user_id) AS distinct_id,
    timestamp,
    event_id,
    event,
    path
FROM events
WHERE event != '$heartbeat';
