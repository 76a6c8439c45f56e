-- person_first_by (0033) sorted by two fixed-width keys instead of its four strings: the metric
-- cards narrowed by one filter value read all of the value's persons under FINAL, and FINAL's
-- merge of the table's parts compared (project_id, filter, filter_value, person_id) row by row,
-- three equal strings before the person's. At 10M events, country=NL (182,090 persons, p50
-- alone): 37.5 -> 24 ms, and 51 -> 30 ms of one core (bench/README.md, 2026-12-05 stop 48).
-- - value_key: the value's (project, filter, value), a 128-bit MD5 (a tab between the three:
--   neither a project id nor a filter name holds one, so no two triples give the same text);
-- - person_key: the person's id, the same way.
-- Both MATERIALIZED: computed by ClickHouse as a row is written, never by a writer, and left out
-- of SELECT *. MD5 because it is the same in every ClickHouse version and outside it (the keys
-- are stored), and 128 bits so that no two values or persons share a key by chance (a shared
-- key would merge their rows). Two ids with one MD5 can be crafted, but only as a pair: sent
-- with a project's public write key, such a pair counts as one person; no existing person's id
-- can be matched.
-- Readers select a value with value_key = reinterpretAsUInt128(MD5(concat(project, '\t',
-- filter, '\t', value))) and its persons' rows with person_key = ...(MD5(person_id)): the same
-- expressions as below (services/api/filters.py). The other columns are unchanged.
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
    person_key     UInt128 MATERIALIZED reinterpretAsUInt128(MD5(person_id)),
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
-- ORDER BY (value_key, person_key): a view reads one value's persons, a contiguous run, as
-- before; the person's key makes the row's key unique. The aggregator writes without reading it.
ORDER BY (value_key, person_key);

INSERT INTO person_first_by_rebuild
    (project_id, filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days,
     recent_active, is_deleted, version)
SELECT project_id, filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days,
       recent_active, is_deleted, version
FROM person_first_by;
EXCHANGE TABLES person_first_by AND person_first_by_rebuild;
DROP TABLE person_first_by_rebuild;
