"""Every Prometheus metric Werkstroom exports, listed once, each with what it counts.

Services import the metric objects from here; nobody declares a metric elsewhere.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# -- ingest --------------------------------------------------------------------------------
#: HTTP requests to the tracking API, by endpoint and status code.
INGEST_REQUESTS = Counter("werkstroom_ingest_requests_total", "Tracking API requests", ["endpoint", "status"])
#: Events accepted and handed to Kafka (acknowledged), by event type.
INGEST_EVENTS_ACCEPTED = Counter(
    "werkstroom_ingest_events_accepted_total", "Events acknowledged by Kafka", ["type"]
)
#: Items rejected by validation (each also goes to the dead-letter topic), by reason code.
INGEST_EVENTS_REJECTED = Counter(
    "werkstroom_ingest_events_rejected_total", "Items rejected by validation", ["reason"]
)
#: Events from bot user agents: not visitor events; sent to the bots topic instead.
INGEST_BOT_EVENTS = Counter(
    "werkstroom_ingest_bot_events_total", "Events from bots, sent to the bots topic, not the events topic"
)
#: Bot events Kafka did not acknowledge (best effort: the request's answer does not wait for them).
INGEST_BOT_EVENTS_UNSENT = Counter(
    "werkstroom_ingest_bot_events_unsent_total", "Bot events not acknowledged by Kafka (not retried)"
)
#: Requests refused because a project went over its rate limit.
INGEST_RATE_LIMITED = Counter("werkstroom_ingest_rate_limited_total", "Requests answered 429")
#: Requests refused because one client address went over its share of a project's limit.
INGEST_CLIENT_RATE_LIMITED = Counter(
    "werkstroom_ingest_client_rate_limited_total", "Requests answered 429 (one client's share spent)"
)
#: Accepted events dated more than the tolerance ahead of their arrival (after the clock-skew
#: correction), whose time was set to the arrival time (werkstroom.contract.event_time).
INGEST_FUTURE_TIMESTAMPS = Counter(
    "werkstroom_ingest_future_timestamps_total", "Event times ahead of arrival, set to the arrival time"
)
#: Requests answered 503 because Kafka did not acknowledge in time or refused.
INGEST_KAFKA_UNAVAILABLE = Counter(
    "werkstroom_ingest_kafka_unavailable_total", "Requests answered 503 (Kafka unavailable)"
)
#: Unexpected errors in the ingest path (5xx other than 503): each one is logged.
INGEST_ERRORS = Counter("werkstroom_ingest_errors_total", "Unexpected ingest errors")
#: Time from request received to Kafka acknowledgement, per request.
INGEST_LATENCY = Histogram(
    "werkstroom_ingest_request_seconds",
    "Tracking API latency",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
#: Write keys currently known to the ingest key cache.
INGEST_KNOWN_KEYS = Gauge("werkstroom_ingest_known_write_keys", "Write keys in the ingest cache")

# -- events sink ---------------------------------------------------------------------------
#: Rows written to the ClickHouse events table.
SINK_ROWS_WRITTEN = Counter("werkstroom_sink_rows_written_total", "Rows inserted into events")
#: Messages that did not match the contract and went to the dead-letter topic.
SINK_DEAD_LETTERED = Counter(
    "werkstroom_sink_dead_lettered_total", "Messages sent to the dead-letter topic", ["reason"]
)
#: Failed ClickHouse inserts (retried with backoff; offsets are not committed meanwhile).
SINK_INSERT_FAILURES = Counter("werkstroom_sink_insert_failures_total", "Failed ClickHouse inserts")
#: Time one ClickHouse insert of a batch took.
SINK_INSERT_SECONDS = Histogram(
    "werkstroom_sink_insert_seconds",
    "ClickHouse insert duration",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
#: Rows per flushed batch.
SINK_BATCH_ROWS = Histogram(
    "werkstroom_sink_batch_rows", "Rows per flush", buckets=(1, 10, 100, 1000, 5000, 10000, 50000)
)
#: Time one recomputation of persons and daily stats for the touched keys took.
DERIVED_REFRESH_SECONDS = Histogram(
    "werkstroom_derived_refresh_seconds",
    "Persons and daily stats recomputation",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
#: New funnels back-filled from the stored events (services/aggregator/funnels.py), by outcome
#: ("done"; "failed": tried again 10 s later, and logged as funnel_backfill_failed).
FUNNEL_BACKFILLS = Counter("werkstroom_funnel_backfills_total", "Funnel back-fills", ["outcome"])
#: Time one funnel's back-fill took (every person of its project).
FUNNEL_BACKFILL_SECONDS = Histogram(
    "werkstroom_funnel_backfill_seconds",
    "One funnel's back-fill",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
#: Unix time of the last successful ClickHouse write (freshness of the pipeline).
SINK_LAST_WRITE = Gauge("werkstroom_sink_last_write_timestamp_seconds", "Last successful insert")

#: Per partition this worker holds: messages past its last commit (updated with the status rows,
#: every few seconds; 0 before its first commit). Another worker's partitions are dropped.
SINK_LAG = Gauge(
    "werkstroom_sink_lag_messages",
    "Messages between the committed offset and the end of a partition",
    ["partition"],
)

# -- events sink: rows ClickHouse refuses (services/aggregator/errors.py) --------------------
#: Rows ClickHouse refused (a data error: found by splitting the batch), by table. Each goes
#: to the dead-letter topic, counted there too as reason "refused_by_clickhouse".
SINK_ROWS_REFUSED = Counter(
    "werkstroom_sink_rows_refused_total", "Rows ClickHouse refused, dead-lettered", ["table"]
)


# -- bots consumer (services/aggregator/bots.py) -------------------------------------------
#: Bot events written to the ClickHouse bot_events table (a replay writes them again; they collapse).
BOTS_ROWS_WRITTEN = Counter("werkstroom_bots_rows_written_total", "Rows inserted into bot_events")
#: Messages on the bots topic that did not match the contract, skipped (logged).
BOTS_SKIPPED = Counter("werkstroom_bots_skipped_total", "Bots topic messages skipped", ["reason"])


# -- embedded broker -----------------------------------------------------------------------
#: Times the embedded broker's events topic was swapped for an empty one after all of it was
#: written and committed (werkstroom.rotation): how its memory stays bounded.
EMBEDDED_ROTATIONS = Counter(
    "werkstroom_embedded_topic_rotations_total", "Embedded broker events topic swaps (memory bound)"
)


def render() -> tuple[bytes, str]:
    """The exposition text of the default registry and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
