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
from datetime import UTC

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse.tables import SINK_PARTITIONS_COLUMNS
from werkstroom.clickhouse.versions import next_version
from werkstroom.contract import FIELDS, ContractError, Event, decode_event
from werkstroom.logging import get_logger

log = get_logger(__name__)

SHIFT = 40  # offsets below 2**40 (a trillion messages per partition) fit under the generation
OFFSET_MASK = (1 << SHIFT) - 1  # position & OFFSET_MASK: the Kafka offset
TABLE = "sink_partitions"
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
    began_ms: int | None = None  # when the generation began, ClickHouse's clock (0018; None: unknown)


@dataclass(frozen=True)
class Tail:
    """What `events` holds of a record's generation at or past its next_offset: written, never
    committed (the process died between its inserts and its commit). `last`: the highest such
    offset, `event_id`: the event at it."""

    last: int
    event_id: str
    rows: int


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


def same_log(
    record: Record,
    committed: int | None,
    end: int,
    found: int | None,
    tail: Tail | None = None,
    tail_found: str | None = None,
) -> bool:
    """Whether the partition's log is the one `record` was written for. `found`: the anchor of
    the message at record.next_offset - 1 now (None: no such message, as after retention);
    `tail`: the rows written past record.next_offset, never committed; `tail_found`: the event
    id of the message at tail.last now (None: no such message, or not looked at)."""
    if committed is not None:
        # Kafka drops a group's offsets with its topic, the embedded broker loses them at restart.
        return committed <= end
    if tail is not None:
        # What was read past the record is evidence too: the same log still holds it. Without
        # this, a log that started over before its generation's first commit (next_offset 0)
        # looked like the same one, and its offsets were read under positions already taken.
        if end <= tail.last:
            return False
        if tail_found is not None and tail_found != tail.event_id:
            return False
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
    tail: Tail | None = None,
    tail_found: str | None = None,
) -> Decision:
    """The generation of one assigned partition. `record`: its row (None: none yet); `topic`:
    the topic's newest recorded generation and its partition count; `partitions`: the topic's
    partition count now; `committed`: the group's committed offset (None: none); `end`: the
    log's end offset; `found`: the anchor of the message at record.next_offset - 1 (None: no
    such message, or not looked at); `counted_before`: events_daily holds rows of this
    partition (only asked when nothing is recorded of the topic); `tail`, `tail_found`: see
    same_log."""
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
    if not same_log(record, committed, end, found, tail, tail_found):
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
        "SELECT partition, generation, next_offset, anchor, partitions, generation_began_ms "
        f"FROM {TABLE} FINAL WHERE topic = {{t:String}}",
        parameters={"t": topic},
    ).result_rows
    records = {
        int(p): Record(int(g), int(n), int(a), int(c), None if b is None else int(b))
        for p, g, n, a, c, b in rows
    }
    if not records:
        return records, Topic()
    newest = max(records.values(), key=lambda r: (r.generation, r.partitions))
    return records, Topic(newest.generation, newest.partitions)


def counted_partitions(client: Client) -> set[int]:
    """The partitions events_daily holds counts of (asked only when nothing is recorded)."""
    rows = client.query("SELECT DISTINCT kafka_partition FROM events_daily").result_rows
    return {int(p) for (p,) in rows}


def save(
    client: Client, topic: str, rows: Iterable[tuple[int, int, int, int, int, int | None]], worker: str
) -> None:
    """Write (partition, generation, next_offset, anchor, partitions, generation_began_ms) rows
    of `topic`."""
    version = next_version()
    data = [[topic, p, g, n, a, c, worker, version, b] for p, g, n, a, c, b in rows]
    if data:
        client.insert(TABLE, data, column_names=SINK_PARTITIONS_COLUMNS)


def clock_ms(client: Client) -> int:
    """ClickHouse's clock (ms): the clock `events.inserted_at` is written with."""
    return int(client.command("SELECT toUnixTimestamp64Milli(now64(3))"))


def _tail_where(wanted: dict[int, tuple[int, int]]) -> tuple[str, dict[str, int]]:
    """The rows of each partition p at offsets >= n inserted since `began`, {p: (n, began)}.

    Why inserted_at tells generations apart (0018): kafka_offset is the raw offset, the same
    numbers in every generation. A generation's `began` is read from ClickHouse's clock when
    it is decided, before any of its messages is read, and inserted_at is that clock at the
    insert: every row of the generation is inserted after it, every row of an older one of the
    same partition before it (its reader was gone, or was told to stop reading, when the log
    was found to have started over). The exception is a worker that lost the partition in a
    rebalance while a batch of the old log was in flight: that batch's rows can land after the
    new generation began. They are counted under their own positions already; only if the new
    generation then ends before its first commit too would they be replayed under its."""
    clauses, parameters = [], {}
    for i, (partition, (start, began)) in enumerate(sorted(wanted.items())):
        clauses.append(
            f"(kafka_partition = {{p{i}:UInt32}} AND kafka_offset >= {{n{i}:UInt64}} "
            f"AND inserted_at >= fromUnixTimestamp64Milli({{t{i}:Int64}}, 'UTC'))"
        )
        parameters.update({f"p{i}": partition, f"n{i}": start, f"t{i}": began})
    return " OR ".join(clauses), parameters


def tails(client: Client, table: str, wanted: dict[int, tuple[int, int]]) -> dict[int, Tail]:
    """What `table` holds of each partition's generation past its record, {p: (next_offset,
    began_ms)}: the rows written and never committed, summed up (see _tail_where)."""
    if not wanted:
        return {}
    where, parameters = _tail_where(wanted)
    rows = client.query(
        "SELECT kafka_partition, max(kafka_offset), argMax(event_id, kafka_offset), uniqExact(kafka_offset) "
        f"FROM {table} WHERE {where} GROUP BY kafka_partition",
        parameters=parameters,
    ).result_rows
    return {int(p): Tail(int(last), str(event_id), int(n)) for p, last, event_id, n in rows}


def tail_events(
    client: Client, table: str, partition: int, start: int, began: int
) -> list[tuple[Event, int]]:
    """The events of a tail (see `tails`), in offset order, each once, with its offset: decoded
    again from their rows, as the sink decodes a message (`decode_event`), so that they are
    applied exactly as the messages were."""
    where, parameters = _tail_where({partition: (start, began)})
    result = client.query(
        f"SELECT {', '.join(FIELDS)}, kafka_offset FROM {table} WHERE {where} "
        "ORDER BY kafka_offset LIMIT 1 BY kafka_offset",
        parameters=parameters,
    )
    events: list[tuple[Event, int]] = []
    for row in result.result_rows:
        fields = dict(zip(FIELDS, row[:-1], strict=True))
        for name in ("timestamp", "received_at", "sent_at"):
            value = fields[name]
            if value is not None and value.tzinfo is None:
                fields[name] = value.replace(tzinfo=UTC)
        for name in ("properties", "traits"):  # stored as their JSON text (RAW_INSERT_SETTINGS)
            fields[name] = msgspec.Raw(fields[name].encode())
        try:
            events.append((decode_event(msgspec.json.encode(fields)), int(row[-1])))
        except ContractError as exc:  # written once, so it decoded once: not expected
            log.warning("sink_tail_row_skipped", partition=partition, offset=int(row[-1]), error=str(exc))
    return events


async def event_ids_at(bootstrap: str, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, str]:
    """The event ids of the messages at the given offsets (see messages_at); a message that is
    not an event of the contract has the id "" (it matches no row of `events`)."""
    found: dict[TopicPartition, str] = {}
    for tp, (_key, value) in (await messages_at(bootstrap, wanted)).items():
        try:
            found[tp] = decode_event(value).event_id
        except ContractError:
            found[tp] = ""
    return found


async def anchors_at(bootstrap: str, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The anchors of the messages at the given offsets (see messages_at)."""
    return {tp: anchor_of(*message) for tp, message in (await messages_at(bootstrap, wanted)).items()}


async def messages_at(
    bootstrap: str, wanted: dict[TopicPartition, int]
) -> dict[TopicPartition, tuple[bytes | None, bytes | None]]:
    """The (key, value) of the messages at the given offsets, read by a consumer in no group; a
    partition whose message is not there (below the log's start, or past its end) is left out."""
    if not wanted:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: dict[TopicPartition, tuple[bytes | None, bytes | None]] = {}
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
                        found[tp] = (message.key, message.value)
                    if message.offset >= at:
                        todo.pop(tp, None)
                        consumer.pause(tp)
                        break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return found
