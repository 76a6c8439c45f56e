"""An in-process Werkstroom for one test: the real ingest app over HTTP and the real sink,
on the test's own topics and database, against the session's Kafka and ClickHouse."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from clickhouse_connect.driver.client import Client

from services.aggregator.bots import BotsSink
from services.aggregator.sink import EventsSink
from services.api.app import create_app as create_api
from services.ingest.app import create_app as create_ingest
from werkstroom import projects
from werkstroom.clickhouse import connect
from werkstroom.contract import Topics
from werkstroom.embedded import free_port
from werkstroom.kafka import ensure_topics
from werkstroom.serve import _http_server, _Server, clickhouse_factory, prepare_clickhouse
from werkstroom.settings import Settings

T = TypeVar("T")


def own_names() -> dict[str, str]:
    """Topic, group and database names of one test (or one module's stack) alone."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "topic_events": f"test.events.{suffix}",
        "topic_dlq": f"test.dlq.{suffix}",
        "topic_bots": f"test.bots.{suffix}",
        "sink_group": f"test-sink-{suffix}",
        "bots_group": f"test-bots-{suffix}",
        "clickhouse_database": f"test_{suffix}",
    }


class Stack:
    def __init__(
        self,
        bootstrap: str,
        clickhouse_url: str,
        names: dict[str, str],
        *,
        data_dir: Any,
        ingest: bool = True,
        sink: bool = True,
        bots: bool = False,
        **overrides: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.settings = Settings(
            kafka_bootstrap=bootstrap,
            clickhouse_url=clickhouse_url,
            data_dir=Path(str(data_dir)),
            ingest_port=free_port(),
            api_port=free_port(),
            sink_flush_ms=100,
            key_refresh_seconds=0.5,
            kafka_session_timeout_ms=3000,
            derived_refresh_ms=100,
            online_history_seconds=0.5,
            **names,
            **overrides,
        )
        self.topics = Topics.from_settings(self.settings)
        self._want_ingest = ingest
        self._want_sink = sink
        self._want_bots = bots
        self.bots: BotsSink | None = None
        self.client: Client
        self.project: projects.NewProject
        self.http: httpx.AsyncClient
        self.server: _Server | None = None
        self.sink: EventsSink | None = None
        self.api_server: _Server | None = None
        self._api_task: asyncio.Task[Any] | None = None
        self.sinks: list[EventsSink] = []
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    async def __aenter__(self) -> Stack:
        self.client = await asyncio.to_thread(prepare_clickhouse, self.settings)
        await ensure_topics(self.bootstrap, self.topics.all(), self.settings.topic_partitions)
        self.project = projects.create_project(self.client, "Test site")
        self.http = httpx.AsyncClient(base_url=self.ingest_url, timeout=10)
        if self._want_ingest:
            await self.start_ingest()
        if self._want_sink:
            self.start_sink()
        if self._want_bots:
            self.start_bots()
        return self

    def start_bots(self) -> BotsSink:
        """The aggregator's bots consumer (services.aggregator.bots), as `serve` runs it."""
        self.bots = BotsSink(self.settings, self.bootstrap, clickhouse_factory(self.settings))
        self._bots_task = asyncio.create_task(self.bots.run())
        return self.bots

    async def stop_bots(self) -> None:
        if self.bots is not None:
            self.bots.stop()
            await asyncio.wait_for(self._bots_task, 15)
            self.bots = None

    async def start_ingest(self) -> None:
        app = create_ingest(
            self.settings, bootstrap=self.bootstrap, clickhouse=clickhouse_factory(self.settings)
        )
        self.ingest_app = app
        self.server = _http_server(app, self.settings, self.settings.ingest_port)
        self._tasks.append(asyncio.create_task(self.server.serve()))
        await self.until(lambda: self.server is not None and self.server.started, timeout=20)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    async def start_api(self, **kwargs: Any) -> str:
        """The real API app over HTTP on settings.api_port (kwargs go to create_app, e.g. a fixed
        `clock`); returns its base URL. Stopped like `werkstroom serve` stops it."""
        self.api_app = create_api(
            self.settings, clickhouse=clickhouse_factory(self.settings), admin_token="test-admin", **kwargs
        )
        self.api_server = _http_server(self.api_app, self.settings, self.settings.api_port)
        self._api_task = asyncio.create_task(self.api_server.serve())
        await self.until(lambda: self.api_server is not None and self.api_server.started, timeout=20)
        return self.api_url

    async def stop_api(self) -> None:
        if self.api_server is None or self._api_task is None:
            return
        await self.api_app.state.live.close()  # what `werkstroom serve` does: end the SSE streams
        self.api_server.should_exit = True
        await asyncio.wait_for(self._api_task, 15)
        self.api_server = self._api_task = None

    def start_sink(self, **kwargs: Any) -> EventsSink:
        self.sink = EventsSink(self.settings, self.bootstrap, clickhouse_factory(self.settings), **kwargs)
        self.sinks.append(self.sink)
        self._tasks.append(asyncio.create_task(self.sink.run()))
        return self.sink

    async def stop_sink(self) -> None:
        if self.sink is not None:
            self.sink.stop()
        task = self._tasks.pop()
        await task

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_api()
        for sink in self.sinks:
            sink.stop()
        with contextlib.suppress(Exception):
            await self.stop_bots()
        if self.server is not None:
            self.server.should_exit = True
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        await self.http.aclose()
        with contextlib.suppress(Exception):
            self.client.command(f"DROP DATABASE IF EXISTS `{self.settings.clickhouse_database}`")

    # -- helpers ------------------------------------------------------------------------

    async def create_project(self, name: str, timezone: str = "UTC") -> projects.NewProject:
        """A project that the running ingest already accepts (its key cache reloaded)."""
        created = projects.create_project(self.client, name, timezone)
        await self.ingest_app.app.state.ingest.s.keys.reload()
        return created

    async def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        if not isinstance(body, bytes | str):
            body = orjson.dumps(body)
        headers = {"Content-Type": "application/json", "User-Agent": BROWSER_UA, **kwargs.pop("headers", {})}
        return await self.http.post(path, content=body, headers=headers, **kwargs)

    async def send_from(self, by_address: dict[str, list[dict[str, Any]]]) -> None:
        """Each address's calls as one batch of this project's, sent as if from that address
        (X-Forwarded-For, which the stack trusts when asked to; "" sends none); each must be
        accepted whole."""
        for address, calls in by_address.items():
            headers = {"X-Forwarded-For": address} if address else {}
            sent = await self.post(
                "/v1/batch", {"writeKey": self.project.write_key, "batch": calls}, headers=headers
            )
            assert sent.status_code == 200 and sent.json()["accepted"] == len(calls), sent.text

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.client.query(sql, parameters=params).result_rows]

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.client.query(sql, parameters=params).first_row[0]

    async def until(self, check: Callable[[], T | Awaitable[T]], timeout: float = 15.0) -> T:
        """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
            await asyncio.sleep(0.05)

    async def wait_count(
        self, expected: int, sql: str = "SELECT count() FROM events FINAL", **params: Any
    ) -> int:
        await self.until(lambda: self.scalar(sql, **params) >= expected, timeout=20)
        await asyncio.sleep(0.3)  # and no more than that arrives
        count: int = self.scalar(sql, **params)
        return count

    async def read_topic(self, topic: str, expected: int, timeout: float = 10.0) -> list[Any]:
        """Read `expected` messages from the start of `topic` (no group, no commits)."""
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await consumer.start()
        found: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while len(found) < expected and time.monotonic() < deadline:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(messages)
        finally:
            await consumer.stop()
        return found

    def other_client(self) -> Client:
        return connect(self.settings.effective_clickhouse_url, self.settings.clickhouse_database)


BROWSER_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
