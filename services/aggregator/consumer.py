"""The consumer's side of the events topic: the group's rebalances, and each partition's position
(services.aggregator.generations): the generation it is read under, where it is read from
after an assignment, and what is recorded before its offsets are committed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from clickhouse_connect.driver.client import Client

from services.aggregator import generations
from services.aggregator.errors import describe, started
from services.aggregator.retry import Retry
from werkstroom.contract import Event
from werkstroom.kafka import log_ends_at
from werkstroom.logging import get_logger

if TYPE_CHECKING:
    from services.aggregator.sink import EventsSink

log = get_logger(__name__)


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: EventsSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.sink.joined = False  # a rebalance: until it assigns again (readiness)
        # Never wait here: the writer's commit may itself wait for this rebalance to end. What
        # is in flight is still written (its rows collapse with the new owner's, which re-reads
        # from the last commit); what is only buffered for these partitions is dropped.
        self.sink.forget({tp for tp in revoked if tp.topic == self.sink.topics.events})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("sink_partitions_assigned", partitions=sorted(tp.partition for tp in assigned))
        # Before anything is fetched from them: the generation each is read under, and where.
        await self.sink.assign_generations(assigned)
        self.sink.joined = True


@dataclass
class Replay:
    """A partition whose log started over while `events` held rows of its previous generation
    that were written and never committed (generations.tails): they are replayed from `events`
    before the partition is read again (EventsSink.replay_tails), and only then is its new
    generation recorded, so that a crash meanwhile decides (and replays) the same again at the
    next start."""

    generation: int  # the previous generation, the one the rows were written under
    start: int  # its recorded next_offset: the rows at this offset or past it
    began: int  # when it began (generations._tail_where)
    row: tuple[int, int, int, int, int, int | None]  # the new generation's sink_partitions row
    seek: int  # where the new log is read from


@dataclass
class Positions:
    """Per partition of the events topic: its generation << 40 (`bases`: a message's position
    is base + offset), when that generation began, the (key, value) of the message before each
    next offset taken (its anchor), and the partitions held back until a tail is replayed."""

    topic: str
    table: str
    bootstrap: str
    worker: str
    retry: Retry
    stopping: asyncio.Event
    bases: dict[TopicPartition, int] = field(default_factory=dict)
    lasts: dict[tuple[TopicPartition, int], tuple[bytes | None, bytes | None]] = field(default_factory=dict)
    began: dict[TopicPartition, int | None] = field(default_factory=dict)  # (0018)
    replays: dict[TopicPartition, Replay] = field(default_factory=dict)
    # Where this assignment reads each partition from: its lag until the first commit on it.
    starts: dict[TopicPartition, int] = field(default_factory=dict)
    partition_count: int = 0
    failed: bool = False  # an assignment could not decide its generations
    client: Client | None = None  # the assignments' and the commits' records
    consumer: AIOKafkaConsumer | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.replays.pop(tp, None)  # not recorded: the new owner decides and replays it again
            self.starts.pop(tp, None)

    async def assign(self, assigned: list[TopicPartition]) -> None:
        """Decide the generation of each assigned partition of the events topic from what is
        recorded and what Kafka says (generations.decide), write down the new ones, and seek
        where each is to be read from. Failing, the partitions get no generation, and the
        sink stops at their first message instead of comparing offsets of two logs."""
        tps = sorted((tp for tp in assigned if tp.topic == self.topic), key=lambda tp: tp.partition)
        for tp in tps:
            self.bases.pop(tp, None)
            self.replays.pop(tp, None)  # decided again, from what is recorded
        if not tps:
            return
        try:
            await self.retry("sink_generations_failed", lambda: self._decide(tps))
        except Exception as exc:
            if self.stopping.is_set():  # given up because the sink stops: nothing more is taken
                return
            self.failed = True
            log.error("sink_generations_failed", error=describe(exc), partitions=[tp.partition for tp in tps])

    async def _decide(self, tps: list[TopicPartition]) -> None:
        topic = self.topic
        consumer = started(self.consumer, "the sink's consumer")
        client = started(self.client, "the generations' client")
        known = consumer.partitions_for_topic(topic)
        count = len(known) if known else max(tp.partition for tp in tps) + 1
        committed = {tp: await consumer.committed(tp) for tp in tps}
        ends = await log_ends_at(self.bootstrap, tps)  # not end_offsets: see log_ends
        async with self.lock:
            # ClickHouse's clock before anything is decided, so before any message of a new
            # generation is read: when the generations decided here begin (0018).
            now = await asyncio.to_thread(generations.clock_ms, client)
            records, recorded = await asyncio.to_thread(generations.load, client, topic)
            counted: set[int] = set()
            if recorded.generation is None and any(committed[tp] is None for tp in tps):
                counted = await asyncio.to_thread(generations.counted_partitions, client)
            wanted = {
                tp: records[tp.partition].next_offset - 1
                for tp in tps
                if tp.partition in records
                and committed[tp] is None
                and 0 < records[tp.partition].next_offset <= ends[tp]
            }
            found = await generations.anchors_at(self.bootstrap, wanted)
            # What `events` holds of each recorded generation past its record: written, never
            # committed. Evidence of the log read (its last event must still be there), and what
            # is replayed when the log started over (EventsSink.replay_tails).
            known_tails = {
                tp.partition: (record.next_offset, record.began_ms)
                for tp in tps
                if (record := records.get(tp.partition)) is not None and record.began_ms is not None
            }
            tails = await asyncio.to_thread(generations.tails, client, self.table, known_tails)
            tail_found = await generations.event_ids_at(
                self.bootstrap,
                {
                    tp: tails[tp.partition].last
                    for tp in tps
                    if tp.partition in tails and committed[tp] is None and tails[tp.partition].last < ends[tp]
                },
            )
            rows = []
            from_start: list[TopicPartition] = []
            for tp in tps:
                record = records.get(tp.partition)
                tail = tails.get(tp.partition)
                decision = generations.decide(
                    record,
                    recorded,
                    count,
                    committed[tp],
                    ends[tp],
                    found.get(tp),
                    tp.partition in counted,
                    tail,
                    tail_found.get(tp),
                )
                # A generation carries the time it began forward; a new one begins now, and so
                # does one recorded before 0018 (its rows from now on are told apart).
                same = record is not None and record.generation == decision.generation
                began = now
                if same and record is not None and record.began_ms is not None:
                    began = record.began_ms
                row = None
                if decision.record or record is None or began != record.began_ms:
                    # A checkpoint that holds: the record's own (its log goes on), or none (0).
                    at, anchor = 0, 0
                    seek = decision.seek
                    if record is not None and seek is not None and seek >= record.next_offset:
                        at, anchor = record.next_offset, record.anchor
                    row = (tp.partition, decision.generation, at, anchor, count, began)
                # A tail is only found for a record that knows when its generation began.
                replay = decision.reason == "new_log" and tail is not None
                if replay and record is not None and record.began_ms is not None:
                    # Held back (paused, no position yet) until the tail is replayed: nothing of
                    # the new log may be applied before it, and the new generation is recorded
                    # only then. (decide() records a new log, read from 0: both are set.)
                    if row is None or decision.seek is None:
                        raise RuntimeError(f"a new log to replay a tail for, with no row or seek: {decision}")
                    self.replays[tp] = Replay(
                        record.generation, record.next_offset, record.began_ms, row, decision.seek
                    )
                    consumer.pause(tp)
                else:
                    if row is not None:
                        rows.append(row)
                    self.bases[tp] = generations.base(decision.generation)
                    self.began[tp] = began
                    if decision.seek is not None:
                        consumer.seek(tp, decision.seek)
                start = decision.seek if decision.seek is not None else committed[tp]
                if start is None:
                    from_start.append(tp)  # no commit and no seek: the log's first offset
                else:
                    self.starts[tp] = start
                log.info(
                    "sink_generation",
                    partition=tp.partition,
                    generation=decision.generation,
                    reason=decision.reason,
                    seek=decision.seek,
                    committed=committed[tp],
                    end=ends[tp],
                    tail=tail.rows if tail is not None else 0,
                    replay=replay,
                )
            await asyncio.to_thread(generations.save, client, topic, rows, self.worker)
        if from_start:
            self.starts.update(await consumer.beginning_offsets(from_start))
        self.partition_count = count

    async def record(self, offsets: dict[TopicPartition, int]) -> None:
        """Record, before committing `offsets`, each partition's generation, next offset and the
        anchor of the message before it (services.aggregator.generations): what the next
        assignment checks the log against when the group's offsets are gone."""
        rows = []
        for tp, offset in offsets.items():
            if tp.topic != self.topic or tp not in self.bases:
                continue
            last = self.lasts.get((tp, offset))
            anchor = generations.anchor_of(*last) if last is not None else 0
            generation = self.bases[tp] >> generations.SHIFT
            began = self.began.get(tp)  # carried forward: the generation's tail is told by it
            rows.append((tp.partition, generation, offset, anchor, self.partition_count, began))
        client = started(self.client, "the generations' client")
        async with self.lock:
            await asyncio.to_thread(generations.save, client, self.topic, rows, self.worker)
        for key in [k for k in self.lasts if k[1] <= offsets.get(k[0], -1)]:
            del self.lasts[key]

    async def replayed(self, done: dict[TopicPartition, Replay]) -> dict[TopicPartition, Replay]:
        """Record the new generation of the partitions whose tails were replayed, and read their
        new logs; returns those still held back for that replay (not revoked or decided again)."""
        client = started(self.client, "the generations' client")
        consumer = started(self.consumer, "the sink's consumer")
        async with self.lock:
            done = {tp: r for tp, r in done.items() if self.replays.get(tp) is r}
            await asyncio.to_thread(
                generations.save, client, self.topic, [r.row for r in done.values()], self.worker
            )
            resumed = {}
            for tp, replay in done.items():
                if self.replays.get(tp) is not replay:  # revoked or decided again meanwhile
                    continue
                del self.replays[tp]
                self.bases[tp] = generations.base(replay.row[1])
                self.began[tp] = replay.row[5]
                consumer.seek(tp, replay.seek)
                consumer.resume(tp)
                resumed[tp] = replay
            return resumed

    async def tail_events(self, tp: TopicPartition, replay: Replay) -> list[tuple[Event, int]]:
        """The events `events` holds of a replayed partition's previous generation."""
        client = started(self.client, "the generations' client")
        async with self.lock:  # the client is the assignments' too
            return await asyncio.to_thread(
                generations.tail_events, client, self.table, tp.partition, replay.start, replay.began
            )
