-- A project's time zone (werkstroom.timezones): an IANA name such as Europe/Amsterdam, whose
-- local days are the project's days. Projects created before read 'UTC', the days they had.
-- A change is a new row (ReplacingMergeTree(updated_at)), as every project change is.
ALTER TABLE projects
    ADD COLUMN IF NOT EXISTS timezone LowCardinality(String) DEFAULT 'UTC' AFTER read_key_hash;
