"""The budget of failed read-key checks per client address (services/api/deps.py): the bucket on
a fake clock, the address a budget belongs to, and the real API app (over ASGI, no server) on a
pool that answers the key lookups from memory and counts them, so "no ClickHouse query past the
budget" is counted, not assumed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from starlette.requests import Request

from services.api import queries
from services.api.app import create_app
from services.api.deps import (
    AUTH_LIMITED,
    PRUNE_SECONDS,
    AuthFailures,
    client_address,
    key_check,
    project_scope,
)
from services.api.routes.projects import require_admin
from werkstroom import projects
from werkstroom.http import client_key
from werkstroom.settings import Settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- the bucket ----------------------------------------------------------------------------------


def test_a_client_gets_its_budget_of_failures_then_waits_for_a_token() -> None:
    clock = Clock()
    failures = AuthFailures(6, clock=clock)  # 6 a minute: a token every 10 s
    assert [failures.take("a") for _ in range(6)] == [0.0] * 6
    assert failures.take("a") == pytest.approx(10.0)
    clock.t += 4
    assert failures.take("a") == pytest.approx(6.0)  # refused again: nothing spent
    clock.t += 6
    assert failures.take("a") == 0.0  # one token back
    assert failures.take("a") == pytest.approx(10.0)
    assert failures.take("b") == 0.0  # another client: a budget of its own
    clock.t += 60
    assert [failures.take("a") for _ in range(6)] == [0.0] * 6  # refilled, never above 6
    assert failures.take("a") > 0


def test_successful_checks_cost_nothing() -> None:
    clock = Clock()
    failures = AuthFailures(3, clock=clock)
    for _ in range(100):  # good keys: each check takes a token and gives it back
        assert failures.take("a") == 0.0
        failures.give_back("a")
    assert len(failures) == 0  # a full bucket is no bucket
    assert [failures.take("a") for _ in range(3)] == [0.0] * 3
    assert failures.take("a") > 0


def test_concurrent_checks_cannot_overrun_the_budget() -> None:
    failures = AuthFailures(3, clock=Clock())
    # three checks in flight hold the three tokens: a fourth is refused before its lookup
    assert [failures.take("a") for _ in range(3)] == [0.0] * 3
    assert failures.take("a") > 0
    failures.give_back("a")  # one of them turned out a good key
    assert failures.take("a") == 0.0


def test_zero_means_no_limit() -> None:
    failures = AuthFailures(0, clock=Clock())
    assert all(failures.take("a") == 0.0 for _ in range(1000))
    assert len(failures) == 0


def test_memory_is_bounded_by_a_cap_and_refilled_buckets_are_swept() -> None:
    clock = Clock()
    failures = AuthFailures(5, clock=clock, max_clients=100)
    for i in range(1000):  # a thousand addresses, one failure each
        failures.take(f"c{i}")
        assert len(failures) <= 100
    # the least recently used went first: the newest hundred are kept
    assert failures._buckets.keys() == {f"c{i}" for i in range(900, 1000)}
    for _ in range(5):
        failures.take("attacker")
    assert failures.take("attacker") > 0
    for i in range(1000, 1099):  # newer clients fill the table; the failing one stays recent
        failures.take(f"c{i}")
        failures.take("attacker")
    assert "attacker" in failures._buckets and failures.take("attacker") > 0
    clock.t += PRUNE_SECONDS  # every bucket refilled: the next check sweeps them all
    failures.take("late")
    assert failures._buckets.keys() == {"late"}


# -- whose budget --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7:5123", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same subscriber's /64
        ("[2001:db8:1:3::1]:443", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("testclient", "testclient"),
        ("x" * 500, "x" * 64),
    ],
)
def test_address_key(host: str, key: str) -> None:
    assert client_key(host, None, False) == key


def request(client: str, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded]
    return Request({"type": "http", "headers": headers, "client": (client, 50000)})


def test_the_address_is_the_connections_unless_forwarded_for_is_trusted() -> None:
    spoofed = request("10.0.0.1", "1.1.1.1")
    assert client_address(spoofed, trust_forwarded_for=False) == "10.0.0.1"
    # behind a trusted proxy: the right-most entry, the one the proxy added; entries to its
    # left (and earlier headers) are whatever the client sent
    assert client_address(spoofed, trust_forwarded_for=True) == "1.1.1.1"
    chain = request("10.0.0.1", "6.6.6.6, 7.7.7.7", "203.0.113.9")
    assert client_address(chain, trust_forwarded_for=True) == "203.0.113.9"
    assert client_address(request("10.0.0.1", "6.6.6.6, 2001:db8::1 "), True) == "2001:db8::/64"
    assert client_address(request("10.0.0.1", " , "), True) == "10.0.0.1"  # empty: the connection
    assert client_address(request("10.0.0.1"), True) == "10.0.0.1"


def test_a_check_gives_its_token_back_unless_the_key_was_wrong_or_the_caller_hung_up() -> None:
    failures = AuthFailures(2, clock=Clock())
    app = SimpleNamespace(
        state=SimpleNamespace(auth_failures=failures, settings=Settings(trust_forwarded_for=False))
    )
    scope = {"type": "http", "headers": [], "client": ("203.0.113.5", 1), "app": app}

    with key_check(Request(scope)):
        pass  # a good key
    with pytest.raises(RuntimeError), key_check(Request(scope)):
        raise RuntimeError("ClickHouse is down")  # judged nothing
    assert len(failures) == 0
    with pytest.raises(asyncio.CancelledError), key_check(Request(scope)):
        raise asyncio.CancelledError  # the lookups go on in their threads: paid for
    with key_check(Request(scope)) as failed:
        failed()  # a wrong key
    with pytest.raises(Exception, match="429"), key_check(Request(scope)):
        pass


# -- through the app -----------------------------------------------------------------------------

GOOD = "rk_good"
PROJECT = "p_good"


class CountingPool:
    """Answers the read-key lookups from memory and the data reads with nothing; counts every
    call, as each would be a ClickHouse query."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def run(self, fn: Any, *args: Any) -> Any:
        self.calls.append(fn.__name__)
        if fn is projects.read_key_scope:
            return ("UTC", None) if tuple(args) == (PROJECT, GOOD) else None
        if fn is queries.project_by_read_key:
            found = args[0] == projects.hash_key(GOOD)
            return (
                {"project_id": PROJECT, "name": "Shop", "write_key": "wk_x", "timezone": "UTC"}
                if found
                else None
            )
        if fn is queries.online_rows:
            return []
        if fn in (queries.online_persons, queries.last_events):
            return {}
        if fn is queries.pipeline:
            return {"last_write_at": None, "last_event_at": None, "lag": None, "bots_today": 0}
        raise AssertionError(f"unexpected read {fn.__name__}")

    def close(self) -> None:
        pass


@pytest.fixture
async def app() -> AsyncIterator[Any]:
    settings = Settings(api_auth_failures_per_minute=3, trust_forwarded_for=False)
    api = create_app(settings, clickhouse=lambda: None, admin_token="admin", clock=lambda: NOW)  # type: ignore[arg-type,return-value]
    async with api.router.lifespan_context(api):
        api.state.pool = CountingPool()
        yield api


def client(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_past_the_budget_429_with_retry_after_and_no_lookup(app: Any) -> None:
    pool: CountingPool = app.state.pool
    async with client(app, "203.0.113.7") as attacker, client(app, "198.51.100.2") as other:
        assert (
            await attacker.get(f"/api/projects/{PROJECT}/online", headers=bearer("rk_a"))
        ).status_code == 401
        assert (await attacker.get("/api/me", headers=bearer("rk_b"))).status_code == 401
        # a valid key on a project that is not its own is a failure too (it costs the same lookups)
        assert (await attacker.get("/api/projects/p_other/metrics", headers=bearer(GOOD))).status_code == 404
        spent = len(pool.calls)
        for path in (
            f"/api/projects/{PROJECT}/online",
            f"/api/projects/{PROJECT}/live",
            f"/api/projects/{PROJECT}/export/users.csv",
            "/api/me",
        ):
            refused = await attacker.get(path, headers={**bearer("rk_c"), "X-Forwarded-For": "9.9.9.9"})
            assert refused.status_code == 429, (path, refused.text)
            assert refused.headers["retry-after"] == "20"  # 3 a minute: a token every 20 s
            assert refused.json()["detail"][0]["type"] == AUTH_LIMITED
            assert refused.json()["detail"][0]["loc"] == ["header", "Authorization"]
        # an uncached good key from the refused address cannot be checked either: no lookup at all
        assert (await attacker.get("/api/me", headers=bearer(GOOD))).status_code == 429
        assert len(pool.calls) == spent
        # a missing key costs nothing and is still 401
        assert (await attacker.get("/api/me")).status_code == 401

        # another address: its own budget, and a valid key works
        me = await other.get("/api/me", headers=bearer(GOOD))
        assert me.status_code == 200 and me.json()["project_id"] == PROJECT
        assert (await other.get(f"/api/projects/{PROJECT}/online", headers=bearer(GOOD))).status_code == 200
        assert (await other.get("/api/me", headers=bearer("rk_d"))).status_code == 401
        # the key just verified is in the auth cache: from the refused address too, without a lookup
        before = len(pool.calls)
        online = await attacker.get(f"/api/projects/{PROJECT}/online", headers=bearer(GOOD))
        assert online.status_code == 200
        assert not {"read_key_scope", "project_by_read_key"} & set(pool.calls[before:])


async def test_successes_do_not_spend_the_budget(app: Any) -> None:
    async with client(app, "203.0.113.8") as user:
        for _ in range(20):  # /api/me has no cache: every one is a lookup that succeeds
            assert (await user.get("/api/me", headers=bearer(GOOD))).status_code == 200
        assert [(await user.get("/api/me", headers=bearer("rk_x"))).status_code for _ in range(4)] == [
            401,
            401,
            401,
            429,
        ]


def _depends_on(dependant: Dependant, call: Any) -> bool:
    return dependant.call is call or any(_depends_on(d, call) for d in dependant.dependencies)


def test_every_project_route_authenticates_through_project_scope() -> None:
    """The live stream, the exports and every other route under a project share one auth path,
    so one budget covers them; /api/me (checked above) uses the same key_check."""
    api = create_app(Settings(), clickhouse=lambda: None, admin_token="admin")  # type: ignore[arg-type,return-value]
    routes = [
        r
        for r in iter_route_contexts(api.routes)
        if "{project_id}" in (r.path or "") and not _depends_on(r.dependant, require_admin)
    ]  # the admin's (PATCH /api/projects/{project_id}) take the admin token instead
    assert {r.path.removeprefix("/api/projects/{project_id}") for r in routes} >= {
        "/live",
        "/online",
        "/export/{kind}.csv",
    }
    assert all(_depends_on(r.dependant, project_scope) for r in routes), [
        r.path for r in routes if not _depends_on(r.dependant, project_scope)
    ]
