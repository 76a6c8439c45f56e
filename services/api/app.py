"""The API service: the dashboard's JSON API over the aggregator's ClickHouse tables, the live
users stream (SSE), CSV exports, the tracking snippet, project administration, and the
built-in dashboard page.

Routers per resource live in services/api/routes/, their SQL in queries.py, the auth and
ClickHouse dependencies in deps.py and the live stream's poller in live.py. Every data answer
carries `as_of` and the pipeline's freshness (see models.Pipeline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from fastapi import FastAPI, Request, Response

from services.api.breakdowns import RolledDays
from services.api.dashboard import mount_dashboard
from services.api.deps import AdminClient, AuthCache, AuthFailures, ClickHousePool, clickhouse_unavailable
from services.api.live import LiveHub
from services.api.routes import breakdowns, export, funnels, metrics, online, projects, snippet, users
from werkstroom.clickhouse import ClickHouseError
from werkstroom.clickhouse.errors import describe, error_name, is_transient
from werkstroom.clickhouse.migrate import is_current
from werkstroom.http import documented_app, index_router, ops_router
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

TAGS = [
    {"name": "live", "description": "Who is online now, as a list and as a Server-Sent Events stream."},
    {"name": "metrics", "description": "Metric cards with week-over-week trends, and daily activity."},
    {"name": "funnels", "description": "Conversion funnels: define, list, delete, report."},
    {
        "name": "breakdowns",
        "description": "Pages, sources, campaigns, countries and devices over a date range, with filters.",
    },
    {"name": "users", "description": "Persons by segment and search, profiles and sessions."},
    {"name": "export", "description": "CSV downloads, streamed."},
    {"name": "snippet", "description": "The tracking snippet to paste into a site."},
    {"name": "projects", "description": "Projects (admin token) and the project of a read key."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "index", "description": "This index: the documentation and the endpoints by group."},
]

DESCRIPTION = """
Real-time web analytics over the aggregator's ClickHouse tables.

**Auth**: `Authorization: Bearer <read key>` (a project's secret read key). A wrong or missing
key is 401; a valid key used on another project's id is 404, whether that project exists or not.
Failed key checks are limited per client address (WERKSTROOM_API_AUTH_FAILURES_PER_MINUTE):
past that, 429 with `Retry-After` and `detail[0].type` = `auth_rate_limited`.

**ClickHouse unavailable**: while ClickHouse cannot answer (away, refusing connections, timing
out, overloaded), every route that reads it answers 503 with `Retry-After` and
`{"detail": ..., "reason": "clickhouse_unavailable"}`, and `/ready` says so; never a 500.

**Freshness**: every data answer has `as_of` (server time) and `pipeline` (the aggregator's last
write, the newest event time it wrote, and its lag in messages), so a quiet site can be told
from a stalled pipeline.

Times are ISO-8601 UTC with milliseconds and `Z`; days are `YYYY-MM-DD`,
each a local day of the project's time zone (docs/timezones.md).
"""


def create_app(
    settings: Settings,
    *,
    clickhouse: Callable[[], Client],
    admin_token: str,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """`clickhouse` makes a client (one for administration, a few pooled for the dashboard
    routes); `clock` is the time answers are computed at (tests may fix it; default: now)."""
    now = clock or (lambda: datetime.now(UTC))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.admin_client = AdminClient(clickhouse)
        app.state.admin_token = admin_token
        app.state.clock = now
        app.state.auth_cache = AuthCache()
        app.state.rolled_days = RolledDays()
        app.state.auth_failures = AuthFailures(settings.api_auth_failures_per_minute)
        app.state.pool = ClickHousePool(clickhouse)
        app.state.live = LiveHub(app.state.pool, settings.topic_events, now)
        try:
            yield
        finally:
            await app.state.live.close()
            app.state.pool.close()
            app.state.admin_client.close()

    app = documented_app(
        title="Werkstroom API",
        version="1",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        favicon_url="/static/favicon.svg",
    )

    async def ready() -> dict[str, str]:
        try:
            client = await app.state.admin_client.get()
            current = await asyncio.to_thread(is_current, client)
            return {"clickhouse": "ok" if current else "migrations pending"}
        except Exception as exc:
            state = "unavailable" if is_transient(exc) else "error"
            return {"clickhouse": f"{state}: {describe(exc, 300)}"}

    async def clickhouse_failed(request: Request, exc: Exception) -> Response:
        """A ClickHouse failure that passes by itself (werkstroom.clickhouse.errors) is 503 with a
        reason; any other (a statement of ours it refuses) stays the 500 it is, logged."""
        if not is_transient(exc):
            raise exc
        cause = exc.__cause__ if isinstance(exc, ClickHouseError) and exc.__cause__ else exc
        log.warning("api_clickhouse_unavailable", path=request.url.path, error=describe(exc, 500))
        return clickhouse_unavailable(error_name(cause))

    # The driver's errors, ours from opening a client, and a socket's own (a stream read).
    for failure in (DriverError, ClickHouseError, ConnectionError, TimeoutError):
        app.add_exception_handler(failure, clickhouse_failed)
    app.include_router(index_router("/api"))
    app.include_router(ops_router(ready))
    app.include_router(projects.admin)
    app.include_router(projects.me)
    for router in (online, metrics, funnels, users, breakdowns, export, snippet):
        app.include_router(router.router)
    mount_dashboard(app)
    return app
