-- Point lookups by id read a granule (256 rows, 0007) of each column they touch, but a granule
-- is read by decompressing the whole compressed block it lies in: 64 KB to 1 MB of data with
-- ClickHouse's defaults. project_id, the same string on every row of a project, compresses so
-- well that one block held about 1 MB of it, decompressed again for each id looked up. With
-- blocks of 4-8 KB (bench/lookup_bench.py, 1M rows in 2 parts): a users page's FINAL check of
-- 67 candidates 14-16 -> 11-13 ms, the live list's resolution of 100 distinct ids 18-20 ->
-- 11-12 ms; 4-5 % more on disk. Parts written from now on (inserts and merges) use them; older
-- parts change as they are merged (OPTIMIZE TABLE ... FINAL rewrites them at once).
ALTER TABLE persons MODIFY SETTING min_compress_block_size = 4096, max_compress_block_size = 8192;
ALTER TABLE person_distinct_ids MODIFY SETTING min_compress_block_size = 4096, max_compress_block_size = 8192;
