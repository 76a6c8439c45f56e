-- Projects: one row per site. The write key is public (it ships in the tracking snippet);
-- the read key is a secret and only its SHA-256 is stored.
-- ReplacingMergeTree(updated_at): an update is a new row; reads use FINAL (small table).
CREATE TABLE IF NOT EXISTS projects
(
    project_id    String,
    name          String,
    write_key     String,
    read_key_hash String,
    created_at    DateTime64(3, 'UTC'),
    updated_at    DateTime64(3, 'UTC'),
    deleted       UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(updated_at)
-- ORDER BY project_id: the key lookups (by id, and the ingest cache's full scan) read a few
-- hundred rows at most; project_id is the identity that FINAL collapses on.
ORDER BY project_id;
