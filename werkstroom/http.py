"""What every HTTP service exposes: /health (liveness), /ready (dependencies) and /metrics."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import ORJSONResponse

from werkstroom import metrics

ReadyCheck = Callable[[], Awaitable[dict[str, Any]]]
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d, an IPv4 client on a dual-stack socket


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


def client_key(peer: str | None, forwarded_for: str | None, trust_forwarded_for: bool) -> str | None:
    """Whom a per-client limit counts as one client (ingest's rate share, the API's failed
    logins): the IPv4 address, or the /64 of an IPv6 one (one subscriber or host usually holds
    a whole /64, so single addresses are free to vary). `peer` is the connection's address; with
    `trust_forwarded_for` (behind a reverse proxy) the right-most X-Forwarded-For entry, the one
    the proxy appended: entries left of it are the client's own claims. A port is dropped;
    anything unparsable is kept, cut short. None when unknown. Only ever a key in memory."""
    address = peer
    if trust_forwarded_for and forwarded_for:
        address = forwarded_for.rsplit(",", 1)[-1].strip() or peer
    address = _strip_port(address.strip()) if address else address
    if not address:
        return None
    if ":" not in address:
        return address[:64]  # IPv4 (or a name a test client gave): taken as it is
    try:  # inet_pton, not ipaddress: ~0.3 µs against ~14 µs a request
        packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
    except (OSError, ValueError):
        return address[:64]
    if packed[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def _strip_port(entry: str) -> str:
    """`[2001:db8::1]:443` -> `2001:db8::1`, `192.0.2.1:80` -> `192.0.2.1` (some proxies add ports)."""
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else entry[1:]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry
