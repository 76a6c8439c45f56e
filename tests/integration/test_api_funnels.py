"""Funnel endpoints over the real pipeline: define over HTTP (back-filled by the aggregator from
the events already aggregated, `backfilled` false until it is), report per step with conversion and drop-off, keep counting new traffic,
list, delete, and refuse bad definitions with FastAPI-style 422s.

Fixture (steps: page /pricing -> "Signed Up" -> "Order Completed", window 1 hour):
f1 does all three, f2 the first two, f3..f5 only the first, f6 signs up without the pricing
page, f7 signs up two hours after pricing (outside the window), f9 sees /pricing/old (not
/pricing) then signs up: counts [6, 2, 1]; conversion
100, 33.3, 16.7; drop-off -, 66.7 (high), 50.0 (not above 50).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.integration.stack import Stack
from tests.integration.test_api import iso, ms_now, page, send, settled, track

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
STEPS = [
    {"event": "$page", "path": "/pricing"},
    {"event": "Signed Up", "path": ""},
    {"event": "Order Completed", "path": ""},
]


async def test_funnel_endpoints(stack: Stack) -> None:
    now = ms_now()
    url = await stack.start_api(clock=lambda: now)
    pid, key = stack.project.project_id, stack.project.write_key
    t0 = now - 180 * M
    calls = [
        page("f1", t0, "/pricing"),
        track("f1", t0 + M, "Signed Up"),
        track("f1", t0 + 2 * M, "Order Completed"),
        page("f2", t0, "/pricing"),
        track("f2", t0 + 5 * M, "Signed Up"),
        page("f3", t0, "/pricing"),
        page("f4", t0, "/pricing"),
        page("f5", t0, "/pricing"),
        track("f6", t0, "Signed Up"),
        page("f7", t0, "/pricing"),
        track("f7", t0 + 120 * M, "Signed Up"),
        page("f9", t0, "/pricing/old"),  # no match: the step's path has no *
        track("f9", t0 + M, "Signed Up"),
    ]
    await send(stack, key, calls)
    days = {(c["anonymousId"], c["timestamp"][:10]) for c in calls}
    await settled(stack, pid, 8, len(days), len(calls))
    headers = {"Authorization": f"Bearer {stack.project.read_key}"}
    base = f"/api/projects/{pid}/funnels"
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
        assert (await api.get(base)).json() == {"funnels": []}
        created = await api.post(base, json={"name": "Checkout", "steps": STEPS, "window_seconds": 3600})
        assert created.status_code == 201, created.text
        funnel = created.json()
        funnel_id = funnel["funnel_id"]
        assert funnel == {
            "funnel_id": funnel_id,
            "name": "Checkout",
            "steps": STEPS,
            "window_seconds": 3600,
            "created_at": funnel["created_at"],
            "backfilled": False,
        }
        assert funnel["created_at"].endswith("Z")

        async def backfilled() -> dict[str, Any] | None:
            report = (await api.get(f"{base}/{funnel_id}")).json()
            return report if report["funnel"]["backfilled"] else None

        report = await stack.until(backfilled, timeout=20)
        assert report["as_of"] == iso(now) and report["days"] == 30
        assert report["funnel"] == {**funnel, "backfilled": True}
        assert (await api.get(base)).json()["funnels"] == [report["funnel"]]
        assert report["steps"] == [
            {
                "step": 1,
                "event": "$page",
                "path": "/pricing",
                "count": 6,
                "conversion_pct": 100.0,
                "drop_off_pct": None,
                "high_drop_off": False,
            },
            {
                "step": 2,
                "event": "Signed Up",
                "path": "",
                "count": 2,
                "conversion_pct": 33.3,
                "drop_off_pct": 66.7,
                "high_drop_off": True,
            },
            {
                "step": 3,
                "event": "Order Completed",
                "path": "",
                "count": 1,
                "conversion_pct": 16.7,
                "drop_off_pct": 50.0,
                "high_drop_off": False,
            },
        ]

        # new traffic after the funnel exists: the aggregator keeps progress current
        await send(stack, key, [page("f8", now - 5 * M, "/pricing"), track("f8", now - 4 * M, "Signed Up")])

        async def counts() -> list[int]:
            body = (await api.get(f"{base}/{funnel_id}", params={"days": 30})).json()
            return [s["count"] for s in body["steps"]]

        await stack.until(lambda: _equals(counts(), [7, 3, 1]), timeout=30)

        # a second funnel, a list, a delete
        other = await api.post(base, json={"name": "Signups", "steps": STEPS[1:]})
        assert other.status_code == 201 and other.json()["window_seconds"] == 86400
        listed = (await api.get(base)).json()["funnels"]
        assert [f["name"] for f in listed] == ["Checkout", "Signups"]
        assert (await api.delete(f"{base}/{other.json()['funnel_id']}")).status_code == 204
        assert [f["name"] for f in (await api.get(base)).json()["funnels"]] == ["Checkout"]
        assert (await api.delete(f"{base}/{other.json()['funnel_id']}")).status_code == 404
        assert (await api.get(f"{base}/{other.json()['funnel_id']}")).status_code == 404
        assert (await api.get(f"{base}/f_nope")).status_code == 404

        # hostile names are stored as data and come back verbatim
        for name in ("'; DROP TABLE funnels; --", 'x" OR "1"="1', "Ω 🙂 -- /* */"):
            made = await api.post(base, json={"name": name, "steps": STEPS[:2]})
            assert made.status_code == 201 and made.json()["name"] == name
            assert (await api.delete(f"{base}/{made.json()['funnel_id']}")).status_code == 204
        assert [f["funnel_id"] for f in (await api.get(base)).json()["funnels"]] == [funnel_id]

        # bad definitions
        bad: list[tuple[dict[str, Any], list[Any]]] = [
            ({"name": "", "steps": STEPS}, ["body", "name"]),
            ({"name": "x" * 101, "steps": STEPS}, ["body", "name"]),
            ({"name": "one", "steps": STEPS[:1]}, ["body", "steps"]),
            ({"name": "nine", "steps": STEPS * 3}, ["body", "steps"]),
            ({"name": "w", "steps": STEPS, "window_seconds": 59}, ["body", "window_seconds"]),
            ({"name": "w", "steps": STEPS, "window_seconds": 2_592_001}, ["body", "window_seconds"]),
            ({"name": "e", "steps": [{"event": ""}, {"event": "x"}]}, ["body", "steps", 0, "event"]),
            (
                {"name": "h", "steps": [{"event": "$heartbeat"}, {"event": "x"}]},
                ["body", "steps", 0, "event"],
            ),
            ({"name": "u", "steps": STEPS, "colour": "red"}, ["body", "colour"]),
        ]
        for body, loc in bad:
            response = await api.post(base, json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["detail"][0]["loc"] == loc, (body, response.json())
        assert (await api.get(f"{base}/{funnel_id}", params={"days": 0})).status_code == 422
        # nothing of that was stored
        assert [f["funnel_id"] for f in (await api.get(base)).json()["funnels"]] == [funnel_id]

    # another project's key sees none of it
    other_site = await stack.create_project("Other")
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {other_site.read_key}"}, timeout=10
    ) as api:
        assert (await api.get(f"{base}/{funnel_id}")).status_code == 404
        assert (await api.delete(f"{base}/{funnel_id}")).status_code == 404
        mine = f"/api/projects/{other_site.project_id}/funnels"
        assert (await api.get(mine)).json() == {"funnels": []}
        assert (await api.get(f"{mine}/{funnel_id}")).status_code == 404


async def _equals(pending: Any, expected: list[int]) -> bool:
    return bool(await pending == expected)
