-- person_first_by (0033) sorted by a fixed-width key of the value instead of its three strings:
-- the metric cards narrowed by one filter value read all of the value's persons under FINAL, and
-- FINAL's merge of the table's parts compared (project_id, filter, filter_value, person_id) row by
-- row, three equal strings before the person's. At 10M events, country=NL (182,090 persons in 3
-- parts, p50 alone): 37.5 -> 21 ms, and 51 -> 26 ms of one core (bench/README.md, 2026-12-05
-- stop 48).
-- value_key: the value's (project, filter, value) as a 128-bit MD5 of the three with a tab
-- between (neither a project id nor a filter name holds one, so no two triples give the same
-- text). MATERIALIZED: computed by ClickHouse as a row is written, never by a writer, and left
-- out of SELECT *. MD5 because it is the same in every ClickHouse version and outside it (the key
-- is stored); 128 bits, so that no two values share a key by chance. The person's id stays in the
-- key: a row's key is exactly its (value, person), as before. (A 128-bit key of the person too
-- read 1 ms faster and took 210 MB more at 10M events.)
-- Readers select a value with value_key = werkstroom.breakdowns.md5_key(project, filter, value):
-- the same expression as below. The other columns are unchanged.
-- Built beside the old table with every row version as it is, and swapped in (as 0032). Run with
-- the aggregators stopped, as `werkstroom migrate` before a deploy; a rerun after an
-- interruption starts the rebuild again.
DROP TABLE IF EXISTS person_first_by_rebuild;
CREATE TABLE person_first_by_rebuild
(
    project_id     String,
    filter         LowCardinality(String),
    filter_value   String,
    person_id      String,
    value_key      UInt128 MATERIALIZED reinterpretAsUInt128(MD5(concat(project_id, '\t', filter, '\t', filter_value))),
    first_day      Date,
    last_day       Date,
    first_seen_day Date,
    recent_days    UInt64,
    recent_active  UInt64,
    is_deleted     UInt8,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- No partitions, as 0033: a row has no day of its own, and a view reads all of one value's rows.
PARTITION BY tuple()
-- ORDER BY (value_key, person_id): a view reads one value's persons, a contiguous run, as before;
-- the person makes the key unique. The aggregator writes without reading it.
ORDER BY (value_key, person_id);

INSERT INTO person_first_by_rebuild
    (project_id, filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days,
     recent_active, is_deleted, version)
SELECT project_id, filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days,
       recent_active, is_deleted, version
FROM person_first_by;
EXCHANGE TABLES person_first_by AND person_first_by_rebuild;
DROP TABLE person_first_by_rebuild;
