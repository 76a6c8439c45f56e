-- `sessions` without monthly partitions: it is read by visitor (the aggregator's visitor load,
-- the recomputation's members' sessions, a person's session history), and each monthly part
-- answered every visitor lookup again. With a year of history (12M sessions in 13 parts),
-- loading 90 returning visitors took 563 ms; from one part, 209 ms (bench/load_bench.py).
-- No reader narrows by month in a way that paid for it: the 30-day CSV export took 6.7 s
-- partitioned and 5.2 s not, most of it sending rows. Rows of one session that a late event
-- moved to an earlier month now also collapse in merges, not only under FINAL.
-- index_granularity stays 8,192: 256-row granules read slower here (154 vs 107 ms; more marks).
-- Rebuilt beside the old table and swapped in, like 0007; run it with the aggregators stopped
-- (an insert into the old table during the copy would be lost). A rerun starts over.
DROP TABLE IF EXISTS sessions_rebuild;
CREATE TABLE sessions_rebuild AS sessions
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY tuple()  -- said out loud: CREATE TABLE ... AS keeps the old table's partitioning otherwise
-- ORDER BY (project_id, anonymous_id, session_id): as before; a visitor's sessions, every
-- version of them, now sit together in one part.
ORDER BY (project_id, anonymous_id, session_id);
INSERT INTO sessions_rebuild SELECT * FROM sessions;
EXCHANGE TABLES sessions AND sessions_rebuild;
DROP TABLE sessions_rebuild;
