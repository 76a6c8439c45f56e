"""Bounded memory on the embedded broker (issue 18).

tansu keeps its topics in memory and never trims them: a topic's `retention.ms` is not applied
to memory storage and DeleteRecords closes the connection. Deleting a topic frees its memory at
once. So `--target all` on the embedded broker swaps the events topic for an empty one once it
holds `embedded_broker_max_events` events or its first is `embedded_broker_max_age_seconds` old:

1. wait (at most CATCH_UP_WAIT) until the aggregator has nearly caught up, so step 2 is short;
2. hold ingest's sends (`Publisher.hold`): requests keep coming and wait, nobody gets a 200
   before Kafka has their events; what was handed over before is acknowledged;
3. let the aggregator write and commit up to the topic's end offsets (at most HOLD_MAX);
4. delete the topic and create it again with as many partitions (the group's offsets go too);
5. the aggregator decides a new generation for each partition (services.aggregator.generations:
   a log shorter than what was read of it is a new log), so the new log's positions count
   above the old one's: nothing is skipped, nothing counted twice;
6. release the sends.

Steps 1-3 give up when they take too long (the topic is kept, tried again later); steps 4-6
are never interrupted. The dead-letter topic has no reader in this process: past the same size
it is emptied too, and the letters dropped are counted in the log.

The bots topic is swapped on its own once it holds `embedded_broker_max_events` (its traffic
is not the events'), the same way (`rotate_bots`): wait until the bots consumer
(services.aggregator.bots) is nearly caught up, hold ingest's sends, wait until it committed
the topic's end offsets, create the topic again, have it read the new log from its start
(`started_over`: bot events are counted once per id, so reading again is harmless, skipping
is not), release. A swap of the events topic never waits for the bots consumer.

With an external Kafka (WERKSTROOM_KAFKA_BOOTSTRAP) none of this runs: its retention applies.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from werkstroom import metrics
from werkstroom.contract import Topics
from werkstroom.kafka import HOLD_MAX, Publisher, log_ends, make_consumer, make_meter, uncommitted
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

CHECK_EVERY = 5.0  # seconds between two looks at the topics' sizes
CATCH_UP_WAIT = 60.0  # step 1: how long to wait for the aggregator to come near the end
NEAR_END = 5_000  # step 1: "nearly caught up", in events not yet committed


class Sink(Protocol):
    """What the rotation asks of the aggregator in this process (services.aggregator.sink)."""

    def caught_up(self) -> bool: ...

    async def commit_now(self) -> None: ...

    async def log_started_over(self) -> None: ...


class Bots(Protocol):
    """What the rotation asks of the bots consumer in this process (services.aggregator.bots)."""

    def started_over(self) -> None: ...


class Rotation:
    """Swaps the embedded broker's events topic for an empty one when it grows too large."""

    def __init__(
        self, settings: Settings, bootstrap: str, publisher: Publisher, sink: Sink, bots: Bots | None = None
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.publisher = publisher
        self.sink = sink
        self.bots = bots
        self._bots_group: AIOKafkaConsumer | None = None  # reads the bots consumer's offsets
        self._meters: dict[str, AIOKafkaConsumer] = {}  # per topic, in no group (`_measure`)
        self.topics = Topics.from_settings(settings)
        self._closing = asyncio.Event()
        self._since = time.monotonic()  # when the events topic was last found empty or swapped
        self.rotations = 0

    def close(self) -> None:
        """Give up any rotation not yet past step 3; one under way finishes first."""
        self._closing.set()

    async def run(self) -> None:
        limit, age = self.settings.embedded_broker_max_events, self.settings.embedded_broker_max_age_seconds
        # Its own client in the sink's group (it never joins it, nor is it ever assigned: it
        # only reads the group's offsets; the topics are measured by `_measure`).
        consumer = make_consumer(
            self.bootstrap, [], self.settings.sink_group, client_id="werkstroom-rotation"
        )
        await consumer.start()
        if self.bots is not None:
            self._bots_group = make_consumer(
                self.bootstrap, [], self.settings.bots_group, client_id="werkstroom-rotation-bots"
            )
            await self._bots_group.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            while not self._closing.is_set():
                try:
                    await asyncio.wait_for(self._closing.wait(), CHECK_EVERY)
                    return
                except TimeoutError:
                    pass
                try:
                    await self._check(consumer, admin, limit, age)
                except Exception:  # the pipeline goes on; memory grows until a later check passes
                    log.exception("embedded_rotation_failed", retry_in_s=CHECK_EVERY)
        finally:
            await admin.close()
            await consumer.stop()
            for meter in self._meters.values():
                await meter.stop()
            if self._bots_group is not None:
                await self._bots_group.stop()

    async def _check(
        self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, limit: int, age: float
    ) -> None:
        known = await consumer.topics()  # fresh metadata: the partitions of both topics
        if self.topics.events not in known:  # a swap that failed half-way: never leave it gone
            await self._swap(admin, consumer, self.topics.events, self.settings.topic_partitions)
        if self.topics.bots not in known:
            await _recreate(admin, consumer, self.topics.bots, self.settings.topic_partitions)
            if self.bots is not None:
                self.bots.started_over()
        bots = sum((await self._measure(admin, self.topics.bots)).values())
        if 0 < limit <= bots and self.bots is None:  # no reader in this process: like the letters
            await _recreate(admin, consumer, self.topics.bots, self.settings.topic_partitions)
            log.warning("embedded_bot_events_dropped", events=bots, limit=limit)
        elif 0 < limit <= bots:
            await self.rotate_bots(consumer, admin)
        events = sum((await self._measure(admin, self.topics.events)).values())
        if events == 0:
            self._since = time.monotonic()
            return
        too_many = 0 < limit <= events
        too_old = 0 < age <= time.monotonic() - self._since
        if too_many or too_old:
            await self.rotate(consumer, admin, "size" if too_many else "age")
        # Measured like the bots topic (`_measure`): this consumer's metadata knows only the
        # topics it reads, so the letters once read as 0 from the second check on.
        ends = await self._measure(admin, self.topics.dead_letter)
        letters = sum(ends.values())
        if 0 < limit <= letters:
            await _recreate(admin, consumer, self.topics.dead_letter, len(ends))
            log.warning("embedded_dead_letters_dropped", letters=letters, limit=limit)

    async def rotate(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, why: str) -> bool:
        """Steps 1-6 above; returns whether the topic was swapped."""
        topic = self.topics.events
        started = time.monotonic()
        deadline = started + CATCH_UP_WAIT
        while (await self._behind(admin, consumer, topic))[1] > NEAR_END:
            if self._closing.is_set() or time.monotonic() > deadline:
                log.info("embedded_rotation_postponed", reason="the aggregator is behind", wanted=why)
                return False
            await asyncio.sleep(0.2)
        # Recompute and commit what is written now, while ingest still runs: the hold then
        # waits only for what arrives meanwhile.
        if self.sink.caught_up():
            await self.sink.commit_now()
        held = time.monotonic()
        await self.publisher.hold()
        try:
            ends = await self._settle(admin, consumer, topic, held + HOLD_MAX - 1.0)
            if ends is None:
                log.info("embedded_rotation_postponed", reason="not committed in time", wanted=why)
                return False
            settled = time.monotonic()
            events = sum(ends.values())
            # Steps 4-6 run to their end: a topic left deleted would refuse every event.
            count = len(ends) or self.settings.topic_partitions
            await asyncio.shield(self._swap(admin, consumer, topic, count))
        finally:
            self.publisher.release()
        self.rotations += 1
        self._since = time.monotonic()
        metrics.EMBEDDED_ROTATIONS.inc()
        log.info(
            "embedded_topic_rotated",
            reason=why,
            events=events,
            held_ms=round((time.monotonic() - held) * 1000),
            settle_ms=round((settled - held) * 1000),
            seconds=round(time.monotonic() - started, 3),
        )
        return True

    async def _behind(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str
    ) -> tuple[dict[TopicPartition, int], int]:
        """The topic's end offsets and how many messages `consumer`'s group has not committed."""
        ends = await self._measure(admin, topic)
        return ends, await uncommitted(consumer, ends)

    async def _settle(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, deadline: float
    ) -> dict[TopicPartition, int] | None:
        """Step 3: wait until the group committed the topic's end offsets (the sink is asked to
        commit at once rather than at its cadence); those end offsets, or None."""
        while time.monotonic() < deadline and not self._closing.is_set():
            if self.sink.caught_up():
                await self.sink.commit_now()
                ends, left = await self._behind(admin, consumer, topic)
                if left == 0:
                    return ends
            await asyncio.sleep(0.05)
        return None

    async def rotate_bots(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> bool:
        """The bots topic's swap (module docstring); returns whether it was swapped."""
        bots, bots_group = self.bots, self._bots_group
        if bots is None or bots_group is None:
            raise RuntimeError("rotate_bots() needs a bots consumer and run()'s reader of its group")
        topic = self.topics.bots
        deadline = time.monotonic() + CATCH_UP_WAIT
        while (await self._behind(admin, bots_group, topic))[1] > NEAR_END:
            if self._closing.is_set() or time.monotonic() > deadline:
                log.info("embedded_rotation_postponed", reason="the bots consumer is behind", wanted="bots")
                return False
            await asyncio.sleep(0.2)
        held = time.monotonic()
        await self.publisher.hold()
        try:
            # It commits after each write, at most `sink_flush_ms` after the last message.
            while True:
                ends, left = await self._behind(admin, bots_group, topic)
                if left == 0:
                    break
                if self._closing.is_set() or time.monotonic() > held + HOLD_MAX - 1.0:
                    log.info("embedded_rotation_postponed", reason="bots not committed in time", left=left)
                    return False
                await asyncio.sleep(0.05)
            await asyncio.shield(
                _recreate(admin, consumer, topic, len(ends) or self.settings.topic_partitions)
            )
            bots.started_over()
        finally:
            self.publisher.release()
        log.info(
            "embedded_bots_topic_rotated",
            events=sum(ends.values()),
            held_ms=round((time.monotonic() - held) * 1000),
        )
        return True

    async def _measure(self, admin: AIOKafkaAdminClient, topic: str) -> dict[TopicPartition, int]:
        """The end offsets of `topic`, read by a consumer in no group that measures this topic
        only. (A consumer's partitions_for_topic knows only the topics it was assigned since its
        metadata was last refreshed, and re-assigning a consumer in a group while it looks up
        its coordinator fails it for good: aiokafka's coordination routine asserts the
        assignment it just read is still active, and a check that died that way left every
        later check failing, so no swap ever came. The partitions come from the admin client.)"""
        meter = self._meters.get(topic)
        if meter is None:
            meter = make_meter(self.bootstrap)
            await meter.start()
            self._meters[topic] = meter
        described = await admin.describe_topics([topic])
        partitions = [
            TopicPartition(topic, p["partition"])
            for t in described
            if t["topic"] == topic and not t["error_code"]
            for p in t["partitions"]
        ]
        return await log_ends(meter, sorted(partitions))

    async def _swap(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, partitions: int
    ) -> None:
        await _recreate(admin, consumer, topic, partitions)
        await self.sink.log_started_over()


async def _recreate(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, partitions: int | None = None
) -> None:
    """Delete `topic` (if it exists) and create it with `partitions` (default: as many as now)."""
    count = partitions or len(consumer.partitions_for_topic(topic) or ()) or 1
    if topic in await admin.list_topics():
        await admin.delete_topics([topic])
        for _ in range(100):
            if topic not in await admin.list_topics():
                break
            await asyncio.sleep(0.02)
    await admin.create_topics([NewTopic(name=topic, num_partitions=count, replication_factor=1)])
    await consumer.topics()


def publisher_of(ingestor: Any) -> Publisher | None:
    """The Publisher of ingest's Ingestor (None before its start-up got that far)."""
    publisher = getattr(getattr(ingestor, "s", None), "publisher", None)
    return publisher if isinstance(publisher, Publisher) else None
