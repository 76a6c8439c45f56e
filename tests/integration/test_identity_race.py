"""Identity races (issue 19): a browser's identify and a server-side track for the same user
arriving within milliseconds, in either order, as separate requests (so on whatever partitions
their keys hash to, and applied by the aggregator in either order), give the same person,
traits, sessions and funnel progress as when they arrive seconds apart.

Each visitor: a page view of /pricing (anonymous), an identify linking the anonymous id to a
user id with traits, and a "Purchase" track sent by the site's server with the user id only.
The funnel /pricing -> Purchase converts for every one of them, whatever the order."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.stack import BROWSER_UA, Stack
from tests.integration.test_api import identify, iso, ms_now, page

pytestmark = pytest.mark.integration

RACES = 100
PAUSED = 4
S = timedelta(seconds=1)


def purchase(user_id: str, at: datetime, sent_at: datetime) -> dict[str, Any]:
    """A server-side track: the user id only, no anonymous id, no browser."""
    return {
        "userId": user_id,
        "messageId": uuid.uuid4().hex,
        "event": "Purchase",
        "properties": {"revenue": 10},
        "timestamp": iso(at),
        "sentAt": iso(sent_at),
        "context": {"library": {"name": "analytics-python", "version": "2.3.4"}},
    }


def traits_of(i: int) -> dict[str, Any]:
    return {"plan": "premium" if i % 2 == 0 else "trial", "email": f"u{i}@example.com"}


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], key: str) -> httpx.Response:
    """As an SDK sends: a 503 (Kafka slow to acknowledge on a loaded machine) is sent again with
    the same messageId, which the pipeline de-duplicates, and sentAt stamped again at each
    attempt (an SDK stamps it when it sends: a sentAt kept from the first attempt made seconds
    of retries look like clock skew past CLOCK_TOLERANCE, and moved the event's time)."""
    for _ in range(5):
        if "sentAt" in body:
            body["sentAt"] = iso(ms_now())
        response = await client.post(path, json=body, auth=(key, ""))
        if response.status_code != 503:
            break
        await asyncio.sleep(1)
    return response


async def visitor(
    client: httpx.AsyncClient, key: str, i: int, t0: datetime, rng: random.Random, race: bool
) -> None:
    anon, user = f"race-anon-{i}", f"race-user-{i}"
    viewed = page(anon, t0, "/pricing", "Pricing")
    viewed["sentAt"] = iso(ms_now())
    response = await post(client, "/v1/page", viewed, key)
    assert response.status_code == 200, response.text
    at = t0 + S
    who = identify(anon, at, user, traits_of(i))
    who["sentAt"] = iso(ms_now())
    bought = purchase(user, at + timedelta(milliseconds=rng.randint(1, 5)), ms_now())
    calls = [("/v1/identify", who), ("/v1/track", bought)]
    if race:
        rng.shuffle(calls)

        async def one(path: str, body: dict[str, Any], delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            return await post(client, path, body, key)

        answers = await asyncio.gather(*(one(p, b, rng.uniform(0, 0.003)) for p, b in calls))
    else:
        answers = []
        for path, body in calls:
            answers.append(await post(client, path, body, key))
            await asyncio.sleep(2)
    for answer in answers:
        assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text


async def test_identify_and_server_track_in_any_order_give_the_same_person(stack: Stack) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    url = await stack.start_api()
    pid, key = stack.project.project_id, stack.project.write_key
    headers = {"Authorization": f"Bearer {stack.project.read_key}"}
    t0 = ms_now() - timedelta(minutes=10)
    total = RACES + PAUSED
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api,
        httpx.AsyncClient(
            base_url=stack.ingest_url, headers={"User-Agent": BROWSER_UA}, timeout=30
        ) as ingest,
    ):
        steps = [{"event": "$page", "path": "/pricing"}, {"event": "Purchase", "path": ""}]
        created = await api.post(
            f"/api/projects/{pid}/funnels", json={"name": "Buy", "steps": steps, "window_seconds": 3600}
        )
        assert created.status_code == 201, created.text
        funnel = created.json()["funnel_id"]
        # The seconds-apart visitors first (the reference), then the races, all at once.
        await asyncio.gather(*(visitor(ingest, key, RACES + i, t0, rng, False) for i in range(PAUSED)))
        await asyncio.gather(*(visitor(ingest, key, i, t0, rng, True) for i in range(RACES)))

        async def counted() -> bool:
            report = (await api.get(f"/api/projects/{pid}/funnels/{funnel}")).json()
            persons = stack.scalar(
                "SELECT count() FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0", p=pid
            )
            return [s["count"] for s in report["steps"]] == [total, total] and persons == total

        try:
            await stack.until(counted, timeout=60)
        except AssertionError:
            report = (await api.get(f"/api/projects/{pid}/funnels/{funnel}")).json()
            raise AssertionError(f"seed {seed}: funnel {[s['count'] for s in report['steps']]}") from None

        def expected(i: int) -> dict[str, Any]:
            return {
                "person_id": f"race-user-{i}",
                "traits": traits_of(i),
                "anonymous_ids": [f"race-anon-{i}"],
                "plan": traits_of(i)["plan"],
                "sessions": 1,
                "page_views": 1,
                "first_seen": iso(t0),
            }

        async def profile(i: int) -> dict[str, Any]:
            response = await api.get(f"/api/projects/{pid}/users/race-user-{i}")
            assert response.status_code == 200, f"seed {seed}: {response.text}"
            return {k: response.json()[k] for k in expected(i)}

        profiles = await asyncio.gather(*(profile(i) for i in range(total)))
        wrong = [(i, got) for i, got in enumerate(profiles) if got != expected(i)]
        assert not wrong, f"seed {seed}: {len(wrong)} persons differ, e.g. {wrong[:2]}"
        for segment, count in (("premium", (total + 1) // 2), ("trial", total // 2)):
            listed = (
                await api.get(f"/api/projects/{pid}/users", params={"segment": segment, "limit": 200})
            ).json()
            assert len(listed["users"]) == count, f"seed {seed}: {segment}"
        # Nobody is left over as an anonymous person of their own.
        users = (await api.get(f"/api/projects/{pid}/users", params={"limit": 200})).json()["users"]
        assert sorted(u["person_id"] for u in users) == sorted(f"race-user-{i}" for i in range(total))
