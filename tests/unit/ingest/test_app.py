"""The ingest request handler against hostile input, with Kafka and the key cache faked:
every item is judged alone, nothing answers 5xx, and the client limit sees the right address
through both ways in (the raw-ASGI fast path and the FastAPI routes)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from services.ingest.app import (
    BeaconFastPath,
    Ingestor,
    IngestState,
    _message_id,
    _read_body,
    create_app,
    rate_limiters,
)
from werkstroom.contract import MAX_DEPTH, Topics, decode_event
from werkstroom.geo import Locator
from werkstroom.settings import DEFAULT_GEO_DATABASE, Settings

KEY = "wk_test"


class FakePublisher:
    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes, bytes]]] = {}

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        self.sent.setdefault(topic, []).extend(messages)

    async def until_open(self) -> None:
        return None

    async def within(self, work: Awaitable[None], timeout: float) -> None:
        await asyncio.wait_for(work, timeout)


class FakeKeys:
    def get(self, write_key: str) -> str | None:
        return "p_1" if write_key == KEY else None


def make(
    clock: Callable[[], float] | None = None, **overrides: Any
) -> tuple[Ingestor, FakePublisher, Settings]:
    settings = Settings(**overrides)
    publisher = FakePublisher()
    limiter, client_limiter = rate_limiters(settings, clock)
    state = IngestState(
        settings=settings,
        topics=Topics.from_settings(settings),
        producer=None,  # type: ignore[arg-type]
        publisher=publisher,  # type: ignore[arg-type]
        keys=FakeKeys(),  # type: ignore[arg-type]
        limiter=limiter,
        client_limiter=client_limiter,
    )
    return Ingestor(state), publisher, settings


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class Deep:
    """`levels` nested arrays, written as text: orjson parses 1,024 levels but writes 254."""

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def fragment(self) -> orjson.Fragment:
        return orjson.Fragment(b"[" * self.levels + b"1" + b"]" * self.levels)


def deep(levels: int) -> Any:
    return Deep(levels)


def encode(value: Any) -> bytes:
    return orjson.dumps(value, default=lambda v: v.fragment())


def good(n: int) -> dict[str, Any]:
    return {"type": "track", "anonymousId": f"a{n}", "event": "Good", "messageId": f"good-{n}"}


HOSTILE: list[tuple[str, Any, str | None]] = [
    # name, item, the reason it is rejected with (None: accepted, its time set to the arrival)
    ("future-2150", {**good(0), "timestamp": "2150-01-01T00:00:00Z", "sentAt": "NOW"}, None),
    (
        "overflow-future",
        {**good(0), "timestamp": "9999-12-31T23:59:59Z", "sentAt": "2000-01-01T00:00:00Z"},
        None,
    ),
    (
        "overflow-past",
        {**good(0), "timestamp": "0001-01-01T00:00:00Z", "sentAt": "2200-01-01T00:00:00Z"},
        "invalid_time",
    ),
    ("sent-at-9999", {**good(0), "sentAt": "9999-12-31T23:59:59Z"}, "invalid_time"),
    ("offset-overflow", {**good(0), "timestamp": "0001-01-01T00:00:00+05:00"}, "invalid_time"),
    ("depth-65", {**good(0), "properties": {"v": deep(MAX_DEPTH - 1)}}, "too_deep"),
    ("depth-64", {**good(0), "properties": {"v": deep(MAX_DEPTH - 2)}}, None),
    ("depth-300", {**good(0), "properties": deep(300)}, "too_deep"),  # orjson cannot write it back
    ("depth-1000", {**good(0), "context": {"x": deep(997)}}, "too_deep"),  # body: 1,001 levels
    ("deep-message-id", {**good(0), "messageId": deep(500)}, "too_deep"),
    ("huge-message-id", {**good(0), "messageId": "m" * 20_000}, "invalid_field"),
    ("too-large", {**good(0), "properties": {"blob": "x" * 40_000}}, "too_large"),
    ("not-an-object", deep(900), "not_an_object"),
    ("type-object", {**good(0), "type": {"a": [1]}}, "invalid_field"),
    ("bad-url", {**good(0), "context": {"page": {"url": "http://[::1"}}}, None),
    ("nul", {**good(0), "event": "a\x00b", "properties": {"\x00": "\x00"}}, None),
    ("big-numbers", {**good(0), "properties": {"u": 2**64 - 1, "i": -(2**63), "f": 1.7e308}}, None),
]


def fill(item: Any, now: datetime) -> Any:
    if isinstance(item, dict) and item.get("sentAt") == "NOW":
        return {**item, "sentAt": iso(now)}
    return item


async def test_each_hostile_item_is_rejected_alone_and_its_neighbours_kept() -> None:
    ingestor, publisher, _ = make()
    now = datetime.now(UTC)
    items = []
    for i, (_name, item, _reason) in enumerate(HOSTILE):
        items += [good(2 * i + 100), fill(item, now)]
    body = encode({"writeKey": KEY, "batch": items})
    assert body.count(b"[" * 997)  # as deep as orjson parses
    answer = await ingestor.handle(None, {"user-agent": "Mozilla/5.0"}, body, "203.0.113.9")
    assert answer.status == 200, answer.body
    expected = [(2 * i + 1, reason) for i, (_n, _item, reason) in enumerate(HOSTILE) if reason]
    assert [(e["index"], e["reason"]) for e in answer.body["errors"]] == expected
    assert all(e["message"] for e in answer.body["errors"])
    assert answer.body["accepted"] == len(items) - len(expected)
    orjson.dumps(answer.body)  # the answer itself always writes (no echoed deep messageId)

    events = [decode_event(value) for _key, value in publisher.sent["werkstroom.events.v1"]]
    assert len(events) == answer.body["accepted"]
    for event in events:
        assert event.timestamp <= datetime.now(UTC) + timedelta(seconds=60)
    dead = [orjson.loads(value) for _key, value in publisher.sent["werkstroom.events.dlq.v1"]]
    assert [d["reason"] for d in dead] == [reason for _index, reason in expected]
    for record in dead:
        assert record["source"] == "ingest" and record["raw"]
        assert "203.0.113.9" not in str(record)  # the client address is never kept
        if record["reason"] != "too_large":
            orjson.loads(record["raw"])  # too deep to write back: kept, cut to MAX_DEPTH levels
    assert max(len(v) for _k, v in publisher.sent["werkstroom.events.dlq.v1"]) < 40_000


@pytest.mark.parametrize(
    ("name", "item", "reason"),
    [h for h in HOSTILE if h[2] and h[2] != "too_large"],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_a_hostile_single_call_answers_400_with_reason_and_field(
    name: str, item: Any, reason: str
) -> None:
    ingestor, publisher, _ = make()
    if not isinstance(item, dict) or name == "type-object":
        return  # a body that is not an object is refused whole; /v1/track sets the type itself
    body = encode({"writeKey": KEY, **fill(item, datetime.now(UTC))})
    answer = await ingestor.handle("track", {}, body)
    assert (answer.status, answer.body["reason"]) == (400, reason), answer.body
    assert answer.body["success"] is False and "field" in answer.body
    assert len(publisher.sent["werkstroom.events.dlq.v1"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"writeKey":"wk_test","anonymousId":"a","event":"E","properties":{"v":NaN}}',
        b'{"writeKey":"wk_test","anonymousId":"a","event":"E","properties":{"v":-Infinity}}',
        b'{"writeKey":"wk_test","anonymousId":"a","event":"E","properties":{"v":1e400}}',
        b'{"writeKey":"wk_test","anonymousId":"a","event":"\\ud800"}',
        b'{"writeKey":"wk_test","anonymousId":"a","event":"\xff\xfe"}',
        b'{"writeKey":"wk_test","anonymousId":"a","event":"E","context":' + b"[" * 1030 + b"]" * 1030 + b"}",
        b"",
        b"\x1f\x8b",
    ],
    ids=["nan", "infinity", "1e400", "lone-surrogate", "invalid-utf8", "depth-1030", "empty", "gzip-magic"],
)
async def test_bodies_that_are_not_json_answer_400(body: bytes) -> None:
    ingestor, _publisher, _ = make()
    answer = await ingestor.handle("track", {}, body)
    assert (answer.status, answer.body["reason"]) == (400, "invalid_json")


async def test_odd_headers_and_write_keys_never_answer_5xx() -> None:
    ingestor, _publisher, _ = make()
    call = orjson.dumps({"anonymousId": "a", "event": "E"})
    for authorization in (
        "Basic é€",
        "Basic " + base64.b64encode("wk_é:".encode()).decode(),
        "Basic",
        "x" * 9000,
    ):
        answer = await ingestor.handle("track", {"authorization": authorization}, call)
        assert answer.status == 401, (authorization, answer.body)
    for key in (["wk_test"], {"k": 1}, 7, "w" * 20_000):
        answer = await ingestor.handle(
            "track", {}, orjson.dumps({"writeKey": key, "anonymousId": "a", "event": "E"})
        )
        assert answer.status == 401
    answer = await ingestor.handle("track", {"content-encoding": "gzip"}, b"not gzip")
    assert (answer.status, answer.body["reason"]) == (400, "invalid_encoding")
    batch = {"writeKey": KEY, "sentAt": "9999-12-31T23:59:59Z", "batch": [good(1)]}
    answer = await ingestor.handle(None, {}, orjson.dumps(batch))
    assert (answer.status, answer.body["reason"], answer.body["field"]) == (400, "invalid_time", "sentAt")


async def test_declared_lengths_that_are_not_numbers_are_ignored() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    assert await _read_body(receive, "²", 100) == b"{}"  # "²".isdigit() is True; int("²") raises
    assert await _read_body(receive, "9" * 5000, 100) is None  # int() of 5,000 digits raises
    assert await _read_body(receive, "101", 100) is None
    assert await _read_body(receive, "-1", 100) == b"{}"


def test_echoed_message_ids_are_scalars_only() -> None:
    assert _message_id({"messageId": "m" * 500}) == "m" * 100
    assert _message_id({"messageId": 7}) == 7 and _message_id({"messageId": 1.5}) == 1.5
    assert _message_id({"messageId": [[1]]}) is None and _message_id({"messageId": 10**30}) is None
    assert _message_id("not an object") is None


async def test_an_unexpected_error_costs_its_item_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.ingest.segment import Normalizer

    real = Normalizer.normalize

    def flaky(self: Normalizer, item: Any, raw: bytes | None) -> Any:
        if item.get("event") == "Boom":
            raise RuntimeError("a bug of ours")
        return real(self, item, raw)

    monkeypatch.setattr(Normalizer, "normalize", flaky)
    ingestor, publisher, _ = make()
    boom = {**good(2), "event": "Boom"}
    answer = await ingestor.handle(
        None, {}, orjson.dumps({"writeKey": KEY, "batch": [good(1), boom, good(3)]})
    )
    assert answer.status == 200 and answer.body["accepted"] == 2
    assert [(e["index"], e["reason"]) for e in answer.body["errors"]] == [(1, "unprocessable")]
    single = await ingestor.handle("track", {}, orjson.dumps({"writeKey": KEY, **boom}))
    assert (single.status, single.body["reason"]) == (400, "unprocessable")
    assert len(publisher.sent["werkstroom.events.dlq.v1"]) == 2


# -- the per-client limit ----------------------------------------------------------------------


def batch_of(n: int) -> bytes:
    return orjson.dumps({"writeKey": KEY, "batch": [good(i) for i in range(n)]})


async def test_one_client_gets_its_share_and_no_more() -> None:
    now = [0.0]
    ingestor, _publisher, _ = make(lambda: now[0], rate_limit_eps=100, rate_limit_burst=100)
    assert (await ingestor.handle(None, {}, batch_of(20), "198.51.100.1")).status == 200
    refused = await ingestor.handle(None, {}, batch_of(5), "198.51.100.1")
    assert (refused.status, refused.body["reason"]) == (429, "client_rate_limited")
    assert dict(refused.headers)["Retry-After"] == "1"  # 5 events at 20/s: 0.25 s, rounded up
    # Others still get the rest of the project's budget: the refusal cost the project nothing.
    for i in range(4):
        answer = await ingestor.handle(None, {}, batch_of(20), f"198.51.100.{10 + i}")
        assert answer.status == 200, (i, answer.body)
    spent = await ingestor.handle(None, {}, batch_of(20), "198.51.100.99")
    assert (spent.status, spent.body["reason"]) == (429, "rate_limited")
    # The same IPv6 /64 is one client, whatever the rest of the address.
    now[0] += 10
    assert (await ingestor.handle(None, {}, batch_of(20), "2001:db8:0:1::1")).status == 200
    again = await ingestor.handle(None, {}, batch_of(1), "2001:db8:0:1:ffff::2")
    assert again.body["reason"] == "client_rate_limited"
    assert (await ingestor.handle(None, {}, batch_of(1), "2001:db8:0:2::1")).status == 200
    now[0] += 1  # 20 events/s refill
    assert (await ingestor.handle(None, {}, batch_of(20), "198.51.100.1")).status == 200


async def test_forwarded_for_is_used_only_when_trusted() -> None:
    now = [0.0]
    for trusted in (False, True):
        ingestor, _publisher, _ = make(
            lambda: now[0], rate_limit_eps=100, rate_limit_burst=100, trust_forwarded_for=trusted
        )
        statuses = []
        for i in range(3):  # three visitors behind one proxy, each claiming to be someone else
            headers = {"x-forwarded-for": f"10.9.9.9, 203.0.113.{i}"}
            statuses.append((await ingestor.handle(None, headers, batch_of(20), "10.0.0.1")).status)
        assert statuses == ([200, 200, 200] if trusted else [200, 429, 429])


async def test_the_limits_are_off_when_the_rate_is_zero() -> None:
    ingestor, _publisher, _ = make(rate_limit_eps=0)
    for _ in range(30):
        assert (await ingestor.handle(None, {}, batch_of(100), "198.51.100.1")).status == 200


@pytest.mark.parametrize("fast_path", [True, False], ids=["beacon-fast-path", "fastapi-route"])
async def test_both_ways_in_pass_the_client_address(fast_path: bool) -> None:
    settings = Settings(rate_limit_eps=100, rate_limit_burst=100, trust_forwarded_for=True)
    app = create_app(settings, bootstrap="unused:9092", clickhouse=lambda: None)  # type: ignore[arg-type,return-value]
    ingestor, _publisher, _ = make(
        lambda: 0.0, rate_limit_eps=100, rate_limit_burst=100, trust_forwarded_for=True
    )
    app.app.state.ingest = ingestor
    target = app if fast_path else app.app
    assert isinstance(app, BeaconFastPath)

    async def post(client: tuple[str, int], body: bytes, **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=target, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
            return await http.post("/v1/batch", content=body, headers=headers)

    assert (await post(("198.51.100.1", 1), batch_of(20))).status_code == 200
    refused = await post(("198.51.100.1", 2), batch_of(1))
    assert (refused.status_code, refused.json()["reason"]) == (429, "client_rate_limited")
    assert refused.headers["retry-after"] == "1"
    assert (await post(("198.51.100.2", 1), batch_of(20))).status_code == 200
    # Trusted proxy: the right-most X-Forwarded-For entry is the client, repeated headers too.
    proxied = await post(("10.0.0.1", 1), batch_of(20), **{"X-Forwarded-For": "198.51.100.1, 203.0.113.5"})
    assert proxied.status_code == 200
    again = await post(("10.0.0.1", 1), batch_of(1), **{"X-Forwarded-For": "203.0.113.5"})
    assert again.json()["reason"] == "client_rate_limited"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"type":"track","anonymousId":"n","event":"E","properties":{"v":NaN}}', "invalid_json"),
        (b'{"type":"track","anonymousId":"n","event":"\xff\xfe"}', "invalid_json"),
        (b'{"type":"track","anonymousId":"n","event":"\\ud800"}', "invalid_json"),
        (b'{"type":"track","anonymousId":"n","properties":' + b"[" * 1100 + b"]" * 1100 + b"}", "too_deep"),
        (b'{"type":"track","anonymousId":"n","properties":' + b"[" * 300 + b"]" * 300 + b"}", "too_deep"),
    ],
    ids=["nan", "invalid-utf8", "lone-surrogate", "depth-1100", "depth-300"],
)
async def test_a_batch_that_is_not_json_as_a_whole_loses_only_its_bad_item(bad: bytes, reason: str) -> None:
    """orjson refuses the whole body for one bad value; the batch is cut into its items
    (services.ingest.salvage) and each is judged alone."""
    ingestor, publisher, settings = make()
    body = b'{"writeKey":"%s","batch":[%s,%s,%s,NaN]}' % (
        KEY.encode(),
        encode(good(1)),
        bad,
        encode(good(2)),
    )
    answer = await ingestor.handle(None, {}, body)
    assert answer.status == 200, answer.body
    assert answer.body["accepted"] == 2
    assert [(e["index"], e["reason"]) for e in answer.body["errors"]] == [(1, reason), (3, "invalid_json")]
    events = [decode_event(value) for _key, value in publisher.sent[settings.topic_events]]
    assert [e.event_id for e in events] == ["good-1", "good-2"]
    assert len(publisher.sent[settings.topic_dlq]) == 2


async def test_a_body_whose_shape_cannot_be_made_out_is_still_400() -> None:
    ingestor, publisher, _settings = make()
    answer = await ingestor.handle(None, {}, b'{"writeKey":"%s","batch":[NaN' % KEY.encode())
    assert (answer.status, answer.body["reason"]) == (400, "invalid_json")
    assert publisher.sent == {}


@pytest.mark.parametrize("fast_path", [True, False], ids=["beacon-fast-path", "fastapi-route"])
async def test_screen_and_group_have_endpoints_of_their_own(fast_path: bool) -> None:
    app = create_app(Settings(), bootstrap="unused:9092", clickhouse=lambda: None)  # type: ignore[arg-type,return-value]
    ingestor, publisher, _ = make()
    app.app.state.ingest = ingestor
    transport = httpx.ASGITransport(app=app if fast_path else app.app)
    calls = {
        "/v1/screen": {"writeKey": KEY, "anonymousId": "a", "name": "Home"},
        "/v1/group": {"writeKey": KEY, "userId": "u", "groupId": "acme", "traits": {"name": "Acme"}},
    }
    browser = {"user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"}  # not a bot
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest", headers=browser) as http:
        for path, call in calls.items():
            assert (await http.post(path, json=call)).status_code == 200, path
        refused = await http.post("/v1/group", json={"writeKey": KEY, "userId": "u"})
    assert (refused.status_code, refused.json()["reason"]) == (400, "missing_field")
    events = [decode_event(value) for _key, value in publisher.sent["werkstroom.events.v1"]]
    assert [(e.type, e.event) for e in events] == [("screen", "$screen"), ("group", "$group")]


def two_public_addresses(geo: Locator) -> tuple[tuple[str, str], tuple[str, str]]:
    """(address, country) of two IPv4 networks of different countries, read from the database."""
    assert geo.reader is not None
    found: dict[str, str] = {}
    for network, record in geo.reader:
        country = record.get("country_code") if isinstance(record, dict) else None
        if network.version == 4 and network.is_global and country and country not in found:
            found[country] = str(network.network_address + network.num_addresses // 2)
            if len(found) == 2:
                break
    (first, first_address), (second, second_address) = found.items()
    return (first_address, first), (second_address, second)


@pytest.mark.parametrize("trust", [False, True], ids=["forwarded-ignored", "forwarded-trusted"])
async def test_events_get_the_client_addresss_country_and_no_message_the_address(trust: bool) -> None:
    if not DEFAULT_GEO_DATABASE.is_file():
        pytest.skip(f"the country database is not installed ({DEFAULT_GEO_DATABASE}): run `make geo`")
    geo = Locator.open(DEFAULT_GEO_DATABASE)
    (peer, peer_country), (forwarded, forwarded_country) = two_public_addresses(geo)
    ingestor, publisher, settings = make(trust_forwarded_for=trust)
    ingestor.s.geo = geo
    curl = {"userAgent": "curl/8.5.0"}  # a bot: to the bots topic, enriched the same way
    body = orjson.dumps(
        {
            "writeKey": KEY,
            "batch": [good(1), {**good(2), "context": curl}, {"type": "track", "anonymousId": "a"}],
        }
    )
    # The right-most entry is the proxy's; the one left of it is the client's own claim.
    headers = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64)", "x-forwarded-for": f"192.0.2.7, {forwarded}"}
    answer = await ingestor.handle(None, headers, body, peer)
    await asyncio.gather(*ingestor.s.bot_sends)
    assert (answer.body["accepted"], answer.body["bots"], answer.body["rejected"]) == (1, 1, 1)
    expected = forwarded_country if trust else peer_country
    for topic in (settings.topic_events, settings.topic_bots):
        ((_key, value),) = publisher.sent[topic]
        assert (decode_event(value).country, decode_event(value).region) == (expected, "")
    sent = b"".join(k + v for messages in publisher.sent.values() for k, v in messages)
    assert len(publisher.sent[settings.topic_dlq]) == 1
    for address in (peer, forwarded, "192.0.2.7"):
        assert address.encode() not in sent
    geo.close()
