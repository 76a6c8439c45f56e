"""Every client a site already uses works unchanged (issue 19): the real SDKs, pointed at
ingest with their own `host` option, through Kafka, the aggregator and ClickHouse, and the
persons, traits, plans, segments, sessions and funnel read back from the real API.

Each client sends the same plan (`scenario`), as its own project on one shared stack, in three
runs at once:

    together (back to back, one batch)   v6 anonymous: page /pricing
                                          u1 premium, u2 trial, u3 no plan: page /pricing (as
                                          aN) -> identify uN + aN -> "Signed Up" and "Purchase"
                                          with only the user id (server side); then u1's phone
                                          a1-phone: page /home, alias a1-phone -> u1
    paced (a request each, ~1.2 s apart)  u4: page, identify (trial), "Signed Up", identify
                                          (premium: the later call wins), "Purchase"
    burst (a request each, no pause)      u5: page, identify (trial), "Signed Up", "Purchase"

Expected, by hand: 6 persons (u1..u5 and the anonymous v6); u1 has 2 sessions and 2 page
views (a1 and a1-phone), everyone else 1 and 1; plans premium u1 u4, trial u2 u5; the funnel
$page /pricing -> "Signed Up" -> "Purchase" counts 6, 5, 5 whether it existed before the
traffic (kept current by the aggregator) or was created after it (back-filled); 24 events.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import pytest_asyncio
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from tests.conftest import Infra
from tests.integration.api_checks import check_funnel, check_users_and_plans
from tests.integration.stack import Stack, own_names
from werkstroom.projects import NewProject

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
PAUSE_MS = 1200
STEPS = [
    {"event": "$page", "path": "/pricing"},
    {"event": "Signed Up", "path": ""},
    {"event": "Purchase", "path": ""},
]
Call = dict[str, Any]


def funnel_user(user: str, anon: str, traits: dict[str, Any]) -> list[Call]:
    """Browses the pricing page, is identified, then a server signs them up and bills them."""
    pricing = {"path": "/pricing", "url": "https://shop.example/pricing", "title": "Pricing"}
    return [
        {"type": "page", "anonymousId": anon, "name": "Pricing", "properties": pricing},
        {"type": "identify", "userId": user, "anonymousId": anon, "traits": traits},
        {"type": "track", "userId": user, "event": "Signed Up", "properties": {"source": "pricing"}},
        {"type": "track", "userId": user, "event": "Purchase", "properties": {"revenue": 49.5}},
    ]


def paced(calls: list[Call]) -> list[Call]:
    """Each call delivered on its own, a pause between them."""
    out: list[Call] = []
    for n, call in enumerate(calls):
        if n:
            out.append({"type": "sleep", "ms": PAUSE_MS})
        out += [call, {"type": "flush"}]
    return out


def scenario(tag: str) -> dict[str, list[Call]]:
    """The three runs of the module docstring; every id starts with `tag`."""
    u = {n: f"{tag}-u{n}" for n in range(1, 6)}
    a = {n: f"{tag}-a{n}" for n in range(1, 6)}
    home = {"path": "/home", "url": "https://shop.example/home", "title": "Home"}
    u4 = funnel_user(u[4], a[4], {"plan": "trial", "email": f"{u[4]}@example.com"})
    upgrade = {"type": "identify", "userId": u[4], "anonymousId": a[4], "traits": {"plan": "premium"}}
    return {
        "together": [
            {"type": "page", "anonymousId": f"{tag}-v6", "properties": {"path": "/pricing"}},
            *funnel_user(u[1], a[1], {"plan": "premium", "email": f"{u[1]}@example.com", "name": "Ada"}),
            *funnel_user(u[2], a[2], {"plan": "trial", "email": f"{u[2]}@example.com"}),
            *funnel_user(u[3], a[3], {"email": f"{u[3]}@example.com"}),
            {"type": "page", "anonymousId": f"{tag}-a1-phone", "name": "Home", "properties": home},
            {"type": "alias", "previousId": f"{tag}-a1-phone", "userId": u[1]},
            {"type": "flush"},
        ],
        "paced": paced([*u4[:3], upgrade, u4[3]]),
        "burst": funnel_user(u[5], a[5], {"plan": "trial", "email": f"{u[5]}@example.com"}),
    }


def sent(runs: dict[str, list[Call]]) -> int:
    return sum(1 for calls in runs.values() for c in calls if c["type"] not in ("flush", "sleep"))


def expected_users(tag: str) -> list[dict[str, Any]]:
    plans = {1: "premium", 2: "trial", 3: None, 4: "premium", 5: "trial"}
    users = [
        {"person_id": f"{tag}-u{n}", "sessions": 1 + (n == 1), "page_views": 1 + (n == 1), "plan": plan}
        for n, plan in plans.items()
    ]
    return [*users, {"person_id": f"{tag}-v6", "sessions": 1, "page_views": 1, "plan": None}]


# -- the clients --------------------------------------------------------------------------------


class PythonSdk(Protocol):
    """What segment-analytics-python and rudder-sdk-python (a fork of it) have in common."""

    def page(self, **kwargs: Any) -> Any: ...
    def identify(self, **kwargs: Any) -> Any: ...
    def track(self, **kwargs: Any) -> Any: ...
    def alias(self, **kwargs: Any) -> Any: ...
    def flush(self) -> None: ...
    def join(self) -> None: ...


def drive_python(client: PythonSdk, calls: list[Call], *, sync_mode: bool) -> None:
    for call in calls:
        kind = call["type"]
        ids = {"user_id": call.get("userId"), "anonymous_id": call.get("anonymousId")}
        if kind == "page":
            client.page(name=call.get("name"), properties=call.get("properties"), **ids)
        elif kind == "identify":
            client.identify(traits=call["traits"], **ids)
        elif kind == "track":
            client.track(event=call["event"], properties=call.get("properties"), **ids)
        elif kind == "alias":
            client.alias(previous_id=call["previousId"], user_id=call["userId"])
        elif kind == "flush":
            client.flush()
        elif kind == "sleep":
            time.sleep(call["ms"] / 1000)
        else:
            raise ValueError(kind)
    client.flush()
    if not sync_mode:  # join() ends the consumer thread, which sync_mode does not start
        client.join()


async def send_python(sdk: type[Any], host: str, write_key: str, runs: dict[str, list[Call]]) -> None:
    """One client per run; burst uses sync_mode (a request per call, as it is made)."""
    errors: list[Exception] = []

    def run(name: str, calls: list[Call]) -> None:
        sync_mode = name == "burst"
        client = sdk(
            write_key=write_key,
            host=host,
            sync_mode=sync_mode,
            max_retries=1,
            on_error=lambda error, _items: errors.append(error),
        )
        drive_python(client, calls, sync_mode=sync_mode)

    await asyncio.gather(*(asyncio.to_thread(run, name, calls) for name, calls in runs.items()))
    assert errors == []


def node_ready() -> None:
    """Skip without Node.js; fail (not skip) when it is there but the SDK was not installed."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the @segment/analytics-node client cannot run")
    if not (NODE_DIR / "node_modules" / "@segment" / "analytics-node").is_dir():
        pytest.fail(f"{NODE_DIR}/node_modules is missing: run `make node-clients` (or `make test`)")


async def send_node(host: str, write_key: str, runs: dict[str, list[Call]]) -> None:
    """A process per run: together as one batch (flushAt 100), the others a request per call."""

    async def run(name: str, calls: list[Call]) -> None:
        plan = {"flushAt": 100 if name == "together" else 1, "calls": calls}
        process = await asyncio.create_subprocess_exec(
            "node",
            "send.mjs",
            host,
            write_key,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(json.dumps(plan).encode()), 60)
        assert process.returncode == 0, f"send.mjs ({name}) exited {process.returncode}: {err.decode()}"
        statuses = json.loads(out.decode().splitlines()[-1])["statuses"]
        assert statuses and set(statuses) == {200}, statuses

    await asyncio.gather(*(run(name, calls) for name, calls in runs.items()))


# -- the stack and the checks -------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the module; each test has a project of its own on it."""
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, own_names(), data_dir=tmp_path_factory.mktemp("clients")
    ) as stack:
        await stack.start_api()
        yield stack


async def check_matrix(
    stack: Stack,
    tag: str,
    library: str,
    send: Callable[[NewProject, dict[str, list[Call]]], Awaitable[None]],
) -> None:
    project = await stack.create_project(f"{tag} site")
    pid = project.project_id
    runs = scenario(tag)
    headers = {"Authorization": f"Bearer {project.read_key}"}
    base = f"/api/projects/{pid}"
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=30) as api:
        live = await api.post(f"{base}/funnels", json={"name": "Live", "steps": STEPS})
        assert live.status_code == 201, live.text

        await send(project, runs)

        events = "SELECT count() FROM events FINAL WHERE project_id = {p:String}"
        assert await stack.wait_count(sent(runs), events, p=pid) == sent(runs) == 24
        # the SDK's own name (context.library.name): rudder-sdk-python's is Segment's
        libraries = "SELECT groupUniqArray(library) FROM events FINAL WHERE project_id = {p:String}"
        assert stack.scalar(libraries, p=pid) == [library]

        await check_users_and_plans(api, base, expected_users(tag))
        await check_funnel(api, base, STEPS, live.json()["funnel_id"], [6, 5, 5], lambda s: s["count"])

        async def profile(user: str) -> dict[str, Any]:
            body = (await api.get(f"{base}/users/{user}")).json()
            return {"traits": body.get("traits"), "anonymous_ids": sorted(body.get("anonymous_ids", []))}

        u1, u4 = f"{tag}-u1", f"{tag}-u4"
        assert await profile(u1) == {
            "traits": {"plan": "premium", "email": f"{u1}@example.com", "name": "Ada"},
            "anonymous_ids": [f"{tag}-a1", f"{tag}-a1-phone"],
        }
        assert await profile(u4) == {
            "traits": {"plan": "premium", "email": f"{u4}@example.com"},
            "anonymous_ids": [f"{tag}-a4"],
        }
        sessions = (await api.get(f"{base}/users/{u1}/sessions")).json()["sessions"]
        assert sorted((s["anonymous_id"], s["entry_path"], s["page_views"]) for s in sessions) == [
            (f"{tag}-a1", "/pricing", 1),
            (f"{tag}-a1-phone", "/home", 1),
        ]


async def test_segment_analytics_python(running: Stack) -> None:
    async def send(project: NewProject, runs: dict[str, list[Call]]) -> None:
        await send_python(SegmentClient, running.ingest_url, project.write_key, runs)

    await check_matrix(running, "seg", "analytics-python", send)


async def test_rudder_sdk_python(running: Stack) -> None:
    async def send(project: NewProject, runs: dict[str, list[Call]]) -> None:
        await send_python(RudderClient, running.ingest_url, project.write_key, runs)

    await check_matrix(running, "rud", "analytics-python", send)


async def test_segment_analytics_node(running: Stack) -> None:
    node_ready()

    async def send(project: NewProject, runs: dict[str, list[Call]]) -> None:
        await send_node(running.ingest_url, project.write_key, runs)

    await check_matrix(running, "node", "@segment/analytics-node", send)
