"""GET /t.js: the browser tracker (tracker/t.js), served by ingest so that the snippet needs
only the ingest URL. The file ships in the distribution next to the `services` package (see
pyproject's package-data), so the same path works from a checkout and from an installed wheel.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response

TRACKER_PATH = Path(__file__).resolve().parents[2] / "tracker" / "t.js"
#: Not fingerprinted in its URL, so cached for an hour and then revalidated with the ETag.
CACHE_CONTROL = "public, max-age=3600, stale-while-revalidate=86400"
MEDIA_TYPE = "text/javascript; charset=utf-8"


@cache
def _tracker() -> tuple[bytes, str]:
    body = TRACKER_PATH.read_bytes()
    return body, f'"{hashlib.sha256(body).hexdigest()[:20]}"'


def tracker_router() -> APIRouter:
    router = APIRouter(tags=["tracker"])

    @router.get(
        "/t.js",
        summary="The browser tracker",
        description="Load it with the snippet; it sends page(), track() and identify() calls here.",
        response_class=Response,
        responses={200: {"content": {"text/javascript": {}}}, 304: {"description": "Not modified"}},
    )
    async def tracker_js(request: Request) -> Response:
        body, etag = _tracker()
        headers = {
            "Cache-Control": CACHE_CONTROL,
            "ETag": etag,
            "Access-Control-Allow-Origin": "*",
            "X-Content-Type-Options": "nosniff",
        }
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=MEDIA_TYPE, headers=headers)

    # HEAD answers GET's status and headers (Content-Length included); the server sends no
    # body. A route of its own, out of the schema: one route with both methods would give two
    # operations one operationId.
    router.add_api_route("/t.js", tracker_js, methods=["HEAD"], include_in_schema=False)
    return router
