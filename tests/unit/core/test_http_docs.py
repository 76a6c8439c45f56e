"""What both HTTP services answer besides their own routes: the docs with their assets served
from the package (no CDN), an index of the API, and /ready's JSON without a custom response class."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.api.app import create_app as create_api
from services.ingest.app import create_app as create_ingest
from werkstroom.http import ops_router
from werkstroom.settings import Settings

APPS = {
    "api": lambda: create_api(Settings(), clickhouse=lambda: None, admin_token="admin"),  # type: ignore[arg-type,return-value]
    "ingest": lambda: create_ingest(Settings(), bootstrap="unused:9092", clickhouse=lambda: None),  # type: ignore[arg-type,return-value]
}
INDEX = {"api": "/api", "ingest": "/"}


async def client_of(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        yield client


@pytest.fixture(params=sorted(APPS))
async def service(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async for client in client_of(APPS[request.param]()):
        yield request.param, client


async def test_docs_pages_load_every_asset_from_the_service_itself(
    service: tuple[str, httpx.AsyncClient],
) -> None:
    _, http = service
    for page in ("/docs", "/redoc"):
        answer = await http.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', answer.text)
        assert len(assets) >= 2, (page, answer.text)  # a script and a style or icon at least
        for asset in assets:
            assert asset.startswith("/docs/assets/") or asset.startswith("/static/"), (page, asset)
            fetched = await http.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 100, asset
        assert "/openapi.json" in answer.text
        # images (ReDoc's attribution logo, a validator badge) and requests only from here
        assert answer.headers["content-security-policy"] == "img-src 'self' data:; connect-src 'self'"
    assert '"validatorUrl": null' in (await http.get("/docs")).text


async def test_the_index_lists_the_docs_and_every_documented_endpoint_by_group(
    service: tuple[str, httpx.AsyncClient],
) -> None:
    name, http = service
    answer = await http.get(INDEX[name])
    assert answer.status_code == 200
    index = answer.json()
    assert (index["docs"], index["redoc"], index["openapi"]) == ("/docs", "/redoc", "/openapi.json")
    assert index["name"] == {"api": "Werkstroom API", "ingest": "Werkstroom ingest"}[name]
    assert index["version"] == "1"
    spec = (await http.get("/openapi.json")).json()
    listed = {e for group in index["groups"].values() for e in group["endpoints"]}
    documented = {
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method in operations
        if path != INDEX[name]
    }
    assert listed == documented
    assert spec["paths"][INDEX[name]]["get"]["summary"]  # the index is itself documented
    for tag, group in index["groups"].items():
        assert group["docs"] == f"/docs#/{tag}" and group["description"], tag
    assert list(index["groups"]) == [t["name"] for t in spec["tags"] if t["name"] in index["groups"]]


async def test_api_index_names_the_main_groups() -> None:
    async for http in client_of(APPS["api"]()):
        groups = (await http.get("/api")).json()["groups"]
        assert {"live", "metrics", "funnels", "users", "export", "snippet", "projects"} <= set(groups)
        assert "GET /api/projects/{project_id}/online" in groups["live"]["endpoints"]
    async for http in client_of(APPS["ingest"]()):
        groups = (await http.get("/")).json()["groups"]
        assert "POST /v1/batch" in groups["tracking"]["endpoints"]
        assert groups["tracker"]["endpoints"] == ["GET /t.js"]  # HEAD is not a second operation


@pytest.mark.filterwarnings("error::UserWarning")  # FastAPI's deprecations are UserWarnings
@pytest.mark.parametrize(
    ("checks", "status", "body"),
    [
        (
            {"clickhouse": "ok", "kafka": "ok"},
            200,
            b'{"ready":true,"checks":{"clickhouse":"ok","kafka":"ok"}}',
        ),
        (
            {"clickhouse": "migrations pending"},
            503,
            b'{"ready":false,"checks":{"clickhouse":"migrations pending"}}',
        ),
    ],
)
async def test_ready_answers_compact_json_with_its_status(
    checks: dict[str, str], status: int, body: bytes
) -> None:
    async def ready() -> dict[str, str]:
        return checks

    app = FastAPI()
    app.include_router(ops_router(ready))
    async for http in client_of(app):
        answer = await http.get("/ready")
        assert (answer.status_code, answer.content) == (status, body)
        assert answer.headers["content-type"] == "application/json"
