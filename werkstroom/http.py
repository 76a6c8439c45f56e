"""What every HTTP service exposes: /health (liveness), /ready (dependencies) and /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import ORJSONResponse

from werkstroom import metrics

ReadyCheck = Callable[[], Awaitable[dict[str, Any]]]


def ops_router(ready_check: ReadyCheck) -> APIRouter:
    """`ready_check` returns {name: detail}; any detail that is not "ok" makes /ready answer 503."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness: Kafka and ClickHouse reachable, migrations applied")
    async def ready() -> Response:
        checks = await ready_check()
        ok = all(v == "ok" for v in checks.values())
        return ORJSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router
