"""The aggregator's consumer: Kafka events topic -> ClickHouse `events` and the aggregations
(sessions, live view, identities; services.aggregator.processor), in batches, at least once.

Policy (Arroyo-style, explicit):
- batch by size (`sink_batch_rows`) or time (`sink_flush_ms`), whichever comes first; while
  a full batch is already waiting in the topic (a backlog), fill it up first (`_batch_due`);
- insert the batch into ClickHouse, retrying with backoff while ClickHouse is down; nothing
  more is fetched meanwhile, so memory stays bounded (backpressure on the consumer);
- the live view's rows go in as soon as a batch is aggregated, on their own client, ahead
  of the previous batch's other writes; the batch is committed only once they are in too;
- commit the Kafka offsets only after the insert succeeded. A crash between insert and
  commit re-delivers the batch; the rows collapse again in the ReplacingMergeTree (same
  sorting key, ending in event_id);
- a message that breaks the contract goes to the dead-letter topic with its reason; too
  many in a row (`sink_max_consecutive_bad`) stops the sink with an error instead of
  silently dead-lettering a broken producer.
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from clickhouse_connect.driver.client import Client

from services.aggregator.derived import refresh
from services.aggregator.processor import Decoded, Dirty, Rows, SessionsProcessor
from services.aggregator.sessions import Changes
from werkstroom import metrics
from werkstroom.clickhouse import ClientFactory
from werkstroom.clickhouse.params import insert_rows
from werkstroom.contract import FIELDS, ContractError, Event, Topics, dead_letter, decode_event
from werkstroom.kafka import Publisher, make_consumer, start_producer
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

COLUMNS = [*FIELDS, "kafka_partition", "kafka_offset"]
STATUS_COLUMNS = ["topic", "partition", "worker", "last_write_at", "last_event_at", "lag", "version"]
STATUS_EVERY = 2.0  # seconds between aggregator_status rows while idle
APPLY_CHUNK = 2000  # events applied between two turns of the event loop
BACKLOG_HOLD = 3  # flush intervals a batch may wait to fill up while there is a backlog
EVICT_EVERY = 5.0  # seconds between two looks for idle visitors to forget
REFRESH_TICK = 0.05  # seconds between two checks whether the derived tables are due
RECORD_ONLINE = """
INSERT INTO online_history (project_id, minute, online, version)
SELECT project_id, toStartOfMinute(now('UTC')), count(), toUInt64(toUnixTimestamp64Milli(now64(3)))
FROM online_visitors FINAL
WHERE last_event_at >= now64(3) - INTERVAL 5 MINUTE
GROUP BY project_id
"""
T = TypeVar("T")


class SinkStopped(RuntimeError):
    """The sink stopped on purpose (too many bad messages in a row); the message says why."""


#: How ClickHouse reads the raw messages: contract times are RFC 3339, properties/traits are
#: objects stored as their JSON text, and fields added later within v1 are skipped. Parsed in
#: one thread: splitting a batch of a few MB for parallel parsing cost a quarter more CPU
#: (200,000 events into a Null table, median of 5: 0.98 s against 1.26 s), taken from the
#: cores the aggregator, the embedded broker and ClickHouse share.
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
        # Never wait here: the writer's commit may itself wait for this rebalance to end. What
        # is in flight is still written (its rows collapse with the new owner's, which re-reads
        # from the last commit); what is only buffered for these partitions is dropped.
        self.sink.forget({tp for tp in revoked if tp.topic == self.sink.topics.events})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("sink_partitions_assigned", partitions=sorted(tp.partition for tp in assigned))


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
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=1)
        self._writer: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._submitting: asyncio.Task[None] | None = None
        self._evicted_at = 0.0
        self._derived_client: Client | None = None
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
        self._stopping = asyncio.Event()
        self._consecutive_bad = 0
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
        self._history_at = 0.0
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self) -> None:
        """Consume until stop() is called (or a SinkStopped error)."""
        self.client = self._client_factory()
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
        self._writer = asyncio.create_task(self._write_loop(), name="sink-writer")
        self._committer = asyncio.create_task(self._commit_loop(), name="sink-committer")
        log.info("sink_started", topic=self.topics.events, group=self.settings.sink_group, table=self.table)
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
                self._raise_if_writer_failed()
            await self.flush()
        finally:
            for task in (self._submitting, self._writer, self._committer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self._close()

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
        assert self.consumer is not None
        waiting = 0
        for tp, taken in self._taken.items():
            end = self.consumer.highwater(tp)
            if end is not None:
                waiting += max(0, end - taken)
        return waiting

    def _take(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Decode what getmany returned: aiokafka's lean records (`make_consumer`), whose
        partition is the key they come under."""
        add_event, add_raw = self._events.append, self._raw.append  # once per fetch, not per event
        for tp, messages in batches.items():
            partition = tp.partition
            for message in messages:
                value, offset = message.value, message.offset
                try:
                    event = decode_event(value)
                except ContractError as exc:
                    self._bad(tp, message, exc)
                    continue
                if self._consecutive_bad:
                    self._consecutive_bad = 0
                add_event((event, partition, offset))
                add_raw(raw_row(value, event, partition, offset))
            if messages:
                self._offsets[tp] = self._taken[tp] = messages[-1].offset + 1

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

    async def _submit_in_background(self) -> float:
        """Cut the batch and start aggregating it, and return when it was cut: the loop goes on
        taking records while the batch's visitors load (records sitting in the fetcher's buffer
        meanwhile were most of the live view's delay). One batch at a time: the previous one
        must be queued first, so a slow ClickHouse still stops the fetching (bounded memory)."""
        if self._submitting is not None:
            await self._submitting  # raises what it raised
        self._submitting = asyncio.create_task(self._submit(self._cut()), name="sink-submit")
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
            assert self._live_client is not None
            live = asyncio.to_thread(_insert_tables, self._live_client, [(LIVE_TABLE, columns, live_rows)])
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
            now = time.monotonic()
            caught_up = self._caught_up()
            if not self._cadence.due(now, caught_up):
                continue
            if not await self._refresh_and_commit() and time.monotonic() - self._status_at >= STATUS_EVERY:
                await self._write_status()
            if time.monotonic() - self._history_at >= self.settings.online_history_seconds:
                await self._record_online()

    async def _write(self, batch: _Batch) -> None:
        """Dead-letter, insert events and aggregates, then commit. Retries until it succeeds or
        the sink stops; a retry writes the same rows again, which collapse on their keys."""
        dead = batch.dead

        async def attempt() -> None:
            nonlocal dead
            if dead:
                assert self.publisher is not None
                await self.publisher.publish(self.topics.dead_letter, dead)
                dead = []

            async def aggregates() -> None:
                live_written = False
                if batch.live is not None:
                    live, batch.live = batch.live, None
                    await live  # failed: raises, and the retry inserts the rows below
                    live_written = True
                # One trip to a worker thread for all the tables, in order: awaited one by
                # one, each insert waited for the event loop to come back between chunks of
                # decoding and applying, and the waits between them were most of the writer's
                # time (0.1-0.2 s each, five tables a batch).
                tables = [
                    (table, columns, table_rows)
                    for table, (columns, table_rows) in batch.aggregates.items()
                    if table_rows and not (table == LIVE_TABLE and live_written)
                ]
                if tables:
                    assert self.client is not None
                    await asyncio.to_thread(_insert_tables, self.client, tables)

            # The events and the aggregates go in side by side, on two clients (ClickHouse
            # parses and sorts them in native code, off the GIL); both finish before a retry.
            results = await asyncio.gather(self._insert_raw(batch.raw), aggregates(), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

        await self._retry("sink_write_failed", attempt)
        self.last_write = time.time()
        metrics.SINK_LAST_WRITE.set(self.last_write)
        self._written_seq = batch.seq
        for partition, ms in batch.newest.items():
            if ms > self._newest.get(partition, 0):
                self._newest[partition] = ms
        self._pending_dirty.update(batch.dirty)
        self._pending_offsets.update(batch.offsets)

    async def _refresh_and_commit(self) -> bool:
        """Recompute persons and daily stats for what the written batches touched, then commit
        their offsets: a crash before this re-reads those batches, which dirties the keys again.
        Returns whether there was anything to commit."""
        async with self._commit_lock:
            if not self._pending_offsets:
                return False
            dirty, offsets = self._pending_dirty, self._pending_offsets
            self._pending_dirty, self._pending_offsets = Dirty(), {}
            started = time.monotonic()
            await self._retry(
                "derived_refresh_failed", lambda: asyncio.to_thread(refresh, self._refresh_client, dirty)
            )
            took = time.monotonic() - started
            metrics.DERIVED_REFRESH_SECONDS.observe(took)
            self._cadence.ran(started, took)
            assert self.consumer is not None
            try:
                await self.consumer.commit(offsets)
                self._committed.update(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on (rebalance): the new owner re-reads from the last commit,
                # and the rows it writes again collapse on the sorting key.
                log.warning("sink_commit_failed", error=str(exc))
            await self._write_status()
            return True

    async def _record_online(self) -> None:
        """Record each project's online count for this minute (for "online a week ago").
        Every worker may record it; they count the same table, and the last write wins."""
        self._history_at = time.monotonic()
        try:
            await asyncio.to_thread(self._derived_client.command, RECORD_ONLINE)  # type: ignore[union-attr]
        except Exception as exc:
            log.warning("online_history_failed", error=f"{type(exc).__name__}: {exc}")

    async def _write_status(self) -> None:
        """One aggregator_status row per partition this worker owns: its last write, newest
        event time and lag. Best effort: a failure here must not hold back the commits."""
        assert self.consumer is not None
        self._status_at = time.monotonic()
        now = time.time()
        rows: list[list[Any]] = []
        for tp in sorted(self.consumer.assignment(), key=lambda t: t.partition):
            if tp.topic != self.topics.events:
                continue
            end = self.consumer.highwater(tp)
            done = self._committed.get(tp)
            lag = max(0, end - done) if end is not None and done is not None else 0
            newest = self._newest.get(tp.partition)
            written = self.last_write if self.last_write is not None else now
            rows.append(
                [
                    tp.topic,
                    tp.partition,
                    self.worker,
                    int(written * 1000),
                    newest,
                    lag,
                    int(now * 1000),
                ]
            )
            metrics.SINK_LAG.labels(str(tp.partition)).set(lag)
        if not rows:
            return
        try:
            await asyncio.to_thread(
                self._derived_client.insert,  # type: ignore[union-attr]
                "aggregator_status",
                rows,
                column_names=STATUS_COLUMNS,
            )
        except Exception as exc:
            log.warning("aggregator_status_failed", error=f"{type(exc).__name__}: {exc}")

    async def _retry(self, failure: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, backing off up to 5 s; give up only when stopping.
        Nothing new is fetched meanwhile, so a ClickHouse outage holds the consumer back."""
        backoff = 0.1
        while True:
            try:
                return await attempt()
            except Exception as exc:
                metrics.SINK_INSERT_FAILURES.inc()
                log.warning(failure, error=f"{type(exc).__name__}: {exc}", retry_in=backoff)
                if self._stopping.is_set():
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

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
        if self._aggregating:  # a batch is being applied: its visitors go once it is done
            self._revoke_after |= numbers
        else:
            self.processor.revoke(numbers)

    def _raise_if_writer_failed(self) -> None:
        for task in (self._submitting, self._writer, self._committer):
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
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
                assert self._load_client is not None
                await asyncio.to_thread(self.processor.load, self._load_client, missing)
            changes, dirty = Changes(), Dirty()
            for start in range(0, len(events), APPLY_CHUNK):
                self.processor.apply_events(events[start : start + APPLY_CHUNK], changes, dirty, seq)
                await asyncio.sleep(0)
            if changes.unresolved:
                client = self._load_client
                assert client is not None
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
        assert self._events_client is not None
        started = time.perf_counter()
        await asyncio.to_thread(
            self._events_client.raw_insert,
            self.table,
            COLUMNS,
            b"\n".join(lines),
            settings=RAW_INSERT_SETTINGS,
            fmt="JSONEachRow",
        )
        metrics.SINK_INSERT_SECONDS.observe(time.perf_counter() - started)
        metrics.SINK_BATCH_ROWS.observe(len(lines))
        metrics.SINK_ROWS_WRITTEN.inc(len(lines))

    def stop(self) -> None:
        self._stopping.set()

    async def _close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.producer is not None:
            await self.producer.stop()
        log.info("sink_stopped")


def _insert_tables(client: Client, tables: list[tuple[str, list[str], list[list[Any]]]]) -> None:
    """Insert each table's rows in turn (in a worker thread)."""
    for table, columns, rows in tables:
        started = time.perf_counter()
        insert_rows(client, table, rows, columns)
        metrics.SINK_INSERT_SECONDS.observe(time.perf_counter() - started)
        metrics.SINK_BATCH_ROWS.observe(len(rows))
