"""The aggregator's operations app: /health, /ready and /metrics, the same endpoints as ingest's
and the API's (werkstroom.http), on `aggregator_port`. `serve --target aggregator` runs it: a
scaled aggregator opens no other port, so without it nothing could probe or scrape it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI

from werkstroom.clickhouse import ClientFactory
from werkstroom.clickhouse.errors import describe, is_transient
from werkstroom.clickhouse.migrate import is_current
from werkstroom.http import documented_app, index_router, ops_router

TAGS = [{"name": "operations", "description": "Liveness, readiness and Prometheus metrics."}]


class Consumer(Protocol):
    """A consumer of the aggregator (services.aggregator.sink.EventsSink, .bots.BotsSink)."""

    def readiness(self) -> str: ...


def create_app(*, events: Consumer, bots: Consumer, clickhouse: ClientFactory) -> FastAPI:
    """/ready: ClickHouse reachable with every migration applied, the events sink consuming its
    share of the partitions (a standby with none is ready too) and the bots consumer running.
    /metrics: the process's registry, with the sink's lag per partition."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.clickhouse = await asyncio.to_thread(clickhouse)
        try:
            yield
        finally:
            app.state.clickhouse.close()

    app = documented_app(title="Werkstroom aggregator", version="1", openapi_tags=TAGS, lifespan=lifespan)

    async def ready() -> dict[str, str]:
        checks = {"events_sink": events.readiness(), "bots_sink": bots.readiness()}
        try:
            current = await asyncio.to_thread(is_current, app.state.clickhouse)
            checks["clickhouse"] = "ok" if current else "migrations pending"
        except Exception as exc:
            state = "unavailable" if is_transient(exc) else "error"
            checks["clickhouse"] = f"{state}: {describe(exc, 300)}"
        return checks

    app.include_router(index_router("/"))
    app.include_router(ops_router(ready))
    return app
