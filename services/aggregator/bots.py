"""The aggregator's bots consumer: Kafka bots topic -> ClickHouse `bot_events` (migration 0019).

Ingest sends the events it filters as bots to their own topic (docs/contract.md), so that the
dashboard can say how many it filtered instead of showing an empty site. This consumer is
small on purpose: fetch (up to `sink_batch_rows`, or what `sink_flush_ms` brings), decode,
insert, then commit the offsets. Its own group (`bots_group`), beside the events sink.

- Rows collapse on (project_id, day, event_id) and are counted with uniqExact(event_id), so
  reading a log again from its start is harmless; skipping part of it is not. So a partition
  whose committed offset lies past its log's end (the log started over: a topic deleted and
  created again) is read from its start, and the embedded broker's topic swap calls
  `started_over()` (werkstroom.rotation), which does the same for every partition held.
- A ClickHouse failure that is transient is retried with backoff, nothing fetched meanwhile;
  rows it refuses (a data error) are logged and skipped; anything else stops the consumer
  (a programming error). A message that breaks the contract is counted, logged and skipped:
  the topic is informational, and its producer is ingest, whose checks it already passed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from clickhouse_connect.driver.client import Client

from services.aggregator.errors import Failure, classify, describe, started
from werkstroom import metrics
from werkstroom.clickhouse import ClientFactory
from werkstroom.clickhouse.params import insert_rows
from werkstroom.contract import ContractError, Topics, decode_event
from werkstroom.kafka import log_ends_at, make_consumer
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

TABLE = "bot_events"
COLUMNS = [
    "project_id",
    "day",
    "timestamp",
    "event_id",
    "type",
    "event",
    "path",
    "device_type",
    "browser",
    "os",
]
CLOSE_TIMEOUT = 2.0  # seconds a stop waits for the consumer to leave its group
Row = list[Any]


def row_of(value: bytes | None) -> Row:
    """One `bot_events` row from a message of the bots topic; raises ContractError."""
    event = decode_event(value)
    return [
        event.project_id,
        event.timestamp.date(),
        event.timestamp,
        event.event_id,
        event.type,
        event.event,
        event.path,
        event.device_type,
        event.browser,
        event.os,
    ]


class _Rewind(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: BotsSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass  # nothing is held between two turns of the loop: every batch is written first

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink.rewind_past_end(assigned)


class BotsSink:
    def __init__(self, settings: Settings, bootstrap: str, clickhouse: ClientFactory) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = Topics.from_settings(settings).bots
        self._client_factory = clickhouse
        self.consumer: AIOKafkaConsumer | None = None
        self._client: Client | None = None
        self._stopping = asyncio.Event()
        self._rewind = False  # started_over() was called: read every partition from its start
        self.written = 0  # rows inserted (a replay's rows count again), for tests and the log
        self.running = False  # the consumer started, the loop not yet ended (readiness)

    async def run(self) -> None:
        """Consume until stop() is called (a programming error raises)."""
        self._client = self._client_factory()
        self.consumer = make_consumer(
            self.bootstrap,
            [],
            self.settings.bots_group,
            client_id="werkstroom-bots",
            max_poll_records=self.settings.sink_batch_rows,
            session_timeout_ms=self.settings.kafka_session_timeout_ms,
            rebalance_timeout_ms=self.settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(300, self.settings.kafka_session_timeout_ms // 4),
        )
        self.consumer.subscribe([self.topic], listener=_Rewind(self))
        await self.consumer.start()
        log.info("bots_sink_started", topic=self.topic, group=self.settings.bots_group, table=TABLE)
        self.running = True
        try:
            while not self._stopping.is_set():
                fetched = await self.consumer.getmany(timeout_ms=self.settings.sink_flush_ms)
                if self._rewind:  # whatever was fetched meanwhile is read again from the start
                    self._rewind = False
                    for tp in self.consumer.assignment():
                        self.consumer.seek(tp, 0)
                    continue
                if fetched:
                    await self._write_and_commit(fetched)
        finally:
            self.running = False
            try:
                await asyncio.wait_for(self.consumer.stop(), CLOSE_TIMEOUT)
            except Exception as exc:  # an unreachable broker must not hold the process
                log.warning("bots_sink_close_failed", error=describe(exc))
            log.info("bots_sink_stopped", rows_written=self.written)

    def readiness(self) -> str:
        """Readiness for /ready: "ok" while the consumer runs, else "starting" or "stopping"."""
        if self._stopping.is_set():
            return "stopping"
        return "ok" if self.running else "starting"

    def stop(self) -> None:
        """Ask run() to end (after the batch in hand, if ClickHouse takes it)."""
        self._stopping.set()

    def started_over(self) -> None:
        """The bots topic was deleted and created again (werkstroom.rotation), with everything
        in it written and committed: read each partition of the new log from its start, before
        the next batch. (A rebalance may find the same on its own: reading twice is harmless.)"""
        log.info("bots_topic_started_over", rows_written=self.written)
        self._rewind = True

    async def rewind_past_end(self, assigned: list[TopicPartition]) -> None:
        """A partition whose committed offset lies past its log's end belongs to an earlier
        log (the topic was created again, or the embedded broker restarted with the offsets
        kept elsewhere): read it from its start, or the new log's first messages were skipped."""
        consumer = self.consumer
        if consumer is None or not assigned:
            return
        committed = {tp: await consumer.committed(tp) for tp in assigned}
        known = [tp for tp, offset in committed.items() if offset]
        if not known:
            return  # nothing committed: auto_offset_reset=earliest reads from the start
        ends = await log_ends_at(self.bootstrap, known)
        for tp in known:
            if committed[tp] > ends[tp]:  # type: ignore[operator]
                log.info(
                    "bots_log_started_over", partition=tp.partition, committed=committed[tp], end=ends[tp]
                )
                consumer.seek(tp, 0)

    async def _write_and_commit(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        rows: list[Row] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, messages in fetched.items():
            for message in messages:
                try:
                    rows.append(row_of(message.value))
                except ContractError as exc:
                    metrics.BOTS_SKIPPED.labels(exc.reason).inc()
                    log.warning(
                        "bots_message_skipped",
                        reason=exc.reason,
                        partition=tp.partition,
                        offset=message.offset,
                    )
            offsets[tp] = messages[-1].offset + 1
        if rows and not await self._insert(rows):
            return  # stopping while ClickHouse was down: uncommitted, read again at the next start
        consumer = started(self.consumer, "the bots consumer")
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # A rebalance took the partitions meanwhile: their new owner reads them again from
            # the last commit, and the rows written twice collapse.
            log.warning("bots_commit_failed", error=describe(exc))

    async def _insert(self, rows: list[Row]) -> bool:
        """Insert the rows, retrying what is transient; False when a stop ended the retries."""
        client = started(self._client, "the bots' ClickHouse client")
        backoff = 0.1
        while True:
            try:
                await asyncio.to_thread(insert_rows, client, TABLE, rows, COLUMNS)
            except Exception as exc:
                kind = classify(exc)
                if kind is Failure.DATA:
                    metrics.BOTS_SKIPPED.labels("refused_by_clickhouse").inc(len(rows))
                    log.error("bots_rows_refused", error=describe(exc), rows=len(rows))
                    return True
                if kind is not Failure.TRANSIENT:
                    log.error("bots_insert_failed", error=describe(exc), kind=kind.value)
                    raise
                log.warning("bots_insert_failed", error=describe(exc), kind=kind.value, retry_in=backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                if self._stopping.is_set():
                    return False
                backoff = min(backoff * 2, 5.0)
            else:
                self.written += len(rows)
                metrics.BOTS_ROWS_WRITTEN.inc(len(rows))
                return True
