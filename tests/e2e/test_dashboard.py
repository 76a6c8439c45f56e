"""The built-in dashboard in a real browser (Debian's chromium driven by Playwright) against the
whole pipeline (`werkstroom serve --target all`: embedded Kafka and ClickHouse, the real
aggregator), with events sent through ingest and by the real tracker (/t.js) on a test page.

Nothing is mocked: every number on the page went ingest -> Kafka -> aggregator -> ClickHouse
-> API. Waits are for conditions (Playwright's auto-retrying expect), never fixed sleeps.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from werkstroom.embedded import free_port

pytestmark = pytest.mark.integration

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
CLI = [sys.executable, "-m", "werkstroom"]


@dataclass(frozen=True)
class Stack:
    ingest: str
    api: str
    project_id: str
    write_key: str
    read_key: str

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    env = {
        **os.environ,
        "WERKSTROOM_DATA_DIR": str(tmp / "data"),
        "WERKSTROOM_INGEST_PORT": str(free_port()),
        "WERKSTROOM_API_PORT": str(free_port()),
        "WERKSTROOM_KEY_REFRESH_SECONDS": "0.5",
        "WERKSTROOM_DEMO": "true",
    }
    for name in ("WERKSTROOM_KAFKA_BOOTSTRAP", "WERKSTROOM_CLICKHOUSE_URL", "WERKSTROOM_PUBLIC_INGEST_URL"):
        env.pop(name, None)
    log_path = tmp / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--target", "all"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=tmp,
        )
        try:
            assert proc.stdout is not None
            banner = ""
            deadline = time.monotonic() + 90
            while "curl" not in banner and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    raise AssertionError(f"serve exited: {log_path.read_text()[-3000:]}")
                banner += line
            assert "curl" in banner, f"no start-up banner: {log_path.read_text()[-3000:]}"
            demo = json.loads((tmp / "data" / "demo.json").read_text())
            yield Stack(
                ingest=f"http://127.0.0.1:{env['WERKSTROOM_INGEST_PORT']}",
                api=f"http://127.0.0.1:{env['WERKSTROOM_API_PORT']}",
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
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


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
    # Nobody a week ago: no trend to compute, and the card says so instead of inventing one.
    expect(dashboard.locator('[data-metric="total_users"] .trend')).to_contain_text("no comparison")
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
    expect(sessions.first).to_contain_text("active")
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
