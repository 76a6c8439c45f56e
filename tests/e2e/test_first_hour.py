"""The first hour of a new user (issue 21), against a real `werkstroom serve --target all`:
every URL the start-up banner prints answers, its curl example works, the tracker answers HEAD,
nothing prints a warning, and the docs of both services render in a browser with no internet."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect, sync_playwright

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium
from tests.e2e.runs import UA
from tests.e2e.test_graceful_drain import Serve

pytestmark = pytest.mark.integration

#: The curl example: its URL and its body (the banner's shell quoting, undone).
CURL = re.compile(r"curl -s (\S+) .*?-d '([^']*)'", re.S)
LOCAL = {"127.0.0.1", "localhost"}


def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"User-Agent": UA, "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, method=method, headers=headers), timeout=10
        ) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def check_docs_offline(page: Page, url: str, operation: str) -> None:
    page.goto(f"{url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.locator(".opblock-summary-description", has_text=operation).first).to_be_visible()
    page.goto(f"{url}/redoc")
    expect(page.locator("h2", has_text=operation).first).to_be_visible()


def test_every_url_the_banner_prints_answers_and_the_docs_work_offline(tmp_path: Path) -> None:
    require_chromium()
    serve = Serve(tmp_path)
    try:
        banner = serve.banner
        assert serve.proc.stdout is not None
        for _ in range(5):  # Serve read up to the curl line; the banner is written whole
            if CURL.search(banner):
                break
            banner += serve.proc.stdout.readline()
        curl = CURL.search(banner)
        assert curl, banner
        listed = banner[: curl.start()] + banner[curl.end() :]  # the example is POSTed below
        printed = set(re.findall(r"https?://[^\s'\"]+", listed))
        assert {f"{serve.ingest}/", f"{serve.ingest}/docs", f"{serve.api}/", f"{serve.api}/api"} <= printed
        assert f"{serve.api}/docs" in printed
        for url in sorted(printed):
            status, _, body = request(url)
            assert status == 200, (url, body[:300])

        status, _, body = request(curl.group(1), "POST", curl.group(2).encode())
        assert (status, json.loads(body)["accepted"]) == (200, 1), body

        _, got_headers, got_body = request(f"{serve.ingest}/t.js")
        status, head_headers, head_body = request(f"{serve.ingest}/t.js", "HEAD")
        assert (status, head_body) == (200, b"")
        got_headers.pop("date"), head_headers.pop("date")
        assert head_headers == got_headers and int(head_headers["content-length"]) == len(got_body)

        index = json.loads(request(f"{serve.api}/api")[2])
        assert index["docs"] == "/docs" and "GET /api/me" in index["groups"]["projects"]["endpoints"]
        for url in (serve.ingest, serve.api):
            status, _, body = request(f"{url}/ready")
            assert (status, json.loads(body)["ready"]) == (200, True), body

        outside: list[str] = []

        def offline(route: Route) -> None:
            if urlsplit(route.request.url).hostname in LOCAL:
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort("internetdisconnected")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                context = browser.new_context()
                context.set_default_timeout(TIMEOUT_MS)
                context.route("**/*", offline)
                page = context.new_page()
                check_docs_offline(page, serve.ingest, "Segment track call")
                check_docs_offline(page, serve.api, "The project a read key opens")
            finally:
                browser.close()
        assert outside == []

        # No deprecation (or any other) warning printed by what the requests above ran.
        warnings = [line for line in serve.log_path.read_text().splitlines() if "Warning" in line]
        assert warnings == []
    finally:
        serve.kill()
