"""The write stage: a batch's dead letters, its events and its aggregates into ClickHouse.

A transient failure is retried (services.aggregator.retry) until it passes or the sink stops; a
retry writes the same rows again, which collapse on their keys (`events` is a
ReplacingMergeTree ending in event_id, the aggregates are versioned). Rows ClickHouse refuses
(a data error) are found by splitting the batch, go to the dead-letter topic with ClickHouse's
reason, and the rest is written; too many refused in a row stop the sink. The live view's rows
go in as soon as a batch is aggregated (`start_live`), ahead of the previous batch's other
writes; the batch counts as written only once they are in too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiokafka import TopicPartition
from clickhouse_connect.driver.client import Client

from services.aggregator import generations
from services.aggregator.decode import message_of
from services.aggregator.errors import Failure, classify, describe, error_name, started
from services.aggregator.processor import Decoded, Dirty, Rows
from services.aggregator.retry import Abandoned, Retry, SinkStopped
from werkstroom import metrics
from werkstroom.clickhouse.params import insert_rows
from werkstroom.clickhouse.tables import EVENTS_COLUMNS
from werkstroom.contract import Topics, dead_letter, message_key
from werkstroom.kafka import Publisher
from werkstroom.logging import get_logger

log = get_logger(__name__)

REFUSED = "refused_by_clickhouse"  # the dead-letter reason of a row ClickHouse refused
LIVE_TABLE = "online_visitors"
R = TypeVar("R")  # a row: a raw `events` line, or a list of an aggregate table's values

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


@dataclass
class Batch:
    """A batch applied, ready to write."""

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
class Refused:
    """A row ClickHouse refused, as its dead letter."""

    table: str
    key: bytes
    letter: bytes


@dataclass
class WriterClients:
    """The writer's connections, opened when the sink runs (None before: `started` says so)."""

    events: Client | None = None  # the events table's inserts, a client of their own
    aggregates: Client | None = None
    live: Client | None = None  # the live view, ahead of the batch's other writes
    publisher: Publisher | None = None  # the dead letters


class Writer:
    def __init__(
        self, topics: Topics, table: str, max_consecutive_bad: int, retry: Retry, stopping: asyncio.Event
    ) -> None:
        self.topics = topics
        self.table = table
        self.max_consecutive_bad = max_consecutive_bad
        self.retry = retry
        self.stopping = stopping
        self.clients = WriterClients()
        self.refused_run: dict[str, int] = {}  # table -> rows refused in a row, as last written
        self.last_write: float | None = None
        self.newest: dict[int, int] = {}  # partition -> newest event time written (ms)

    def start_live(self, batch: Batch) -> None:
        """Start inserting the live view's rows now, on their own client: they do not wait for
        the previous batch's events and sessions to be written. They are versioned by the
        visitor's offset, so the order of two batches' inserts does not matter. `write` awaits
        it (and inserts the rows itself if it failed)."""
        columns, live_rows = batch.aggregates.get(LIVE_TABLE, ([], []))
        if live_rows:
            client = started(self.clients.live, "the live view's client")
            live = asyncio.to_thread(insert_tables, client, [(LIVE_TABLE, columns, live_rows)])
            batch.live = asyncio.create_task(live)

    async def write(self, batch: Batch) -> None:
        """Dead-letter, insert events and aggregates. Returns once all are in."""
        dead = batch.dead

        async def attempt() -> None:
            nonlocal dead
            if dead:
                await self._publisher().publish(self.topics.dead_letter, dead)
                dead = []
            runs: dict[str, int] = {}  # the refused rows in a row, per table, as of this write

            async def aggregates() -> list[Refused]:
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
                return await self.insert_aggregates(tables, runs)

            # The events first, then what counts them: a kill -9 between the two leaves events
            # stored and not yet counted, which the next start replays from `events`
            # (EventsSink.replay_tails). Side by side, a kill could leave counts above the
            # stored events, whose only other copy was in the embedded broker the kill took.
            events = await self.insert_events(batch, runs)
            aggregated = await aggregates()
            refused = [*events, *aggregated]
            if refused:  # in the dead-letter topic before the offsets are committed
                await self._publisher().publish(self.topics.dead_letter, [(r.key, r.letter) for r in refused])
                metrics.SINK_DEAD_LETTERED.labels(REFUSED).inc(len(refused))
                for table in {r.table for r in refused}:
                    metrics.SINK_ROWS_REFUSED.labels(table).inc(sum(r.table == table for r in refused))
            self.refused_run = runs

        await self.retry("sink_write_failed", attempt)
        self.last_write = time.time()
        metrics.SINK_LAST_WRITE.set(self.last_write)
        for partition, ms in batch.newest.items():
            if ms > self.newest.get(partition, 0):
                self.newest[partition] = ms

    def _publisher(self) -> Publisher:
        return started(self.clients.publisher, "the dead-letter publisher")

    async def insert_raw(self, lines: list[bytes]) -> None:
        if not lines:
            return
        client = started(self.clients.events, "the events' client")
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

    async def insert_events(self, batch: Batch, runs: dict[str, int]) -> list[Refused]:
        """Insert the batch's events; if ClickHouse refuses some, the others and their dead letters."""
        try:
            await self.insert_raw(batch.raw)
            return []
        except Exception as exc:
            if classify(exc) is not Failure.DATA:
                raise
            error = exc
        # Each part that goes in counts its rows written, as the whole batch would have.
        refused = await self.insert_refusing(self.table, batch.raw, error, self.insert_raw, runs)
        letters = []
        for i, reason in refused:
            event, partition, position = batch.events[i]
            offset = position & generations.OFFSET_MASK
            value = message_of(batch.raw[i], partition, offset)
            letter = self.refused_letter(reason, value, table=self.table, partition=partition, offset=offset)
            key = message_key(event.project_id, event.anonymous_id, event.user_id)
            letters.append(Refused(self.table, key, letter))
        return letters

    async def insert_aggregates(
        self, tables: list[tuple[str, list[str], list[list[Any]]]], runs: dict[str, int]
    ) -> list[Refused]:
        """Insert each table's rows in turn; rows ClickHouse refuses are left out, and their
        dead letters (the row, with the table's name) returned."""
        client = started(self.clients.aggregates, "the aggregates' client")
        letters: list[Refused] = []
        while tables:
            written: list[str] = []
            try:
                await asyncio.to_thread(insert_tables, client, tables, written)
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

                for i, reason in await self.insert_refusing(table, rows, exc, insert, runs):
                    row = dict(zip(columns, rows[i], strict=True))
                    raw = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
                    key = str(row.get("project_id", "")).encode()
                    letters.append(Refused(table, key, self.refused_letter(reason, raw, table=table)))
        return letters

    async def insert_refusing(
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
        limit = self.max_consecutive_bad
        run = self.refused_run.get(table, 0)
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
                if self.stopping.is_set():
                    raise Abandoned(f"stopped while looking for the rows {table} refuses")
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

    def refused_letter(self, error: Exception, raw: bytes, **context: Any) -> bytes:
        return dead_letter(
            "sink",
            REFUSED,
            describe(error),
            raw,
            topic=self.topics.events,
            clickhouse_error=error_name(error),
            **context,
        )


def insert_tables(
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
