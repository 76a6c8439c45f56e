"""The browser tracker's tests' common parts: Debian's chromium driven by Playwright's async API
(in the test's event loop, beside the in-process ingest it talks to), and a tiny web site on an
origin of its own whose every page carries the project's real snippet (the API's snippet_html)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from services.api.routes.snippet import snippet_html
from tests.integration.stack import Stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Headless Chromium says "HeadlessChrome", which ingest rightly drops as a bot: the browser
# presents itself as the desktop Chrome a real visitor would use.
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
TIMEOUT_MS = 20_000


def require_chromium() -> None:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
    )


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def visitor(browser: Browser, *, init_script: str | None = None) -> BrowserContext:
    """A new visitor: a browser context of its own (its own localStorage), a desktop Chrome."""
    context = await browser.new_context(user_agent=UA)
    context.set_default_timeout(TIMEOUT_MS)
    if init_script is not None:
        await context.add_init_script(init_script)
    return context


@contextlib.contextmanager
def site(ingest_url: str, write_key: str, scripts: dict[str, str] | None = None) -> Iterator[str]:
    """http://127.0.0.1:<port>: any path is a page (titled after it) with the snippet in <head>;
    `scripts` adds an inline script after the snippet to the page at that path (with its query)."""
    snippet = snippet_html(write_key, ingest_url)
    inline = scripts or {}

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/favicon.ico":
                self.send_error(404)
                return
            path = self.path.split("?")[0]
            script = f"<script>{inline[self.path]}</script>" if self.path in inline else ""
            body = (
                "<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>Page {path}</title>{snippet}{script}</head>"
                "<body><h1>Shop</h1></body></html>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, name="tracker-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def open_page(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_function("window.werkstroom && window.werkstroom.loaded === true")
    return page


async def queue(page: Page) -> dict[str, Any]:
    """The tracker's stored queue: q (the calls), d (dropped, not reported yet), r (retry at)."""
    state: dict[str, Any] = await page.evaluate(
        'JSON.parse(localStorage.getItem(\'werkstroom_queue\') || \'{"q": [], "d": 0, "r": 0}\')'
    )
    return state


def events_of(stack: Stack, anonymous_id: str) -> list[tuple[str, str, str, str]]:
    """(event_id, type, event, properties) of one visitor's stored events, heartbeats aside;
    every stored copy (FINAL: after ReplacingMergeTree's de-duplication by event_id)."""
    return [
        (str(r[0]), str(r[1]), str(r[2]), str(r[3]))
        for r in stack.rows(
            "SELECT event_id, type, event, properties FROM events FINAL"
            " WHERE project_id = {p:String} AND anonymous_id = {a:String} AND event != '$heartbeat'"
            " ORDER BY timestamp, event_id",
            p=stack.project.project_id,
            a=anonymous_id,
        )
    ]
