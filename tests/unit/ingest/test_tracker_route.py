"""GET /t.js: the tracker file, with a JavaScript content type, caching and ETag revalidation;
HEAD /t.js: the same status and headers, no body."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from services.ingest.tracker import TRACKER_PATH, tracker_router


def client() -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(tracker_router())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


async def test_serves_the_tracker_file_as_cacheable_javascript() -> None:
    async with client() as c:
        answer = await c.get("/t.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age=3600" in answer.headers["cache-control"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.content == TRACKER_PATH.read_bytes()
    assert b"sendBeacon" in answer.content


async def test_revalidation_with_the_etag_answers_304_without_a_body() -> None:
    async with client() as c:
        etag = (await c.get("/t.js")).headers["etag"]
        again = await c.get("/t.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert (await c.get("/t.js", headers={"If-None-Match": '"other"'})).status_code == 200


async def test_head_answers_the_headers_of_get() -> None:
    async with client() as c:
        got, head = await c.get("/t.js"), await c.head("/t.js")
    assert head.status_code == 200
    assert dict(head.headers) == dict(got.headers)
    assert int(head.headers["content-length"]) == len(got.content)
