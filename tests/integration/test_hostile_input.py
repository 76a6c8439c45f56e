"""What a stranger holding the (public) write key can POST, through the real path: ingest over
HTTP -> Kafka -> aggregator -> ClickHouse -> API.

Each hostile item is sent alone (a single call) and mixed into a batch between two good page
views, on a project of its own. Then: the answer and its per-item errors are as documented, the
API counts exactly the good events, a visitor sent afterwards shows online (the pipeline still
writes), and /health and /ready stay green.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from tests.conftest import Infra
from tests.integration.stack import Stack, own_names
from werkstroom import projects
from werkstroom.contract import MAX_DEPTH

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ACCEPTED = "accepted"
EITHER = "either"  # accepted or rejected alone: what matters is no 5xx and nothing else lost


@dataclass(frozen=True)
class Case:
    name: str
    # The hostile item: a dict (JSON-encoded), or the raw bytes of a value orjson refuses.
    item: Callable[[datetime], dict[str, Any] | list[Any] | bytes]
    outcome: str  # ACCEPTED, EITHER, or the rejection reasons allowed (comma-separated)
    alone_status: int | None = None  # when sent alone and rejected; default 400
    alone: str | None = None  # the outcome sent alone (to /v1/track), when not `outcome`


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(**fields: Any) -> Callable[[datetime], dict[str, Any]]:
    """A track call with the given fields over a valid base; a value of `NOW` is the send time."""

    def build(now: datetime) -> dict[str, Any]:
        base: dict[str, Any] = {"type": "track", "anonymousId": "hostile", "event": "Hostile"}
        for key, value in fields.items():
            base[key] = iso(now) if value is NOW else value
        return base

    return build


def raw(text: bytes) -> Callable[[datetime], bytes]:
    return lambda _now: text


def nested(depth: int) -> Callable[[datetime], dict[str, Any]]:
    """A track call whose whole nesting is `depth` levels, the call itself counted as one."""

    def build(_now: datetime) -> dict[str, Any]:
        value: Any = {}
        for _ in range(depth - 2):
            value = {"v": value}
        return {"type": "track", "anonymousId": "deep", "event": "Deep", "properties": value}

    return build


def nested_raw(depth: int) -> Callable[[datetime], bytes]:
    """The same as text: orjson writes no more than 254 levels."""
    inner = b"[" * (depth - 2) + b"]" * (depth - 2)  # the call and its context are two levels
    return raw(b'{"type":"track","anonymousId":"deep","event":"Deep","context":{"x":' + inner + b"}}")


NOW = object()
FUTURE = "2150-01-01T00:00:00Z"
CASES = [
    # -- event times -----------------------------------------------------------------------
    Case("future-2150-with-sentAt", track(timestamp=FUTURE, sentAt=NOW), ACCEPTED),
    Case("future-2100-with-sentAt", track(timestamp="2100-01-01T00:00:00Z", sentAt=NOW), ACCEPTED),
    Case("future-2150-without-sentAt", track(timestamp=FUTURE), ACCEPTED),
    Case("future-9999-without-sentAt", track(timestamp="9999-12-31T23:59:59Z"), ACCEPTED),
    Case(
        "overflow-future",
        track(timestamp="9999-12-31T23:59:59Z", sentAt="2000-01-01T00:00:00Z"),
        ACCEPTED,
    ),
    Case(
        "overflow-past",
        track(timestamp="0001-01-01T00:00:00Z", sentAt="9999-12-31T23:59:59Z"),
        "invalid_time",
    ),
    Case("past-1970-with-sentAt", track(timestamp="1970-01-01T00:00:00Z", sentAt=NOW), "invalid_time"),
    Case("past-0001-without-sentAt", track(timestamp="0001-01-01T00:00:00Z"), "invalid_time"),
    Case("sentAt-9999", track(timestamp=NOW, sentAt="9999-12-31T23:59:59Z"), "invalid_time"),
    Case("timestamp-not-a-date", track(timestamp="yesterday"), "invalid_time"),
    Case("timestamp-a-number", track(timestamp=1732000000), "invalid_time"),
    Case("timestamp-offset-99h", track(timestamp="2026-01-01T00:00:00+99:00"), "invalid_time"),
    # -- numbers and text JSON cannot carry ------------------------------------------------
    Case(
        "nan", raw(b'{"type":"track","anonymousId":"n","event":"E","properties":{"v":NaN}}'), "invalid_json"
    ),
    Case(
        "infinity",
        raw(b'{"type":"track","anonymousId":"n","event":"E","properties":{"v":-Infinity}}'),
        "invalid_json",
    ),
    Case(
        "1e400",
        raw(b'{"type":"track","anonymousId":"n","event":"E","properties":{"v":1e400}}'),
        "invalid_json",
    ),
    Case(
        "huge-integer",
        raw(
            b'{"type":"track","anonymousId":"n","event":"E","properties":{"v":1000000000000000000000000000000}}'
        ),
        ACCEPTED,
    ),
    Case("lone-surrogate", raw(b'{"type":"track","anonymousId":"n","event":"\\ud800"}'), "invalid_json"),
    Case("invalid-utf8", raw(b'{"type":"track","anonymousId":"n","event":"\xff\xfe"}'), "invalid_json"),
    Case("nul-and-controls", track(event="a\x00b\x1f", properties={"\x00": "\x00"}), ACCEPTED),
    # -- nesting, around every limit -------------------------------------------------------
    Case("depth-at-limit", nested(MAX_DEPTH), ACCEPTED),
    Case("depth-over-limit", nested(MAX_DEPTH + 1), "too_deep"),
    Case("depth-254", nested_raw(254), "too_deep"),
    Case("depth-255", nested_raw(255), "too_deep"),
    Case("depth-1023", nested_raw(1023), "too_deep,invalid_json"),
    Case("depth-1024", nested_raw(1024), "too_deep,invalid_json"),
    Case("depth-1025", nested_raw(1025), "too_deep,invalid_json"),
    Case("depth-5000", nested_raw(5000), "too_deep,invalid_json"),
    # -- sizes -----------------------------------------------------------------------------
    Case("huge-property", track(properties={"blob": "x" * 40_000}), "too_large", alone_status=413),
    Case("huge-anonymous-id", track(anonymousId="a" * 10_000), "invalid_field"),
    Case("huge-event-name", track(event="e" * 10_000), "invalid_field"),
    Case("many-properties", track(properties={f"k{i}": i for i in range(2000)}), ACCEPTED),
    # -- shapes ----------------------------------------------------------------------------
    Case("not-an-object", lambda _now: ["a", 1], "not_an_object"),
    # /v1/track makes any call a track call; in a batch, the item's own type counts.
    Case("unknown-type", track(type="bogus"), "invalid_field", alone=ACCEPTED),
]

WRONG_VALUES: list[Any] = [None, 0, -1.5, True, "", "x", [], [1], {}, {"a": 1}]
FIELDS = [
    "type",
    "anonymousId",
    "userId",
    "event",
    "messageId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "previousId",
    "groupId",
    "properties",
    "traits",
    "context",
    "sessionId",
]
CONTEXT_FIELDS = ["page", "userAgent", "library", "traits", "sessionId", "ip", "os"]
PAGE_FIELDS = ["url", "path", "title", "referrer"]


def wrong_types() -> list[dict[str, Any]]:
    """Every field of a call, and of its context and page, set to every JSON type. Each call
    has a messageId of its own (a string one made unique per call type), so each counts."""
    calls: list[dict[str, Any]] = []
    for kind in ("track", "page", "screen", "identify", "group", "alias"):
        base = {
            "type": kind,
            "anonymousId": "w",
            "userId": "u",
            "previousId": "p",
            "event": "E",
            "groupId": "g",
        }
        variants: list[dict[str, Any]] = []
        for name in FIELDS:
            for value in WRONG_VALUES:
                if name == "messageId" and isinstance(value, str) and value:
                    value = f"{value}-{kind}"
                variants.append({name: value})
        for name in CONTEXT_FIELDS:
            variants += [{"context": {name: value}} for value in WRONG_VALUES]
        for name in PAGE_FIELDS:
            variants += [{"properties": {name: value}} for value in WRONG_VALUES]
            variants += [{"context": {"page": {name: value}}} for value in WRONG_VALUES]
        for variant in variants:
            calls.append({**base, "messageId": f"w-{len(calls)}", **variant})
    return calls


@dataclass
class World:
    stack: Stack
    api: httpx.AsyncClient

    async def project(self) -> projects.NewProject:
        return await self.stack.create_project(f"hostile {uuid.uuid4().hex[:6]}")

    async def today(self, site: projects.NewProject) -> dict[str, Any]:
        response = await self.api.get(
            f"/api/projects/{site.project_id}/activity",
            params={"days": 1},
            headers={"Authorization": f"Bearer {site.read_key}"},
        )
        assert response.status_code == 200, response.text
        day: dict[str, Any] = response.json()["days"][-1]
        return day

    async def settles_at(self, site: projects.NewProject, page_views: int, events: int) -> None:
        async def check() -> bool:
            day = await self.today(site)
            return bool(day["page_views"] == page_views and day["events"] == events)

        await self.stack.until(check, timeout=45)
        await asyncio.sleep(0.5)  # and nothing more arrives
        day = await self.today(site)
        assert (day["page_views"], day["events"]) == (page_views, events)

    async def still_writing(self, site: projects.NewProject) -> None:
        """A visitor sent now shows online: the pipeline did not stop."""
        anon = f"after-{uuid.uuid4().hex[:8]}"
        response = await self.stack.post(
            "/v1/page", {"writeKey": site.write_key, "anonymousId": anon, "properties": {"path": "/after"}}
        )
        assert response.status_code == 200, response.text

        async def online() -> bool:
            answer = await self.api.get(
                f"/api/projects/{site.project_id}/online",
                headers={"Authorization": f"Bearer {site.read_key}"},
            )
            assert answer.status_code == 200, answer.text
            return any(u["anonymous_id"] == anon for u in answer.json()["users"])

        await self.stack.until(online, timeout=30)
        for url in (self.stack.ingest_url, str(self.api.base_url)):
            for probe in ("/health", "/ready"):
                answer = await self.stack.http.get(f"{url.rstrip('/')}{probe}")
                assert answer.status_code == 200, (url, probe, answer.text)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    names = own_names()
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path_factory.mktemp("hostile"),
        rate_limit_eps=0,  # this test sends a lot from one address; the limits have tests of their own
    ) as stack:
        url = await stack.start_api()
        async with httpx.AsyncClient(base_url=url, timeout=20) as api:
            yield World(stack, api)


def good_page(anon: str, now: datetime) -> dict[str, Any]:
    return {
        "type": "page",
        "anonymousId": anon,
        "messageId": f"good-{uuid.uuid4().hex}",
        "properties": {"path": f"/{anon}"},
        "timestamp": iso(now),
    }


def encode_item(item: dict[str, Any] | list[Any] | bytes) -> bytes:
    return item if isinstance(item, bytes) else orjson.dumps(item)


def alone_body(item: dict[str, Any] | list[Any] | bytes, write_key: str) -> bytes:
    """The item as a single call, with the write key added to it (when it is an object)."""
    text = encode_item(item)
    if text.startswith(b"{"):
        return b'{"writeKey":' + orjson.dumps(write_key) + b"," + text[1:]
    return text


def expect(case: Case, answer: dict[str, Any], status: int, single: bool) -> int:
    """Check one answer against the case; returns how many hostile events were accepted."""
    assert status < 500, (case.name, status, answer)
    outcome = (case.alone or case.outcome) if single else case.outcome
    if outcome == ACCEPTED:
        assert status == 200, (case.name, status, answer)
        assert answer["errors"] == [], (case.name, answer)
        return 1
    if single:
        if outcome == EITHER:
            assert status in (200, 400, 413), (case.name, status, answer)
            return 1 if status == 200 else 0
        assert status == (case.alone_status or 400), (case.name, status, answer)
        assert answer["reason"] in outcome.split(","), (case.name, answer)
        return 0
    assert status == 200, (case.name, status, answer)
    errors = answer["errors"]
    if outcome == EITHER:
        return 1 - len(errors)
    assert [e["index"] for e in errors] == [1], (case.name, answer)
    assert errors[0]["reason"] in outcome.split(","), (case.name, answer)
    assert errors[0]["message"], answer
    return 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_hostile_item_alone_and_in_a_batch(world: World, case: Case) -> None:
    site = await world.project()
    now = datetime.now(UTC)
    item = case.item(now)

    single = await world.stack.post("/v1/track", alone_body(item, site.write_key))
    accepted_alone = expect(case, single.json(), single.status_code, single=True)

    batch = (
        b'{"writeKey":'
        + orjson.dumps(site.write_key)
        + b',"batch":['
        + b",".join(
            [
                orjson.dumps(good_page("good-a", now)),
                encode_item(item),
                orjson.dumps(good_page("good-b", now)),
            ]
        )
        + b"]}"
    )
    mixed = await world.stack.post("/v1/batch", batch)
    answer = mixed.json()
    accepted_mixed = expect(case, answer, mixed.status_code, single=False)
    assert answer["accepted"] == 2 + accepted_mixed, answer

    # Hostile items are track calls, so the page views are exactly the two good ones.
    await world.settles_at(site, page_views=2, events=2 + accepted_alone + accepted_mixed)
    if accepted_alone or accepted_mixed:
        # Whatever time it claimed, an accepted event is never dated past the arrival.
        newest = world.stack.scalar(
            "SELECT max(timestamp) FROM events WHERE project_id = {p:String}", p=site.project_id
        )
        assert newest.replace(tzinfo=UTC) <= datetime.now(UTC) + timedelta(minutes=1)
    await world.still_writing(site)


async def test_every_field_of_every_type_with_every_json_type(world: World) -> None:
    site = await world.project()
    now = datetime.now(UTC)
    calls = wrong_types()
    accepted = rejected = 0
    for start in range(0, len(calls), 500):
        part = calls[start : start + 500]
        batch = [good_page("good", now), *part]
        response = await world.stack.post("/v1/batch", {"writeKey": site.write_key, "batch": batch})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert all(e["index"] > 0 and e["reason"] and e["message"] for e in answer["errors"]), answer
        accepted += answer["accepted"] - 1
        rejected += answer["rejected"]
    assert accepted + rejected == len(calls)
    assert accepted > 0 and rejected > 0
    stored = await world.stack.wait_count(
        accepted + len(range(0, len(calls), 500)),
        "SELECT count() FROM events FINAL WHERE project_id = {p:String}",
        p=site.project_id,
    )
    assert stored == accepted + len(range(0, len(calls), 500))
    await world.still_writing(site)


async def test_ten_thousand_distinct_event_names(world: World) -> None:
    site = await world.project()
    now = datetime.now(UTC)
    names = [f"event {i} {uuid.uuid4().hex}" for i in range(10_000)]
    for start in range(0, len(names), 2500):
        batch = [
            {"type": "track", "anonymousId": f"n{i % 50}", "event": name, "timestamp": iso(now)}
            for i, name in enumerate(names[start : start + 2500], start)
        ]
        response = await world.stack.post("/v1/batch", {"writeKey": site.write_key, "batch": batch})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 2500
    response = await world.stack.post(
        "/v1/batch",
        {"writeKey": site.write_key, "batch": [good_page("good-a", now), good_page("good-b", now)]},
    )
    assert response.status_code == 200
    await world.settles_at(site, page_views=2, events=10_002)
    headers = {"Authorization": f"Bearer {site.read_key}"}
    for rest in ("metrics", "users", "funnels", "online"):
        answer = await world.api.get(f"/api/projects/{site.project_id}/{rest}", headers=headers)
        assert answer.status_code == 200, (rest, answer.text)
    await world.still_writing(site)


async def test_one_batch_over_many_months_of_the_past(world: World) -> None:
    """Valid, old event times, each in a month of its own: more monthly partitions than one
    ClickHouse insert takes by default, in events, sessions and sessions_daily alike."""
    site = await world.project()
    now = datetime.now(UTC)
    batch = [
        {
            "type": "page",
            "anonymousId": f"old-{m}",
            "properties": {"path": "/old"},
            "timestamp": f"{2005 + m // 12}-{m % 12 + 1:02d}-10T10:00:00Z",
        }
        for m in range(150)
    ]
    response = await world.stack.post("/v1/batch", {"writeKey": site.write_key, "batch": batch})
    assert response.status_code == 200 and response.json()["accepted"] == 150, response.text
    response = await world.stack.post("/v1/page", {"writeKey": site.write_key, **good_page("today", now)})
    assert response.status_code == 200
    await world.settles_at(site, page_views=1, events=1)
    sessions = "SELECT count() FROM sessions_daily FINAL WHERE project_id = {p:String} AND is_deleted = 0"
    assert await world.stack.wait_count(151, sessions, p=site.project_id) == 151
    await world.still_writing(site)
