"""The aggregator's consumer: Kafka events topic -> ClickHouse `events` and the aggregations
(sessions, live view, identities), in batches, at least once. A chain of named stages, each a
module with one job:

    fetch (consumer: rebalances, positions)
      -> decode, dead-letter (decode)
      -> batch (batching: Buffer, batch_due)
      -> apply to the visitors' state (apply)
      -> write (writer)
      -> recompute the derived tables, commit (commit)
    beside them: status (freshness, lag), retry (what a failure means), and the back-fill of
    new funnels (funnels.Backfills)

This module assembles them and runs the loop. The loop fetches and cuts batches; a batch is
handed over to be applied (`hand_over`: a task here, a Faust agent under
services.aggregator.faust_app), one at a time; the writer takes one applied batch at a time
(`_queue`, size 1), so a slow ClickHouse stops the fetching (bounded memory); the committer
recomputes and commits what is written, on its own clock. Offsets are committed only after
their batch is written; a crash between the two re-delivers the batch, whose rows collapse.

stop() ends the sink within seconds whatever it is doing: a backoff ends at once, and what is
held is written and committed only if that takes at most STOP_GRACE seconds; what is not stays
uncommitted and is read again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from clickhouse_connect.driver.client import Client

from services.aggregator import generations, rezone
from services.aggregator.apply import Applier
from services.aggregator.batching import Buffer, Held, RefreshCadence, batch_due, fetch_until
from services.aggregator.breakdowns import RollUps
from services.aggregator.commit import Committer
from services.aggregator.consumer import Positions, Rebalance
from services.aggregator.decode import Decoder, message_of, raw_row
from services.aggregator.errors import describe, started
from services.aggregator.funnels import Backfills
from services.aggregator.processor import ZONES_EVERY, Decoded, Dirty, Rows, SessionsProcessor
from services.aggregator.retry import Abandoned, Retry, SinkStopped, raise_worst
from services.aggregator.status import STALLED_AFTER, STATUS_EVERY, Status
from services.aggregator.writer import Batch, Writer
from werkstroom import projects
from werkstroom.clickhouse import ClientFactory
from werkstroom.contract import Topics
from werkstroom.kafka import Publisher, make_consumer, start_producer
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

__all__ = [  # what other modules and the tests import from here
    "STALLED_AFTER",
    "STATUS_EVERY",
    "EventsSink",
    "HandOver",
    "RefreshCadence",
    "SinkStopped",
    "message_of",
    "raw_row",
]

REFRESH_TICK = 0.05  # seconds between two checks whether the derived tables are due
STOP_GRACE = 3.0  # seconds a stop waits for what is held to be written and committed
CLOSE_TIMEOUT = 2.0  # seconds a stop waits for each Kafka client to close

#: Hands a cut batch over to be applied and queued for the writer; returns a future done once
#: it is (raising what it raised). One at a time: the loop awaits the previous one first.
HandOver = Callable[[Held | None], Awaitable["asyncio.Future[None]"]]

_Abandoned = Abandoned  # the names the unit tests know them by
_raise_worst = raise_worst


class EventsSink:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        clickhouse: ClientFactory,
        *,
        table: str = "events",
        hand_over: HandOver | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topics = Topics.from_settings(settings)
        self._client_factory = clickhouse
        self.table = table
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = asyncio.Event()  # stop() was called, or a task of the sink failed
        self.retry = Retry(self._stopping)
        # The stages.
        self.buffer = Buffer()
        self.decoder = Decoder(settings.sink_max_consecutive_bad)
        self.applier = Applier(read_zones=projects.time_zones)
        self.writer = Writer(
            self.topics, table, settings.sink_max_consecutive_bad, self.retry, self._stopping
        )
        self.positions = Positions(
            self.topics.events, table, bootstrap, self.worker, self.retry, self._stopping
        )
        self.committer = Committer(
            RefreshCadence(settings.derived_refresh_ms / 1000),
            self.retry,
            self.positions.record,
            self._write_status,
            RollUps(settings.breakdown_rollup_seconds),
        )
        self.status = Status(
            self.topics.events,
            self.worker,
            self._caught_up,
            self.committer.committed,
            self.writer.newest,
            lambda: self.writer.last_write,
            self.positions.starts,
        )
        self.backfills = Backfills(clickhouse, self._owns_partition_0, self._stopping)
        self._hand_over = hand_over if hand_over is not None else self._apply_here
        # The loop's own state.
        self._taken: dict[TopicPartition, int] = {}  # the next offset to take, per partition
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._writer: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._statuser: asyncio.Task[None] | None = None
        self._backfiller: asyncio.Task[None] | None = None
        self._rezoning: asyncio.Future[None] | None = None  # the derived tables' recomputation
        self._submitting: asyncio.Future[None] | None = None
        self._stop_wait: asyncio.Future[Any] | None = None  # done once _stopping is set
        self._load_client: Client | None = None
        self._seq = 0
        self._zones_checked = 0.0  # when the projects' zones were last compared with their rows'
        self._written_seq = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.publisher: Publisher | None = None
        self.client: Client | None = None
        self.running = False  # the consumer started, the loop not yet ended (readiness)
        self.joined = False  # the group gave this worker its partitions (none, for a standby)

    # -- what the stages hold, under the names the rest of the code and the tests know ---------

    @property
    def processor(self) -> SessionsProcessor:
        return self.applier.processor

    @property
    def last_write(self) -> float | None:
        return self.writer.last_write

    async def _aggregate(self, events: list[Decoded], seq: int) -> tuple[Rows, Dirty, dict[int, int]]:
        return await self.applier.aggregate(events, seq, self._loader, self.retry)

    def _loader(self) -> Client:
        # Loading the next batch's visitors must not queue behind the previous batch's inserts
        # (a client runs one statement at a time): its own client.
        return started(self._load_client, "the visitors' load client")

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until stop() is called (or a SinkStopped error)."""
        self.status.fresh_at = time.time()
        await self._open()
        self._stop_wait = asyncio.ensure_future(self._stopping.wait())
        self._writer = self._watch(asyncio.create_task(self._write_loop(), name="sink-writer"))
        self._committer = self._watch(asyncio.create_task(self._commit_loop(), name="sink-committer"))
        self._statuser = asyncio.create_task(self.status.loop(), name="sink-status")
        self._backfiller = asyncio.create_task(self.backfills.loop(), name="sink-funnel-backfills")
        log.info("sink_started", topic=self.topics.events, group=self.settings.sink_group, table=self.table)
        self.running = True
        consumer = started(self.consumer, "the sink's consumer")
        flush_every = self.settings.sink_flush_ms / 1000
        deadline = time.monotonic() + flush_every
        try:
            while not self._stopping.is_set():
                until = fetch_until(time.monotonic(), deadline, flush_every)
                wait_ms = max(0, int((until - time.monotonic()) * 1000))
                room = max(1, self.settings.sink_batch_rows - len(self.buffer.events))
                self._take(await consumer.getmany(timeout_ms=wait_ms, max_records=room))
                if self._batch_due(deadline, flush_every):
                    # The next batch is cut a flush interval after this one was, not after it
                    # is applied: what arrives meanwhile waits the interval, not interval + apply.
                    cut = await self._submit_in_background()
                    deadline = cut + flush_every
                if self.positions.replays:
                    await self._replay_tails()
                if time.monotonic() - self._zones_checked >= ZONES_EVERY:
                    await self._rezone()
                self._raise_if_writer_failed()
            self._raise_if_writer_failed()
            await self._drain()
        finally:
            self.running = False
            # Whatever ended the loop, every task ends and the Kafka clients close: a consumer
            # left open keeps its group and partitions (and the broker waiting) after we exit.
            tasks = [
                t
                for t in (
                    self._submitting,
                    self._writer,
                    self._committer,
                    self._statuser,
                    self._backfiller,
                    self._rezoning,
                    self._stop_wait,
                )
                if t
            ]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # a task awaiting a thread ends at once
            await self._close()

    async def _open(self) -> None:
        """The Kafka clients and the ClickHouse clients, one per stage that runs beside another
        (a client runs one statement at a time)."""
        factory = self._client_factory
        self.client = factory()
        self.positions.client = factory()  # the assignments' and the commits' records
        self.producer = await start_producer(self.bootstrap, client_id="werkstroom-sink")
        self.publisher = Publisher(self.producer)
        self.publisher.start()
        self.consumer = make_consumer(
            self.bootstrap,
            [],
            self.settings.sink_group,
            lean_records=True,
            max_poll_records=self.settings.sink_batch_rows,
            session_timeout_ms=self.settings.kafka_session_timeout_ms,
            rebalance_timeout_ms=self.settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(300, self.settings.kafka_session_timeout_ms // 4),
        )
        self.positions.consumer = self.committer.consumer = self.status.consumer = self.consumer
        self.consumer.subscribe([self.topics.events], listener=Rebalance(self))
        await self.consumer.start()
        self.status.derived_client = factory()  # its own client: runs beside the inserts
        # The recomputations' own session: they stage their ids in a temporary table.
        self.committer.client = factory(session=True)
        clients = self.writer.clients
        clients.events, clients.aggregates, clients.live = factory(), self.client, factory()
        clients.publisher = self.publisher
        self._load_client = factory()
        self.status.client = factory()

    def _watch(self, task: asyncio.Future[None]) -> asyncio.Future[None]:
        """A task whose failure stops the sink: every backoff ends, and the loop raises it."""

        def done(task: asyncio.Future[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                self._stopping.set()

        task.add_done_callback(done)
        return task

    async def _drain(self) -> None:
        """At stop: write and commit what is held, if that takes at most STOP_GRACE seconds
        (ClickHouse may be down or hang, and a call to it cannot be interrupted). What is not
        committed by then is read again at the next start; the rows written twice collapse."""
        flush = asyncio.create_task(self.flush(), name="sink-flush")
        watched = [flush, *(t for t in (self._writer, self._committer) if t is not None)]
        await asyncio.wait(watched, timeout=STOP_GRACE, return_when=asyncio.FIRST_COMPLETED)
        self._raise_if_writer_failed()
        if not flush.done():  # past the grace, or the writer or the committer gave up
            flush.cancel()
            await asyncio.gather(flush, return_exceptions=True)
        elif not flush.cancelled():
            error = flush.exception()
            if error is not None and not isinstance(error, Abandoned):
                raise error
        unwritten = self._seq - self._written_seq + (1 if self.buffer.offsets else 0)
        if unwritten or self.committer.pending_offsets:
            log.warning(
                "sink_stopped_uncommitted",
                batches_unwritten=unwritten,
                batches_written_uncommitted=bool(self.committer.pending_offsets),
                hint="read again at the next start",
            )

    # -- fetch and decode ----------------------------------------------------------------------

    def _take(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Decode what getmany returned (aiokafka's lean records, `make_consumer`), under each
        partition's position."""
        for tp, messages in batches.items():
            base = self.positions.bases.get(tp)  # the position of an offset is base + offset
            if base is None:
                if self.positions.failed:
                    raise SinkStopped(
                        f"no generation was decided for {tp.topic}[{tp.partition}] "
                        "(sink_generations_failed): stopping rather than compare its offsets with those "
                        "of another log"
                    )
                # Fetched before the assignment's listener decided (aiokafka fetches at once): read
                # again, from where the listener seeks once it has (its seek comes after this one).
                if messages and self.consumer is not None:
                    self.consumer.seek(tp, messages[0].offset)
                continue
            taken = self.decoder.take(tp, messages, base, self.buffer)
            if taken is not None:
                offset, last = taken
                self._taken[tp] = offset
                self.positions.lasts[(tp, offset)] = last

    # -- batch -----------------------------------------------------------------------------------

    def _batch_due(self, deadline: float, flush_every: float) -> bool:
        return batch_due(
            len(self.buffer.events),
            self.settings.sink_batch_rows,
            time.monotonic(),
            deadline,
            flush_every,
            self._waiting,
        )

    def _waiting(self) -> int:
        """Records in the topic past what was taken, in the partitions taken from (as of the
        last fetch's high watermarks)."""
        consumer = started(self.consumer, "the sink's consumer")
        waiting = 0
        for tp, taken in self._taken.items():
            end = consumer.highwater(tp)
            if end is not None:
                waiting += max(0, end - taken)
        return waiting

    def _caught_up(self) -> bool:
        """Nothing left in the topic and everything taken is written: the recomputation that
        follows covers the whole backlog at once. (A pause in the fetches is not the end of a
        backlog, and a recomputation started before the last batches are written needs
        another one after it.)"""
        submitting = self._submitting is not None and not self._submitting.done()
        if self.buffer.events or submitting or self._written_seq < self._seq:
            return False
        return self._waiting() == 0

    def _cut(self) -> Held | None:
        """Take the records held, at once: what the loop takes from now on is the next batch's.
        (Taken in the background task instead, the batch also got what was fetched before the
        task first ran, went over `sink_batch_rows`, and was cut a second time.)"""
        held = self.buffer.cut()
        if held is not None:
            self.applier.applying = True  # until it is applied, its visitors stay (`forget`)
        return held

    async def _submit_in_background(self, held: Held | None = None) -> float:
        """Cut the batch and hand it over to be applied, and return when it was cut: the loop
        goes on taking records while the batch's visitors load. One batch at a time: the
        previous one must be queued first, so a slow ClickHouse still stops the fetching."""
        if self._submitting is not None:
            if not self._submitting.done():
                # ... or until a stop: a writer that is stuck or gone never takes the batch.
                stop_wait = started(self._stop_wait, "the sink's stop signal")
                await asyncio.wait((self._submitting, stop_wait), return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                return time.monotonic()  # nothing more is cut; the loop ends
            self._submitting.result()  # raises what it raised
        held = held if held is not None else self._cut()
        self._submitting = self._watch(await self._hand_over(held))
        return time.monotonic()

    async def _apply_here(self, held: Held | None) -> asyncio.Future[None]:
        """The hand-over when no Faust agent takes it: a task of this loop."""
        return asyncio.create_task(self.submit(held), name="sink-submit")

    # -- apply -----------------------------------------------------------------------------------

    async def submit(self, held: Held | None) -> None:
        """Apply the records cut to the visitors' state and queue the batch for the writer. The
        queue holds one batch: while the writer inserts batch N, batch N+1 is fetched and
        applied; a slow ClickHouse therefore stops the fetching (bounded memory). One
        submission at a time (the loop and flush() await the previous one first), so the
        processor, the sequence and the queue need no lock here."""
        if held is None:
            return
        self.applier.evict_idle(self._written_seq)
        seq = self._seq + 1
        try:
            aggregates = await self.retry("sink_load_failed", lambda: self._aggregate(held.events, seq))
        finally:
            self.applier.done()  # applied, or given up by a stop: revoked partitions may go now
        self._seq = seq
        batch = Batch(seq, held.dead, held.events, held.raw, held.offsets, *aggregates)
        self.writer.start_live(batch)
        await self._queue.put(batch)

    # -- write -------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await self.writer.write(batch)
                self._written_seq = batch.seq
                self.committer.written(batch.dirty, batch.offsets)
            finally:
                self._queue.task_done()

    # -- recompute and commit ----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        """Recompute the derived tables and commit, on its own clock, so that neither waits for
        the other: the writer keeps the live tables fresh while a recomputation runs."""
        while True:
            await asyncio.sleep(REFRESH_TICK)
            if not self.committer.cadence.due(time.monotonic(), self._caught_up()):
                continue
            await self.committer.refresh_and_commit()
            if time.monotonic() - self.status.history_at >= self.settings.online_history_seconds:
                await self.status.record_online()

    async def _refresh_and_commit(self) -> bool:
        return await self.committer.refresh_and_commit()

    async def _write_status(self) -> None:
        await self.status.write()

    async def flush(self) -> None:
        """Apply and write what is held and wait until everything handed over is written and
        committed (at stop, and before the embedded broker's topic swap)."""
        if self._submitting is not None:
            await self._submitting
        await self.submit(self._cut())
        await self._queue.join()
        self._raise_if_writer_failed()
        await self.committer.refresh_and_commit()

    async def _rezone(self) -> None:
        """Recompute the rows of the projects whose time zone changed (services.aggregator.rezone).
        Everything applied is written and committed first and the projects' new zones adopted;
        events_daily's rows of the partitions held are counted again here, between two batches
        (under a second for a large project); the derived tables are recomputed by a task of
        their own, on a client of its own, while the batches go on (minutes for a large one:
        stalled here, the consumer would outlast Kafka's poll interval and lose its partitions).
        Concurrent refreshes are safe: both sides compute in the new zone, the newer version wins."""
        self._zones_checked = time.monotonic()
        consumer = started(self.consumer, "the sink's consumer")
        held = {tp.partition for tp in consumer.assignment() if tp.topic == self.topics.events}
        busy = self._rezoning is not None and not self._rezoning.done()

        def work(due: rezone.Due) -> None:
            client = self._client_factory(session=True)  # the recomputation stages in its session
            try:
                rezone.run(client, due, self._stopping.is_set)
            finally:
                client.close()

        try:
            due = await self.retry(
                "sink_rezone_failed",
                lambda: asyncio.to_thread(rezone.pending, self._loader(), held, self._owns_partition_0()),
            )
            if busy:  # the derived recomputation under way records its own when it is done
                due = {key: zone for key, zone in due.items() if key[1] != rezone.DERIVED}
            if not due:
                return
            await self.flush()
            self.processor.adopt_zones(rezone.zones_of(due))
            log.info("projects_rezoning", projects=sorted(rezone.zones_of(due)))
            partitions = {key: zone for key, zone in due.items() if key[1] != rezone.DERIVED}
            derived = {key: zone for key, zone in due.items() if key[1] == rezone.DERIVED}
            if partitions:
                await self.retry("sink_rezone_failed", lambda: asyncio.to_thread(work, partitions))
            if derived:
                attempt = self.retry("sink_rezone_failed", lambda: asyncio.to_thread(work, derived))
                task = asyncio.create_task(self._quietly(attempt), name="sink-rezone")
                self._rezoning = self._watch(task)  # its failure stops the sink, as a writer's
        except Abandoned:  # stopping: what was not recorded is recomputed at the next start
            return

    @staticmethod
    async def _quietly(attempt: Awaitable[None]) -> None:
        """A background recomputation given up at a stop: the next start does it again."""
        with contextlib.suppress(Abandoned):
            await attempt

    async def _replay_tails(self) -> None:
        """Replay the tails of the partitions held back (consumer.Replay): the events `events`
        holds of their previous generation, written and never committed, through the normal
        path (apply, write the aggregates, recompute the derived tables for the keys they touch)
        under their own positions, then record the new generation and read the new log. The
        rows themselves are not written again (a new inserted_at would put them in the new
        generation's tail). Idempotent: an aggregation that already counted an event (its
        position at or below the version) ignores it, one that did not counts it. A crash
        before the end records nothing, and the next start decides and replays the same."""
        pending = dict(self.positions.replays)
        replayed: dict[TopicPartition, int] = {}
        for tp, replay in pending.items():
            try:
                events = await self.retry(
                    "sink_tail_load_failed",
                    lambda tp=tp, replay=replay: self.positions.tail_events(tp, replay),
                )
            except Abandoned:
                return
            base = generations.base(replay.generation)
            decoded: list[Decoded] = [(event, tp.partition, base + offset) for event, offset in events]
            replayed[tp] = len(decoded)
            size = self.settings.sink_batch_rows
            for start in range(0, len(decoded), size):
                await self._submit_in_background(Held([], decoded[start : start + size], [], {}))
                if self._stopping.is_set():
                    return
        try:
            await self.flush()  # written, and the keys they touched recomputed
        except Abandoned:
            return
        for tp, replay in (await self.positions.replayed(pending)).items():
            log.info(
                "sink_tail_replayed",
                partition=tp.partition,
                generation=replay.generation,
                start=replay.start,
                events=replayed.get(tp, 0),
                new_generation=replay.row[1],
            )

    # -- what the rest of the process asks of the sink ---------------------------------------------

    async def assign_generations(self, assigned: list[TopicPartition]) -> None:
        """Decide each assigned partition's generation, and where it is read from (consumer.Positions)."""
        await self.positions.assign(assigned)

    def readiness(self) -> str:
        """Readiness for /ready: "ok" while the sink consumes its share of the partitions (none, for a
        standby past the partition count), else what it waits for."""
        if self._stopping.is_set():
            return "stopping"
        if not self.running:
            return "starting"
        if self.positions.failed:
            return "no generation decided for a partition (sink_generations_failed)"
        if not self.joined:
            return "joining its consumer group"
        return "ok"

    def caught_up(self) -> bool:
        """Everything fetched is written and nothing is left in the topic (as of the last fetch)."""
        return self.consumer is not None and self._caught_up()

    async def commit_now(self) -> None:
        """Recompute and commit what is written now, not at the cadence's next turn (the embedded
        broker's topic swap, werkstroom.rotation, holds ingest until this is done)."""
        await self.committer.refresh_and_commit()

    async def log_started_over(self) -> None:
        """The events topic was deleted and created again while this sink held its partitions
        (werkstroom.rotation), with everything in it written and committed: decide each
        partition's generation anew, as a new assignment would, before anything of the new log
        is read. (The consumer may see the change itself and rebalance too: both decide the
        same generation, from what is recorded.)"""
        if self.consumer is None:
            return
        assigned = [tp for tp in self.consumer.assignment() if tp.topic == self.topics.events]
        for tp in assigned:
            self.committer.committed.pop(tp, None)
        await self.assign_generations(assigned)

    def _owns_partition_0(self) -> bool:
        """This worker holds partition 0 of the events topic: it is the one that back-fills."""
        consumer = self.consumer
        return consumer is not None and TopicPartition(self.topics.events, 0) in consumer.assignment()

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Another worker takes these partitions over: drop what we hold of them."""
        self.buffer.forget(partitions)
        for tp in partitions:
            self._taken.pop(tp, None)
        self.committer.forget(partitions)
        self.positions.forget(partitions)
        self.applier.forget({tp.partition for tp in partitions})

    def _raise_if_writer_failed(self) -> None:
        """Raise what a task of the sink failed with (a stop that ended a retry is no failure)."""
        for task in (self._submitting, self._writer, self._committer, self._rezoning):
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None and not isinstance(error, Abandoned):
                    raise error

    def stop(self) -> None:
        """Ask run() to end: it returns within STOP_GRACE seconds and the Kafka clients' close
        (CLOSE_TIMEOUT each at most), whatever it is doing: retrying, splitting a refused
        batch, or waiting on a ClickHouse that hangs."""
        self._stopping.set()

    async def _close(self) -> None:
        """Close the Kafka clients, each within CLOSE_TIMEOUT: the consumer leaves its group
        (its partitions go to another worker at once) and the producer sends what it holds.
        An unreachable broker must not hold the process: past the timeout, it is left."""
        closing: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.consumer is not None:
            closing.append(("consumer", self.consumer.stop))
        if self.publisher is not None:
            closing.append(("publisher", self.publisher.stop))
        if self.producer is not None:
            closing.append(("producer", self.producer.stop))
        for name, close in closing:
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT)
            except Exception as exc:  # TimeoutError, or the broker's own error: we leave anyway
                log.warning("sink_close_failed", client=name, error=describe(exc))
        log.info("sink_stopped")
