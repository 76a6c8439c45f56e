-- breakdown_daily (0023) with 256-row granules, as breakdown_daily_by got them (0026): a row's
-- visitors state is about 3 KB, so an unfiltered breakdown read the whole 8,192-row granule of
-- each month's part (every dimension's rows, 5-7 MB) for the 60-180 rows of its dimension. At
-- 10M events (the API bench's data, bench/README.md 2026-12-04), the roll-up's part of a 30-day
-- breakdown with the period before, p50: devices 24-27 -> 16-18 ms, pages 26-31 -> 21-25 ms.
-- index_granularity cannot be altered, so the table is rebuilt beside the old one and swapped in,
-- as 0007 did; a rerun after an interruption starts the rebuild again. Run with the aggregators
-- stopped, as `werkstroom migrate` before a deploy.
DROP TABLE IF EXISTS breakdown_daily_rebuild;
CREATE TABLE breakdown_daily_rebuild AS breakdown_daily
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(day)
-- ORDER BY (project_id, dimension, day, value): as before; a breakdown reads one dimension of
-- one project over a range of days, and the value makes the key unique.
ORDER BY (project_id, dimension, day, value)
SETTINGS index_granularity = 256;
INSERT INTO breakdown_daily_rebuild SELECT * FROM breakdown_daily;
EXCHANGE TABLES breakdown_daily AND breakdown_daily_rebuild;
DROP TABLE breakdown_daily_rebuild;
