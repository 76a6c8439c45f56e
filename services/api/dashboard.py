"""The built-in dashboard: GET / (the page) and /static/ (its JS, CSS and icons).

Plain files in services/api/static/, shipped as package data: no CDN, no build step, works
offline. The page logs in with a project's read key and calls the JSON API with it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The page may load only its own scripts and styles and talk only to its own API; it holds a
#: secret read key, so no third-party code and no framing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard page at / and its assets under /static/."""

    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_SECURITY_HEADERS)

    app.add_api_route("/", dashboard, methods=["GET"], include_in_schema=False, response_class=FileResponse)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
