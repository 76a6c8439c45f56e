"""The decode stage: a fetched message becomes an event (and its `events` row), or a dead letter
with its reason. Too many bad messages in a row (`sink_max_consecutive_bad`) stop the sink
instead of silently dead-lettering a broken producer (Arroyo's DLQ limit)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiokafka import TopicPartition

from services.aggregator.batching import Buffer
from services.aggregator.retry import SinkStopped
from werkstroom import metrics
from werkstroom.contract import ContractError, Event, dead_letter, decode_event

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


class Decoder:
    """Decodes fetched messages into a Buffer; counts the bad ones in a row."""

    def __init__(self, max_consecutive_bad: int) -> None:
        self.max_consecutive_bad = max_consecutive_bad
        self.consecutive_bad = 0

    def take(
        self, tp: TopicPartition, messages: list[Any], base: int, buffer: Buffer
    ) -> tuple[int, tuple[bytes | None, bytes | None]] | None:
        """Decode `messages` of `tp` (aiokafka's lean records) into `buffer`, each event at its
        position `base + offset`; returns the partition's next offset and the (key, value) of
        the message before it (its anchor, services.aggregator.generations), or None if there
        were none."""
        add_event, add_raw = buffer.events.append, buffer.raw.append  # once per fetch, not per event
        partition = tp.partition
        for message in messages:
            value, offset = message.value, message.offset
            try:
                event = decode_event(value)
            except ContractError as exc:
                self.bad(tp, message, exc, buffer)
                continue
            if self.consecutive_bad:
                self.consecutive_bad = 0
            add_event((event, partition, base + offset))
            add_raw(raw_row(value, event, partition, offset))
        if not messages:
            return None
        last = messages[-1]
        buffer.offsets[tp] = last.offset + 1
        return last.offset + 1, (last.key, last.value)

    def bad(self, tp: TopicPartition, message: Any, exc: ContractError, buffer: Buffer) -> None:
        self.consecutive_bad += 1
        metrics.SINK_DEAD_LETTERED.labels(exc.reason).inc()
        buffer.dead.append(
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
        if self.consecutive_bad >= self.max_consecutive_bad:
            raise SinkStopped(
                f"{self.consecutive_bad} messages in a row on {tp.topic} did not match the event "
                f"contract (last: {exc}); stopping instead of dead-lettering everything. Fix the producer, "
                "then restart: the bad messages are in the dead-letter topic, uncommitted ones are re-read."
            )
