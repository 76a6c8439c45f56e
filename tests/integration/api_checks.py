"""Checks through the real API that the client matrix and the browser tracker's test share: the
persons of the users table and its plan segments, and a funnel that existed before the traffic
(kept current by the aggregator) against the same one created after it (back-filled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx


async def eventually(fetch: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 30) -> None:
    """Poll until `fetch()` gives `expected`; then assert it, naming both: pytest rewrites the
    asserts of test modules only, so a bare assert here said just AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        got = await fetch()
        if got == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert got == expected, f"after {timeout} s: got {got!r}, expected {expected!r}"


async def users(api: httpx.AsyncClient, base: str, segment: str = "all") -> list[dict[str, Any]]:
    """GET users of one segment: each person's id, sessions, page views and plan, by person id."""
    body = (await api.get(f"{base}/users", params={"segment": segment})).json()
    keep = ("person_id", "sessions", "page_views", "plan")
    return sorted(({k: u[k] for k in keep} for u in body["users"]), key=lambda u: u["person_id"])


async def check_users_and_plans(api: httpx.AsyncClient, base: str, everyone: list[dict[str, Any]]) -> None:
    """GET users lists `everyone` (as `users` gives them), and the premium and the trial segment
    those of their plan."""
    await eventually(lambda: users(api, base), everyone)
    for plan in ("premium", "trial"):
        await eventually(lambda plan=plan: users(api, base, plan), [u for u in everyone if u["plan"] == plan])


async def check_funnel(
    api: httpx.AsyncClient,
    base: str,
    steps: list[dict[str, str]],
    live_id: str,
    want: list[Any],
    step: Callable[[dict[str, Any]], Any],
) -> None:
    """The funnel `live_id` (created before the traffic) reports `want`, each step as `step`
    reads it, and so does the same funnel (`steps`) created now."""

    async def funnel(funnel_id: str) -> list[Any]:
        report = (await api.get(f"{base}/funnels/{funnel_id}")).json()
        return [step(s) for s in report["steps"]]

    await eventually(lambda: funnel(live_id), want)
    backfilled = await api.post(f"{base}/funnels", json={"name": "Backfilled", "steps": steps})
    assert backfilled.status_code == 201, backfilled.text
    assert backfilled.json()["backfilled"] is False  # the aggregator back-fills it, within seconds

    async def once_backfilled(funnel_id: str = backfilled.json()["funnel_id"]) -> list[Any] | None:
        report = (await api.get(f"{base}/funnels/{funnel_id}")).json()
        return [step(s) for s in report["steps"]] if report["funnel"]["backfilled"] else None

    await eventually(once_backfilled, want)
