-- Each visitor's live person: a row per (project, visitor) with the person's id and the columns
-- the filters read (first_seen for the new persons of a day, last_seen and plan for the `plan`
-- and `segment` filters). Every filtered view resolved its visitors to their persons by reading
-- persons under FINAL and spreading each row's anonymous_ids (ARRAY JOIN, then GROUP BY
-- visitor): 190-230 ms at 1M persons, the largest part of a filtered activity chart, funnel or
-- card, alone on the host. Reading this table takes 30 ms (bench/README.md, 2026-12-04).
-- The aggregator writes it with persons (services/aggregator/derived.py): a row per visitor of
-- each persons row it writes, at the same version. A visitor moved to another person (identify,
-- alias) gets that person's row when it is written; the person it left writes none for it.
-- ReplacingMergeTree(version, is_deleted): reads use FINAL; a visitor held by two live persons
-- rows for a moment (two workers' merges) resolves to the newer row. is_deleted is 0 on every
-- row written so far: a visitor's sessions never go, so it always has a person.
CREATE TABLE IF NOT EXISTS visitor_persons
(
    project_id String,
    visitor    String,
    person_id  String,
    first_seen DateTime64(3, 'UTC'),
    last_seen  DateTime64(3, 'UTC'),
    plan       LowCardinality(String),
    is_deleted UInt8,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- ORDER BY (project_id, visitor): a filtered view reads one project's visitors whole, as the
-- side of a join on the visitor; the visitor makes the key unique.
ORDER BY (project_id, visitor);

-- The visitors of the persons written so far. Run with the aggregators stopped, as the other
-- migrations that copy a table: a person rewritten meanwhile by an older aggregator would not
-- be here until its next rewrite.
INSERT INTO visitor_persons (project_id, visitor, person_id, first_seen, last_seen, plan, is_deleted, version)
SELECT project_id, visitor, person_id, first_seen, last_seen, plan, 0, version
FROM persons FINAL ARRAY JOIN anonymous_ids AS visitor
WHERE is_deleted = 0;
