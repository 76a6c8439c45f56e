"""What the events sink does with a failure: retry it, dead-letter the rows, or stop.

ClickHouse's failures are classified in werkstroom.clickhouse.errors (shared with the API, which
answers 503 for what is transient there); this module adds the sink's one other dependency
that fails, Kafka, when publishing dead letters. Everything the sink imports from here is
re-exported as it was.
"""

from __future__ import annotations

from aiokafka.errors import KafkaError, KafkaTimeoutError

from werkstroom.clickhouse import errors as clickhouse_errors
from werkstroom.clickhouse.errors import (
    DATA_CODES,
    TOO_MANY_PARTITIONS,
    TRANSIENT_CODES,
    Failure,
    describe,
    error_name,
)

__all__ = [
    "DATA_CODES",
    "TOO_MANY_PARTITIONS",
    "TRANSIENT_CODES",
    "Failure",
    "classify",
    "describe",
    "error_name",
]


def classify(exc: BaseException) -> Failure:
    """Which kind of failure `exc` is: Kafka's here, ClickHouse's and the rest as
    werkstroom.clickhouse.errors.classify says."""
    if isinstance(exc, KafkaError):  # publishing the dead letters
        transient = exc.retriable or isinstance(exc, KafkaTimeoutError)
        return Failure.TRANSIENT if transient else Failure.PROGRAMMING
    return clickhouse_errors.classify(exc)
