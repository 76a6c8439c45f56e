"""Kafka client factories: the producer (acks=all, idempotent where the broker allows), consumers
that commit by hand, topic creation and a bounded readiness wait."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable
from functools import lru_cache
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer import fetcher as _fetcher
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from werkstroom.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class KafkaUnavailable(RuntimeError):
    """Kafka did not answer within the readiness wait."""


#: Brokers (bootstrap addresses) known to have no idempotent producer: start_producer does not
#: ask them for one (`without_idempotence`).
_NO_IDEMPOTENCE: set[str] = set()


def without_idempotence(bootstrap: str, reason: str) -> None:
    """Declare that the broker at `bootstrap` has no idempotent producer (the embedded tansu
    refuses InitProducerId): its producers start as plain acks=all ones without asking, which
    is said once, here, instead of a refusal and a fallback for each producer."""
    if bootstrap in _NO_IDEMPOTENCE:
        return
    _NO_IDEMPOTENCE.add(bootstrap)
    log.info(
        "kafka_idempotence_off",
        bootstrap=bootstrap,
        reason=reason,
        producers="acks=all without idempotence; consumers de-duplicate on event_id",
    )


async def start_producer(
    bootstrap: str, *, linger_ms: int = 2, client_id: str = "werkstroom"
) -> AIOKafkaProducer:
    """An acks=all producer, idempotent when the broker supports it.

    A broker declared `without_idempotence` (the embedded tansu) is not asked. Against any
    other, idempotence is on; one that refuses it gets a plain acks=all producer, with a
    warning (a Kafka that should have it may be misconfigured). Duplicates that a
    non-idempotent retry could create are harmless: consumers de-duplicate on event_id.
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
    if bootstrap not in _NO_IDEMPOTENCE:
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


def raw_value(value: bytes | None) -> bytes | None:
    """The value deserializer of a consumer made with `lean_records=True` (see there)."""
    return value


_full_record = _fetcher.PartitionRecords._consumer_record


def _consumer_record(self: Any, tp: Any, record: Any) -> Any:
    if self._value_deserializer is raw_value:
        return record
    return _full_record(self, tp, record)


def make_consumer(
    bootstrap: str, topics: Iterable[str], group_id: str, *, lean_records: bool = False, **overrides: object
) -> AIOKafkaConsumer:
    """A consumer in `group_id` that never auto-commits: callers commit after their write.

    `lean_records`: getmany hands out aiokafka's records as parsed from the fetched batch
    (`offset`, `key`, `value`, `timestamp`, `headers`; the topic and partition are the keys of
    getmany's result) instead of building a `ConsumerRecord` for each. That is 2 us less per
    message on the aggregator's main thread (7.9 -> 5.8 us per message fetched, 200,000
    messages). Only such a consumer is affected: it is recognised by its value deserializer."""
    if lean_records:
        _fetcher.PartitionRecords._consumer_record = _consumer_record
        overrides["value_deserializer"] = raw_value
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


async def log_ends(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's end offset (the offset after its last message), as a fetch reports it.

    The embedded broker (tansu) answers ListOffsets(latest), what `end_offsets` asks, with the
    base offset of the partition's last record batch plus one: a batch of 10 from offset 0
    reads as 1. "Committed up to the end" checked on that passes with the last batch's tail
    unread. A fetch's high watermark is exact, so this fetches from just before the listed end
    (one batch at most) and takes the high watermark. `consumer` must be in no group
    (`make_meter`): its assignment is replaced at every call, and re-assigning a consumer in a
    group while its coordination routine looks up the coordinator fails that routine for good
    (aiokafka asserts the assignment it just read is still active); it commits nothing."""
    if consumer._group_id is not None:
        raise ValueError("log_ends needs a consumer in no group (make_meter)")
    if not partitions:
        return {}
    listed = await consumer.end_offsets(partitions)
    consumer.assign(partitions)  # fresh partition states: no high watermark of an earlier fetch
    for tp in partitions:
        consumer.seek(tp, max(0, listed[tp] - 1))
    ends: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + 5.0
    while len(ends) < len(partitions) and time.monotonic() < deadline:
        todo = [tp for tp in partitions if tp not in ends]
        await consumer.getmany(*todo, timeout_ms=100)
        for tp in todo:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(highwater, listed[tp])
    return {tp: ends.get(tp, listed[tp]) for tp in partitions}


def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions, as the consumer's metadata knows them: only the topics it reads
    or was assigned (`topics()` does not add to it; rotation._measure reads any topic)."""
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def uncommitted(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> int:
    """How many messages before `ends` the consumer's group has not committed."""
    committed = {tp: await consumer.committed(tp) or 0 for tp in ends}
    return sum(max(0, end - committed[tp]) for tp, end in ends.items())


def make_meter(bootstrap: str, client_id: str = "werkstroom-meter") -> AIOKafkaConsumer:
    """A consumer in no group, for `log_ends`: it reads no group's offsets and commits nothing."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, client_id=client_id
    )


async def log_ends_at(bootstrap: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """log_ends with a consumer of its own, in no group (for a caller whose consumer is subscribed)."""
    consumer = make_meter(bootstrap)
    await consumer.start()
    try:
        return await log_ends(consumer, partitions)
    finally:
        await consumer.stop()


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


@lru_cache(maxsize=65536)
def _murmur2(key: bytes) -> int:
    """Kafka's murmur2 (aiokafka's pure-Python one is slow for a call per event). A visitor's
    key recurs for each of their events, so a cache makes this nearly free on real traffic."""
    return int(murmur2(key))


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2), so keys land where every client puts them."""
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


class _Waiter:
    """One publish() call: done when every batch holding its messages is acknowledged."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.remaining = 0

    def done(self, delivery: asyncio.Future[Any]) -> None:
        if self.future.done():
            return
        if delivery.cancelled():
            self.future.set_exception(KafkaError("delivery cancelled"))
            return
        if (error := delivery.exception()) is not None:
            self.future.set_exception(error)
            return
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(None)


Queued = tuple[str, list[tuple[bytes, bytes]], _Waiter]


#: How long a topic swap (werkstroom.rotation) may hold the sends while the aggregator catches
#: up; past it the swap is put off and the sends released.
HOLD_MAX = 5.0
#: How long a caller waits for a hold to end before it fails: the catching up, then the swap
#: itself, which is never interrupted (0.5-0.7 s on a quiet host, seconds on a loaded one).
#: With the produce timeout it stays under the SDKs' own request timeouts (10 s in
#: @segment/analytics-node, 15 s in analytics-python), so they get an answer, not a cut.
HOLD_WAIT = HOLD_MAX + 3.0


class Publisher:
    """Hands keyed messages to Kafka for many concurrent callers, in as few batches as possible.

    aiokafka lets one batch per partition wait in its accumulator: a caller that builds its own
    small batch (send_batch) waits for the previous one to leave, and one send() per message
    costs too much Python. So callers queue their messages here; one task takes everything
    queued, builds one batch per partition and hands it over with send_batch. While it waits
    for the accumulator, more callers queue up, so batches grow with the load. `publish()`
    returns once Kafka acknowledged every message of that call.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._queue: list[Queued] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._open = asyncio.Event()  # cleared by hold(): callers queue, nothing is handed over
        self._open.set()
        self._idle = asyncio.Event()  # set while no hand-over is under way
        self._idle.set()
        self._held_at = float("-inf")  # when the latest hold began (monotonic)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kafka-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        if not messages:
            return
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._queue.append((topic, messages, waiter))
        self._wakeup.set()
        await waiter.future

    async def hold(self) -> None:
        """Hand nothing more to Kafka until release(): callers keep queueing (and waiting for
        their acknowledgement). Returns once everything handed over before is acknowledged, so
        that the topics can change under the producer (werkstroom.rotation)."""
        self._open.clear()
        self._held_at = time.monotonic()
        await self._idle.wait()
        await self.producer.flush()

    def release(self) -> None:
        self._open.set()

    async def within(self, work: Awaitable[T], timeout: float) -> T:  # noqa: ASYNC109 - extended by a hold
        """`work` (publishing), given `timeout` seconds; a hold that begins meanwhile adds up to
        HOLD_WAIT, so that a topic swap does not turn the requests in flight into 503s. Raises
        TimeoutError (and cancels `work`: what is not handed over yet is then not sent)."""
        task = asyncio.ensure_future(work)
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done and (self._held_at >= started or not self._open.is_set()):
                done, _ = await asyncio.wait({task}, timeout=HOLD_WAIT + timeout)
            if not done:
                raise TimeoutError(f"not acknowledged within {timeout} s")
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def until_open(self) -> None:
        """Returns at once, or when a hold ends (at most HOLD_WAIT seconds, then TimeoutError)."""
        if not self._open.is_set():
            await asyncio.wait_for(self._open.wait(), HOLD_WAIT)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await self._open.wait()
            self._wakeup.clear()
            # A caller that gave up (its request timed out and was answered 503) is not sent:
            # it will send its events again.
            queue = [q for q in self._queue if not q[2].future.done()]
            self._queue = []
            self._idle.clear()
            try:
                await self._hand_over(queue)
            except Exception as exc:  # e.g. the accumulator stayed full: fail these callers
                for _topic, _messages, waiter in queue:
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)
            finally:
                self._idle.set()

    async def _hand_over(self, queue: list[Queued]) -> None:
        groups: dict[tuple[str, int], list[tuple[bytes, bytes, _Waiter]]] = {}
        partitions: dict[str, list[int]] = {}
        for topic, messages, waiter in queue:
            if topic not in partitions:
                partitions[topic] = sorted(await self.producer.partitions_for(topic))
            known = partitions[topic]
            for key, value in messages:
                target = (topic, known[partition_for(key, len(known))])
                groups.setdefault(target, []).append((key, value, waiter))
        # Build every batch first, so each caller knows how many acknowledgements it waits for
        # before the first one can arrive.
        batches: list[tuple[Any, str, int, set[_Waiter]]] = []
        for (topic, partition), items in groups.items():
            batch, waiters = self.producer.create_batch(), set()
            for key, value, waiter in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batches.append((batch, topic, partition, waiters))
                    batch, waiters = self.producer.create_batch(), set()
                    batch.append(key=key, value=value, timestamp=None)
                waiters.add(waiter)
            batches.append((batch, topic, partition, waiters))
        for *_, waiters in batches:
            for waiter in waiters:
                waiter.remaining += 1
        for batch, topic, partition, waiters in batches:
            delivery = await self.producer.send_batch(batch, topic, partition=partition)
            for waiter in waiters:
                delivery.add_done_callback(waiter.done)
