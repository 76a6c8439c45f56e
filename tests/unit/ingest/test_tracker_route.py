"""GET /t.js: the tracker file, with a JavaScript content type, caching and ETag revalidation."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.ingest.tracker import TRACKER_PATH, tracker_router


def client() -> TestClient:
    app = FastAPI()
    app.include_router(tracker_router())
    return TestClient(app)


def test_serves_the_tracker_file_as_cacheable_javascript() -> None:
    answer = client().get("/t.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age=3600" in answer.headers["cache-control"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.content == TRACKER_PATH.read_bytes()
    assert b"sendBeacon" in answer.content


def test_revalidation_with_the_etag_answers_304_without_a_body() -> None:
    c = client()
    etag = c.get("/t.js").headers["etag"]
    again = c.get("/t.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert c.get("/t.js", headers={"If-None-Match": '"other"'}).status_code == 200
