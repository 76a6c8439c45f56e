"""HTTP beacon -> ingest -> Kafka -> sink -> ClickHouse row, through the real parts."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.stack import Stack
from werkstroom.contract import decode_event

pytestmark = pytest.mark.integration

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1"
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_page_view_lands_in_clickhouse_enriched_and_skew_corrected(stack: Stack) -> None:
    now = datetime.now(UTC)
    # The client's clock runs one hour fast: it says it sent at now+1h, the event 2 s before.
    body = {
        "writeKey": stack.project.write_key,
        "anonymousId": "anon-1",
        "messageId": "msg-page-1",
        "properties": {
            "url": "https://shop.example/pricing?x=1",
            "title": "Pricing",
            "referrer": "https://g.co/",
        },
        "timestamp": iso(now + timedelta(hours=1) - timedelta(seconds=2)),
        "sentAt": iso(now + timedelta(hours=1)),
        "context": {"userAgent": IPHONE, "sessionId": "s-1", "ip": "203.0.113.9"},
    }
    response = await stack.post("/v1/page", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": 1, "rejected": 0, "bots": 0, "errors": []}

    assert await stack.wait_count(1) == 1
    row = stack.client.query(
        "SELECT project_id, event_id, type, event, anonymous_id, session_id, url, path, title, referrer, "
        "device_type, browser, os, timestamp, received_at, kafka_offset, properties FROM events FINAL"
    ).named_results()
    (event,) = list(row)
    assert event["project_id"] == stack.project.project_id
    assert (event["event_id"], event["type"], event["event"]) == ("msg-page-1", "page", "$page")
    assert (event["anonymous_id"], event["session_id"]) == ("anon-1", "s-1")
    assert event["url"] == "https://shop.example/pricing?x=1"
    assert (event["path"], event["title"], event["referrer"]) == ("/pricing", "Pricing", "https://g.co/")
    assert (event["device_type"], event["browser"], event["os"]) == ("mobile", "Mobile Safari", "iOS")
    assert event["kafka_offset"] >= 0
    # Corrected by the hour, to within the 10 s tolerance (CLOCK_TOLERANCE): received_at - 2 s
    # + 10 s, whatever the client's clock said.
    skew = (event["received_at"] - event["timestamp"]).total_seconds()
    assert -8.01 <= skew <= -7.99
    assert "203.0.113.9" not in str(event)  # no raw IP is stored


async def test_batch_with_rejected_items_dead_letters_them_with_reasons(stack: Stack) -> None:
    key = stack.project.write_key
    body = {
        "writeKey": key,
        "batch": [
            {
                "type": "track",
                "anonymousId": "a",
                "event": "Signed Up",
                "messageId": "b-1",
                "properties": {"plan": "trial"},
            },
            {
                "type": "identify",
                "anonymousId": "a",
                "userId": "u-1",
                "traits": {"plan": "trial"},
                "messageId": "b-2",
            },
            {"type": "track", "anonymousId": "a", "messageId": "b-3"},  # no event name
            {"type": "alias", "previousId": "a", "userId": "u-1", "messageId": "b-4"},
            {"type": "page", "messageId": "b-5"},  # no id at all
            "not an object",
        ],
    }
    response = await stack.post("/v1/batch", body)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["rejected"], answer["bots"]) == (3, 3, 0)
    assert [(e["index"], e["reason"], e["field"]) for e in answer["errors"]] == [
        (2, "missing_field", "event"),
        (4, "missing_field", "anonymousId"),
        (5, "not_an_object", None),
    ]
    assert await stack.wait_count(3) == 3
    assert stack.rows("SELECT event_id, type, event FROM events FINAL ORDER BY event_id") == [
        ("b-1", "track", "Signed Up"),
        ("b-2", "identify", "$identify"),
        ("b-4", "alias", "$alias"),
    ]
    dead = await stack.read_topic(stack.topics.dead_letter, 3)
    records = [orjson.loads(m.value) for m in dead]
    assert all(r["source"] == "ingest" and r["project_id"] == stack.project.project_id for r in records)
    raw = [orjson.loads(r["raw"]) for r in records]
    assert sorted(
        (r["reason"], r["field"] or "", item.get("messageId", "") if isinstance(item, dict) else item)
        for r, item in zip(records, raw, strict=True)
    ) == [
        ("missing_field", "anonymousId", "b-5"),
        ("missing_field", "event", "b-3"),
        ("not_an_object", "", "not an object"),
    ]


async def test_send_beacon_text_plain_and_basic_auth(stack: Stack) -> None:
    beacon = orjson.dumps(
        {"writeKey": stack.project.write_key, "anonymousId": "b", "event": "Beacon", "messageId": "beacon-1"}
    )
    response = await stack.post("/v1/track", beacon, headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert response.status_code == 200, response.text
    auth = base64.b64encode(f"{stack.project.write_key}:".encode()).decode()
    response = await stack.post(
        "/v1/identify",
        {"userId": "u-9", "traits": {"plan": "premium"}, "messageId": "basic-1"},
        headers={"Authorization": f"Basic {auth}"},
    )
    assert response.status_code == 200, response.text
    assert await stack.wait_count(2) == 2
    assert stack.rows("SELECT event_id, user_id, traits FROM events FINAL ORDER BY event_id") == [
        ("basic-1", "u-9", '{"plan":"premium"}'),
        ("beacon-1", "", "{}"),
    ]


async def test_cors_preflight_lets_any_site_send(stack: Stack) -> None:
    response = await stack.http.options(
        "/v1/track",
        headers={
            "Origin": "https://any-site.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://any-site.example")


async def test_bad_requests_get_clear_errors_and_write_nothing(stack: Stack) -> None:
    key = stack.project.write_key
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "not_an_object"),
        (orjson.dumps({"anonymousId": "x", "event": "E"}), 401, "no_write_key"),
        (orjson.dumps({"writeKey": "wk_nope", "anonymousId": "x", "event": "E"}), 401, "unknown_write_key"),
        (
            orjson.dumps(
                {"writeKey": key, "anonymousId": "x", "event": "E", "properties": {"p": "x" * 40_000}}
            ),
            413,
            "too_large",
        ),
        (
            orjson.dumps({"writeKey": key, "anonymousId": "x", "event": "E", "timestamp": "yesterday"}),
            400,
            "invalid_time",
        ),
    ]
    for body, status, reason in cases:
        response = await stack.post("/v1/track", body)
        assert response.status_code == status, (body[:60], response.text)
        assert response.json()["reason"] == reason
        assert response.json()["success"] is False
    too_many = {"writeKey": key, "batch": [{"type": "track", "anonymousId": "x", "event": "E"}] * 2501}
    response = await stack.post("/v1/batch", too_many)
    assert (response.status_code, response.json()["reason"]) == (413, "too_many_events")
    too_big = {
        "writeKey": key,
        "batch": [{"type": "track", "anonymousId": "x", "event": "E", "properties": {"p": "y" * 20_000}}]
        * 30,
    }
    response = await stack.post("/v1/batch", too_big)
    assert (response.status_code, response.json()["reason"]) == (413, "too_large")
    # The one invalid single event (invalid_time) went to the dead-letter topic; nothing else did.
    assert len(await stack.read_topic(stack.topics.dead_letter, 2, timeout=3)) == 1
    assert len(await stack.read_topic(stack.topics.events, 1, timeout=2)) == 0


async def test_bots_are_counted_not_forwarded(stack: Stack) -> None:
    body = {
        "writeKey": stack.project.write_key,
        "batch": [
            {
                "type": "page",
                "anonymousId": "g",
                "context": {"userAgent": "Googlebot/2.1 (+http://www.google.com/bot.html)"},
            },
            {"type": "page", "anonymousId": "h", "messageId": "human-1", "context": {"userAgent": IPHONE}},
        ],
    }
    response = await stack.post("/v1/batch", body)
    assert response.json()["accepted"] == 1 and response.json()["bots"] == 1
    assert await stack.wait_count(1) == 1
    assert stack.rows("SELECT event_id FROM events FINAL") == [("human-1",)]


async def test_project_created_while_running_is_accepted_within_seconds(stack: Stack) -> None:
    from werkstroom import projects

    late = projects.create_project(stack.client, "Created later")
    started = time.monotonic()

    async def accepted() -> bool:
        response = await stack.post(
            "/v1/track", {"writeKey": late.write_key, "anonymousId": "n", "event": "E"}
        )
        return response.status_code == 200

    await stack.until(accepted, timeout=5)
    assert time.monotonic() - started < 5
    assert (
        await stack.wait_count(
            1, "SELECT count() FROM events FINAL WHERE project_id = {p:String}", p=late.project_id
        )
        == 1
    )


async def test_rate_limit_answers_429_with_retry_after(infra, names, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        sink=False,
        rate_limit_eps=10,
        rate_limit_burst=10,
    ) as stack:
        event = {"type": "track", "anonymousId": "r", "event": "E"}
        first = await stack.post("/v1/batch", {"writeKey": stack.project.write_key, "batch": [event] * 10})
        assert first.status_code == 200
        second = await stack.post("/v1/batch", {"writeKey": stack.project.write_key, "batch": [event] * 5})
        assert second.status_code == 429
        assert second.json()["reason"] == "rate_limited"
        assert int(second.headers["retry-after"]) >= 1


async def test_broker_down_answers_503_within_a_second(names, tmp_path, infra) -> None:  # type: ignore[no-untyped-def]
    from werkstroom.embedded import EmbeddedKafka

    broker = EmbeddedKafka().start()  # a broker of this test's own, to take away
    try:
        async with Stack(
            broker.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, sink=False
        ) as stack:
            body = {"writeKey": stack.project.write_key, "anonymousId": "d", "event": "E"}
            assert (await stack.post("/v1/track", body)).status_code == 200
            broker.kill()
            for _ in range(2):
                started = time.monotonic()
                response = await stack.post("/v1/track", body)
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "1"
                assert response.json()["reason"] == "kafka_unavailable"
                # The produce timeout is 0.8 s: well before the client's own timeout, with
                # room for a loaded CI machine (not a latency figure).
                assert elapsed < 3.0
    finally:
        broker.stop()


async def test_many_concurrent_beacons_all_land_once(infra, names, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # About landing once, not latency: a produce deadline of 5 s (not 800 ms) keeps a loaded
    # CI machine from turning a slow ack into a 503 (test_broker_down_... covers that path).
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, produce_timeout_ms=5000
    ) as stack:
        key = stack.project.write_key

        async def send(i: int) -> int:
            body = {"writeKey": key, "anonymousId": f"v{i % 17}", "event": "Tick", "messageId": f"c-{i}"}
            return (await stack.post("/v1/track", body)).status_code

        statuses = await asyncio.gather(*(send(i) for i in range(300)))
        assert statuses == [200] * 300
        assert await stack.wait_count(300) == 300
        assert stack.scalar("SELECT uniqExact(event_id) FROM events") == 300
        # One visitor's events all sit in one partition (the key is project:anonymous_id).
        spread = stack.rows(
            "SELECT anonymous_id, uniqExact(kafka_partition) FROM events GROUP BY anonymous_id"
        )
        assert len(spread) == 17 and all(n == 1 for _, n in spread)


async def test_messages_on_the_topic_match_the_published_schema(stack: Stack) -> None:
    import jsonschema

    from werkstroom.contract import json_schema

    await stack.post(
        "/v1/page",
        {
            "writeKey": stack.project.write_key,
            "anonymousId": "s",
            "name": "Home",
            "properties": {"path": "/"},
        },
    )
    (message,) = await stack.read_topic(stack.topics.events, 1)
    value = orjson.loads(message.value)
    jsonschema.validate(value, json_schema())
    assert message.key == f"{stack.project.project_id}:s".encode()
    assert orjson.loads(bytes(decode_event(message.value).properties)) == {"path": "/", "name": "Home"}
