from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jsonschema
import orjson
import pytest

from services.ingest.enrich import UNKNOWN, analyse
from services.ingest.segment import Rejected, corrected_timestamp, normalize, parse_client_time
from werkstroom.contract import decode_event, encode_event, json_schema

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def run(call: object, call_type: str | None = "track", **kwargs: object) -> dict[str, object]:
    event, _agent = normalize(call, call_type=call_type, project_id="p_1", received_at=NOW, **kwargs)  # type: ignore[arg-type]
    return event


def rejected(call: object, call_type: str | None = "track") -> tuple[str, str | None]:
    with pytest.raises(Rejected) as info:
        run(call, call_type)
    return info.value.reason, info.value.field


def test_skew_correction_uses_sent_at_like_segment() -> None:
    client_now = NOW + timedelta(hours=3)  # the device clock is 3 h fast
    happened = client_now - timedelta(seconds=30)
    assert corrected_timestamp(happened, client_now, NOW) == NOW - timedelta(seconds=30)
    assert corrected_timestamp(None, client_now, NOW) == NOW
    assert corrected_timestamp(NOW + timedelta(days=1), None, NOW) == NOW  # never in the future
    late = NOW - timedelta(hours=5)  # an offline queue flushed hours later keeps its time
    assert corrected_timestamp(late, None, NOW) == late


def test_batch_sent_at_applies_to_items_without_their_own() -> None:
    event = run(
        {"anonymousId": "a", "event": "E", "timestamp": "2026-11-25T15:00:00Z"},
        batch_sent_at=datetime(2026, 11, 25, 15, 0, 10, tzinfo=UTC),
    )
    assert event["timestamp"] == datetime(2026, 11, 25, 11, 59, 50, tzinfo=UTC)
    assert event["sent_at"] == datetime(2026, 11, 25, 15, 0, 10, tzinfo=UTC)
    written = orjson.loads(encode_event(event))
    assert (written["timestamp"], written["sent_at"]) == ("2026-11-25T11:59:50Z", "2026-11-25T15:00:10Z")


def test_generated_ids_are_version_4_uuids() -> None:
    import uuid

    from services.ingest.segment import random_id

    ids = {random_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_time_parsing_accepts_iso_forms_and_names_the_field() -> None:
    parsed = parse_client_time("2026-11-25T12:00:00.123+02:00", "timestamp")
    assert parsed == datetime(2026, 11, 25, 10, 0, 0, 123000, tzinfo=UTC) and parsed.tzinfo is UTC
    assert parse_client_time("2026-11-25T12:00:00z", "timestamp") == NOW
    assert parse_client_time(None, "timestamp") is None
    assert rejected({"anonymousId": "a", "event": "E", "timestamp": "25/11/2026"}) == (
        "invalid_time",
        "timestamp",
    )
    assert rejected({"anonymousId": "a", "event": "E", "sentAt": 12}) == ("invalid_time", "sentAt")
    assert rejected({"anonymousId": "a", "event": "E", "timestamp": "1970-01-01T00:00:00Z"}) == (
        "invalid_time",
        "timestamp",
    )


@pytest.mark.parametrize(
    ("call", "call_type", "expected"),
    [
        ({"event": "E"}, "track", ("missing_field", "anonymousId")),
        ({"anonymousId": "a"}, "track", ("missing_field", "event")),
        ({"anonymousId": "a", "event": "  "}, "track", ("missing_field", "event")),
        ({"anonymousId": "a", "event": "$page"}, "track", ("invalid_field", "event")),
        ({"anonymousId": "a", "event": "x" * 201}, "track", ("invalid_field", "event")),
        ({"anonymousId": {"x": 1}, "event": "E"}, "track", ("invalid_field", "anonymousId")),
        ({"anonymousId": True, "event": "E"}, "track", ("invalid_field", "anonymousId")),
        ({"anonymousId": "a" * 201, "event": "E"}, "track", ("invalid_field", "anonymousId")),
        ({"anonymousId": "a", "event": "E", "properties": [1]}, "track", ("invalid_field", "properties")),
        ({"anonymousId": "a", "event": "E", "context": "x"}, "track", ("invalid_field", "context")),
        ({"anonymousId": "a", "event": "E", "messageId": 7}, "track", ("invalid_field", "messageId")),
        ({"anonymousId": "a", "traits": "premium"}, "identify", ("invalid_field", "traits")),
        ({"userId": "u"}, "alias", ("missing_field", "previousId")),
        ({"previousId": "a", "anonymousId": "b"}, "alias", ("missing_field", "userId")),
        ({"type": "screen", "anonymousId": "a"}, None, ("unsupported_type", "type")),
        ({"type": "bogus", "anonymousId": "a"}, None, ("invalid_field", "type")),
        ({"anonymousId": "a"}, None, ("invalid_field", "type")),
        ([1, 2], None, ("not_an_object", None)),
    ],
)
def test_invalid_calls_are_rejected_with_field_and_reason(
    call: object, call_type: str | None, expected: tuple[str, str | None]
) -> None:
    assert rejected(call, call_type) == expected


def test_page_fields_come_from_properties_then_context_page() -> None:
    event = run(
        {
            "anonymousId": "a",
            "name": "Pricing",
            "category": "Docs",
            "properties": {"url": "https://ex.com/pricing?x=1", "title": "P"},
            "context": {"page": {"referrer": "https://google.com/"}, "userAgent": CHROME},
        },
        "page",
    )
    assert (event["type"], event["event"]) == ("page", "$page")
    assert (event["url"], event["path"], event["title"]) == ("https://ex.com/pricing?x=1", "/pricing", "P")
    assert event["referrer"] == "https://google.com/"
    assert event["properties"] == {
        "url": "https://ex.com/pricing?x=1",
        "title": "P",
        "name": "Pricing",
        "category": "Docs",
    }
    assert (event["device_type"], event["browser"], event["os"]) == ("desktop", "Chrome", "Windows")
    track = run(
        {"anonymousId": "a", "event": "Click", "context": {"page": {"path": "/cart", "title": "Cart"}}}
    )
    assert (track["path"], track["title"], track["event"]) == ("/cart", "Cart", "Click")


def test_ids_message_id_and_traits() -> None:
    event = run({"userId": 42, "traits": {"plan": "trial"}, "messageId": "m-1"}, "identify")
    assert (event["user_id"], event["anonymous_id"], event["event_id"]) == ("42", "", "m-1")
    assert event["traits"] == {"plan": "trial"}
    generated = run({"anonymousId": "a", "event": "E"})
    assert len(str(generated["event_id"])) == 36
    tracked = run({"anonymousId": "a", "event": "E", "context": {"traits": {"plan": "premium"}}})
    assert tracked["traits"] == {"plan": "premium"}
    alias = run({"previousId": "anon", "userId": "u"}, "alias")
    assert (alias["previous_id"], alias["user_id"], alias["event"]) == ("anon", "u", "$alias")


def test_visitor_agent_comes_from_context_then_request_but_not_from_server_sdks() -> None:
    header = analyse(CHROME)
    beacon, agent = normalize(
        {"anonymousId": "a", "event": "E"},
        call_type="track",
        project_id="p",
        received_at=NOW,
        header_agent=header,
    )
    assert agent is header and beacon["browser"] == "Chrome"
    server_side, agent = normalize(
        {"anonymousId": "a", "event": "E", "context": {"library": {"name": "analytics-python"}}},
        call_type="track",
        project_id="p",
        received_at=NOW,
        header_agent=analyse("curl/8.0"),
    )
    assert (
        agent is UNKNOWN
        and server_side["device_type"] == "unknown"
        and server_side["library"] == "analytics-python"
    )


def test_every_normalized_event_matches_the_published_schema_and_round_trips() -> None:
    calls = [
        ({"anonymousId": "a", "event": "E", "properties": {"k": [1, {"x": None}]}}, "track"),
        ({"anonymousId": "a", "properties": {"path": "/"}}, "page"),
        ({"userId": "u", "traits": {"plan": "premium"}}, "identify"),
        ({"previousId": "a", "userId": "u"}, "alias"),
    ]
    for call, call_type in calls:
        event = run(call, call_type)
        jsonschema.validate(orjson.loads(encode_event(event)), json_schema())
        decoded = decode_event(encode_event(event))
        assert decoded.timestamp == NOW and decoded.event == event["event"]
