-- What each refresh of a person (services/aggregator/derived.py) found before rewriting it: the
-- person's row as it was (first_seen, last_seen, anonymous_ids, plan), kept until the refresh has
-- written everything derived from the change. A refresh reads the rows still open for its
-- persons (done = 0) beside the live persons rows, as the state before the batch (BEFORE): a
-- refresh that failed part of the way (a kill -9, ClickHouse away) after writing the new persons
-- rows is run again over them, and would otherwise find nothing changed (a plan, members that
-- moved, a person merged away), leaving rows of the old state in plan_sessions, person_first_by,
-- persons_recent and the moved days' tables. A refresh closes its own rows and the open ones of
-- earlier refreshes (lower versions) it read (done = 1) as its last write.
-- ReplacingMergeTree(done): the closing row (done = 1) replaces the open one of the same refresh.
CREATE TABLE IF NOT EXISTS person_refreshes
(
    project_id    String,
    person_id     String,
    refresh       UInt64,
    first_seen    DateTime64(3, 'UTC'),
    last_seen     DateTime64(3, 'UTC'),
    anonymous_ids Array(String),
    plan          String,
    done          UInt8
)
ENGINE = ReplacingMergeTree(done)
PARTITION BY tuple()
-- ORDER BY (project_id, person_id, refresh): a refresh reads its persons' rows (a few ids of a
-- project), each refresh of a person a row of its own (`refresh`: the refresh's version).
ORDER BY (project_id, person_id, refresh)
-- A day after its refresh (`refresh` is milliseconds since the epoch), open or closed: a refresh
-- that failed is run again within seconds, or its batch is replayed when a worker restarts.
TTL toDateTime(intDiv(refresh, 1000)) + INTERVAL 1 DAY;
