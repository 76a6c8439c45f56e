"""What every HTTP service exposes: /health (liveness), /ready (dependencies) and /metrics, its
API documentation served from the package (no CDN: it works offline) and an index of its API."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from werkstroom import metrics

#: Returns {name: detail}; a detail other than "ok" says what is wrong.
ReadyCheck = Callable[[], Awaitable[dict[str, str]]]
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d, an IPv4 client on a dual-stack socket


class Readiness(BaseModel):
    ready: bool = Field(description="every check is ok")
    checks: dict[str, str] = Field(description='each dependency: "ok", or what is wrong with it')


def ops_router(ready_check: ReadyCheck) -> APIRouter:
    """`ready_check` returns {name: detail}; any detail that is not "ok" makes /ready answer 503."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="Readiness: Kafka and ClickHouse reachable, migrations applied",
        responses={503: {"model": Readiness, "description": "A dependency is not ready"}},
    )
    async def ready(response: Response) -> Readiness:
        checks = await ready_check()
        ok = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ok else 503
        return Readiness(ready=ok, checks=checks)

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router


#: Swagger UI's and ReDoc's scripts and styles, from the fastapi-offline wheel (MIT; Swagger UI is
#: Apache-2.0, ReDoc MIT): FastAPI's own docs pages load them from a CDN, blank without internet.
DOCS_ASSETS = "/docs/assets"
#: The docs pages load nothing from elsewhere: ReDoc's attribution logo and Swagger UI's
#: validator badge are images from other hosts (each hides itself when refused).
_DOCS_HEADERS = {"Content-Security-Policy": "img-src 'self' data:; connect-src 'self'"}


def documented_app(*, favicon_url: str | None = None, **kwargs: Any) -> FastAPI:
    """A FastAPI app (`kwargs` go to it) whose /docs (Swagger UI) and /redoc load everything
    from this server, so they work offline; `favicon_url` defaults to FastAPI's icon."""
    app = FastAPI(docs_url=None, redoc_url=None, **kwargs)
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    favicon = favicon_url or f"{DOCS_ASSETS}/favicon.png"
    redirect = app.swagger_ui_oauth2_redirect_url

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=root(request) + app.openapi_url if app.openapi_url else "",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root(request) + redirect if redirect else None,
            swagger_js_url=f"{root(request)}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root(request)}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        page.headers.update(_DOCS_HEADERS)
        return page

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=root(request) + app.openapi_url if app.openapi_url else "",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root(request)}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
        page.headers.update(_DOCS_HEADERS)
        return page

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    if redirect:
        app.add_api_route(redirect, oauth2_redirect, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
    return app


class EndpointGroup(BaseModel):
    description: str | None = Field(description="what the group is for")
    docs: str = Field(description="the group in the interactive docs")
    endpoints: list[str] = Field(description='"METHOD /path" of each endpoint')


class ServiceIndex(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Werkstroom API",
                    "version": "1",
                    "docs": "/docs",
                    "redoc": "/redoc",
                    "openapi": "/openapi.json",
                    "groups": {
                        "operations": {
                            "description": "Liveness, readiness and Prometheus metrics.",
                            "docs": "/docs#/operations",
                            "endpoints": ["GET /health", "GET /ready"],
                        }
                    },
                }
            ]
        }
    )
    name: str
    version: str
    docs: str = Field(description="interactive documentation (Swagger UI)")
    redoc: str = Field(description="the same as a reference page (ReDoc)")
    openapi: str = Field(description="the OpenAPI document")
    groups: dict[str, EndpointGroup] = Field(description="the endpoints by group (tag), as in the docs")


def index_router(path: str) -> APIRouter:
    """GET `path`: the service's name and version, where its documentation is, and its
    endpoints by group, read from its OpenAPI document (so the index cannot drift from it)."""
    router = APIRouter(tags=["index"])

    @router.get(path, summary="Index of this API: documentation and endpoint groups")
    async def index(request: Request) -> ServiceIndex:
        return service_index(request.app)

    return router


def service_index(app: FastAPI) -> ServiceIndex:
    spec = app.openapi()  # built once, then cached by FastAPI
    descriptions = {tag["name"]: tag.get("description") for tag in spec.get("tags", [])}
    groups: dict[str, EndpointGroup] = {}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            tag = (operation.get("tags") or ["other"])[0]
            if tag == "index":
                continue
            group = groups.setdefault(
                tag, EndpointGroup(description=descriptions.get(tag), docs=f"/docs#/{tag}", endpoints=[])
            )
            group.endpoints.append(f"{method.upper()} {path}")
    order = list(descriptions)  # the documented tags' order, as the docs show them
    ranked = sorted(groups, key=lambda tag: order.index(tag) if tag in order else len(order))
    return ServiceIndex(
        name=app.title,
        version=app.version,
        docs="/docs",
        redoc="/redoc",
        openapi=app.openapi_url or "",
        groups={tag: groups[tag] for tag in ranked},
    )


def client_address(peer: str | None, forwarded_for: str | None, trust_forwarded_for: bool) -> str | None:
    """The client's address: `peer`, the connection's; with `trust_forwarded_for` (behind a
    reverse proxy) the right-most X-Forwarded-For entry, the one the proxy appended: entries
    left of it are the client's own claims. A port is dropped. None when unknown. Used in
    memory only (the per-client limits, ingest's country lookup): never stored or logged."""
    address = peer
    if trust_forwarded_for and forwarded_for:
        address = forwarded_for.rsplit(",", 1)[-1].strip() or peer
    address = _strip_port(address.strip()) if address else address
    return address or None


def client_key(peer: str | None, forwarded_for: str | None, trust_forwarded_for: bool) -> str | None:
    """Whom a per-client limit counts as one client (ingest's rate share, the API's failed
    logins): the IPv4 address, or the /64 of an IPv6 one (one subscriber or host usually holds
    a whole /64, so single addresses are free to vary), of `client_address`'s address;
    anything unparsable is kept, cut short. None when unknown. Only ever a key in memory."""
    return network_key(client_address(peer, forwarded_for, trust_forwarded_for))


def network_key(address: str | None) -> str | None:
    """`client_key` of an address `client_address` chose."""
    if not address:
        return None
    if ":" not in address:
        return address[:64]  # IPv4 (or a name a test client gave): taken as it is
    try:  # inet_pton, not ipaddress: this runs per request, and ipaddress is far slower
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
