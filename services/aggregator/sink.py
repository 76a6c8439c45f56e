"""The aggregator's consumer: Kafka events topic -> ClickHouse `events` and the aggregations
(sessions, live view, identities; services.aggregator.processor), in batches, at least once.

Policy (Arroyo-style, explicit):
- batch by size (`sink_batch_rows`) or time (`sink_flush_ms`), whichever comes first; while
  a full batch is already waiting in the topic (a backlog), fill it up first (`_batch_due`);
- insert the batch into ClickHouse. What fails is classified (services.aggregator.errors):
  a transient failure (ClickHouse down, overloaded, a table being migrated) is retried with
  backoff, and nothing more is fetched meanwhile, so memory stays bounded (backpressure on the
  consumer); rows ClickHouse refuses (a data error) are found by splitting the batch, go to the
  dead-letter topic with ClickHouse's reason, and the rest is written; anything else is a
  programming error and stops the sink (`SinkStopped`), as do too many refused rows in a row;
- the live view's rows go in as soon as a batch is aggregated, on their own client, ahead
  of the previous batch's other writes; the batch is committed only once they are in too;
- commit the Kafka offsets only after the insert succeeded. A crash between insert and
  commit re-delivers the batch; the rows collapse again in the ReplacingMergeTree (same
  sorting key, ending in event_id);
- a message that breaks the contract goes to the dead-letter topic with its reason; too
  many in a row (`sink_max_consecutive_bad`) stops the sink with an error instead of
  silently dead-lettering a broken producer;
- stop() ends the sink within seconds whatever it is doing: a backoff ends at once, and what
  is held is written and committed only if that takes at most STOP_GRACE seconds; what is
  not stays uncommitted and is read again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from clickhouse_connect.driver.client import Client

from services.aggregator import generations
from services.aggregator.derived import refresh
from services.aggregator.errors import Failure, classify, describe, error_name, started
from services.aggregator.processor import Decoded, Dirty, Rows, SessionsProcessor
from services.aggregator.sessions import Changes
from werkstroom import metrics
from werkstroom.clickhouse import ClientFactory
from werkstroom.clickhouse.params import insert_rows
from werkstroom.clickhouse.tables import AGGREGATOR_STATUS_COLUMNS, EVENTS_COLUMNS, ONLINE_HISTORY_COLUMNS
from werkstroom.clickhouse.versions import next_version
from werkstroom.contract import ContractError, Event, Topics, dead_letter, decode_event, message_key
from werkstroom.kafka import Publisher, log_ends_at, make_consumer, start_producer
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

#: The freshness contract, stated once here: a live aggregator writes its aggregator_status
#: rows at least every STATUS_EVERY seconds, idle or not (`_status_loop`), with last_write_at =
#: now while it is caught up; readers call the pipeline stalled once last_write_at is older than
#: STALLED_AFTER (the dashboard's STALE_AFTER_S in services/api/static/app.js, which re-reads it
#: every 5 s). So an idle site is never "stalled", and a stopped aggregator is within ~10 s.
STATUS_EVERY = 2.0
STALLED_AFTER = 10.0
APPLY_CHUNK = 2000  # events applied between two turns of the event loop
BACKLOG_HOLD = 3  # flush intervals a batch may wait to fill up while there is a backlog
EVICT_EVERY = 5.0  # seconds between two looks for idle visitors to forget
REFRESH_TICK = 0.05  # seconds between two checks whether the derived tables are due
STOP_GRACE = 3.0  # seconds a stop waits for what is held to be written and committed
CLOSE_TIMEOUT = 2.0  # seconds a stop waits for each Kafka client to close
REFUSED = "refused_by_clickhouse"  # the dead-letter reason of a row ClickHouse refused
RECORD_ONLINE = f"""
INSERT INTO online_history ({", ".join(ONLINE_HISTORY_COLUMNS)})
SELECT project_id, toStartOfMinute(now('UTC')), count(), toUInt64(toUnixTimestamp64Milli(now64(3)))
FROM online_visitors FINAL
WHERE last_event_at >= now64(3) - INTERVAL 5 MINUTE
GROUP BY project_id
"""
T = TypeVar("T")
R = TypeVar("R")  # a row: a raw `events` line, or a list of an aggregate table's values


class SinkStopped(RuntimeError):
    """The sink stopped on purpose (a programming error, too many bad messages or refused rows
    in a row); the message says why, and the cause is chained."""


class _Abandoned(Exception):
    """A stop came while a write was failing: the batch stays unwritten and uncommitted."""


#: How ClickHouse reads the raw messages: contract times are RFC 3339, properties/traits are
#: objects stored as their JSON text, and fields added later within v1 are skipped. Parsed in
#: one thread: splitting a batch of a few MB for parallel parsing costs more CPU, taken from
#: the cores the aggregator, the embedded broker and ClickHouse share.
RAW_INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 1,
    "input_format_json_read_objects_as_strings": 1,
    "input_format_parallel_parsing": 0,
}
_OFFSET_KEYS = b'"kafka_'


def raw_row(value: bytes, event: Event, partition: int, offset: int) -> bytes:
    """The message as a JSONEachRow line of `events`, with where it came from added. The JSON
    is parsed by ClickHouse, in C++, instead of being re-serialised field by field here: the
    aggregator's largest per-event cost before. A message that carries kafka_* keys itself is
    re-encoded from its decoded fields so that the added keys cannot clash."""
    body = value.rstrip()
    if _OFFSET_KEYS in body:
        body = msgspec.json.encode(event).rstrip()
    return b'%s,"kafka_partition":%d,"kafka_offset":%d}' % (body[:-1], partition, offset)


def message_of(line: bytes, partition: int, offset: int) -> bytes:
    """The message a raw_row line was made of, for its dead letter (re-encoded from its
    decoded fields if it carried kafka_* keys itself)."""
    suffix = b',"kafka_partition":%d,"kafka_offset":%d}' % (partition, offset)
    return line[: -len(suffix)] + b"}" if line.endswith(suffix) else line


@dataclass
class _Held:
    """The records of one batch, as cut from what the loop took."""

    dead: list[tuple[bytes, bytes]]
    events: list[Decoded]
    raw: list[bytes]
    offsets: dict[TopicPartition, int]


@dataclass
class _Batch:
    seq: int
    dead: list[tuple[bytes, bytes]]
    events: list[Decoded]
    raw: list[bytes]
    offsets: dict[TopicPartition, int]
    aggregates: Rows
    dirty: Dirty
    newest: dict[int, int]  # partition -> newest event time (ms)
    live: asyncio.Task[None] | None = None  # the live view's insert, started at once


@dataclass
class _Replay:
    """A partition whose log started over while `events` held rows of its previous generation
    that were written and never committed (generations.tails): they are replayed from `events`
    before the partition is read again (`_replay_tails`), and only then is its new generation
    recorded, so that a crash meanwhile decides (and replays) the same again at the next start."""

    generation: int  # the previous generation, the one the rows were written under
    start: int  # its recorded next_offset: the rows at this offset or past it
    began: int  # when it began (generations._tail_where)
    row: tuple[int, int, int, int, int, int | None]  # the new generation's sink_partitions row
    seek: int  # where the new log is read from


@dataclass
class _Refused:
    """A row ClickHouse refused, as its dead letter."""

    table: str
    key: bytes
    letter: bytes


LIVE_TABLE = "online_visitors"


@dataclass
class RefreshCadence:
    """When the derived tables are recomputed. A recomputation starts at most every `interval`
    seconds, counted from the start of the previous one (so the last one after a backlog is
    not held back by the length of the one before it). While a backlog is being read, a
    recomputation starts at most every 5 x its last duration: at most a fifth of the time
    goes to it, and more of the backlog is folded into each one."""

    interval: float
    floor: float = 0.0  # the earliest next start once caught up
    backlog_next: float = 0.0  # ... and while there is a backlog

    def due(self, now: float, caught_up: bool) -> bool:
        return now >= self.backlog_next or (caught_up and now >= self.floor)

    def ran(self, started: float, took: float) -> None:
        self.floor = started + self.interval
        self.backlog_next = started + max(self.interval, 5 * took)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
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


class EventsSink:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        clickhouse: ClientFactory,
        *,
        table: str = "events",
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topics = Topics.from_settings(settings)
        self._client_factory = clickhouse
        self.table = table
        self._events: list[Decoded] = []
        self._raw: list[bytes] = []  # the events as JSONEachRow lines, beside self._events
        self.processor = SessionsProcessor()
        self._dead: list[tuple[bytes, bytes]] = []
        self._offsets: dict[TopicPartition, int] = {}
        self._taken: dict[TopicPartition, int] = {}  # the next offset to take, per partition
        # Positions (services.aggregator.generations): each partition's generation << 40, and
        # the (key, value) of the message before each next offset taken, for its anchor.
        self._bases: dict[TopicPartition, int] = {}
        self._lasts: dict[tuple[TopicPartition, int], tuple[bytes | None, bytes | None]] = {}
        self._began: dict[TopicPartition, int | None] = {}  # when each one's generation began (0018)
        self._replays: dict[TopicPartition, _Replay] = {}  # partitions held back until replayed
        self._partition_count = 0
        self._generations_client: Client | None = None
        self._generations_lock = asyncio.Lock()
        self._generations_failed = False  # an assignment could not decide its generations
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=1)
        self._writer: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._statuser: asyncio.Task[None] | None = None
        self._status_lock = asyncio.Lock()
        self._submitting: asyncio.Task[None] | None = None
        self._evicted_at = 0.0
        self._derived_client: Client | None = None
        self._status_client: Client | None = None
        self._refresh_client: Client | None = None
        self._events_client: Client | None = None
        self._load_client: Client | None = None
        self._live_client: Client | None = None
        self._seq = 0
        self._written_seq = 0
        self._pending_dirty = Dirty()
        self._pending_offsets: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._cadence = RefreshCadence(settings.derived_refresh_ms / 1000)
        self._stopping = asyncio.Event()  # stop() was called, or a task of the sink failed
        self._stop_wait: asyncio.Future[Any] | None = None  # done once _stopping is set
        self._consecutive_bad = 0
        self._refused_run: dict[str, int] = {}  # table -> rows refused in a row, as last written
        self._aggregating = False
        self._revoke_after: set[int] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.publisher: Publisher | None = None
        self.client: Client | None = None
        self.last_write: float | None = None
        self._newest: dict[int, int] = {}  # partition -> newest event time written (ms)
        self._committed: dict[TopicPartition, int] = {}
        self._status_at = 0.0
        self._fresh_at = 0.0  # when the last status found the sink caught up (wall clock)
        self._history_at = 0.0
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.running = False  # the consumer started, the loop not yet ended (readiness)
        self.joined = False  # the group gave this worker its partitions (none, for a standby)
        self._lag_labels: set[str] = set()  # the partitions of SINK_LAG this worker set

    async def run(self) -> None:
        """Consume until stop() is called (or a SinkStopped error)."""
        # Until its first write or catch-up, a worker's status dates from its start: fresh for
        # STALLED_AFTER, then stalled if it still has neither written nor caught up (never 1970).
        self._fresh_at = time.time()
        self.client = self._client_factory()
        self._generations_client = self._client_factory()  # the assignments' and the commits' records
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
        self.consumer.subscribe([self.topics.events], listener=_Rebalance(self))
        await self.consumer.start()
        self._derived_client = self._client_factory()  # its own client: runs beside the inserts
        # The recomputations' own session: they stage their ids in a temporary table.
        self._refresh_client = self._client_factory(session=True)
        self._events_client = self._client_factory()  # the events table's inserts, beside the rest
        # Loading the next batch's visitors must not queue behind the previous batch's inserts
        # (a client runs one statement at a time): its own client.
        self._load_client = self._client_factory()
        self._live_client = self._client_factory()  # the live view, ahead of the batch's other writes
        self._stop_wait = asyncio.ensure_future(self._stopping.wait())
        self._writer = self._watch(asyncio.create_task(self._write_loop(), name="sink-writer"))
        self._committer = self._watch(asyncio.create_task(self._commit_loop(), name="sink-committer"))
        # On its own clock and client: a long recomputation or a slow insert must not make a
        # live aggregator look stalled (best effort: it never stops the sink).
        self._status_client = self._client_factory()
        self._statuser = asyncio.create_task(self._status_loop(), name="sink-status")
        log.info("sink_started", topic=self.topics.events, group=self.settings.sink_group, table=self.table)
        self.running = True
        flush_every = self.settings.sink_flush_ms / 1000
        deadline = time.monotonic() + flush_every
        try:
            while not self._stopping.is_set():
                until = deadline if time.monotonic() < deadline else deadline + BACKLOG_HOLD * flush_every
                wait_ms = max(0, int((until - time.monotonic()) * 1000))
                room = max(1, self.settings.sink_batch_rows - len(self._events))
                batches = await self.consumer.getmany(timeout_ms=wait_ms, max_records=room)
                self._take(batches)
                if self._batch_due(deadline, flush_every):
                    # The next batch is cut a flush interval after this one was, not after it
                    # is applied: what arrives meanwhile waits the interval, not interval + apply.
                    cut = await self._submit_in_background()
                    deadline = cut + flush_every
                if self._replays:
                    await self._replay_tails()
                self._raise_if_writer_failed()
            self._raise_if_writer_failed()
            await self._drain()
        finally:
            self.running = False
            # Whatever ended the loop, every task ends and the Kafka clients close: a consumer
            # left open keeps its group and partitions (and the broker waiting) after we exit.
            tasks = [
                t
                for t in (self._submitting, self._writer, self._committer, self._statuser, self._stop_wait)
                if t
            ]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # a task awaiting a thread ends at once
            await self._close()

    def _watch(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """A task whose failure stops the sink: every backoff ends, and the loop raises it."""

        def done(task: asyncio.Task[None]) -> None:
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
            if error is not None and not isinstance(error, _Abandoned):
                raise error
        unwritten = self._seq - self._written_seq + (1 if self._offsets else 0)
        if unwritten or self._pending_offsets:
            log.warning(
                "sink_stopped_uncommitted",
                batches_unwritten=unwritten,
                batches_written_uncommitted=bool(self._pending_offsets),
                hint="read again at the next start",
            )

    def _batch_due(self, deadline: float, flush_every: float) -> bool:
        """Cut the batch when it is full, or a flush interval after the previous cut, unless
        the rest of a full batch is already waiting in the topic (a backlog): then it fills up
        first, for at most BACKLOG_HOLD more intervals. Fewer, larger batches while behind mean
        fewer inserts, parts to merge and session rows written again."""
        room = self.settings.sink_batch_rows - len(self._events)
        if room <= 0:
            return True
        now = time.monotonic()
        if now < deadline:
            return False
        return now >= deadline + BACKLOG_HOLD * flush_every or self._waiting() < room

    def _caught_up(self) -> bool:
        """Nothing left in the topic and everything taken is written: the recomputation that
        follows covers the whole backlog at once. (A pause in the fetches is not the end of a
        backlog, and a recomputation started before the last batches are written needs
        another one after it.)"""
        submitting = self._submitting is not None and not self._submitting.done()
        if self._events or submitting or self._written_seq < self._seq:
            return False
        return self._waiting() == 0

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

    def _take(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Decode what getmany returned: aiokafka's lean records (`make_consumer`), whose
        partition is the key they come under."""
        add_event, add_raw = self._events.append, self._raw.append  # once per fetch, not per event
        for tp, messages in batches.items():
            partition = tp.partition
            base = self._bases.get(tp)  # the position of an offset is base + offset
            if base is None:
                if self._generations_failed:
                    raise SinkStopped(
                        f"no generation was decided for {tp.topic}[{partition}] (sink_generations_failed): "
                        "stopping rather than compare its offsets with those of another log"
                    )
                # Fetched before the assignment's listener decided (aiokafka fetches at once): read
                # again, from where the listener seeks once it has (its seek comes after this one).
                if messages and self.consumer is not None:
                    self.consumer.seek(tp, messages[0].offset)
                continue
            for message in messages:
                value, offset = message.value, message.offset
                try:
                    event = decode_event(value)
                except ContractError as exc:
                    self._bad(tp, message, exc)
                    continue
                if self._consecutive_bad:
                    self._consecutive_bad = 0
                add_event((event, partition, base + offset))
                add_raw(raw_row(value, event, partition, offset))
            if messages:
                last = messages[-1]
                self._offsets[tp] = self._taken[tp] = last.offset + 1
                self._lasts[(tp, last.offset + 1)] = (last.key, last.value)

    def _bad(self, tp: TopicPartition, message: Any, exc: ContractError) -> None:
        self._consecutive_bad += 1
        metrics.SINK_DEAD_LETTERED.labels(exc.reason).inc()
        self._dead.append(
            (
                message.key or b"",
                dead_letter(
                    "sink",
                    exc.reason,
                    exc.detail,
                    message.value or b"",
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=message.offset,
                ),
            )
        )
        if self._consecutive_bad >= self.settings.sink_max_consecutive_bad:
            raise SinkStopped(
                f"{self._consecutive_bad} messages in a row on {tp.topic} did not match the event "
                f"contract (last: {exc}); stopping instead of dead-lettering everything. Fix the producer, "
                "then restart: the bad messages are in the dead-letter topic, uncommitted ones are re-read."
            )

    async def flush(self) -> None:
        """Hand what is held to the writer and wait until everything handed over is written and
        committed (before a rebalance, and at stop)."""
        if self._submitting is not None:
            await self._submitting
        await self._submit(self._cut())
        await self._queue.join()
        self._raise_if_writer_failed()
        await self._refresh_and_commit()

    async def _submit_in_background(self, held: _Held | None = None) -> float:
        """Cut the batch and start aggregating it, and return when it was cut: the loop goes on
        taking records while the batch's visitors load (records sitting in the fetcher's buffer
        meanwhile were most of the live view's delay). One batch at a time: the previous one
        must be queued first, so a slow ClickHouse still stops the fetching (bounded memory)."""
        if self._submitting is not None:
            if not self._submitting.done():
                # ... or until a stop: a writer that is stuck or gone never takes the batch.
                stop_wait = started(self._stop_wait, "the sink's stop signal")
                await asyncio.wait((self._submitting, stop_wait), return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                return time.monotonic()  # nothing more is cut; the loop ends
            self._submitting.result()  # raises what it raised
        held = held if held is not None else self._cut()
        self._submitting = self._watch(asyncio.create_task(self._submit(held), name="sink-submit"))
        return time.monotonic()

    def _cut(self) -> _Held | None:
        """Take the records held, at once: what the loop takes from now on is the next batch's.
        (Taken in the background task instead, the batch also got what was fetched before the
        task first ran, went over `sink_batch_rows`, and was cut a second time: the loop then
        waited for the whole batch, and the next one was cut short, a third of its size.)"""
        if not self._offsets:
            return None
        held = _Held(self._dead, self._events, self._raw, dict(self._offsets))
        self._dead, self._events, self._raw, self._offsets = [], [], [], {}
        self._aggregating = True  # until it is applied, its visitors stay (`forget`)
        return held

    async def _submit(self, held: _Held | None) -> None:
        """Compute the aggregates of the records cut and queue the batch for the writer. The
        queue holds one batch: while the writer inserts batch N, batch N+1 is fetched and
        aggregated; a slow ClickHouse therefore stops the fetching (bounded memory)."""
        if held is None:
            return
        # One submission at a time (the loop and flush() await the previous one first), so the
        # processor, the sequence and the queue need no lock here.
        dead, events, raw, offsets = held.dead, held.events, held.raw, held.offsets
        # Forget idle visitors here, not in the writer: between finding the visitors to load
        # and applying the batch, nothing may drop one from memory.
        if time.monotonic() - self._evicted_at >= EVICT_EVERY:  # a walk over every visitor held
            self._evicted_at = time.monotonic()
            self.processor.evict_idle(self._written_seq)
        seq = self._seq + 1
        aggregates = await self._retry("sink_load_failed", lambda: self._aggregate(events, seq))
        self._seq = seq
        batch = _Batch(seq, dead, events, raw, offsets, *aggregates)
        # The live view goes in now, on its own client: it does not wait for the previous
        # batch's events and sessions to be written. Its rows are versioned by the visitor's
        # offset, so the order of two batches' inserts does not matter. The writer awaits
        # it (and inserts the rows itself if it failed) before committing.
        columns, live_rows = batch.aggregates.get(LIVE_TABLE, ([], []))
        if live_rows:
            client = started(self._live_client, "the live view's client")
            live = asyncio.to_thread(_insert_tables, client, [(LIVE_TABLE, columns, live_rows)])
            batch.live = asyncio.create_task(live)
        await self._queue.put(batch)

    async def _write_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await self._write(batch)
            finally:
                self._queue.task_done()

    async def _commit_loop(self) -> None:
        """Recompute the derived tables and commit, on its own clock, so that neither waits for
        the other: the writer keeps the live tables fresh while a recomputation runs."""
        while True:
            await asyncio.sleep(REFRESH_TICK)
            if not self._cadence.due(time.monotonic(), self._caught_up()):
                continue
            await self._refresh_and_commit()
            if time.monotonic() - self._history_at >= self.settings.online_history_seconds:
                await self._record_online()

    async def _write(self, batch: _Batch) -> None:
        """Dead-letter, insert events and aggregates, then commit. A transient failure is
        retried until it passes or the sink stops; a retry writes the same rows again, which
        collapse on their keys. Rows ClickHouse refuses are dead-lettered (`_insert_refusing`)."""
        dead = batch.dead

        async def attempt() -> None:
            nonlocal dead
            if dead:
                await started(self.publisher, "the dead-letter publisher").publish(
                    self.topics.dead_letter, dead
                )
                dead = []
            runs: dict[str, int] = {}  # the refused rows in a row, per table, as of this write

            async def aggregates() -> list[_Refused]:
                live_written = False
                if batch.live is not None:
                    live, batch.live = batch.live, None
                    try:
                        await live
                        live_written = True
                    except Exception as exc:  # its rows go in below, with the others
                        if classify(exc) is Failure.PROGRAMMING:
                            raise
                        log.warning("sink_live_insert_failed", error=describe(exc))
                # One trip to a worker thread for all the tables, in order: awaited one by
                # one, each insert waited for the event loop to come back between chunks of
                # decoding and applying, and the waits between them were most of the writer's
                # time.
                tables = [
                    (table, columns, table_rows)
                    for table, (columns, table_rows) in batch.aggregates.items()
                    if table_rows and not (table == LIVE_TABLE and live_written)
                ]
                if not tables:
                    return []
                return await self._insert_aggregates(tables, runs)

            # The events and the aggregates go in side by side, on two clients (ClickHouse
            # parses and sorts them in native code, off the GIL); both finish before a retry.
            events, aggregated = await asyncio.gather(
                self._insert_events(batch, runs), aggregates(), return_exceptions=True
            )
            _raise_worst(events, aggregated)
            refused = [*events, *aggregated]  # type: ignore[misc]
            if refused:  # in the dead-letter topic before the offsets are committed
                publisher = started(self.publisher, "the dead-letter publisher")
                await publisher.publish(self.topics.dead_letter, [(r.key, r.letter) for r in refused])
                metrics.SINK_DEAD_LETTERED.labels(REFUSED).inc(len(refused))
                for table in {r.table for r in refused}:
                    metrics.SINK_ROWS_REFUSED.labels(table).inc(sum(r.table == table for r in refused))
            self._refused_run = runs

        await self._retry("sink_write_failed", attempt)
        self.last_write = time.time()
        metrics.SINK_LAST_WRITE.set(self.last_write)
        self._written_seq = batch.seq
        for partition, ms in batch.newest.items():
            if ms > self._newest.get(partition, 0):
                self._newest[partition] = ms
        self._pending_dirty.update(batch.dirty)
        self._pending_offsets.update(batch.offsets)

    async def _insert_events(self, batch: _Batch, runs: dict[str, int]) -> list[_Refused]:
        """Insert the batch's events; if ClickHouse refuses some, the others and their dead letters."""
        try:
            await self._insert_raw(batch.raw)
            return []
        except Exception as exc:
            if classify(exc) is not Failure.DATA:
                raise
            error = exc
        # Each part that goes in counts its rows written, as the whole batch would have.
        refused = await self._insert_refusing(self.table, batch.raw, error, self._insert_raw, runs)
        letters = []
        for i, reason in refused:
            event, partition, position = batch.events[i]
            offset = position & generations.OFFSET_MASK
            value = message_of(batch.raw[i], partition, offset)
            letter = self._refused_letter(reason, value, table=self.table, partition=partition, offset=offset)
            key = message_key(event.project_id, event.anonymous_id, event.user_id)
            letters.append(_Refused(self.table, key, letter))
        return letters

    async def _insert_aggregates(
        self, tables: list[tuple[str, list[str], list[list[Any]]]], runs: dict[str, int]
    ) -> list[_Refused]:
        """Insert each table's rows in turn; rows ClickHouse refuses are left out, and their
        dead letters (the row, with the table's name) returned."""
        client = started(self.client, "the aggregates' client")
        letters: list[_Refused] = []
        while tables:
            written: list[str] = []
            try:
                await asyncio.to_thread(_insert_tables, client, tables, written)
                break
            except Exception as exc:
                if classify(exc) is not Failure.DATA:
                    raise
                table, columns, rows = tables[len(written)]
                tables = tables[len(written) + 1 :]

                async def insert(
                    part: list[list[Any]], into: str = table, names: list[str] = columns
                ) -> None:
                    await asyncio.to_thread(insert_rows, client, into, part, names)

                for i, reason in await self._insert_refusing(table, rows, exc, insert, runs):
                    row = dict(zip(columns, rows[i], strict=True))
                    raw = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
                    key = str(row.get("project_id", "")).encode()
                    letters.append(_Refused(table, key, self._refused_letter(reason, raw, table=table)))
        return letters

    async def _insert_refusing(
        self,
        table: str,
        rows: list[R],
        error: Exception,
        insert: Callable[[list[R]], Awaitable[None]],
        runs: dict[str, int],
    ) -> list[tuple[int, Exception]]:
        """ClickHouse refused `rows` as a whole with a data error: insert each half on its own
        and split again each half it refuses, down to single rows; returns those (index, error),
        in order. About 2 log2(n) inserts per refused row; rows are written once, except where
        a retry after a transient failure writes a half again (`events` is a ReplacingMergeTree
        on event_id, the aggregates are versioned: they collapse). Too many refused in a row
        (`sink_max_consecutive_bad`, counted across batches) is no longer bad data but a table
        or a producer that changed: the sink stops before dead-lettering any of them."""
        limit = self.settings.sink_max_consecutive_bad
        run = self._refused_run.get(table, 0)
        refused: list[tuple[int, Exception]] = []
        log.warning("sink_rows_refused", table=table, rows=len(rows), error=describe(error))

        async def split(start: int, end: int, error: Exception) -> None:
            nonlocal run
            if end - start == 1:
                refused.append((start, error))
                run += 1
                if run >= limit:
                    raise SinkStopped(
                        f"ClickHouse refused {run} rows in a row of {table} (last: {describe(error, 500)}); "
                        "stopping instead of dead-lettering them all: did the table or a producer change? "
                        "Nothing of this batch is committed: it is read again at the next start."
                    ) from error
                return
            middle = (start + end) // 2
            for lo, hi in ((start, middle), (middle, end)):
                if self._stopping.is_set():
                    raise _Abandoned(f"stopped while looking for the rows {table} refuses")
                try:
                    await insert(rows[lo:hi])
                    run = 0
                except Exception as exc:
                    if classify(exc) is not Failure.DATA:
                        raise
                    await split(lo, hi, exc)

        await split(0, len(rows), error)
        runs[table] = run
        log.warning(
            "sink_rows_dead_lettered",
            table=table,
            refused=len(refused),
            written=len(rows) - len(refused),
            first_error=describe(refused[0][1], 500) if refused else None,
        )
        return refused

    def _refused_letter(self, error: Exception, raw: bytes, **context: Any) -> bytes:
        return dead_letter(
            "sink",
            REFUSED,
            describe(error),
            raw,
            topic=self.topics.events,
            clickhouse_error=error_name(error),
            **context,
        )

    async def _refresh_and_commit(self) -> bool:
        """Recompute persons and daily stats for what the written batches touched, then commit
        their offsets: a crash before this re-reads those batches, which dirties the keys again.
        Returns whether there was anything to commit. Keys dirtied with no offsets to commit (a
        tail replayed from `events`, `_replay_tails`) are recomputed too."""
        async with self._commit_lock:
            if not self._pending_offsets and not self._pending_dirty.days and not self._pending_dirty.ids:
                return False
            dirty, offsets = self._pending_dirty, self._pending_offsets
            self._pending_dirty, self._pending_offsets = Dirty(), {}
            client = started(self._refresh_client, "the recomputations' client")
            began = time.monotonic()
            await self._retry("derived_refresh_failed", lambda: asyncio.to_thread(refresh, client, dirty))
            took = time.monotonic() - began
            metrics.DERIVED_REFRESH_SECONDS.observe(took)
            self._cadence.ran(began, took)
            consumer = started(self.consumer, "the sink's consumer")
            if not offsets:
                return False
            await self._retry("sink_generations_failed", lambda: self._record_positions(offsets))
            try:
                await consumer.commit(offsets)
                self._committed.update(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on (rebalance): the new owner re-reads from the last commit,
                # and the rows it writes again collapse on the sorting key.
                log.warning("sink_commit_failed", error=str(exc))
            await self._write_status()
            return True

    async def _record_positions(self, offsets: dict[TopicPartition, int]) -> None:
        """Record, before committing `offsets`, each partition's generation, next offset and the
        anchor of the message before it (services.aggregator.generations): what the next
        assignment checks the log against when the group's offsets are gone."""
        rows = []
        for tp, offset in offsets.items():
            if tp.topic != self.topics.events or tp not in self._bases:
                continue
            last = self._lasts.get((tp, offset))
            anchor = generations.anchor_of(*last) if last is not None else 0
            generation = self._bases[tp] >> generations.SHIFT
            began = self._began.get(tp)  # carried forward: the generation's tail is told by it
            rows.append((tp.partition, generation, offset, anchor, self._partition_count, began))
        client = started(self._generations_client, "the generations' client")
        async with self._generations_lock:
            await asyncio.to_thread(generations.save, client, self.topics.events, rows, self.worker)
        for key in [k for k in self._lasts if k[1] <= offsets.get(k[0], -1)]:
            del self._lasts[key]

    async def _replay_tails(self) -> None:
        """Replay the tails of the partitions held back (`_Replay`): the events `events` holds of
        their previous generation, written and never committed, through the normal path (apply,
        write the aggregates, recompute the derived tables for the keys they touch) under their
        own positions, then record the new generation and read the new log. The rows themselves
        are not written again (a new inserted_at would put them in the new generation's tail).
        Idempotent: an aggregation that already counted an event (its position at or below the
        version) ignores it, one that did not counts it. A crash before the end records nothing,
        and the next start decides and replays the same again."""
        client = started(self._generations_client, "the generations' client")
        consumer = started(self.consumer, "the sink's consumer")
        pending = dict(self._replays)
        replayed: dict[TopicPartition, int] = {}
        for tp, replay in pending.items():

            async def load(tp: TopicPartition = tp, replay: _Replay = replay) -> list[tuple[Event, int]]:
                async with self._generations_lock:  # the client is the assignments' too
                    return await asyncio.to_thread(
                        generations.tail_events, client, self.table, tp.partition, replay.start, replay.began
                    )

            try:
                events = await self._retry("sink_tail_load_failed", load)
            except _Abandoned:
                return
            base = generations.base(replay.generation)
            decoded: list[Decoded] = [(event, tp.partition, base + offset) for event, offset in events]
            replayed[tp] = len(decoded)
            size = self.settings.sink_batch_rows
            for start in range(0, len(decoded), size):
                await self._submit_in_background(_Held([], decoded[start : start + size], [], {}))
                if self._stopping.is_set():
                    return
        try:
            await self.flush()  # written, and the keys they touched recomputed
        except _Abandoned:
            return
        async with self._generations_lock:
            done = {tp: r for tp, r in pending.items() if self._replays.get(tp) is r}
            await asyncio.to_thread(
                generations.save, client, self.topics.events, [r.row for r in done.values()], self.worker
            )
            for tp, replay in done.items():
                if self._replays.get(tp) is not replay:  # revoked or decided again meanwhile
                    continue
                del self._replays[tp]
                self._bases[tp] = generations.base(replay.row[1])
                self._began[tp] = replay.row[5]
                consumer.seek(tp, replay.seek)
                consumer.resume(tp)
                log.info(
                    "sink_tail_replayed",
                    partition=tp.partition,
                    generation=replay.generation,
                    start=replay.start,
                    events=replayed.get(tp, 0),
                    new_generation=replay.row[1],
                )

    async def assign_generations(self, assigned: list[TopicPartition]) -> None:
        """Decide the generation of each assigned partition of the events topic from what is
        recorded and what Kafka says (generations.decide), write down the new ones, and seek
        where each is to be read from. Failing, the partitions get no generation, and the
        sink stops at their first message (`_take`) instead of comparing offsets of two logs."""
        topic = self.topics.events
        tps = sorted((tp for tp in assigned if tp.topic == topic), key=lambda tp: tp.partition)
        for tp in tps:
            self._bases.pop(tp, None)
            self._replays.pop(tp, None)  # decided again, from what is recorded
        if not tps:
            return
        try:
            await self._retry("sink_generations_failed", lambda: self._decide_generations(topic, tps))
        except Exception as exc:
            if self._stopping.is_set():  # given up because the sink stops: nothing more is taken
                return
            self._generations_failed = True
            log.error("sink_generations_failed", error=describe(exc), partitions=[tp.partition for tp in tps])

    async def _decide_generations(self, topic: str, tps: list[TopicPartition]) -> None:
        consumer = started(self.consumer, "the sink's consumer")
        client = started(self._generations_client, "the generations' client")
        known = consumer.partitions_for_topic(topic)
        count = len(known) if known else max(tp.partition for tp in tps) + 1
        committed = {tp: await consumer.committed(tp) for tp in tps}
        ends = await log_ends_at(self.bootstrap, tps)  # not end_offsets: see log_ends
        async with self._generations_lock:
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
            # is replayed when the log started over (`_replay_tails`).
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
                    self._replays[tp] = _Replay(
                        record.generation, record.next_offset, record.began_ms, row, decision.seek
                    )
                    consumer.pause(tp)
                else:
                    if row is not None:
                        rows.append(row)
                    self._bases[tp] = generations.base(decision.generation)
                    self._began[tp] = began
                    if decision.seek is not None:
                        consumer.seek(tp, decision.seek)
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
        self._partition_count = count

    async def _record_online(self) -> None:
        """Record each project's online count for this minute (for "online a week ago").
        Every worker may record it; they count the same table, and the last write wins."""
        self._history_at = time.monotonic()
        try:
            client = started(self._derived_client, "the derived tables' client")
            await asyncio.to_thread(client.command, RECORD_ONLINE)
        except Exception as exc:
            _best_effort("online_history_failed", exc)

    async def _status_loop(self) -> None:
        """The status rows every STATUS_EVERY seconds, idle, backlogged or recomputing."""
        while True:
            await asyncio.sleep(REFRESH_TICK)
            if time.monotonic() - self._status_at >= STATUS_EVERY:
                await self._write_status()

    async def _write_status(self) -> None:
        """One aggregator_status row per partition this worker owns: its last write, newest
        event time and lag. Best effort: a failure here must not hold back the commits."""
        async with self._status_lock:
            await self._write_status_rows()

    async def _write_status_rows(self) -> None:
        consumer = started(self.consumer, "the sink's consumer")
        client = started(self._status_client, "the status client")
        self._status_at = time.monotonic()
        now = time.time()
        if self._caught_up():
            self._fresh_at = now
        rows: list[list[Any]] = []
        for tp in sorted(consumer.assignment(), key=lambda t: t.partition):
            if tp.topic != self.topics.events:
                continue
            end = consumer.highwater(tp)
            done = self._committed.get(tp)
            lag = max(0, end - done) if end is not None and done is not None else 0
            newest = self._newest.get(tp.partition)
            # Caught up, there is nothing to write: the sink is as fresh as it gets. Behind, its
            # last batch written says whether it moves (a stuck writer shows an old one).
            written = max(self.last_write or 0.0, self._fresh_at)
            rows.append(
                [
                    tp.topic,
                    tp.partition,
                    self.worker,
                    int(written * 1000),
                    newest,
                    lag,
                    next_version(),
                ]
            )
            metrics.SINK_LAG.labels(str(tp.partition)).set(lag)
        held = {str(row[1]) for row in rows}
        for partition in self._lag_labels - held:  # another worker's now: its own gauge says
            with contextlib.suppress(KeyError):
                metrics.SINK_LAG.remove(partition)
        self._lag_labels = held
        if not rows:
            return
        try:
            await asyncio.to_thread(
                client.insert,
                "aggregator_status",
                rows,
                column_names=AGGREGATOR_STATUS_COLUMNS,
            )
        except Exception as exc:
            _best_effort("aggregator_status_failed", exc)

    async def _retry(self, failure: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, backing off up to 5 s, while it fails transiently
        (services.aggregator.errors); nothing new is fetched meanwhile, so a ClickHouse outage
        holds the consumer back. A stop ends the backoff at once (`_Abandoned`: the batch is
        left uncommitted). Any other failure stops the sink: rows ClickHouse refuses are dealt
        with inside the write's attempt, so a data error that reaches here comes from our own
        statements (loading visitors, the derived tables), a programming error too."""
        backoff = 0.1
        while True:
            try:
                return await attempt()
            except (SinkStopped, _Abandoned):
                raise
            except Exception as exc:
                kind = classify(exc)
                if kind is not Failure.TRANSIENT:
                    # A data error here comes from rows or parameters we computed from our own
                    # tables (the derived tables, loading visitors): ours to fix as well.
                    what = (
                        "a programming error"
                        if kind is Failure.PROGRAMMING
                        else "a data error in our own rows"
                    )
                    log.error(failure, error=describe(exc), kind=kind.value)
                    raise SinkStopped(
                        f"{failure}: {describe(exc, 500)}; {what}, not retried: stopping. Nothing that "
                        "depends on it is committed: it is read again at the next start."
                    ) from exc
                metrics.SINK_INSERT_FAILURES.inc()
                log.warning(failure, error=describe(exc), kind=kind.value, retry_in=backoff)
                if await self._stopped_within(backoff):
                    raise _Abandoned(failure) from exc
                backoff = min(backoff * 2, 5.0)

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the sink stops meanwhile; whether it stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    def readiness(self) -> str:
        """Readiness for /ready: "ok" while the sink consumes its share of the partitions (none, for a
        standby past the partition count), else what it waits for."""
        if self._stopping.is_set():
            return "stopping"
        if not self.running:
            return "starting"
        if self._generations_failed:
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
        await self._refresh_and_commit()

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
            self._committed.pop(tp, None)
        await self.assign_generations(assigned)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Another worker takes these partitions over: drop what we hold of them."""
        numbers = {tp.partition for tp in partitions}
        kept = [(e, r) for e, r in zip(self._events, self._raw, strict=True) if e[1] not in numbers]
        self._events = [e for e, _r in kept]
        self._raw = [r for _e, r in kept]
        for tp in partitions:
            self._offsets.pop(tp, None)
            self._taken.pop(tp, None)
            self._pending_offsets.pop(tp, None)
            self._replays.pop(tp, None)  # not recorded: the new owner decides and replays it again
        if self._aggregating:  # a batch is being applied: its visitors go once it is done
            self._revoke_after |= numbers
        else:
            self.processor.revoke(numbers)

    def _raise_if_writer_failed(self) -> None:
        """Raise what a task of the sink failed with (a stop that ended a retry is no failure)."""
        for task in (self._submitting, self._writer, self._committer):
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None and not isinstance(error, _Abandoned):
                    raise error

    async def _aggregate(self, events: list[Decoded], seq: int) -> tuple[Rows, Dirty, dict[int, int]]:
        """Load the visitors not in memory, then apply the events in chunks, giving the event
        loop back between chunks: the Kafka fetcher runs on it, and a batch applied in one go
        (a few hundred ms) kept it from fetching the next one meanwhile; then add the stored
        counts of days first met. Partitions revoked in between keep their state until the
        batch is applied (`forget`)."""
        self._aggregating = True
        try:
            missing = self.processor.missing(events)
            if missing:
                client = started(self._load_client, "the visitors' load client")
                await asyncio.to_thread(self.processor.load, client, missing)
            changes, dirty = Changes(), Dirty()
            for start in range(0, len(events), APPLY_CHUNK):
                self.processor.apply_events(events[start : start + APPLY_CHUNK], changes, dirty, seq)
                await asyncio.sleep(0)
            if changes.unresolved:
                client = started(self._load_client, "the visitors' load client")
                # Retried on its own: the batch is applied, and applying it again would skip
                # its events as already applied, and write none of their rows.
                await self._retry(
                    "sink_load_failed",
                    lambda: asyncio.to_thread(self.processor.resolve_days, client, changes, events),
                )
            rows, dirty = self.processor.rows(changes, dirty)
            return rows, dirty, changes.newest
        finally:
            self._aggregating = False
            revoked, self._revoke_after = self._revoke_after, set()
            if revoked:
                self.processor.revoke(revoked)

    async def _insert_raw(self, lines: list[bytes]) -> None:
        if not lines:
            return
        client = started(self._events_client, "the events' client")
        began = time.perf_counter()
        await asyncio.to_thread(
            client.raw_insert,
            self.table,
            EVENTS_COLUMNS,
            b"\n".join(lines),
            settings=RAW_INSERT_SETTINGS,
            fmt="JSONEachRow",
        )
        metrics.SINK_INSERT_SECONDS.observe(time.perf_counter() - began)
        metrics.SINK_BATCH_ROWS.observe(len(lines))
        metrics.SINK_ROWS_WRITTEN.inc(len(lines))

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


def _insert_tables(
    client: Client, tables: list[tuple[str, list[str], list[list[Any]]]], written: list[str] | None = None
) -> None:
    """Insert each table's rows in turn (in a worker thread); `written` gets the name of each
    table once its rows are in (so a failure tells which table failed)."""
    for table, columns, rows in tables:
        began = time.perf_counter()
        insert_rows(client, table, rows, columns)
        metrics.SINK_INSERT_SECONDS.observe(time.perf_counter() - began)
        metrics.SINK_BATCH_ROWS.observe(len(rows))
        if written is not None:
            written.append(table)


def _best_effort(failure: str, exc: Exception) -> None:
    """A best-effort write failed (status, online history): a transient failure is only logged,
    the next one comes in seconds; anything else is a statement or rows of ours that ClickHouse
    will refuse every time, a programming error."""
    kind = classify(exc)
    if kind is Failure.TRANSIENT:
        log.warning(failure, error=describe(exc), kind=kind.value)
        return
    raise SinkStopped(f"{failure}: {describe(exc, 500)} ({kind.value} error, not retried); stopping") from exc


def _raise_worst(*results: object) -> None:
    """Raise the gravest of the failures among `results` (asyncio.gather's, with exceptions):
    a stop or a programming error before a stop request, before a transient failure."""
    errors = [r for r in results if isinstance(r, BaseException)]
    if not errors:
        return

    def gravity(error: BaseException) -> int:
        if isinstance(error, SinkStopped) or not isinstance(error, Exception):
            return 0
        if isinstance(error, _Abandoned):
            return 2
        return 1 if classify(error) is not Failure.TRANSIENT else 3

    raise min(errors, key=gravity)
