"""Kafka client factories: the producer (acks=all, idempotent where the broker allows), consumers
that commit by hand, topic creation and a bounded readiness wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from werkstroom.logging import get_logger

log = get_logger(__name__)


class KafkaUnavailable(RuntimeError):
    """Kafka did not answer within the readiness wait."""


async def start_producer(
    bootstrap: str, *, linger_ms: int = 2, client_id: str = "werkstroom"
) -> AIOKafkaProducer:
    """An acks=all producer, idempotent when the broker supports it.

    The embedded broker (tansu) refuses InitProducerId, so an idempotent producer cannot start
    on it; we then fall back to a plain acks=all producer and say so once. Against real Kafka
    idempotence stays on. Duplicates that a non-idempotent retry could create are harmless:
    consumers de-duplicate on event_id.
    """
    common = dict(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
        compression_type=None,
        request_timeout_ms=10_000,
    )
    producer = AIOKafkaProducer(enable_idempotence=True, **common)
    try:
        await asyncio.wait_for(producer.start(), 15)
        return producer
    except KafkaConnectionError:
        await producer.stop()
        raise
    except (KafkaError, TimeoutError) as exc:
        await producer.stop()
        log.warning(
            "kafka_idempotence_unavailable",
            reason=f"{type(exc).__name__}: {exc}",
            fallback="acks=all without idempotence; consumers de-duplicate on event_id",
        )
    producer = AIOKafkaProducer(**common)
    await producer.start()
    return producer


def make_consumer(
    bootstrap: str, topics: Iterable[str], group_id: str, **overrides: object
) -> AIOKafkaConsumer:
    """A consumer in `group_id` that never auto-commits: callers commit after their write."""
    options: dict[str, object] = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=20_000,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        isolation_level="read_uncommitted",
    )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)  # type: ignore[arg-type]


async def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a deadline loop
    """Bounded readiness wait: returns once the cluster answers a metadata request."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # any failure means: not ready yet
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
    raise KafkaUnavailable(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s: {last}")


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, replication: int = 1) -> None:
    """Create the topics that do not exist yet; existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        try:
            await admin.create_topics(
                [NewTopic(name=t, num_partitions=partitions, replication_factor=replication) for t in missing]
            )
        except TopicAlreadyExistsError:
            pass
        log.info("kafka_topics_created", topics=missing, partitions=partitions)
    finally:
        await admin.close()


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2), so keys land where every client puts them."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def publish(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Send keyed messages and wait until Kafka acknowledged all of them.

    One send() per message costs ~20 µs of Python; building one batch per partition and
    handing it over with send_batch() is several times cheaper, which matters for /v1/batch.
    """
    if not messages:
        return
    if len(messages) == 1:
        key, value = messages[0]
        await (await producer.send(topic, value, key=key))
        return
    partitions = sorted(await producer.partitions_for(topic))
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in messages:
        by_partition.setdefault(partitions[partition_for(key, len(partitions))], []).append((key, value))
    futures = []
    for partition, items in by_partition.items():
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)
