"""ClickHouse unavailable, for real: the API answers 503 with a reason (never 500) and comes back
by itself; the aggregator retries without committing; ingest keeps accepting; and once
ClickHouse is back every event is counted once.

Two ways of making ClickHouse unavailable, neither a mock:

- The API alone (always runs): its clients are real clickhouse-connect HTTP clients pointed at a
  loopback endpoint that fails (tests/faults.py): a port nobody listens on, a server that
  closes the connection, answers bytes that are not HTTP, never answers, or a proxy's 502.
  Then ClickHouse is "back": the same API is pointed at the session's real ClickHouse.
- The whole pipeline for 30 s (needs a ClickHouse server: `infra` with Docker, or
  WERKSTROOM_TEST_INFRA=containers): ingest, the aggregator and the API reach the server through
  a TCP proxy (tests/integration/cuttable_proxy.py) that is cut (connections refused, open ones
  reset) and restored. The embedded engine runs inside this process and cannot be cut, so
  there this test is skipped and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import httpx
import orjson
import pytest
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI

from services.api.app import create_app
from services.api.live import feed_key
from tests.conftest import Infra
from tests.faults import Mode, closed_port, faulty_server
from tests.integration.cuttable_proxy import CuttableProxy
from tests.integration.stack import BROWSER_UA, Stack
from tests.integration.test_sink import committed
from werkstroom import metrics, projects
from werkstroom.clickhouse import connect
from werkstroom.embedded import free_port
from werkstroom.serve import _http_server, clickhouse_factory, prepare_clickhouse
from werkstroom.settings import Settings

pytestmark = pytest.mark.integration

ADMIN = "test-admin"
FUNNEL = {"name": "Signup", "steps": [{"event": "$page", "path": "/"}, {"event": "Signed Up"}]}

#: Every route that reads ClickHouse: (method, path under the project or absolute, JSON body).
PROJECT_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "online", None),
    ("GET", "metrics", None),
    ("GET", "activity", None),
    ("GET", "users", None),
    ("GET", "users/alice", None),
    ("GET", "users/alice/sessions", None),
    ("GET", "funnels", None),
    ("POST", "funnels", FUNNEL),
    ("GET", "funnels/f_1", None),
    ("DELETE", "funnels/f_1", None),
    ("GET", "snippet", None),
    ("GET", "export/online.csv", None),
    ("GET", "export/users.csv", None),
    ("GET", "export/metrics.csv", None),
    ("GET", "export/activity.csv", None),
    ("GET", "export/sessions.csv", None),
]


def ms_now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, factory: Callable[[], Client]
) -> AsyncIterator[tuple[FastAPI, str]]:
    """The real API app over real HTTP (uvicorn, as `werkstroom serve` runs it) on `factory`'s
    ClickHouse; stopped as serve stops it."""
    app = create_app(settings, clickhouse=factory, admin_token=ADMIN)
    server = _http_server(app, settings, settings.api_port)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        assert not task.done(), "the API did not start"
        assert time.monotonic() < deadline, "the API did not start within 20 s"
        await asyncio.sleep(0.05)
    try:
        yield app, f"http://127.0.0.1:{settings.api_port}"
    finally:
        await app.state.live.close()
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def call(api: httpx.AsyncClient, method: str, path: str, body: Any = None) -> httpx.Response:
    return await api.request(method, path, json=body)


def assert_unavailable(response: httpx.Response, hidden: str = "") -> None:
    """503, a JSON reason and Retry-After; the failure's text (an address, a query) kept back."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == 503, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), where
    body = response.json()
    assert body["reason"] == "clickhouse_unavailable", (where, body)
    assert body["detail"].startswith("ClickHouse is unavailable"), (where, body)
    assert int(response.headers["retry-after"]) > 0, where
    if hidden:
        assert hidden not in response.text, (where, response.text)


def api_settings(tmp_path: Path, url: str, database: str = "werkstroom") -> Settings:
    return Settings(clickhouse_url=url, clickhouse_database=database, data_dir=tmp_path, api_port=free_port())


@contextlib.contextmanager
def failing_endpoint(failure: str) -> Iterator[tuple[str, Callable[[], Client]]]:
    """(URL, client factory) of a ClickHouse address that fails as `failure` says. The factory
    is Werkstroom's own (werkstroom.clickhouse.connect), except for the timeout, which needs a
    read timeout shorter than its 60 s: there the driver's client is made directly."""
    if failure == "refused":
        url = f"http://127.0.0.1:{closed_port()}"
        yield url, clickhouse_factory(api_settings(Path("."), url))
        return
    mode: Mode = {"closes": "close", "garbage": "garbage", "timeout": "hang", "proxy_502": "status_502"}[  # type: ignore[assignment]
        failure
    ]
    with faulty_server(mode) as server:
        if failure == "timeout":

            def factory() -> Client:
                return clickhouse_connect.get_client(
                    dsn=server.url, database="werkstroom", connect_timeout=1, send_receive_timeout=1
                )

            yield server.url, factory
        else:
            yield server.url, clickhouse_factory(api_settings(Path("."), server.url))


@pytest.mark.parametrize("failure", ["refused", "closes", "garbage", "timeout", "proxy_502"])
async def test_the_api_answers_503_with_a_reason_while_clickhouse_cannot_answer(
    failure: str, tmp_path: Path
) -> None:
    """Every route that reads ClickHouse answers 503 + reason + Retry-After, whether the read
    key still has to be checked (the check itself needs ClickHouse) or was checked a moment ago
    (the data query fails); /ready says ClickHouse is unavailable; the live stream stays open
    and its poller keeps trying; nothing is a 500; and the address is not given away."""
    project_id, read_key = "p_0123456789abcdef", "rk_test"
    with failing_endpoint(failure) as (url, factory):
        port = str(urlparse(url).port)
        settings = api_settings(tmp_path, url)
        async with running_api(settings, factory) as (app, base):
            routes = PROJECT_ROUTES if failure != "timeout" else PROJECT_ROUTES[:2] + PROJECT_ROUTES[11:12]
            headers = {"Authorization": f"Bearer {read_key}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api:
                assert (await api.get("/health")).status_code == 200  # alive: a restart would not help
                ready = await api.get("/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["clickhouse"].startswith("unavailable: "), ready.text

                # The key is not known yet: checking it needs ClickHouse.
                for method, path, body in routes:
                    assert_unavailable(
                        await call(api, method, f"/api/projects/{project_id}/{path}", body), port
                    )
                assert_unavailable(await api.get(f"/api/projects/{project_id}/live"), port)
                assert_unavailable(await api.get("/api/me"), port)
                admin = {"Authorization": f"Bearer {ADMIN}"}
                assert_unavailable(await api.get("/api/projects", headers=admin), port)
                assert_unavailable(await api.post("/api/projects", json={"name": "x"}, headers=admin), port)
                # ClickHouse failing judged no key: the failed-check budget is untouched (no 429).
                assert_unavailable(await api.get(f"/api/projects/{project_id}/online"), port)

                # The key was checked a moment ago (the auth cache): the data query itself fails.
                app.state.auth_cache.keep((project_id, projects.hash_key(read_key)))
                for method, path, body in routes:
                    assert_unavailable(
                        await call(api, method, f"/api/projects/{project_id}/{path}", body), port
                    )

                # The live stream opens and stays open; its poller keeps retrying, nothing breaks.
                async with api.stream("GET", f"/api/projects/{project_id}/live") as live:
                    assert live.status_code == 200
                    assert live.headers["content-type"].startswith("text/event-stream")
                    lines = live.aiter_lines()
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(anext(lines), 2.5)  # a failed poll and its retry
                    feed = app.state.live.feeds[feed_key(project_id)]
                    assert feed.task is not None and not feed.task.done()
                assert (await api.get("/health")).status_code == 200


async def test_the_api_comes_back_by_itself_when_clickhouse_does(infra: Infra, tmp_path: Path) -> None:
    """The same running API: 503 while its ClickHouse address refuses connections, then, with
    the address pointing at the real ClickHouse, answers from it: no restart, nothing cached
    from the outage (a failed open leaves no client behind)."""
    database = f"test_{uuid.uuid4().hex[:10]}"
    real = api_settings(tmp_path, infra.clickhouse_url, database)
    client = await asyncio.to_thread(prepare_clickhouse, real)
    try:
        project = projects.create_project(client, "Back again")
        dead = f"http://127.0.0.1:{closed_port()}"
        target = {"url": dead}

        def factory() -> Client:
            return connect(target["url"], database)

        async with running_api(api_settings(tmp_path, dead, database), factory) as (_app, base):
            headers = {"Authorization": f"Bearer {project.read_key}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api:
                online = f"/api/projects/{project.project_id}/online"
                assert_unavailable(await api.get(online))
                assert_unavailable(await api.get("/api/me"))
                assert (await api.get("/ready")).status_code == 503

                target["url"] = infra.clickhouse_url  # ClickHouse is back
                back = await api.get(online)
                assert back.status_code == 200, back.text
                assert back.json()["online"] == 0
                assert (await api.get("/api/me")).json()["project_id"] == project.project_id
                metrics_answer = await api.get(f"/api/projects/{project.project_id}/metrics")
                assert metrics_answer.status_code == 200, metrics_answer.text
                ready = await api.get("/ready")
                assert ready.status_code == 200 and ready.json()["checks"] == {"clickhouse": "ok"}
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")


# -- the whole pipeline, ClickHouse cut for 30 s ----------------------------------------------------

OUTAGE_SECONDS = 30.0
VISITORS = 5


def page(visitor: int, path: str, at: datetime) -> dict[str, Any]:
    return {
        "type": "page",
        "anonymousId": f"visitor-{visitor}",
        "messageId": uuid.uuid4().hex,
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        "properties": {"path": path, "url": f"https://shop.example{path}"},
        "context": {"userAgent": BROWSER_UA},
    }


async def send_pages(stack: Stack, count: int, path: str) -> None:
    """`count` page views spread over the visitors; every one must be acknowledged."""
    calls = [page(i % VISITORS, path, ms_now()) for i in range(count)]
    response = await stack.post("/v1/batch", {"writeKey": stack.project.write_key, "batch": calls})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == count, response.text


class LiveReader:
    """Reads one live stream (SSE) in the background: every `online` snapshot, when it came."""

    def __init__(self, api: httpx.AsyncClient, path: str) -> None:
        self.snapshots: list[tuple[float, dict[str, Any]]] = []
        self.lines = 0
        self.status: int | None = None
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._read(api, path))

    async def _read(self, api: httpx.AsyncClient, path: str) -> None:
        try:
            async with api.stream("GET", path, timeout=httpx.Timeout(10, read=None)) as response:
                self.status = response.status_code
                event = ""
                async for line in response.aiter_lines():
                    self.lines += 1
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "online":
                        self.snapshots.append((time.monotonic(), orjson.loads(line.split(":", 1)[1])))
        except BaseException as exc:  # cancelled at the end, or the stream broke: told below
            self.error = exc
            raise

    @property
    def alive(self) -> bool:
        return not self._task.done()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def through_proxy(
    infra: Infra, names: dict[str, str], tmp_path: Path
) -> AsyncIterator[tuple[Stack, CuttableProxy]]:
    """Ingest, the aggregator and the API on their own database, reaching the session's
    ClickHouse server only through a proxy the test can cut."""
    if infra.kind == "embedded":
        pytest.skip(
            "needs a ClickHouse server to cut off: the embedded engine (chdb) runs inside this "
            "process and cannot be made unreachable. Runs when `infra` provides a server "
            "(a reachable Docker engine, or WERKSTROOM_TEST_INFRA=containers)."
        )
    server = urlparse(infra.clickhouse_url)
    assert server.hostname and server.port, infra.clickhouse_url
    async with CuttableProxy(server.hostname, server.port) as proxy:
        auth = f"{server.username}:{server.password}@" if server.username else ""
        url = server._replace(netloc=f"{auth}127.0.0.1:{proxy.port}").geturl()
        async with Stack(infra.bootstrap, url, names, data_dir=tmp_path) as stack:
            try:
                yield stack, proxy
            finally:
                await proxy.restore()  # so the stack can stop and drop its database


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A loopback server (threads) sending back what it reads, until the peer half-closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def exchange(port: int, data: bytes) -> bytes:
    """One blocking round trip: send `data`, half-close, read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        return got


async def test_the_proxy_refuses_and_resets_when_cut_and_carries_again_when_restored() -> None:
    """The machinery of the 30-s test below, checked where that test cannot run: bytes pass both
    ways; a cut refuses new connections and resets the open ones; a restore listens on the same
    port; and a call that blocks the test's own event loop gets through (the proxy has a loop
    of its own, as it must: code under test opens ClickHouse clients synchronously)."""
    with echo_server() as upstream:
        async with CuttableProxy("127.0.0.1", upstream) as proxy:
            port = proxy.port
            assert exchange(port, b"hello" * 50_000) == b"hello" * 50_000  # blocking, in this loop
            held = socket.create_connection(("127.0.0.1", port), timeout=5)
            with held:
                held.sendall(b"x")
                assert held.recv(1) == b"x"
                await proxy.cut()
                assert not proxy.up
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=5)
                with pytest.raises(ConnectionResetError):
                    held.sendall(b"y")
                    held.recv(1)
            await proxy.restore()
            assert proxy.up and proxy.port == port
            assert exchange(port, b"again") == b"again"
            assert proxy.connections == 3


async def test_clickhouse_away_for_30_s_then_everything_is_counted_once(
    through_proxy: tuple[Stack, CuttableProxy], infra: Infra
) -> None:
    """Issue 18: ClickHouse unreachable for 30 s (connections refused, open ones reset), with
    events coming in all along. Meanwhile ingest acknowledges every event, the aggregator
    retries without writing or committing anything and keeps running, the API answers 503 with
    a reason (never 500) and /ready says ClickHouse is unavailable, and the live stream stays
    open. Once ClickHouse is back, without restarting anything: every acknowledged event is in
    `events` once, counted once in the daily counts and sessions, committed, shown by the API,
    and pushed on the live stream."""
    stack, proxy = through_proxy
    pid = stack.project.project_id
    direct = connect(infra.clickhouse_url, stack.settings.clickhouse_database)  # not through the proxy
    api_url = await stack.start_api()
    headers = {"Authorization": f"Bearer {stack.project.read_key}"}
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(direct.close)
        api = await cleanup.enter_async_context(
            httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30)
        )
        # Before: 100 page views written, counted and committed; a live stream follows them.
        before = 100
        await send_pages(stack, before, "/before")
        await stack.until(lambda: committed_is_at_least(stack, before), timeout=60)
        live = LiveReader(api, f"/api/projects/{pid}/live")
        cleanup.push_async_callback(live.close)
        await stack.until(lambda: bool(live.snapshots), timeout=20)
        assert live.snapshots[-1][1]["online"] == VISITORS
        committed_before = await committed(stack)
        assert committed_before == before

        # ClickHouse away for 30 s.
        failures = metrics.SINK_INSERT_FAILURES._value.get()
        await proxy.cut()
        cut_at = time.monotonic()
        during, statuses = 0, []
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            await send_pages(stack, 20, "/during")  # ingest keeps accepting
            during += 20
            for path in ("online", "metrics", "activity", "export/users.csv"):
                response = await api.get(f"/api/projects/{pid}/{path}")
                statuses.append(response.status_code)
                assert_unavailable(response, str(proxy.port))
            ready = await api.get("/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["clickhouse"].startswith("unavailable")
            # The aggregator writes nothing and commits nothing meanwhile.
            assert direct.command("SELECT count() FROM events FINAL") == before
            assert await committed(stack) == committed_before
            assert live.alive, live.error
            await asyncio.sleep(3)
        assert 500 not in statuses and set(statuses) == {503}, statuses
        assert metrics.SINK_INSERT_FAILURES._value.get() > failures  # it kept retrying
        assert stack.sink is not None and stack._tasks and not any(t.done() for t in stack._tasks), (
            "the aggregator or ingest stopped during the outage"
        )

        # ClickHouse is back: everything acknowledged is written once, counted once, committed.
        await proxy.restore()
        total = before + during
        await stack.until(lambda: committed_is_at_least(stack, total), timeout=90)
        assert await committed(stack) == total
        assert direct.command("SELECT count() FROM events FINAL") == total
        assert direct.command("SELECT uniqExact(event_id) FROM events") == total
        counted = "SELECT sum(page_views), sum(events) FROM events_daily FINAL WHERE project_id = {p:String}"
        assert tuple(direct.query(counted, parameters={"p": pid}).first_row) == (total, total)
        sessions = direct.query(
            "SELECT count(), sum(page_views) FROM sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0",
            parameters={"p": pid},
        ).first_row
        assert tuple(sessions) == (VISITORS, total)  # one session each: 30 s is no session break

        # The API answers again, from the same clients, with every page view counted once.
        async def activity_counts_all() -> bool:
            response = await api.get(f"/api/projects/{pid}/activity", params={"days": 2})  # midnight
            return (
                response.status_code == 200 and sum(d["page_views"] for d in response.json()["days"]) == total
            )

        await stack.until(activity_counts_all, timeout=30)
        assert (await api.get("/ready")).status_code == 200
        # The live stream lived through it and shows where the visitors went meanwhile.
        await stack.until(
            lambda: (
                bool(live.snapshots)
                and {u["current_path"] for u in live.snapshots[-1][1]["users"]} == {"/during"}
            ),
            timeout=30,
        )
        assert live.alive and live.status == 200


async def committed_is_at_least(stack: Stack, expected: int) -> bool:
    return await committed(stack) >= expected
