-- The country (ISO 3166-1 alpha-2) and region of each event's client address, as ingest looked
-- them up (werkstroom.geo) before it dropped the address: contract v1's `country` and `region`,
-- added fields. '' when unknown; rows written before this migration read ''. No address is
-- stored anywhere. Placed after `library`, where the contract's FIELDS list them.
-- LowCardinality: some 250 countries, and the regions of one database.
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) DEFAULT '' AFTER library,
    ADD COLUMN IF NOT EXISTS region LowCardinality(String) DEFAULT '' AFTER country;
