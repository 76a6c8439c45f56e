-- funnel_levels_by (0037) sorted by a fixed-width key of the value, as person_first_by in 0038:
-- a funnel's report narrowed by one filter value reads the funnel's rows of the value under
-- FINAL, whose merge of the table's parts compared (project_id, funnel_id, filter, filter_value,
-- level, person_id) row by row, four equal strings before the level and the person's. At 10M
-- events, 30 days, the value's rows in 3 parts (p50 alone): country=NL 45 -> 19 ms, with
-- segment=premium 45 -> 20, segment=premium 25 -> 11 (bench/README.md, 2026-12-05 stop 48).
-- value_key: the (project, funnel, filter, value) as a 128-bit MD5 with a tab between (neither a
-- project id, a funnel id nor a filter name holds one); MATERIALIZED and MD5 for 0038's reasons;
-- readers compute it with werkstroom.breakdowns.md5_key. The other columns are unchanged.
-- Built beside the old table with every row version as it is, and swapped in (as 0032, 0038).
-- Run with the aggregators stopped, as `werkstroom migrate` before a deploy; a rerun after an
-- interruption starts the rebuild again.
DROP TABLE IF EXISTS funnel_levels_by_rebuild;
CREATE TABLE funnel_levels_by_rebuild
(
    project_id   String,
    funnel_id    String,
    filter       LowCardinality(String),
    filter_value String,
    level        UInt8,
    person_id    String,
    value_key    UInt128 MATERIALIZED reinterpretAsUInt128(MD5(concat(project_id, '\t', funnel_id, '\t', filter, '\t', filter_value))),
    -- the earlier of the level's last day (funnel_levels) and the value's (person_first_by)
    last_day     Date,
    -- the person's plan (its person_first_by plan row's)
    plan         LowCardinality(String),
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY tuple()
-- ORDER BY (value_key, level, person_id): a filtered report reads one funnel's rows of one value,
-- a contiguous run, counted per level; the person makes the row's key unique (the day is not in
-- it: a row changes its day in place).
ORDER BY (value_key, level, person_id);

INSERT INTO funnel_levels_by_rebuild (project_id, funnel_id, filter, filter_value, level, person_id, last_day,
    plan, version, is_deleted)
SELECT project_id, funnel_id, filter, filter_value, level, person_id, last_day, plan, version, is_deleted
FROM funnel_levels_by;
EXCHANGE TABLES funnel_levels_by AND funnel_levels_by_rebuild;
DROP TABLE funnel_levels_by_rebuild;
