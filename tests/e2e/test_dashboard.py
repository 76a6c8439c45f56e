"""The built-in dashboard in a real browser (Debian's chromium driven by Playwright) against the
whole pipeline (`werkstroom serve --target all`: embedded Kafka and ClickHouse, the real
aggregator), with events sent through ingest and by the real tracker (/t.js) on a test page.

Nothing is mocked: every number on the page went ingest -> Kafka -> aggregator -> ClickHouse
-> API. Waits are for conditions (Playwright's auto-retrying expect), never fixed sleeps.

The last test fills a project of its own with simulated history and takes the README's
screenshot, docs/img/dashboard.png (see SCREENSHOT below for when it rewrites that file).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from tests.e2e.browser import TIMEOUT_MS, UA
from tests.e2e.runs import serve_env, start_serve
from werkstroom.demo import AGENTS, batches, simulate

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

# Records every text the live status and the online counter take, in order.
RECORD_STATES = """
window.__seen = [];
document.addEventListener("DOMContentLoaded", () => {
  const ids = ["live-state", "online-count"];
  const record = () => ids.forEach((id) => {
    const text = id + "=" + document.getElementById(id).textContent;
    if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
  });
  const observer = new MutationObserver(record);
  ids.forEach((id) => observer.observe(document.getElementById(id), {childList: true, characterData: true, subtree: true}));
});
"""
ADMIN_TOKEN = "dashboard-test-admin-token"
# The README's picture of the dashboard, taken by test_readme_screenshot below. Every run takes
# it (into the test's temporary directory); the committed file is rewritten when the page's
# layout changed (another width, a height or a file size off by more than the drifts below), or
# always with WERKSTROOM_UPDATE_SCREENSHOT=1; =0 never touches it.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
SCREENSHOT_DRIFT = 0.25
SCREENSHOT_HEIGHT_DRIFT = 0.05  # a figure's sentence wrapping in a card is not a new layout


@dataclass(frozen=True)
class Stack:
    ingest: str
    api: str
    project_id: str
    write_key: str
    read_key: str
    admin_token: str = ADMIN_TOKEN

    def new_project(self, name: str) -> Stack:
        """A project of its own (admin API): what a new user starts from, no event yet."""
        request = urllib.request.Request(
            f"{self.api}/api/projects",
            data=json.dumps({"name": name}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            created = json.loads(response.read())
        return Stack(self.ingest, self.api, created["project_id"], created["write_key"], created["read_key"])

    def post_batch(self, batch: list[dict[str, Any]]) -> int:
        """Sends one /v1/batch; waits out a 401 (ingest learns a new key within
        WERKSTROOM_KEY_REFRESH_SECONDS) and a 429 (the rate limit's Retry-After)."""
        body = json.dumps({"writeKey": self.write_key, "batch": batch}).encode()
        deadline = time.monotonic() + 20
        while True:
            request = urllib.request.Request(
                f"{self.ingest}/v1/batch",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": UA},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    accepted: int = json.loads(response.read())["accepted"]
                    return accepted
            except urllib.error.HTTPError as exc:
                if exc.code not in (401, 429) or time.monotonic() > deadline:
                    raise
                time.sleep(float(exc.headers.get("Retry-After") or 0.2))

    def get(self, path: str) -> tuple[int, Any, dict[str, str]]:
        request = urllib.request.Request(
            f"{self.api}{path}", headers={"Authorization": f"Bearer {self.read_key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                kind = response.headers.get("content-type", "")
                body = json.loads(raw) if kind.startswith("application/json") else raw.decode()
                return response.status, body, dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)

    def project(self, path: str) -> str:
        return f"/api/projects/{self.project_id}/{path}"

    def send(self, kind: str, body: dict[str, Any]) -> None:
        payload = {
            "writeKey": self.write_key,
            "context": {"userAgent": UA, "page": body.pop("page", {})},
            **body,
        }
        request = urllib.request.Request(
            f"{self.ingest}/v1/{kind}",
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": UA},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["accepted"] == 1, answer


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last answer: {last!r}")


def demo_stack(tmp: Path, **env: str) -> Iterator[Stack]:
    """`werkstroom serve` with the demo project (and these settings) under `tmp`, until closed."""
    served = serve_env(tmp / "data", WERKSTROOM_KEY_REFRESH_SECONDS="0.5", WERKSTROOM_DEMO="true", **env)
    served.pop("WERKSTROOM_PUBLIC_INGEST_URL", None)
    log_path = tmp / "serve.log"
    proc, banner = start_serve(served, tmp, timeout=90)
    try:
        assert "curl" in banner, f"no start-up banner: {log_path.read_text()[-3000:]}"
        demo = json.loads((tmp / "data" / "demo.json").read_text())
        yield Stack(
            ingest=f"http://127.0.0.1:{served['WERKSTROOM_INGEST_PORT']}",
            api=f"http://127.0.0.1:{served['WERKSTROOM_API_PORT']}",
            project_id=demo["project_id"],
            write_key=demo["write_key"],
            read_key=demo["read_key"],
        )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from demo_stack(tmp_path_factory.mktemp("dashboard"), WERKSTROOM_ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Stack:
    """Four visitors, online now: Alice (premium, signed up), Bob (trial), an anonymous one and
    Dave, stuck on the checkout page."""
    stack.send(
        "identify",
        {
            "anonymousId": "anon-alice",
            "userId": "alice@example.com",
            "traits": {"plan": "premium", "name": "Alice"},
        },
    )
    for path in ("/pricing", "/signup"):
        stack.send(
            "page",
            {
                "anonymousId": "anon-alice",
                "userId": "alice@example.com",
                "properties": {"url": f"https://shop.example{path}", "title": path.strip("/").title()},
            },
        )
    stack.send(
        "track",
        {
            "anonymousId": "anon-alice",
            "userId": "alice@example.com",
            "event": "Signed Up",
            "page": {"url": "https://shop.example/signup"},
        },
    )
    stack.send(
        "identify", {"anonymousId": "anon-bob", "userId": "bob@example.com", "traits": {"plan": "trial"}}
    )
    stack.send(
        "page",
        {
            "anonymousId": "anon-bob",
            "userId": "bob@example.com",
            "properties": {"url": "https://shop.example/"},
        },
    )
    stack.send("page", {"anonymousId": "anon-carol", "properties": {"url": "https://shop.example/blog"}})
    # Dave opened the checkout six minutes ago and is still there (his tab sends heartbeats):
    # online and stuck. Without sentAt, ingest keeps a client timestamp that is in the past.
    six_minutes_ago = datetime.now(UTC) - timedelta(minutes=6)
    checkout = {"url": "https://shop.example/checkout", "title": "Checkout"}
    stack.send(
        "page",
        {"anonymousId": "anon-dave", "properties": checkout, "timestamp": six_minutes_ago.isoformat()},
    )
    stack.send("track", {"anonymousId": "anon-dave", "event": "$heartbeat", "page": checkout})
    # A script's call, with its own User-Agent: filtered as a bot, and shown as filtered.
    script = {
        "writeKey": stack.write_key,
        "anonymousId": "a-script",
        "properties": {"url": "https://shop.example/"},
    }
    request = urllib.request.Request(
        f"{stack.ingest}/v1/page",
        data=json.dumps(script).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "python-requests/2.31.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["bots"] == 1

    def persons() -> set[str] | None:
        status, body, _ = stack.get(stack.project("users?segment=all&limit=50"))
        assert status in (200, 404, 503), f"GET users answered {status}: {body}"
        found = {u["person_id"] for u in body["users"]} if status == 200 else set()
        return found if {"alice@example.com", "bob@example.com", "anon-carol", "anon-dave"} <= found else None

    wait_for(persons, "the four seeded persons in GET users")
    wait_for(
        lambda: stack.get(stack.project("activity?days=1"))[1]["days"][0]["bots"] == 1,
        "the script's event counted as a bot",
    )
    return stack


@pytest.fixture(scope="module")
def context(browser: Browser, seeded: Stack) -> Iterator[BrowserContext]:
    ctx = browser.new_context(user_agent=UA, accept_downloads=True, viewport={"width": 1280, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=seeded.api)
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def js_errors() -> list[str]:
    return []


@pytest.fixture(scope="module")
def dashboard(context: BrowserContext, seeded: Stack, js_errors: list[str]) -> Page:
    """The dashboard, logged in with the read key alone."""
    page = context.new_page()
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    page.goto(f"{seeded.api}/")
    expect(page.get_by_role("heading", name="Open a project")).to_be_visible()
    page.get_by_label("Read key").fill("rk_wrong")
    page.get_by_role("button", name="Open dashboard").click()
    expect(page.locator("#login-error")).to_contain_text("not valid")
    page.get_by_label("Read key").fill(seeded.read_key)
    page.get_by_role("button", name="Open dashboard").click()
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#project-id")).to_have_text(seeded.project_id)
    assert page.evaluate("sessionStorage.getItem('werkstroom.readKey')") == seeded.read_key
    page.evaluate("window.__notReloaded = true")
    return page


@pytest.fixture(scope="module")
def site(seeded: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny web site on its own origin whose page carries the project's real snippet."""
    status, snippet, _ = seeded.get(seeded.project("snippet"))
    assert status == 200, f"GET snippet answered {status}: {snippet}"
    assert "/t.js" in snippet["html"], f"the snippet does not load the tracker: {snippet['html']}"
    root = tmp_path_factory.mktemp("site")
    (root / "shop").mkdir()
    (root / "shop" / "pricing.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Tracker test page</title>"
        f"{snippet['html']}</head><body><h1>Pricing</h1></body></html>"
    )

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_metric_cards_activity_chart_and_freshness(dashboard: Page, seeded: Stack) -> None:
    cards = dashboard.locator("#metric-cards .metric")
    expect(cards).to_have_count(4)
    expect(dashboard.locator('[data-metric="total_users"] .value')).to_have_text("4")
    expect(dashboard.locator('[data-metric="new_this_week"] .value')).to_have_text("4")
    # Nobody a week ago: no percentage of nothing, and the card says so in words.
    expect(dashboard.locator('[data-metric="total_users"] .trend')).to_have_text(
        "all new this week — nobody the week before"
    )
    expect(dashboard.locator('[data-metric="new_this_week"] .trend')).to_have_text(
        "new this week — nobody new the week before"
    )
    expect(dashboard.locator("#activity-chart svg path")).to_have_count(4)
    expect(dashboard.locator("#activity-chart table tr")).to_have_count(31)  # header + 30 days
    today = dashboard.locator("#activity-chart table tr").last.locator("td")
    expect(today.nth(1)).to_have_text("4")  # active users today
    freshness = dashboard.locator("#freshness")
    expect(freshness).to_contain_text(re.compile(r"pipeline last write \d+s ago"))
    expect(freshness).not_to_have_class(re.compile("stale"))
    expect(freshness).to_contain_text("1 bot event filtered today")
    expect(dashboard.locator("#activity-bots")).to_contain_text(
        "Not counted above: 1 event from bots and scripts"
    )


def test_online_counter_and_live_table_follow_a_new_visitor_without_reload(
    dashboard: Page, context: BrowserContext, site: str, seeded: Stack
) -> None:
    counter = dashboard.locator("#online-count")
    rows = dashboard.locator("#live-table tbody tr")
    expect(counter).to_have_text("4")
    expect(rows).to_have_count(4)
    # Stuck visitors stand out: only Dave, six minutes on the same page.
    expect(dashboard.locator("#live-table tbody tr.stuck")).to_have_count(1)
    stuck = dashboard.locator('#live-table tbody tr[data-person="anon-dave"]')
    expect(stuck).to_have_class(re.compile(r"\bstuck\b"))
    expect(stuck).to_contain_text("stuck")
    expect(stuck.locator("td").nth(2)).to_contain_text(re.compile(r"^(5|6) min"))
    expect(dashboard.locator("#live-state")).to_have_text("live")
    # Whole ids, as in the users table: an identified visitor by their user id, others marked.
    alice = dashboard.locator('#live-table tbody tr[data-person="alice@example.com"] td').first
    expect(alice.locator("button")).to_have_text("alice@example.com")
    carol = dashboard.locator('#live-table tbody tr[data-person="anon-carol"] td').first
    expect(carol.locator("button")).to_have_text("anon-carol")
    expect(carol).to_contain_text("anonymous")
    # GET online says what each visitor did last (added beside the page, renaming nothing).
    _, online, _ = seeded.get(seeded.project("online"))
    last = {u["person_id"]: u["last_event"] for u in online["users"]}
    assert last["alice@example.com"] == "Signed Up" and last["anon-carol"] == "$page", last

    # A new visitor opens a page carrying the real snippet: the tracker (/t.js) sends page().
    visitor = context.new_page()
    visitor.clock.install()
    visitor.goto(f"{site}/shop/pricing.html")
    visitor.wait_for_function("window.werkstroom && window.werkstroom.loaded === true")
    anonymous_id = visitor.evaluate("werkstroom.anonymousId()")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", anonymous_id)
    assert visitor.evaluate("localStorage.getItem('werkstroom_aid')") == anonymous_id

    # The dashboard, untouched, shows them within seconds: pushed over SSE, no reload, no polling.
    expect(counter).to_have_text("5")
    row = dashboard.locator(f'#live-table tbody tr[data-person="{anonymous_id}"]')
    expect(row).to_contain_text("/shop/pricing.html")
    expect(row).to_contain_text("Tracker test page")
    expect(row).to_contain_text("Chrome")
    assert dashboard.evaluate("window.__notReloaded") is True

    # A single-page-app navigation is a page view too, and the live row follows it.
    visitor.evaluate("history.pushState({}, '', '/shop/checkout')")
    expect(row).to_contain_text("/shop/checkout")

    # While the tab is visible the tracker sends a $heartbeat every 30 s (fake clock: no waiting).
    with visitor.expect_request(
        lambda r: r.url == f"{seeded.ingest}/v1/track" and "$heartbeat" in (r.post_data or "")
    ) as beat:
        visitor.clock.run_for(31_000)
    sent = json.loads(beat.value.post_data or "{}")
    assert sent["writeKey"] == seeded.write_key and sent["anonymousId"] == anonymous_id
    assert sent["context"]["page"]["path"] == "/shop/checkout"
    assert sent["context"]["userAgent"] == UA
    visitor.close()


def test_live_stream_reconnects_after_a_failure_and_after_the_stream_ends(
    context: BrowserContext, seeded: Stack
) -> None:
    """The first connection is refused (503), the second is a complete stream that ends (as a
    proxy or a restarting replica would end it): the page parses it, then reconnects to the
    real stream with a backoff, all without a reload."""
    page = context.new_page()
    attempts: list[str] = []
    ended = (
        "retry: 200\r\n: keep-alive ping\r\n\r\n"
        'event: online\r\ndata: {"online": 99,\r\ndata:  "users": []}\r\n\r\n'
    )

    def flaky(route: Route) -> None:
        attempts.append(route.request.headers.get("authorization", ""))
        if len(attempts) == 1:
            route.fulfill(status=503, content_type="application/json", body='{"detail": "try later"}')
        elif len(attempts) == 2:
            route.fulfill(status=200, content_type="text/event-stream", body=ended)
        else:
            route.continue_()

    page.route(re.compile(r"/live(\?.*)?$"), flaky)
    page.add_init_script(RECORD_STATES)  # short-lived states are recorded, not raced by polling
    page.goto(f"{seeded.api}/")
    page.get_by_label("Read key").fill(seeded.read_key)
    page.get_by_role("button", name="Open dashboard").click()
    _, online, _ = seeded.get(seeded.project("online"))
    expect(page.locator("#online-count")).to_have_text(str(online["online"]))
    expect(page.locator("#live-state")).to_have_text("live")
    assert len(attempts) == 3 and all(a == f"Bearer {seeded.read_key}" for a in attempts)
    seen: list[str] = page.evaluate("window.__seen")
    reconnecting = [i for i, s in enumerate(seen) if s.startswith("live-state=reconnecting in")]
    ninety_nine = seen.index("online-count=99")  # multi-line data, CRLF line ends, comments
    assert reconnecting and reconnecting[0] < ninety_nine < len(seen) - 1, seen
    page.close()


def test_segment_filter_search_and_load_more_narrow_the_users_table(dashboard: Page) -> None:
    table = dashboard.locator("#users-table")
    persons = table.locator("tbody tr")
    expect(table.locator('tbody tr[data-person="alice@example.com"]')).to_be_visible()
    expect(table.locator('tbody tr[data-person="bob@example.com"]')).to_be_visible()

    segment = dashboard.get_by_label("Segment")
    segment.select_option("premium")
    expect(table).to_have_attribute("data-loaded", "premium|")
    expect(persons).to_have_count(1)
    expect(persons.first).to_have_attribute("data-person", "alice@example.com")
    expect(persons.first).to_contain_text("premium")

    segment.select_option("trial")
    expect(table).to_have_attribute("data-loaded", "trial|")
    expect(persons).to_have_count(1)
    expect(persons.first).to_have_attribute("data-person", "bob@example.com")

    segment.select_option("churned")
    expect(table).to_have_attribute("data-loaded", "churned|")
    expect(persons).to_have_count(0)
    expect(dashboard.locator("#users-empty")).to_be_visible()

    segment.select_option("all")
    dashboard.get_by_label("Search").fill("ALICE")
    expect(table).to_have_attribute("data-loaded", "all|ALICE")
    expect(persons).to_have_count(1)
    expect(persons.first).to_have_attribute("data-person", "alice@example.com")
    dashboard.get_by_label("Search").fill("")
    expect(table).to_have_attribute("data-loaded", "all|")
    for person in ("alice@example.com", "bob@example.com", "anon-carol"):
        expect(table.locator(f'tbody tr[data-person="{person}"]')).to_be_visible()
    expect(dashboard.locator("#users-more")).to_be_hidden()


def test_clicking_a_user_opens_traits_merged_ids_and_sessions(dashboard: Page) -> None:
    dashboard.locator('#users-table tbody tr[data-person="alice@example.com"] button').click()
    detail = dashboard.get_by_role("dialog")
    expect(detail).to_be_visible()
    expect(detail.locator("#detail-title")).to_have_text("alice@example.com")
    expect(detail.locator("#detail-traits")).to_contain_text("premium")
    expect(detail.locator("#detail-traits")).to_contain_text("Alice")
    expect(detail.locator("#detail-ids")).to_contain_text("anon-alice")
    sessions = detail.locator("#detail-sessions tbody tr")
    expect(sessions).to_have_count(1)
    expect(sessions.first).to_contain_text("/pricing → /signup")
    expect(sessions.first).to_contain_text("2 page views")
    expect(sessions.first).to_contain_text("active")
    dashboard.keyboard.press("Escape")
    expect(detail).to_be_hidden()
    # Bob viewed one page: a count reads as a person would write it.
    dashboard.locator('#users-table tbody tr[data-person="bob@example.com"] button').click()
    expect(detail.locator("#detail-title")).to_have_text("bob@example.com")
    expect(detail.locator("#detail-sessions tbody tr").first.locator("small")).to_have_text("1 page view")
    dashboard.keyboard.press("Escape")
    expect(detail).to_be_hidden()


def test_csv_download_has_the_servers_filename_and_a_header_row(dashboard: Page, seeded: Stack) -> None:
    dashboard.get_by_label("Segment").select_option("premium")
    expect(dashboard.locator("#users-table")).to_have_attribute("data-loaded", "premium|")
    with dashboard.expect_download() as info:
        dashboard.locator('button[data-export="users"]').click()
    download = info.value
    _, _, headers = seeded.get(seeded.project("export/users.csv?segment=premium"))
    disposition = {k.lower(): v for k, v in headers.items()}["content-disposition"]
    assert f'filename="{download.suggested_filename}"' in disposition
    assert re.fullmatch(rf"werkstroom-{seeded.project_id}-users-\d{{8}}\.csv", download.suggested_filename)
    lines = Path(download.path()).read_text().splitlines()
    assert "person_id" in lines[0].split(",")
    assert len(lines) == 2 and lines[1].startswith("alice@example.com,")  # the segment filter applied

    with dashboard.expect_download() as info:
        dashboard.locator('button[data-export="online"]').click()
    assert re.fullmatch(rf"werkstroom-{seeded.project_id}-online-\d{{8}}\.csv", info.value.suggested_filename)


def test_snippet_is_shown_and_copied_to_the_clipboard(dashboard: Page, seeded: Stack) -> None:
    _, snippet, _ = seeded.get(seeded.project("snippet"))
    code = dashboard.locator("#snippet-code")
    expect(code).to_have_text(snippet["html"])
    assert seeded.write_key in snippet["html"]
    dashboard.get_by_role("button", name="Copy").click()
    expect(dashboard.locator("#snippet-status")).to_have_text("Copied to the clipboard.")
    assert dashboard.evaluate("navigator.clipboard.readText()") == snippet["html"]


def test_a_new_funnel_shows_its_steps_with_the_high_drop_off_highlighted(dashboard: Page) -> None:
    new = dashboard.locator("#funnel-new")
    if not new.evaluate("d => d.open"):
        new.locator("summary").click()
    dashboard.get_by_label("Name").fill("Sign-up")
    steps = dashboard.locator("#funnel-form-steps .step-row")
    steps.nth(0).locator(".step-event").fill("$page")
    steps.nth(0).locator(".step-path").fill("")
    steps.nth(1).locator(".step-event").fill("Signed Up")
    dashboard.get_by_role("button", name="Create funnel").click()
    expect(dashboard.locator("#funnel-error")).to_have_text("")
    expect(dashboard.locator("#funnel-select option:checked")).to_have_text("Sign-up")
    bars = dashboard.locator("#funnel-steps li")
    expect(bars).to_have_count(2)
    # Five persons viewed a page (four seeded, one through the tracker); only Alice signed up.
    expect(bars.nth(0).locator(".stats strong")).to_have_text("5")
    expect(bars.nth(1).locator(".stats strong")).to_have_text("1")
    expect(bars.nth(0).locator(".stats")).to_contain_text("5 people ·")
    expect(bars.nth(1).locator(".stats")).to_contain_text("1 person ·")
    expect(bars.nth(1)).to_contain_text(re.compile(r"\b80(\.0)? % drop-off"))
    expect(bars.nth(1)).to_have_class(re.compile(r"\bhigh\b"))
    expect(bars.nth(0)).not_to_have_class(re.compile(r"\bhigh\b"))


def test_load_more_pages_through_the_users_with_the_cursor(dashboard: Page, seeded: Stack) -> None:
    """60 more visitors (one batch call): the table shows 50, "Load more" fetches the rest."""
    batch = [
        {
            "type": "page",
            "anonymousId": f"bulk-{n:02d}",
            "properties": {"url": f"https://shop.example/item/{n}"},
            "context": {"userAgent": UA},
        }
        for n in range(60)
    ]
    request = urllib.request.Request(
        f"{seeded.ingest}/v1/batch",
        data=json.dumps({"writeKey": seeded.write_key, "batch": batch}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["accepted"] == 60

    def everyone() -> int:
        _, body, _ = seeded.get(seeded.project("users?segment=active&limit=500"))
        return len(body["users"]) if len(body["users"]) >= 65 else 0

    total = wait_for(everyone, "the 60 new persons in GET users")
    table = dashboard.locator("#users-table")
    persons = table.locator("tbody tr")
    dashboard.get_by_label("Segment").select_option("active")
    expect(table).to_have_attribute("data-loaded", "active|")
    expect(persons).to_have_count(50)
    more = dashboard.get_by_role("button", name="Load more")
    expect(more).to_be_visible()
    more.click()
    expect(persons).to_have_count(total)
    expect(more).to_be_hidden()
    shown = persons.evaluate_all("rows => rows.map(r => r.dataset.person)")
    assert len(set(shown)) == total and "alice@example.com" in shown and "bulk-59" in shown


def test_no_script_errors_on_the_dashboard(dashboard: Page, js_errors: list[str]) -> None:
    assert js_errors == []


def open_dashboard(context: BrowserContext, project: Stack, errors: list[str]) -> Page:
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{project.api}/")
    page.get_by_label("Read key").fill(project.read_key)
    page.get_by_role("button", name="Open dashboard").click()
    expect(page.locator("#project-id")).to_have_text(project.project_id)
    return page


def test_an_empty_project_shows_the_snippet_and_turns_live_by_itself_at_its_first_event(
    context: BrowserContext, stack: Stack
) -> None:
    """A new user's first minutes: no event yet, so the dashboard shows how to send one (the
    snippet, a curl line with this project's key) and listens. The first event here is a
    track() from a server-side id of 40 characters: no page view, so the live table says what
    the visitor did, and shows the id whole."""
    project = stack.new_project("First hour")
    errors: list[str] = []
    page = open_dashboard(context, project, errors)
    welcome = page.locator("#welcome")
    expect(welcome).to_be_visible()
    expect(welcome.get_by_role("heading", name="Waiting for the first event")).to_be_visible()
    expect(page.locator("#welcome-snippet")).to_contain_text(project.write_key)
    expect(page.locator("#welcome-curl")).to_contain_text(f"{project.ingest}/v1/page")
    expect(page.locator("#welcome-curl")).to_contain_text(project.write_key)
    expect(page.locator("#snippet-card")).to_be_hidden()  # the same snippet, shown once
    expect(page.locator("#users-empty")).to_have_text(
        "No users yet: the first visitor appears here by itself."
    )
    expect(page.locator("#live-empty")).to_be_visible()
    page.evaluate("window.__notReloaded = true")

    visitor = f"srv-{uuid.uuid4().hex}0000"
    assert len(visitor) == 40
    assert (
        project.post_batch(
            [
                {
                    "type": "track",
                    "anonymousId": visitor,
                    "event": "Order Completed",
                    "context": {"userAgent": UA},
                }
            ]
        )
        == 1
    )

    row = page.locator(f'#live-table tbody tr[data-person="{visitor}"]')
    expect(row).to_be_visible()  # pushed over the live stream
    expect(welcome).to_be_hidden()
    expect(page.locator("#snippet-card")).to_be_visible()
    expect(page.locator("#online-count")).to_have_text("1")
    who = row.locator("td").nth(0).locator("button")
    expect(who).to_have_text(visitor)  # whole, not "anonymous srv-1a2b"
    expect(who).to_have_attribute("title", visitor)
    expect(row.locator("td").nth(1)).to_have_text("latest event: Order Completed")
    assert page.evaluate("window.__notReloaded") is True
    # The rest of the page followed by itself too: the users table and the cards.
    users = page.locator("#users-table tbody tr")
    expect(users).to_have_count(1)
    expect(users.first).to_have_attribute("data-person", visitor)
    expect(page.locator('[data-metric="total_users"] .value')).to_have_text("1")
    # The detail panel has it whole as well.
    who.click()
    expect(page.locator("#detail-title")).to_have_text(visitor)
    page.keyboard.press("Escape")
    assert errors == []
    page.close()


# -- the README's screenshot --------------------------------------------------------------------

NAMES = ["ana", "bram", "chloe", "daan", "eva", "finn", "greta", "hugo", "ines", "jonas", "kim", "lena"]


def demo_calls(
    project: Stack, days: int = 28, per_day: int = 6, new_per_day: int = 2
) -> list[dict[str, Any]]:
    """`days` of simulated visits: werkstroom.demo.simulate, one run per day over that day and
    the one before, of `per_day` visitors of whom `new_per_day` are new (the others came on the
    days before: some return, some churn), with the ids a real site has: UUIDs from the
    tracker, e-mail addresses as user ids of the third who sign in."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    rng = random.Random(21)
    anonymous = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(days * new_per_day + per_day)]
    calls: list[dict[str, Any]] = []
    for day, back in enumerate(range(days - 1, -1, -1)):
        sim = simulate(
            {project.project_id: project.write_key},
            visitors=per_day,
            days=2,
            end=now - timedelta(days=back),
            seed=back,
            bots=0,
        )
        for call in sim.calls[project.write_key]:
            # simulate's ids end in the visitor's number, the same in its user id
            person = day * new_per_day + int(call["anonymousId"].rsplit("-", 1)[1])
            if person % 3 and "userId" in call:  # a third of them sign in, not nearly all
                if call["type"] == "identify":
                    continue
                del call["userId"]
            call["messageId"] = f"demo-{back}-{call['messageId']}"
            call["anonymousId"] = anonymous[person]
            if "userId" in call:
                call["userId"] = f"{NAMES[person % len(NAMES)]}{person // len(NAMES) or ''}@example.com"
                if "traits" in call:
                    call["traits"]["email"] = call["userId"]
            calls.append(call)
    return calls


def live_calls() -> list[dict[str, Any]]:
    """Six visitors on the site now: one stuck on the checkout (six minutes, heartbeats), one
    identified, one known so far by a track() alone."""
    six_minutes_ago = (datetime.now(UTC) - timedelta(minutes=6)).isoformat()
    mobile, desktop = AGENTS["mobile"], AGENTS["desktop"]
    calls: list[dict[str, Any]] = []
    for n, (path, title, agent) in enumerate(
        [
            ("/pricing", "Pricing", desktop),
            ("/blog/kafka", "Kafka in five minutes", mobile),
            ("/docs", "Documentation", desktop),
            ("/features", "Features", AGENTS["tablet"]),
        ]
    ):
        calls.append(
            {
                "type": "page",
                "anonymousId": str(uuid.UUID(int=random.Random(n).getrandbits(128))),
                "properties": {"url": f"https://shop.example{path}", "path": path, "title": title},
                "context": {"userAgent": agent},
            }
        )
    calls[1]["userId"] = "maria@example.com"
    checkout = {"url": "https://shop.example/checkout", "path": "/checkout", "title": "Checkout"}
    stuck = {
        "anonymousId": str(uuid.UUID(int=random.Random(9).getrandbits(128))),
        "context": {"userAgent": desktop},
    }
    calls.append({"type": "page", "properties": checkout, "timestamp": six_minutes_ago, **stuck})
    calls.append({"type": "track", "event": "$heartbeat", "properties": checkout, **stuck})
    calls.append(
        {
            "type": "track",
            "event": "Order Completed",
            "anonymousId": "srv-order-7731",
            "context": {"userAgent": desktop},
        }
    )
    return calls


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def keep_screenshot(taken: bytes) -> str:
    """Rewrites docs/img/dashboard.png when asked to, or when the page's layout changed since
    it was taken; says what it did."""
    wanted = os.environ.get("WERKSTROOM_UPDATE_SCREENSHOT", "")
    if wanted not in ("", "0", "1"):
        raise AssertionError(f"WERKSTROOM_UPDATE_SCREENSHOT={wanted!r}: use 1 (rewrite) or 0 (never)")
    if wanted == "0":
        return "left alone (WERKSTROOM_UPDATE_SCREENSHOT=0)"
    old = SCREENSHOT.read_bytes() if SCREENSHOT.exists() else b""
    if wanted != "1" and old:
        (width, height), (new_width, new_height) = png_size(old), png_size(taken)
        same = (
            width == new_width
            and abs(new_height - height) <= height * SCREENSHOT_HEIGHT_DRIFT
            and abs(len(taken) - len(old)) <= len(old) * SCREENSHOT_DRIFT
        )
        if same:
            return "unchanged layout: left alone"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(taken)
    return "rewritten"


def test_readme_screenshot_of_the_dashboard_with_demo_data(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    project = stack.new_project("Demo shop")
    history = demo_calls(project)
    live = live_calls()
    sent = sum(project.post_batch(chunk) for chunk in batches(history + live, 500))
    assert sent == len(history) + len(live)
    steps = [{"event": "$page", "path": "/pricing"}, {"event": "Plan Selected"}, {"event": "Order Completed"}]
    request = urllib.request.Request(
        f"{project.api}{project.project('funnels')}",
        data=json.dumps({"name": "Pricing to order", "steps": steps, "window_seconds": 86400}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {project.read_key}"},
    )
    urllib.request.urlopen(request, timeout=30).close()
    persons = len({c["anonymousId"] for c in history + live})
    wait_for(
        lambda: project.get(project.project("metrics"))[1]["metrics"]["total_users"]["value"] == persons,
        "the simulated persons in the metric cards",
    )

    context = browser.new_context(
        user_agent=UA, viewport={"width": 1280, "height": 900}, color_scheme="light", device_scale_factor=1
    )
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    try:
        page = open_dashboard(context, project, errors)
        expect(page.locator("#live-table tbody tr")).to_have_count(6)
        expect(page.locator("#live-table tbody tr.stuck")).to_have_count(1)
        expect(page.locator('#live-table tbody tr[data-person="srv-order-7731"] td').nth(1)).to_contain_text(
            "Order Completed"
        )
        expect(page.locator("#funnel-steps li")).to_have_count(3)
        expect(page.locator("#activity-chart svg path")).to_have_count(4)
        expect(page.locator("#users-table tbody tr").first).to_be_visible()
        expect(page.locator("#welcome")).to_be_hidden()
        page.mouse.move(0, 0)
        # The page down to the funnel: cards, who is online, the chart, the funnel (the users
        # table and the snippet below it would make the picture four screens tall).
        box = page.locator("#funnel-title").locator("xpath=ancestor::section[1]").bounding_box()
        assert box is not None
        taken = page.screenshot(
            full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 24}
        )
    finally:
        context.close()
    out = tmp_path / "dashboard.png"
    out.write_bytes(taken)
    width, height = png_size(out.read_bytes())
    assert width == 1280 and height > 900, (width, height)
    log.info(
        "screenshot %s (%dx%d, %d bytes); %s: %s",
        out,
        width,
        height,
        len(taken),
        SCREENSHOT,
        keep_screenshot(taken),
    )
    assert errors == []
