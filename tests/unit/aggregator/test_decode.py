"""The decode stage alone (services/aggregator/decode.py): events into the buffer under their
positions, contract breaches into dead letters, and the limit on bad messages in a row."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest
from aiokafka import TopicPartition

from services.aggregator.batching import Buffer
from services.aggregator.decode import Decoder
from services.aggregator.retry import SinkStopped
from tests.unit.aggregator.test_raw_row import MESSAGE

TP = TopicPartition("werkstroom.events.v1", 2)


@dataclass
class Message:
    """aiokafka's lean record, as far as the decoder reads it."""

    offset: int
    value: bytes
    key: bytes | None = b"key"


def good(offset: int) -> Message:
    return Message(offset, orjson.dumps({**MESSAGE, "event_id": f"e{offset}"}))


def bad(offset: int) -> Message:
    return Message(offset, b'{"not": "an event"}')


def test_events_are_taken_under_their_position_with_their_rows() -> None:
    buffer = Buffer()
    taken = Decoder(10).take(TP, [good(5), good(6)], base=7 << 40, buffer=buffer)
    assert taken == (7, (b"key", good(6).value))  # the next offset, and the anchor's message
    assert [(e.event_id, p, pos) for e, p, pos in buffer.events] == [
        ("e5", 2, (7 << 40) + 5),
        ("e6", 2, (7 << 40) + 6),
    ]
    assert [orjson.loads(r)["kafka_offset"] for r in buffer.raw] == [5, 6]
    assert buffer.offsets == {TP: 7} and buffer.dead == []


def test_a_message_that_breaks_the_contract_becomes_a_dead_letter_with_its_reason() -> None:
    buffer = Buffer()
    Decoder(10).take(TP, [bad(3), good(4)], base=0, buffer=buffer)
    assert [e.event_id for e, _p, _o in buffer.events] == ["e4"]
    ((key, letter),) = buffer.dead
    body = orjson.loads(letter)
    assert key == b"key" and body["reason"] and body["offset"] == 3 and body["partition"] == 2
    assert buffer.offsets == {TP: 5}  # the bad message is committed with the batch


def test_too_many_bad_messages_in_a_row_stop_the_sink_and_a_good_one_resets_the_count() -> None:
    decoder = Decoder(3)
    buffer = Buffer()
    decoder.take(TP, [bad(0), bad(1), good(2), bad(3), bad(4)], base=0, buffer=buffer)
    assert decoder.consecutive_bad == 2
    with pytest.raises(SinkStopped, match="3 messages in a row"):
        decoder.take(TP, [bad(5)], base=0, buffer=buffer)


def test_an_empty_fetch_takes_nothing() -> None:
    buffer = Buffer()
    assert Decoder(3).take(TP, [], base=0, buffer=buffer) is None
    assert buffer.offsets == {}
