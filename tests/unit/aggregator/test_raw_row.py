"""The events rows the sink hands ClickHouse as JSONEachRow lines."""

from __future__ import annotations

import orjson

from services.aggregator.sink import raw_row
from werkstroom.contract import decode_event

MESSAGE = {
    "schema_version": 1,
    "event_id": "e1",
    "project_id": "p1",
    "type": "track",
    "event": "Clicked",
    "timestamp": "2026-11-25T10:00:00.123Z",
    "received_at": "2026-11-25T10:00:01.000Z",
    "properties": {"a": [1, 2]},
}


def test_partition_and_offset_are_appended_to_the_message() -> None:
    value = orjson.dumps(MESSAGE) + b"\n "
    row = orjson.loads(raw_row(value, decode_event(value), 3, 41))
    assert row == {**MESSAGE, "kafka_partition": 3, "kafka_offset": 41}


def test_a_message_carrying_kafka_keys_itself_cannot_override_where_it_came_from() -> None:
    value = orjson.dumps({**MESSAGE, "kafka_offset": 999, "future_field": "x"})
    row = orjson.loads(raw_row(value, decode_event(value), 0, 7))
    assert row["kafka_offset"] == 7 and row["kafka_partition"] == 0
    assert row["event_id"] == "e1" and row["properties"] == {"a": [1, 2]}
