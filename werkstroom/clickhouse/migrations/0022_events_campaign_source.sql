-- Where each visit came from: contract v1's utm_source .. utm_content (context.campaign, else
-- the page URL's utm_* parameters) and `source` (the referrer grouped by werkstroom/sources.py),
-- added fields like country in 0021. '' when none; rows written before this migration read ''.
-- Placed after `region`, where the contract's FIELDS list them. LowCardinality: a site has a
-- few hundred sources and campaigns, not one per event; utm_term (search keywords) and
-- utm_content may have many more values, so they stay plain strings.
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS utm_source LowCardinality(String) DEFAULT '' AFTER region,
    ADD COLUMN IF NOT EXISTS utm_medium LowCardinality(String) DEFAULT '' AFTER utm_source,
    ADD COLUMN IF NOT EXISTS utm_campaign LowCardinality(String) DEFAULT '' AFTER utm_medium,
    ADD COLUMN IF NOT EXISTS utm_term String DEFAULT '' AFTER utm_campaign,
    ADD COLUMN IF NOT EXISTS utm_content String DEFAULT '' AFTER utm_term,
    ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT '' AFTER utm_content;
