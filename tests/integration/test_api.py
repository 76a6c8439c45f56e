"""The dashboard API over the real pipeline: events go through ingest HTTP -> Kafka -> the
aggregator -> ClickHouse, and the API (real HTTP, its clock fixed at NOW) answers from the
aggregator's tables. Every expected value below is worked out by hand from the fixture.

The fixture, relative to NOW (d = days, m = minutes):

    person       events                                              then
    alice        page / -20m, identify alice (premium) -15m,         online, stuck (on /pricing 10 m)
                 page /pricing -10m, heartbeat -2m
    bob-anon     page /docs -3m, page /blog -1m (mobile)             online
    carol-anon   page / -7m                                          not online (7 m ago)
    dave         page / -10d, page /features -9d                     churned this week
    erin         page / -10d, page /docs -2d                         retained
    frank        page / -40d, identify frank (trial) -40d+1m         segment churned (> 30 d)
    gina         page -16d, page -8d                                 churned this week
    hank         page -18d                                           churned the week before
    ivan         page -7d-10m, page -7d-2m                           was online a week ago; churned

metrics: total 9 (a week ago 6: dave erin frank gina hank ivan) -> +50.0 %; new this week 3
(alice bob carol) vs 3 (dave erin ivan) -> 0.0; online 2 vs 1 (ivan's session spans NOW-7d)
-> +100.0; churn: base [t-13, t-7] = dave erin gina ivan, of whom dave gina ivan have no day
in [t-6, t] -> 75.0; the week before: base [t-20, t-14] = gina hank, hank not back in
[t-13, t-7] -> 50.0; trend (75 - 50) / 50 = +50.0.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import pytest_asyncio

from services.api.live import feed_key
from tests.conftest import Infra
from tests.integration.stack import BROWSER_UA, Stack, own_names
from werkstroom.demo import AGENTS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

M = timedelta(minutes=1)
D = timedelta(days=1)
MOBILE = AGENTS["mobile"]
TITLE = 'Pricing, "Pro" plans'
NOTE = 'likes, "quotes"\nand newlines'


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def page(anon: str, at: datetime, path: str, title: str = "", ua: str = BROWSER_UA) -> dict[str, Any]:
    return {
        "type": "page",
        "anonymousId": anon,
        "messageId": uuid.uuid4().hex,
        "timestamp": iso(at),
        "properties": {"path": path, "url": f"https://shop.example{path}", "title": title},
        "context": {"userAgent": ua},
    }


def track(anon: str, at: datetime, event: str, ua: str = BROWSER_UA) -> dict[str, Any]:
    return {
        "type": "track",
        "anonymousId": anon,
        "event": event,
        "messageId": uuid.uuid4().hex,
        "timestamp": iso(at),
        "context": {"userAgent": ua},
    }


def identify(anon: str, at: datetime, user_id: str, traits: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "identify",
        "anonymousId": anon,
        "userId": user_id,
        "traits": traits,
        "messageId": uuid.uuid4().hex,
        "timestamp": iso(at),
        "context": {"userAgent": BROWSER_UA},
    }


def scenario(now: datetime) -> list[dict[str, Any]]:
    return [
        page("alice-anon", now - 20 * M, "/", "Home"),
        identify(
            "alice-anon",
            now - 15 * M,
            "alice",
            {"plan": "premium", "email": "alice@example.com", "note": NOTE},
        ),
        page("alice-anon", now - 10 * M, "/pricing", TITLE),
        track("alice-anon", now - 2 * M, "$heartbeat"),
        page("bob-anon", now - 3 * M, "/docs", ua=MOBILE),
        page("bob-anon", now - 1 * M, "/blog", "Blog", ua=MOBILE),
        page("carol-anon", now - 7 * M, "/"),
        page("dave", now - 10 * D, "/"),
        page("dave", now - 9 * D, "/features"),
        page("erin", now - 10 * D, "/"),
        page("erin", now - 2 * D, "/docs"),
        page("frank-anon", now - 40 * D, "/"),
        identify("frank-anon", now - 40 * D + M, "frank", {"plan": "trial"}),
        page("gina", now - 16 * D, "/"),
        page("gina", now - 8 * D, "/"),
        page("hank", now - 18 * D, "/"),
        page("ivan", now - 7 * D - 10 * M, "/"),
        page("ivan", now - 7 * D - 2 * M, "/pricing"),
    ]


@dataclass
class World:
    stack: Stack
    api: httpx.AsyncClient
    now: datetime
    project_id: str
    read_key: str
    other_id: str = ""
    other_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def path(self, rest: str, project_id: str | None = None) -> str:
        return f"/api/projects/{project_id or self.project_id}/{rest}"

    async def get(self, rest: str, **params: Any) -> Any:
        response = await self.api.get(self.path(rest), params=params)
        assert response.status_code == 200, response.text
        return response.json()


def ms_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def send(stack: Stack, write_key: str, calls: list[dict[str, Any]]) -> None:
    response = await stack.post("/v1/batch", {"writeKey": write_key, "batch": calls})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == len(calls), body


async def settled(stack: Stack, project_id: str, persons: int, activity_days: int, events: int) -> None:
    """Wait until the aggregator has written persons, their active days and the daily stats."""

    def done() -> bool:
        return (
            stack.scalar(
                "SELECT count() FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                p=project_id,
            )
            == persons
            and stack.scalar(
                "SELECT count() FROM person_activity FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                p=project_id,
            )
            == activity_days
            and stack.scalar(
                "SELECT sum(events) FROM daily_stats FINAL WHERE project_id = {p:String}", p=project_id
            )
            == events
        )

    await stack.until(done, timeout=30)
    await asyncio.sleep(0.5)  # and the last derived refresh is through


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    names = own_names()
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path_factory.mktemp("api")
    ) as stack:
        now = ms_now()
        url = await stack.start_api(clock=lambda: now)
        other = await stack.create_project("Other site")
        calls = scenario(now)
        await send(stack, stack.project.write_key, calls)
        # persons: alice bob carol dave erin frank gina hank ivan; active days: alice, bob and carol
        # one each (unless NOW is just after midnight), dave 2, erin 2, frank 1, gina 2, hank 1, ivan 1
        days = {(c["anonymousId"], c["timestamp"][:10]) for c in calls}
        non_heartbeat = sum(1 for c in calls if c.get("event") != "$heartbeat")
        await settled(stack, stack.project.project_id, 9, len(days), non_heartbeat)
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=20) as api:
            yield World(
                stack,
                api,
                now,
                stack.project.project_id,
                stack.project.read_key,
                other.project_id,
                other.read_key,
            )


def day(value: datetime) -> str:
    return value.date().isoformat()


# -- auth ----------------------------------------------------------------------------------------


async def test_read_key_rules(world: World) -> None:
    api = world.api
    anonymous = httpx.AsyncClient(base_url=str(api.base_url), timeout=10)
    async with anonymous:
        missing = await anonymous.get(world.path("online"))
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "detail" in missing.json()
        wrong = await anonymous.get(world.path("metrics"), headers={"Authorization": "Bearer rk_wrong"})
        assert wrong.status_code == 401
        # the other project's valid key on this project, and this key on the other project
        other = await anonymous.get(
            world.path("online"), headers={"Authorization": f"Bearer {world.other_key}"}
        )
        assert other.status_code == 404
        me_other = await anonymous.get("/api/me", headers={"Authorization": f"Bearer {world.other_key}"})
        assert me_other.json()["project_id"] == world.other_id
        assert (await anonymous.get("/api/me")).status_code == 401
    assert (await api.get(world.path("online", world.other_id))).status_code == 404
    # a project that does not exist looks exactly like one that does but is not yours
    assert (await api.get(world.path("online", "p_doesnotexist"))).status_code == 404
    assert (await api.get(world.path("users", "p_" + "x" * 10_000))).status_code == 404
    me = await api.get("/api/me")
    assert me.json() == {
        "project_id": world.project_id,
        "name": "Test site",
        "write_key": world.stack.project.write_key,
        "timezone": "UTC",
    }


# -- online ----------------------------------------------------------------------------------------


async def test_online_list_count_order_and_stuck(world: World) -> None:
    now = world.now
    body = await world.get("online")
    assert body["as_of"] == iso(now)
    assert body["online"] == 2
    assert body["users"] == [
        {
            "person_id": "bob-anon",
            "anonymous_id": "bob-anon",
            "user_id": None,
            "current_path": "/blog",
            "current_url": "https://shop.example/blog",
            "current_title": "Blog",
            "time_on_page_seconds": 60,
            "time_on_site_seconds": 180,
            "device_type": "mobile",
            "browser": "Mobile Safari",
            "os": "iOS",
            "stuck": False,
            "last_event_at": iso(now - M),
            "page_entered_at": iso(now - M),
            "session_id": body["users"][0]["session_id"],
            "last_event": "$page",
        },
        {
            "person_id": "alice",
            "anonymous_id": "alice-anon",
            "user_id": "alice",
            "current_path": "/pricing",
            "current_url": "https://shop.example/pricing",
            "current_title": TITLE,
            "time_on_page_seconds": 600,
            "time_on_site_seconds": 1200,
            "device_type": "desktop",
            "browser": "Chrome",
            "os": "Mac OS X",
            "stuck": True,
            "last_event_at": iso(now - 2 * M),
            "page_entered_at": iso(now - 10 * M),
            "session_id": body["users"][1]["session_id"],
            "last_event": "$page",  # identify -15m, page -10m, heartbeat -2m: the page
        },
    ]
    sessions = world.stack.rows(
        "SELECT anonymous_id, session_id FROM sessions FINAL WHERE project_id = {p:String} "
        "AND anonymous_id IN ('alice-anon', 'bob-anon')",
        p=world.project_id,
    )
    assert {u["anonymous_id"]: u["session_id"] for u in body["users"]} == dict(sessions)
    one = await world.get("online", limit=1)
    assert one["online"] == 2 and [u["person_id"] for u in one["users"]] == ["bob-anon"]
    for bad in (0, 1001, "x"):
        response = await world.api.get(world.path("online"), params={"limit": bad})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_freshness_comes_from_aggregator_status(world: World) -> None:
    body = await world.get("metrics")
    pipeline = body["pipeline"]
    last_write, last_event, lag = world.stack.client.query(
        "SELECT max(last_write_at), max(last_event_at), sum(lag) FROM aggregator_status FINAL "
        "WHERE topic = {t:String}",
        parameters={"t": world.stack.settings.topic_events},
    ).first_row
    # the aggregator keeps writing status rows while idle: last_write_at may have moved on since
    assert pipeline["last_write_at"] is not None and pipeline["last_write_at"] <= iso(last_write)
    assert pipeline["last_event_at"] == iso(last_event) == iso(world.now - M)
    assert pipeline["lag"] == lag == 0


# -- metrics and activity --------------------------------------------------------------------------


async def test_metrics_trends_and_churn(world: World) -> None:
    body = await world.get("metrics")
    assert body["as_of"] == iso(world.now)
    assert body["metrics"] == {
        "total_users": {"value": 9, "previous": 6, "trend": 50.0},
        "online_now": {"value": 2, "previous": 1, "trend": 100.0},
        "new_this_week": {"value": 3, "previous": 3, "trend": 0.0},
        "churn_rate": {"value": 75.0, "previous": 50.0, "trend": 50.0},
    }


async def test_activity_is_zero_filled_and_exact(world: World) -> None:
    now = world.now
    body = await world.get("activity", days=30)
    days = body["days"]
    assert len(days) == 30
    assert days[0]["day"] == (now.date() - timedelta(days=29)).isoformat()
    assert days[-1]["day"] == now.date().isoformat()
    by_day = {d["day"]: d for d in days}
    # one page view each, one-page sessions (bounces) lasting 0 s
    for when, who in ((now - 10 * D, 2), (now - 16 * D, 1), (now - 18 * D, 1), (now - 9 * D, 1)):
        entry = by_day[day(when)]
        expected_new = {day(now - 10 * D): 2, day(now - 16 * D): 1, day(now - 18 * D): 1}.get(day(when), 0)
        assert entry == {
            "day": day(when),
            "active_users": who,
            "new_users": expected_new,
            "sessions": who,
            "page_views": who,
            "events": who,
            "bounce_rate": 1.0,
            "avg_session_seconds": 0.0,
            "bots": 0,  # no bot in the fixture
        }
    busy = {day(now - x) for x in (20 * M, 15 * M, 10 * M, 2 * M, 3 * M, M, 7 * M)}
    quiet = [d for d in days if d["day"] not in busy | {day(now - k * D) for k in (2, 7, 8, 9, 10, 16, 18)}]
    assert len(quiet) >= 30 - 9
    assert all(
        d
        == {
            "day": d["day"],
            "active_users": 0,
            "new_users": 0,
            "sessions": 0,
            "page_views": 0,
            "events": 0,
            "bounce_rate": 0.0,
            "avg_session_seconds": 0.0,
            "bots": 0,  # no bot in the fixture
        }
        for d in quiet
    )
    if len(busy) == 1:  # NOW is not just after midnight: today's figures by hand
        assert by_day[day(now)] == {
            "day": day(now),
            "active_users": 3,  # alice, bob, carol
            "new_users": 3,
            "sessions": 3,
            "page_views": 5,
            "events": 6,  # 5 page views and alice's identify (heartbeats are not events)
            "bounce_rate": round(1 / 3, 6),  # carol
            "avg_session_seconds": round((18 * 60 + 2 * 60 + 0) / 3, 3),
            "bots": 0,  # no bot in the fixture
        }
    assert (await world.get("activity", days=1))["days"] == [by_day[day(now)]]
    assert len((await world.get("activity", days=366))["days"]) == 366
    for bad in (0, 367):
        assert (await world.api.get(world.path("activity"), params={"days": bad})).status_code == 422


# -- users -----------------------------------------------------------------------------------------


async def test_create_project_rejects_a_bad_name_in_the_documented_shape(world: World) -> None:
    admin = {"Authorization": "Bearer test-admin"}
    for name, why in (("tab\there", "control characters"), ("   ", "must not be empty")):
        response = await world.api.post("/api/projects", json={"name": name}, headers=admin)
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "name"] and error["type"] == "value_error"
        assert why in error["msg"]


ORDER = ["bob-anon", "alice", "carol-anon", "erin", "ivan", "gina", "dave", "hank", "frank"]


async def test_users_segments(world: World) -> None:
    async def ids(**params: Any) -> list[str]:
        body = await world.get("users", **params)
        return [u["person_id"] for u in body["users"]]

    assert await ids() == ORDER
    assert await ids(segment="all") == ORDER
    assert await ids(segment="active") == ["bob-anon", "alice", "carol-anon", "erin"]
    assert await ids(segment="inactive") == ["ivan", "gina", "dave", "hank"]
    assert await ids(segment="churned") == ["frank"]
    assert await ids(segment="premium") == ["alice"]
    assert await ids(segment="trial") == ["frank"]
    bad = await world.api.get(world.path("users"), params={"segment": "vip"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "segment"]

    now = world.now
    body = await world.get("users", segment="premium")
    assert body["users"] == [
        {
            "person_id": "alice",
            "first_seen": iso(now - 20 * M),
            "last_seen": iso(now - 2 * M),
            "sessions": 1,
            "page_views": 2,
            "plan": "premium",
            "segment": "active",
        }
    ]
    assert body["next_cursor"] is None
    frank = (await world.get("users", segment="trial"))["users"][0]
    assert frank == {
        "person_id": "frank",
        "first_seen": iso(now - 40 * D),
        "last_seen": iso(now - 40 * D + M),
        "sessions": 1,
        "page_views": 1,
        "plan": "trial",
        "segment": "churned",
    }
    segments = {u["person_id"]: u["segment"] for u in (await world.get("users"))["users"]}
    assert segments == {
        "bob-anon": "active",
        "alice": "active",
        "carol-anon": "active",
        "erin": "active",
        "ivan": "inactive",
        "gina": "inactive",
        "dave": "inactive",
        "hank": "inactive",
        "frank": "churned",
    }


async def test_users_cursor_pagination_and_search(world: World) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = await world.get("users", **params)
        seen += [u["person_id"] for u in body["users"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ORDER and pages == 3
    # a page that ends exactly at the last row has no next cursor
    exact = await world.get("users", limit=9)
    assert exact["next_cursor"] is None and len(exact["users"]) == 9
    inactive = await world.get("users", segment="inactive", limit=2)
    assert [u["person_id"] for u in inactive["users"]] == ["ivan", "gina"]
    rest = await world.get("users", segment="inactive", limit=2, cursor=inactive["next_cursor"])
    assert [u["person_id"] for u in rest["users"]] == ["dave", "hank"]
    assert rest["next_cursor"] is None

    async def ids(q: str) -> list[str]:
        return [u["person_id"] for u in (await world.get("users", q=q))["users"]]

    assert await ids("ALICE") == ["alice"]  # person id, any case
    assert await ids("Example.COM") == ["alice"]  # traits text
    assert await ids("anon") == ["bob-anon", "carol-anon"]
    assert await ids("trial") == ["frank"]
    assert await ids("nobody-by-this-name") == []
    for bad in ("not-a-cursor", "eyJ4IjoxfQ", "W10"):
        response = await world.api.get(world.path("users"), params={"cursor": bad})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_user_profile_and_sessions(world: World) -> None:
    now = world.now
    alice = await world.get("users/alice")
    assert alice["as_of"] == iso(now) and "pipeline" in alice
    del alice["as_of"], alice["pipeline"]
    assert alice == {
        "person_id": "alice",
        "first_seen": iso(now - 20 * M),
        "last_seen": iso(now - 2 * M),
        "sessions": 1,
        "page_views": 2,
        "plan": "premium",
        "segment": "active",
        "traits": {"plan": "premium", "email": "alice@example.com", "note": NOTE},
        "anonymous_ids": ["alice-anon"],
    }
    sessions = (await world.get("users/alice/sessions"))["sessions"]
    assert sessions == [
        {
            "session_id": sessions[0]["session_id"],
            "anonymous_id": "alice-anon",
            "start_at": iso(now - 20 * M),
            "last_event_at": iso(now - 2 * M),
            "duration_seconds": 18 * 60,
            "page_views": 2,
            "events": 3,
            "pages": ["/", "/pricing"],
            "entry_path": "/",
            "referrer": "",
            "device_type": "desktop",
            "browser": "Chrome",
            "os": "Mac OS X",
            "active": True,
        }
    ]
    dave = (await world.get("users/dave/sessions"))["sessions"]
    assert [(s["start_at"], s["pages"], s["duration_seconds"], s["active"]) for s in dave] == [
        (iso(now - 9 * D), ["/features"], 0, False),
        (iso(now - 10 * D), ["/"], 0, False),
    ]
    assert [s["start_at"] for s in (await world.get("users/dave/sessions", limit=1))["sessions"]] == [
        iso(now - 9 * D)
    ]
    # the anonymous id merged into alice is no person of its own any more
    assert (await world.api.get(world.path("users/alice-anon"))).status_code == 404
    assert (await world.api.get(world.path("users/nobody"))).status_code == 404
    assert (await world.api.get(world.path("users/nobody/sessions"))).status_code == 404
    assert (await world.api.get(world.path("users/dave/sessions"), params={"limit": 101})).status_code == 422


# -- CSV -------------------------------------------------------------------------------------------


def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


async def export(world: World, kind: str, **params: Any) -> tuple[httpx.Response, list[list[str]]]:
    response = await world.api.get(world.path(f"export/{kind}.csv"), params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    stamp = world.now.strftime("%Y%m%d")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="werkstroom-{world.project_id}-{kind}-{stamp}.csv"'
    )
    return response, parse_csv(response.text)


async def test_csv_exports(world: World) -> None:
    now = world.now
    response, rows = await export(world, "users", segment="premium")
    assert rows == [
        [
            "person_id",
            "first_seen",
            "last_seen",
            "sessions",
            "page_views",
            "plan",
            "segment",
            "traits",
            "anonymous_ids",
        ],
        [
            "alice",
            iso(now - 20 * M),
            iso(now - 2 * M),
            "1",
            "2",
            "premium",
            "active",
            '{"email":"alice@example.com","note":"likes, \\"quotes\\"\\nand newlines","plan":"premium"}',
            '["alice-anon"]',
        ],
    ]
    # quoting by hand: the traits cell has commas and quotes, so it is quoted with quotes doubled
    assert '"{""email"":""alice@example.com"",""note"":""likes, \\""quotes\\""' in response.text
    assert response.text.endswith("\r\n")
    _, everyone = await export(world, "users")
    assert [r[0] for r in everyone[1:]] == ORDER
    _, searched = await export(world, "users", q="anon", segment="active")
    assert [r[0] for r in searched[1:]] == ["bob-anon", "carol-anon"]

    response, online = await export(world, "online")
    assert online[0][:6] == [
        "person_id",
        "anonymous_id",
        "user_id",
        "current_path",
        "current_url",
        "current_title",
    ]
    assert [r[0] for r in online[1:]] == ["bob-anon", "alice"]
    assert online[2][5] == TITLE and online[2][11] == "true" and online[1][2] == ""
    assert '"Pricing, ""Pro"" plans"' in response.text

    _, metrics = await export(world, "metrics")
    assert metrics == [
        ["metric", "value", "previous", "trend"],
        ["total_users", "9", "6", "50.0"],
        ["online_now", "2", "1", "100.0"],
        ["new_this_week", "3", "3", "0.0"],
        ["churn_rate", "75.0", "50.0", "50.0"],
    ]
    _, activity = await export(world, "activity", days=7)
    assert activity[0] == [
        "day",
        "active_users",
        "new_users",
        "sessions",
        "page_views",
        "events",
        "bounce_rate",
        "avg_session_seconds",
    ]
    assert [r[0] for r in activity[1:]] == [
        (now.date() - timedelta(days=6 - i)).isoformat() for i in range(7)
    ]
    api_days = (await world.get("activity", days=7))["days"]
    assert [int(r[1]) for r in activity[1:]] == [d["active_users"] for d in api_days]

    _, sessions = await export(world, "sessions", person_id="dave", days=30)
    assert sessions[0][:4] == ["session_id", "anonymous_id", "start_at", "last_event_at"]
    assert [(r[1], r[2], r[7]) for r in sessions[1:]] == [
        ("dave", iso(now - 9 * D), '["/features"]'),
        ("dave", iso(now - 10 * D), '["/"]'),
    ]
    _, recent = await export(world, "sessions", days=1)
    assert sorted(r[1] for r in recent[1:]) == sorted(
        a
        for a, when in (("alice-anon", 20), ("bob-anon", 3), ("carol-anon", 7))
        if day(now - when * M) == day(now)
    )
    _, month = await export(world, "sessions")
    assert len(month) - 1 == 3 + 2 + 2 + 2 + 1 + 1  # alice bob carol, dave 2, erin 2, gina 2, hank, ivan
    missing = await world.api.get(world.path("export/sessions.csv"), params={"person_id": "nobody"})
    assert missing.status_code == 404
    assert (await world.api.get(world.path("export/everything.csv"))).status_code == 422


# -- snippet ---------------------------------------------------------------------------------------


async def test_snippet(world: World) -> None:
    body = (await world.api.get(world.path("snippet"))).json()
    ingest = world.stack.settings.ingest_url
    key = world.stack.project.write_key
    assert body["write_key"] == key and body["ingest_url"] == ingest
    html = body["html"]
    assert html.startswith("<script>") and html.endswith("</script>")
    assert f'(window, document, "{key}", "{ingest}")' in html
    assert 'host + "/t.js"' in html and "data-write-key" in html and "a.q.push" in html
    # the loader's target is served by ingest
    script = await world.stack.http.get("/t.js")
    assert script.status_code == 200 and "werkstroom" in script.text


# -- hostile input ---------------------------------------------------------------------------------

HOSTILE = [
    "'",
    '"',
    "\\",
    "' OR '1'='1",
    "alice' --",
    "'; DROP TABLE persons; --",
    "1; DROP DATABASE default",
    "/* comment */ alice",
    "%",
    "_",
    "{p:String}",
    "Ωmega ünïcødé 🙂",
    "\u202eevil",
    "nul\x00byte",
    "\ud7ff\ue000\U0010ffff",
    "a" * 200,
]


async def test_hostile_input_is_data_not_sql(world: World) -> None:
    before = world.stack.rows(
        "SELECT person_id, last_seen FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
        "ORDER BY person_id",
        p=world.project_id,
    )
    # q is a plain substring of the person id or the traits' JSON text: % and _ are no wildcards;
    # a quote or backslash finds the persons whose traits JSON has one (alice's note, frank's plan)
    matches = {'"': ["alice", "frank"], "\\": ["alice"]}
    for text in HOSTILE:
        body = await world.get("users", q=text)
        assert [u["person_id"] for u in body["users"]] == matches.get(text, []), text
        for path in (f"users/{text}", f"users/{text}/sessions", f"funnels/{text}"):
            response = await world.api.get(world.path(quote(path, safe="/")))
            assert response.status_code == 404, (path, response.status_code, response.text)
        exported = await world.api.get(world.path("export/users.csv"), params={"q": text})
        assert exported.status_code == 200
        assert [r[0] for r in parse_csv(exported.text)[1:]] == matches.get(text, [])
        response = await world.api.get(world.path("export/sessions.csv"), params={"person_id": text})
        assert response.status_code == 404
    too_long = "x" * 10_000
    assert (await world.api.get(world.path("users"), params={"q": too_long})).status_code == 422
    assert (await world.api.get(world.path(f"users/{too_long}"))).status_code == 404
    assert (await world.api.get(world.path(f"funnels/{too_long}"))).status_code == 404
    assert (await world.api.delete(world.path(f"funnels/{too_long}"))).status_code == 404
    # a hostile project id with a valid key is just a project that is not yours
    for text in HOSTILE:
        response = await world.api.get(f"/api/projects/{quote(text, safe='/')}/online")
        assert response.status_code == 404, text
    after = world.stack.rows(
        "SELECT person_id, last_seen FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
        "ORDER BY person_id",
        p=world.project_id,
    )
    assert after == before and len(after) == 9
    assert (await world.get("metrics"))["metrics"]["total_users"]["value"] == 9


# -- live (SSE) ------------------------------------------------------------------------------------


async def read_event(lines: AsyncIterator[str]) -> tuple[str, str]:
    """The next event (name, data) of an SSE stream, skipping comment pings."""
    event, data = "", []
    async for line in lines:
        if line == "":
            if data:
                return event, "\n".join(data)
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    raise AssertionError("stream ended")


async def test_live_stream_pushes_a_new_visitor(world: World) -> None:
    site = await world.stack.create_project("Live site")
    hub = world.stack.api_app.state.live
    url = world.path("live", site.project_id)
    headers = {"Authorization": f"Bearer {site.read_key}", "Accept": "text/event-stream"}
    async with world.api.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        event, data = await asyncio.wait_for(read_event(lines), 10)
        first = orjson.loads(data)
        assert event == "online" and first["online"] == 0 and first["users"] == []
        assert first["as_of"] == iso(world.now) and set(first["pipeline"]) == {
            "last_write_at",
            "last_event_at",
            "lag",
            "bots_today",
            "recomputing_timezone",
        }
        assert hub.subscribers == 1 and list(hub.feeds) == [feed_key(site.project_id)]

        await send(
            world.stack, site.write_key, [page("zoe", world.now - 30 * timedelta(seconds=1), "/hello", "Hi")]
        )
        event, data = await asyncio.wait_for(read_event(lines), 20)
        second = orjson.loads(data)
        assert event == "online" and second["online"] == 1
        [zoe] = second["users"]
        assert (zoe["person_id"], zoe["current_path"], zoe["current_title"], zoe["time_on_page_seconds"]) == (
            "zoe",
            "/hello",
            "Hi",
            30,
        )
        # the same answer as GET online
        plain = (await world.api.get(world.path("online", site.project_id), headers=headers)).json()
        assert plain["users"] == second["users"]
    # the client went away: its subscription and the project's poller are gone
    await world.stack.until(lambda: hub.subscribers == 0 and not hub.feeds, timeout=5)


async def test_live_requires_the_read_key(world: World) -> None:
    response = await world.api.get(world.path("live"), headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    response = await world.api.get(world.path("live", world.other_id))
    assert response.status_code == 404


async def test_openapi_documents_every_route(world: World) -> None:
    spec = (await world.api.get("/openapi.json")).json()
    paths = spec["paths"]
    base = "/api/projects/{project_id}"
    expected = {
        "/api/me": ["get"],
        f"{base}/online": ["get"],
        f"{base}/live": ["get"],
        f"{base}/metrics": ["get"],
        f"{base}/activity": ["get"],
        f"{base}/funnels": ["get", "post"],
        f"{base}/funnels/{{funnel_id}}": ["delete", "get"],
        f"{base}/users": ["get"],
        f"{base}/users/{{person_id}}": ["get"],
        f"{base}/users/{{person_id}}/sessions": ["get"],
        f"{base}/export/{{kind}}.csv": ["get"],
        f"{base}/snippet": ["get"],
    }
    for path, methods in expected.items():
        assert sorted(paths[path]) == methods, path
        for method in methods:
            operation = paths[path][method]
            assert operation["summary"] and operation["tags"], (path, method)
            if path.startswith(base):
                assert {"401", "404"} <= set(operation["responses"]), (path, method)
    schemas = spec["components"]["schemas"]
    for name in ("Online", "Metrics", "Activity", "UsersPage", "UserProfile", "UserSessions", "FunnelReport"):
        assert schemas[name].get("examples"), name
