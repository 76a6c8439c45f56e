"""The browser tracker (/t.js, loaded by the project's real snippet) in the client matrix: headless
Chromium visitors on a site of their own make page, identify, track and alias calls (and the
original product's vibeTrack/vibeIdentify), through ingest, Kafka, the aggregator and
ClickHouse, and the persons, traits, plans, sessions and a funnel are read back from the real
API, exactly.

    visitor   on the site                                                 person
    A         /shop/pricing, identify br-u1 (premium), "Signed Up",       br-u1
              pushState /shop/checkout, "Purchase"
    B         /shop/home (A's phone), alias br-u1 (previousId: B's id)    br-u1
    C         /shop/pricing?vibe, whose inline script calls vibeIdentify  br-u2
              br-u2 (trial) and vibeTrack "Signed Up" before t.js loaded
    D         /shop/pricing                                               D's anonymous id

Expected, by hand: 3 persons; br-u1 with 2 sessions (A's: /shop/pricing -> /shop/checkout, B's:
/shop/home) and 3 page views; the funnel $page /shop/pricing -> "Signed Up" -> "Purchase" counts
3, 2, 1 (conversion 100, 66.7, 33.3); 11 calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from tests.conftest import Infra
from tests.e2e.browser import chromium, open_page, site, visitor
from tests.integration.api_checks import check_funnel, check_users_and_plans
from tests.integration.stack import Stack, own_names

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

STEPS = [
    {"event": "$page", "path": "/shop/pricing"},
    {"event": "Signed Up", "path": ""},
    {"event": "Purchase", "path": ""},
]
# Calls a page instrumented for the original product makes, inline, before t.js has loaded.
VIBE = 'vibeIdentify("br-u2", {plan: "trial", email: "u2@example.com"}); vibeTrack("Signed Up", {source: "vibe"});'


@dataclass(frozen=True)
class Rig:
    stack: Stack
    site: str
    browser: Browser
    api: httpx.AsyncClient
    base: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("tracker-browser")
    async with Stack(infra.bootstrap, infra.clickhouse_url, own_names(), data_dir=tmp) as stack:
        await stack.start_api()
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        base = f"/api/projects/{stack.project.project_id}"
        with site(stack.ingest_url, stack.project.write_key, {"/shop/pricing?vibe": VIBE}) as url:
            async with (
                chromium() as browser,
                httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as api,
            ):
                yield Rig(stack, url, browser, api, base)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def visitors(rig: Rig) -> dict[str, str]:
    """The four visitors of the module docstring, their calls stored; their anonymous ids."""
    live = await rig.api.post(f"{rig.base}/funnels", json={"name": "Live", "steps": STEPS})
    assert live.status_code == 201, live.text
    pages: dict[str, Page] = {}
    for name, path in (
        ("A", "/shop/pricing"),
        ("B", "/shop/home"),
        ("C", "/shop/pricing?vibe"),
        ("D", "/shop/pricing"),
    ):
        pages[name] = await open_page(await visitor(rig.browser), f"{rig.site}{path}")
    await pages["A"].evaluate(
        """() => {
          werkstroom.identify("br-u1", {plan: "premium", email: "u1@example.com"});
          werkstroom.track("Signed Up", {source: "pricing"});
          history.pushState({}, "", "/shop/checkout");
          werkstroom.track("Purchase", {revenue: 49.5});
        }"""
    )
    await pages["B"].evaluate('werkstroom.alias("br-u1")')
    ids = {name: str(await page.evaluate("werkstroom.anonymousId()")) for name, page in pages.items()}
    # C's page view, identify and track (the queued vibe calls) are stored: 11 in all.
    events = "SELECT count() FROM events FINAL WHERE project_id = {p:String} AND event != '$heartbeat'"
    assert await rig.stack.wait_count(11, events, p=rig.stack.project.project_id) == 11
    for page in pages.values():
        await page.context.close()
    ids["live_funnel"] = live.json()["funnel_id"]
    return ids


async def test_persons_traits_plans_sessions_and_funnel_from_the_browser(
    rig: Rig, visitors: dict[str, str]
) -> None:
    api, base = rig.api, rig.base

    everyone = sorted(
        [
            {"person_id": "br-u1", "sessions": 2, "page_views": 3, "plan": "premium"},
            {"person_id": "br-u2", "sessions": 1, "page_views": 1, "plan": "trial"},
            {"person_id": visitors["D"], "sessions": 1, "page_views": 1, "plan": None},
        ],
        key=lambda u: str(u["person_id"]),
    )
    await check_users_and_plans(api, base, everyone)

    profile = (await api.get(f"{base}/users/br-u1")).json()
    assert profile["traits"] == {"plan": "premium", "email": "u1@example.com"}
    assert sorted(profile["anonymous_ids"]) == sorted([visitors["A"], visitors["B"]])
    sessions = (await api.get(f"{base}/users/br-u1/sessions")).json()["sessions"]
    assert sorted((s["anonymous_id"], s["entry_path"], s["pages"], s["browser"]) for s in sessions) == sorted(
        [
            (visitors["A"], "/shop/pricing", ["/shop/pricing", "/shop/checkout"], "Chrome"),
            (visitors["B"], "/shop/home", ["/shop/home"], "Chrome"),
        ]
    )

    want = [(3, 100.0), (2, 66.7), (1, 33.3)]
    await check_funnel(
        api, base, STEPS, visitors["live_funnel"], want, lambda s: (s["count"], s["conversion_pct"])
    )


async def test_vibe_calls_arrive_as_identify_and_track(rig: Rig, visitors: dict[str, str]) -> None:
    rows = rig.stack.rows(
        "SELECT type, event, user_id, traits, properties, library FROM events FINAL"
        " WHERE project_id = {p:String} AND anonymous_id = {a:String} AND event != '$heartbeat'"
        " ORDER BY type",
        p=rig.stack.project.project_id,
        a=visitors["C"],
    )
    got = [
        (t, e, u, json.loads(traits), json.loads(props).get("source"), lib)
        for t, e, u, traits, props, lib in rows
    ]
    assert got == [
        (
            "identify",
            "$identify",
            "br-u2",
            {"plan": "trial", "email": "u2@example.com"},
            None,
            "werkstroom.js",
        ),
        ("page", "$page", "", {}, None, "werkstroom.js"),
        ("track", "Signed Up", "br-u2", {}, "vibe", "werkstroom.js"),
    ]


async def test_alias_is_segments_alias(rig: Rig, visitors: dict[str, str]) -> None:
    rows = rig.stack.rows(
        "SELECT type, event, user_id, previous_id FROM events FINAL"
        " WHERE project_id = {p:String} AND anonymous_id = {a:String} AND type = 'alias'",
        p=rig.stack.project.project_id,
        a=visitors["B"],
    )
    assert rows == [("alias", "$alias", "br-u1", visitors["B"])]
