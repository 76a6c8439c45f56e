"""The ingest service: the Segment-compatible tracking API that validates, enriches and
produces events to Kafka."""
