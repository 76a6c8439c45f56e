"""What the events sink does with a failure: retry it, dead-letter the rows, or stop.

ClickHouse's failures are classified in werkstroom.clickhouse.errors (shared with the API, which
answers 503 for what is transient there); this module adds the sink's one other dependency
that fails, Kafka, when publishing dead letters, and `NotStarted`: a consumer's client used
before its run() made it, a bug of ours (a programming error: never retried). Everything the
sink imports from here is re-exported as it was.
"""

from __future__ import annotations

from typing import TypeVar

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
    "NotStarted",
    "classify",
    "describe",
    "error_name",
    "started",
]

T = TypeVar("T")


class NotStarted(RuntimeError):
    """A consumer's client or task used before its run() set it up."""


def started(value: T | None, what: str) -> T:
    """`value`, which run() sets up; NotStarted if it has not. An explicit check, not an
    `assert`, which `python -O` drops: the mistake would then surface as an AttributeError on
    None somewhere further on."""
    if value is None:
        raise NotStarted(f"{what} used before run() set it up")
    return value


def classify(exc: BaseException) -> Failure:
    """Which kind of failure `exc` is: Kafka's here, ClickHouse's and the rest as
    werkstroom.clickhouse.errors.classify says."""
    if isinstance(exc, KafkaError):  # publishing the dead letters
        transient = exc.retriable or isinstance(exc, KafkaTimeoutError)
        return Failure.TRANSIENT if transient else Failure.PROGRAMMING
    return clickhouse_errors.classify(exc)
