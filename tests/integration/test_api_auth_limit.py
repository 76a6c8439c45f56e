"""Failed read-key checks are limited per client address, through the real API app over HTTP on
the real ClickHouse. The clients connect from different loopback addresses (127.0.0.2, .3, .4),
so the connection's address differs for real; WERKSTROOM_TRUST_FORWARDED_FOR is off, so the
X-Forwarded-For an attacker sends changes nothing. The ClickHouse queries the API makes are
counted by observing its pool (the queries still run): past the budget there are none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import Infra
from tests.integration.stack import Stack
from werkstroom import projects

pytestmark = pytest.mark.integration

BUDGET = 3


@pytest.fixture
async def limited(infra: Infra, names: dict[str, str], tmp_path: object) -> AsyncIterator[Stack]:
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        ingest=False,
        sink=False,
        api_auth_failures_per_minute=BUDGET,
    ) as stack:
        await stack.start_api()
        yield stack


def from_address(stack: Stack, address: str, key: str | None = None) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=transport, base_url=stack.api_url, headers=headers, timeout=10)


class Queries:
    """Counts the calls the API's ClickHouse pool runs (each one a query or more)."""

    def __init__(self, stack: Stack) -> None:
        pool = stack.api_app.state.pool
        self.count = 0
        real = pool.run

        async def run(fn: Any, *args: Any) -> Any:
            self.count += 1
            return await real(fn, *args)

        pool.run = run


async def test_failed_checks_past_the_budget_get_429_without_a_query(limited: Stack) -> None:
    stack = limited
    mine = stack.project
    other = projects.create_project(stack.client, "Other site")
    queries = Queries(stack)
    online = f"/api/projects/{mine.project_id}/online"
    async with (
        from_address(stack, "127.0.0.2") as attacker,
        from_address(stack, "127.0.0.3", mine.read_key) as user,
        from_address(stack, "127.0.0.4") as careful,
    ):
        spoof = {"X-Forwarded-For": "198.51.100.1"}
        assert (
            await attacker.get(online, headers={"Authorization": "Bearer rk_guess1", **spoof})
        ).status_code == 401
        assert (
            await attacker.get("/api/me", headers={"Authorization": "Bearer rk_guess2"})
        ).status_code == 401
        # another project's valid key on this project's id: refused, and counted the same
        wrong = await attacker.get(online, headers={"Authorization": f"Bearer {other.read_key}"})
        assert wrong.status_code == 404
        spent = queries.count
        assert spent >= 2 * BUDGET - 1  # each of those failures cost lookups

        for path in (
            online,
            f"/api/projects/{mine.project_id}/live",
            f"/api/projects/{mine.project_id}/export/users.csv",
            "/api/me",
        ):
            for headers in (
                {"Authorization": "Bearer rk_guess3"},
                {"Authorization": "Bearer rk_guess4", **spoof},
            ):
                refused = await attacker.get(path, headers=headers)
                assert refused.status_code == 429, (path, refused.text)
                assert refused.headers["content-type"].startswith("application/json")
                assert 1 <= int(refused.headers["retry-after"]) <= 60 // BUDGET
                (detail,) = refused.json()["detail"]
                assert detail["type"] == "auth_rate_limited" and detail["loc"] == ["header", "Authorization"]
        # even a good key is not looked up from there now (it is not in the auth cache yet)
        assert (
            await attacker.get(online, headers={"Authorization": f"Bearer {mine.read_key}"})
        ).status_code == 429
        assert queries.count == spent  # not one query for any refused request

        # from another address the valid key works, over every kind of route
        assert (await user.get("/api/me")).json()["project_id"] == mine.project_id
        assert (await user.get(online)).json()["online"] == 0
        export = await user.get(f"/api/projects/{mine.project_id}/export/metrics.csv")
        assert export.status_code == 200 and export.text.startswith("metric,value")
        async with user.stream("GET", f"/api/projects/{mine.project_id}/live") as live:
            assert live.status_code == 200
            async for line in live.aiter_lines():
                if line.startswith("data:"):
                    break
        # and that address has a budget of its own
        assert (await user.get("/api/me", headers={"Authorization": "Bearer rk_typo"})).status_code == 401

        # a key verified a moment ago is in the auth cache: good from the refused address too,
        # since checking it needs no query
        cached = await attacker.get(online, headers={"Authorization": f"Bearer {mine.read_key}"})
        assert cached.status_code == 200

        # successes never spend the budget: many good checks (/api/me has no cache), then the
        # whole budget of failures is still there
        for _ in range(3 * BUDGET):
            assert (
                await careful.get("/api/me", headers={"Authorization": f"Bearer {other.read_key}"})
            ).status_code == 200
        codes = [
            (await careful.get("/api/me", headers={"Authorization": f"Bearer rk_x{i}"})).status_code
            for i in range(BUDGET + 1)
        ]
        assert codes == [401] * BUDGET + [429]
