"""Generations of a partition's log, so that the aggregator's versions survive a log that
starts over (issue 18).

Every version the aggregator compares is a position, `(generation << 40) | offset`: within a
generation positions order like offsets, and every position of a new generation is above every
position of the ones before. A log starts over when the embedded broker restarts (it keeps its
topics in memory), when a topic is deleted and created again, and, for the keys it moves, when a
topic's partition count changes. Generation 0 is the log read before generations existed.

The generation of a (topic, partition) is recorded in ClickHouse (`sink_partitions`, 0017) and
decided again at each assignment from what is recorded there and what Kafka says, never from a
worker's memory, so that two workers agree (`decide`, a pure function).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from werkstroom.logging import get_logger

log = get_logger(__name__)

SHIFT = 40  # offsets below 2**40 (a trillion messages per partition) fit under the generation
OFFSET_MASK = (1 << SHIFT) - 1  # position & OFFSET_MASK: the Kafka offset
TABLE = "sink_partitions"
COLUMNS = ["topic", "partition", "generation", "next_offset", "anchor", "partitions", "worker", "version"]
ANCHOR_READ_MS = 5000  # how long an assignment waits for the message it checks the anchor on


def base(generation: int) -> int:
    """What is added to an offset of this generation to make its position."""
    return generation << SHIFT


def anchor_of(key: bytes | None, value: bytes | None) -> int:
    """A message's fingerprint: 64 bits of BLAKE2b over its key and value (UInt64)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(key or b"")
    digest.update(b"\x00")
    digest.update(value or b"")
    return int.from_bytes(digest.digest(), "big")


@dataclass(frozen=True)
class Record:
    """A partition's row of sink_partitions."""

    generation: int
    next_offset: int
    anchor: int
    partitions: int


@dataclass(frozen=True)
class Topic:
    """What is recorded of a topic as a whole: its newest generation, and the partition count
    recorded with it (None, None: nothing recorded yet)."""

    generation: int | None = None
    partitions: int | None = None


@dataclass(frozen=True)
class Decision:
    """The generation to read a partition under, and where to start: an offset, or None for
    the group's committed offset (or the beginning). `record`: whether to write the decision
    down at once, before anything is read (so another worker taking over agrees)."""

    generation: int
    seek: int | None
    reason: str
    record: bool


def same_log(record: Record, committed: int | None, end: int, found: int | None) -> bool:
    """Whether the partition's log is the one `record` was written for. `found`: the anchor of
    the message at record.next_offset - 1 now (None: no such message, as after retention)."""
    if committed is not None:
        # Kafka drops a group's offsets with its topic, the embedded broker loses them at restart.
        return committed <= end
    if end < record.next_offset:
        return False  # shorter than what was read of it
    if record.next_offset == 0:
        return True  # nothing read of it yet: the same as far as anyone can tell
    if found is None:
        # The message is gone (retention) though the log reaches past it: the offsets expired
        # with the group's, the log did not start over (a new log would hold it). Ambiguous
        # only on a real Kafka; nothing better is known.
        return True
    return found == record.anchor


def decide(
    record: Record | None,
    topic: Topic,
    partitions: int,
    committed: int | None,
    end: int,
    found: int | None,
    counted_before: bool,
) -> Decision:
    """The generation of one assigned partition. `record`: its row (None: none yet); `topic`:
    the topic's newest recorded generation and its partition count; `partitions`: the topic's
    partition count now; `committed`: the group's committed offset (None: none); `end`: the
    log's end offset; `found`: the anchor of the message at record.next_offset - 1 (None: no
    such message, or not looked at); `counted_before`: events_daily holds rows of this
    partition (only asked when nothing is recorded of the topic)."""
    if topic.generation is None or topic.partitions is None:
        # Nothing recorded: a fresh database (generation 0), or the first start after the
        # upgrade. Then a partition with no committed offset whose days were counted before was
        # read in a log that started over since (the embedded broker restarted): generation 1.
        # A real Kafka's consumer group renamed at the upgrade looks the same: read again.
        # Recorded at once (nothing verified yet): a first run killed before its first commit
        # has counted days too, and must not look like that at its next start.
        if committed is None and counted_before:
            return Decision(1, 0, "log_started_over_since_upgrade", True)
        return Decision(0, None, "first_record", True)
    newest = topic.generation
    relayout = partitions != topic.partitions  # nobody recorded this partition count yet
    if record is None:
        # A partition added since the newest record: its keys came from other partitions,
        # whose positions it must be above.
        return Decision(newest + 1 if relayout else newest, None, "new_partition", True)
    if not same_log(record, committed, end, found):
        return Decision(newest + 1, 0, "new_log", True)
    # The same log: go on after what was recorded as done (every batch before it is written).
    start = record.next_offset if committed is None else max(committed, record.next_offset)
    if record.partitions != partitions:
        # The partition count changed: keys moved between partitions, so this log's positions
        # must also go above every position recorded (here and in the partitions keys left).
        return Decision(newest + 1 if relayout else newest, start, "partitions_changed", True)
    return Decision(record.generation, start, "same_log", False)


def load(client: Client, topic: str) -> tuple[dict[int, Record], Topic]:
    """The recorded rows of `topic`, by partition, and the topic's newest generation."""
    rows = client.query(
        f"SELECT partition, generation, next_offset, anchor, partitions FROM {TABLE} FINAL "
        "WHERE topic = {t:String}",
        parameters={"t": topic},
    ).result_rows
    records = {int(p): Record(int(g), int(n), int(a), int(c)) for p, g, n, a, c in rows}
    if not records:
        return records, Topic()
    newest = max(records.values(), key=lambda r: (r.generation, r.partitions))
    return records, Topic(newest.generation, newest.partitions)


def counted_partitions(client: Client) -> set[int]:
    """The partitions events_daily holds counts of (asked only when nothing is recorded)."""
    rows = client.query("SELECT DISTINCT kafka_partition FROM events_daily").result_rows
    return {int(p) for (p,) in rows}


def save(client: Client, topic: str, rows: Iterable[tuple[int, int, int, int, int]], worker: str) -> None:
    """Write (partition, generation, next_offset, anchor, partitions) rows of `topic`."""
    version = time.time_ns() // 1_000_000
    data = [[topic, p, g, n, a, c, worker, version] for p, g, n, a, c in rows]
    if data:
        client.insert(TABLE, data, column_names=COLUMNS)


async def anchors_at(bootstrap: str, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The anchors of the messages at the given offsets, read by a consumer in no group; a
    partition whose message is not there (below the log's start, or past its end) is left out."""
    if not wanted:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: dict[TopicPartition, int] = {}
    try:
        consumer.assign(list(wanted))
        starts = await consumer.beginning_offsets(list(wanted))
        todo = {tp: at for tp, at in wanted.items() if at >= starts.get(tp, 0)}
        for tp, at in todo.items():
            consumer.seek(tp, at)
        deadline = time.monotonic() + ANCHOR_READ_MS / 1000
        while todo and time.monotonic() < deadline:
            batches = await consumer.getmany(*todo, timeout_ms=200)
            for tp, messages in batches.items():
                at = todo.get(tp)
                if at is None:
                    continue
                for message in messages:
                    if message.offset == at:
                        found[tp] = anchor_of(message.key, message.value)
                    if message.offset >= at:
                        todo.pop(tp, None)
                        consumer.pause(tp)
                        break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return found
