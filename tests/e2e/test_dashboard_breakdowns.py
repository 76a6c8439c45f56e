"""The dashboard's breakdown cards (pages, sources, campaigns, countries) in a real browser
(Debian's chromium driven by Playwright) against the whole pipeline (`werkstroom serve --target
all`): visits sent through ingest over HTTP, each from a client address of a known country (ingest
trusts X-Forwarded-For here, as behind a proxy), aggregated, read back by the page.

Every figure the page should show is worked out here from the visits sent (`VISITS`, `expected`)
by the definitions of docs/definitions.md, never read back from the API. Waits are for conditions,
never fixed sleeps.
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from tests.e2e.browser import TIMEOUT_MS, UA
from tests.e2e.test_dashboard import (
    ADMIN_TOKEN,
    Stack,
    demo_stack,
    wait_for,
)
from tests.integration.test_countries import IPV4, placed
from werkstroom.geo import Locator as Geo
from werkstroom.settings import DEFAULT_GEO_DATABASE
from werkstroom.sources import source_of

pytestmark = pytest.mark.integration

LIMIT = 10  # rows a page of a card (BD_LIMIT in app.js)
GOOGLE = "https://www.google.com/search?q=werkstroom"
HN = "https://news.ycombinator.com/item?id=4242"
# A campaign name written to run script if it were ever put into the page as HTML.
HOSTILE = '<img src=x onerror="window.__xss=1">'
# The names the browser gives the countries the test's addresses may be placed in (Intl, en-US).
NAMES = {"GB": "United Kingdom", "JP": "Japan", "US": "United States"}
# What an empty value reads as, per card tab (app.js's DIMENSIONS).
NONE = {"sources": "Direct / None", "utm_campaigns": "(none)", "countries": "Unknown", "pages": "Unknown"}


#: The moment the visits are timed from (Visit.start): the seeding's and every check's, so that
#: a check run a few minutes past a midnight that the seeding was before keeps the visits' days.
#: The views' days (the API's) follow the clock.
SEEDED_AT = datetime.now(UTC)


@dataclass(frozen=True)
class Visit:
    """One visitor's one session: page views a minute apart from `start`, all sent from an
    address in `country` ('' : the test's own, which no database places), the first with
    `referrer` and, when given, `utm` in its URL and `campaign` as Segment's context.campaign."""

    visitor: str
    country: str  # "C1", "C2" (resolved to codes by the `countries` fixture) or ""
    paths: tuple[str, ...]
    days_ago: int = 0
    referrer: str = ""
    utm: dict[str, str] = field(default_factory=dict)
    campaign: dict[str, str] = field(default_factory=dict)

    def start(self, now: datetime = SEEDED_AT) -> datetime:
        # today's visits 20 minutes before SEEDED_AT, older ones at the same time of their day
        return now - timedelta(days=self.days_ago, minutes=20)


VISITS = [
    Visit(
        "a1",
        "C1",
        ("/", "/pricing", "/signup"),
        utm={"utm_source": "newsletter", "utm_campaign": "spring-sale"},
    ),
    Visit("a2", "C1", ("/", "/pricing"), referrer=GOOGLE),
    Visit("a3", "C1", ("/",), referrer=GOOGLE),
    Visit("b1", "C2", ("/pricing",), referrer=GOOGLE),
    Visit("b2", "C2", ("/",), campaign={"name": HOSTILE, "source": "newsletter", "medium": "email"}),
    Visit("c1", "", tuple(f"/docs/{n:02d}" for n in range(1, 10)), referrer=HN),
    Visit("d1", "C2", ("/blog/kafka", "/pricing"), days_ago=3, referrer=HN),
    # the period before the default 30 days
    Visit("p1", "", ("/pricing",), days_ago=40, referrer=GOOGLE),
    Visit("p2", "C1", ("/",), days_ago=35),
]
# The visitors identify() names (two hours from their visit, so in no session of it), and their
# person's plan: a1 and d1 are one premium person, b1 a trial one; the others have no plan.
USERS = {"a1": "bd-u1", "d1": "bd-u1", "b1": "bd-u2"}
PLANS = {"bd-u1": "premium", "bd-u2": "trial"}


def plan_of(visit: Visit) -> str:
    return PLANS.get(USERS.get(visit.visitor, ""), "")


def attribute(visit: Visit, dimension: str, codes: dict[str, str]) -> str:
    """A session attribute, as the aggregator takes it from the entry page view."""
    if dimension == "sources":
        return source_of(visit.referrer, f"https://shop.example{visit.paths[0]}")  # Google, Hacker News
    if dimension == "utm_campaigns":
        return visit.campaign.get("name", visit.utm.get("utm_campaign", ""))
    if dimension == "countries":
        return codes.get(visit.country, "")
    raise AssertionError(dimension)


@dataclass(frozen=True)
class Row:
    value: str
    visitors: int
    previous: int
    page_views: int = 0
    bounce_rate: float | None = None
    time_on_page_s: float | None = None


def expected(
    dimension: str,
    codes: dict[str, str],
    start: date,
    end: date,
    filters: dict[str, str] | None = None,
) -> list[Row]:
    """A breakdown over the UTC days start..end (both included), sorted by visitors then value,
    with the visitors of the period of equal length before."""
    length = (end - start).days + 1
    before = (start - timedelta(days=length), start - timedelta(days=1))
    country = (filters or {}).get("country")
    plan = (filters or {}).get("plan")
    segment = (filters or {}).get("segment")
    assert segment in (None, "premium", "trial")  # the segments by plan: the test's visits are recent
    current: dict[str, set[str]] = {}
    previous: dict[str, set[str]] = {}
    views: dict[str, int] = {}
    entries: dict[str, list[bool]] = {}  # path -> for each session entering there, bounced?
    timed: dict[str, list[float]] = {}
    for visit in VISITS:
        day = visit.start().date()
        if country is not None and codes.get(visit.country, "") != country:
            continue
        if (plan is not None and plan_of(visit) != plan) or (
            segment is not None and plan_of(visit) != segment
        ):
            continue
        if dimension == "pages":
            values = list(dict.fromkeys(visit.paths))
        else:
            values = [attribute(visit, dimension, codes)]
        if start <= day <= end:
            for value in values:
                current.setdefault(value, set()).add(visit.visitor)
            if dimension == "pages":
                for n, path in enumerate(visit.paths):
                    views[path] = views.get(path, 0) + 1
                    if n + 1 < len(visit.paths):  # a minute until the next page view
                        timed.setdefault(path, []).append(60.0)
                entries.setdefault(visit.paths[0], []).append(len(visit.paths) == 1)
        elif before[0] <= day <= before[1]:
            for value in values:
                previous.setdefault(value, set()).add(visit.visitor)
    rows = []
    for value, who in current.items():
        bounced = entries.get(value)
        times = timed.get(value)
        rows.append(
            Row(
                value,
                len(who),
                len(previous.get(value, set())),
                views.get(value, 0),
                round(100 * sum(bounced) / len(bounced), 1) if bounced else None,
                round(sum(times) / len(times), 1) if times else None,
            )
        )
    return sorted(rows, key=lambda r: (-r.visitors, r.value))


# -- what the page shows for a row (app.js: valueNode, changeNode, fmtDuration) ------------------


def flag(code: str) -> str:
    return "".join(chr(0x1F1E6 + ord(c) - ord("A")) for c in code)


def shown_value(dimension: str, value: str) -> str:
    if value == "":
        return NONE[dimension]
    if dimension == "countries":
        return f"{flag(value)} {NAMES[value]}"
    return value


def shown_change(now: int, before: int) -> str:
    if before == 0:
        return "–" if now == 0 else "▲ new"
    change = round((now - before) / before * 100, 1)
    if change == 0:
        return "▶ 0 %"
    return f"▲ up {change:g} %" if change > 0 else f"▼ down {-change:g} %"


def shown_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def shown(dimension: str, rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = [
            shown_value(dimension, r.value),
            str(r.visitors),
            str(r.previous),
            shown_change(r.visitors, r.previous),
        ]
        if dimension == "pages":
            bounce = "–" if r.bounce_rate is None else f"{r.bounce_rate:g} %"
            cells += [str(r.page_views), bounce, shown_duration(r.time_on_page_s)]
        out.append(cells)
    return out


# -- the stack, the visits, the browser ---------------------------------------------------------


@pytest.fixture(scope="module")
def countries() -> dict[str, str]:
    """C1, C2 -> two countries and, under "addresses", an address the database places in each."""
    geo = Geo.open(DEFAULT_GEO_DATABASE)
    first, c1 = placed(IPV4, geo)
    second, c2 = placed(IPV4, geo, not_in=c1)
    assert {c1, c2} <= set(NAMES), (c1, c2)
    return {"C1": c1, "C2": c2, "address:C1": first, "address:C2": second}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from demo_stack(
        tmp_path_factory.mktemp("breakdowns"),
        WERKSTROOM_TRUST_FORWARDED_FOR="true",
        WERKSTROOM_ADMIN_TOKEN=ADMIN_TOKEN,  # a project of its own for who is online
    )


def post(stack: Stack, batch: list[dict[str, Any]], address: str) -> None:
    """One /v1/batch from `address` (X-Forwarded-For, '' none), once ingest knows the key."""
    headers = {"Content-Type": "application/json", "User-Agent": UA}
    if address:
        headers["X-Forwarded-For"] = address
    request = urllib.request.Request(
        f"{stack.ingest}/v1/batch",
        data=json.dumps({"writeKey": stack.write_key, "batch": batch}).encode(),
        method="POST",
        headers=headers,
    )
    deadline = time.monotonic() + 20
    while True:  # ingest learns a new project's key within WERKSTROOM_KEY_REFRESH_SECONDS
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["accepted"] == len(batch)
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 401 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def calls(visit: Visit, now: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if visit.visitor in USERS:
        at = visit.start(now) + (timedelta(hours=2) if visit.days_ago else -timedelta(hours=2))
        out.append(
            {
                "type": "identify",
                "anonymousId": f"bd-{visit.visitor}",
                "userId": USERS[visit.visitor],
                "traits": {"plan": plan_of(visit)},
                "messageId": f"bd-{visit.visitor}-identify",
                "timestamp": at.isoformat(),
                "context": {"userAgent": UA},
            }
        )
    for n, path in enumerate(visit.paths):
        query = f"?{urllib.parse.urlencode(visit.utm)}" if n == 0 and visit.utm else ""
        context: dict[str, Any] = {"userAgent": UA}
        if visit.campaign:
            context["campaign"] = visit.campaign
        properties = {"url": f"https://shop.example{path}{query}", "path": path, "title": path}
        if n == 0 and visit.referrer:
            properties["referrer"] = visit.referrer
        out.append(
            {
                "type": "page",
                "anonymousId": f"bd-{visit.visitor}",
                "messageId": f"bd-{visit.visitor}-{n}",
                "timestamp": (visit.start(now) + timedelta(minutes=n)).isoformat(),
                "properties": properties,
                "context": context,
            }
        )
    return out


@pytest.fixture(scope="module")
def seeded(stack: Stack, countries: dict[str, str]) -> Stack:
    """The visits, one batch per client address; then until the API has them all."""
    now = datetime.now(UTC)
    by_address: dict[str, list[dict[str, Any]]] = {}
    for visit in VISITS:
        address = countries.get(f"address:{visit.country}", "")
        by_address.setdefault(address, []).extend(calls(visit, SEEDED_AT))
    for address, batch in by_address.items():
        post(stack, batch, address)

    today = now.date()

    def arrived() -> bool:
        for narrowed in ({}, {"segment": "premium"}):  # the pages, and the persons' plans
            query = urllib.parse.urlencode({"limit": 100, "from": today - timedelta(days=29), **narrowed})
            status, body, _ = stack.get(stack.project(f"breakdowns/pages?{query}"))
            assert status in (200, 503), (status, body)
            want = expected("pages", countries, today - timedelta(days=29), today, narrowed)
            if status != 200 or [
                (r["value"], r["visitors"], r["previous"]["visitors"]) for r in body["rows"]
            ] != [(r.value, r.visitors, r.previous) for r in want]:
                return False
        return True

    wait_for(arrived, "every visit in the pages breakdown", timeout=60)
    return stack


@pytest.fixture(scope="module")
def context(browser: Browser, seeded: Stack) -> Iterator[BrowserContext]:
    ctx = browser.new_context(
        user_agent=UA, accept_downloads=True, viewport={"width": 1280, "height": 900}, locale="en-US"
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


def log_in(page: Page, stack: Stack, url: str = "/") -> None:
    page.goto(f"{stack.api}{url}")
    page.get_by_label("Read key").fill(stack.read_key)
    page.get_by_role("button", name="Open dashboard").click()
    expect(page.locator("#project-id")).to_have_text(stack.project_id)


def cells(card: Locator) -> list[list[str]]:
    rows: list[list[str]] = card.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    return rows


def until_table(card: Locator, want: list[list[str]], what: str) -> None:
    """Until the card's table shows exactly `want` (a load is a fetch away), then it must."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while cells(card) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cells(card) == want, what


def query_of(page: Page) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query, keep_blank_values=True)


def test_breakdowns_filter_by_a_country_keep_it_in_the_url_and_page_through(
    context: BrowserContext, seeded: Stack, countries: dict[str, str], tmp_path: Path
) -> None:
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, seeded)
    today = datetime.now(UTC).date()
    month = (today - timedelta(days=29), today)
    content, acquisition, audience = (
        page.locator(f"#bd-{c}") for c in ("content", "acquisition", "audience")
    )

    # -- the default view: the last 30 days, the first tab of each card --------------------------
    pages = expected("pages", countries, *month)
    assert len(pages) == 13  # / /pricing /signup /blog/kafka and nine /docs/NN: two pages of rows
    until_table(content, shown("pages", pages[:LIMIT]), "the first ten pages")
    expect(content.get_by_role("tab", name="Pages")).to_have_attribute("aria-selected", "true")
    expect(content.get_by_role("tab", name="Entry")).to_have_attribute("aria-selected", "false")
    expect(content.locator(".pager-status")).to_have_text(f"Showing 1–{LIMIT} of {len(pages)}")
    expect(content.get_by_role("button", name="Previous")).to_be_disabled()
    until_table(acquisition, shown("sources", expected("sources", countries, *month)), "the sources")
    until_table(audience, shown("countries", expected("countries", countries, *month)), "the countries")
    expect(page.locator("#bd-filters")).to_be_hidden()

    # -- pagination -------------------------------------------------------------------------------
    content.get_by_role("button", name="Next").click()
    until_table(content, shown("pages", pages[LIMIT:]), "the pages after the first ten")
    expect(content.locator(".pager-status")).to_have_text(f"Showing {LIMIT + 1}–{len(pages)} of {len(pages)}")
    expect(content.get_by_role("button", name="Next")).to_be_disabled()
    content.get_by_role("button", name="Previous").click()
    until_table(content, shown("pages", pages[:LIMIT]), "back to the first ten pages")

    # -- a click on a country filters every card by it, in the URL too ------------------------------
    c2 = countries["C2"]
    audience.locator(f'tbody tr[data-value="{c2}"] button').click()
    chip = page.locator("#bd-chips .chip")
    expect(chip).to_have_count(1)
    expect(chip).to_have_text(f"Country: {NAMES[c2]}×")
    expect(chip).to_have_attribute("aria-label", f"Remove filter Country: {NAMES[c2]}")
    assert query_of(page) == {"country": [c2]}
    narrowed = {"country": c2}

    def filtered_view() -> None:
        only = expected("pages", countries, *month, narrowed)
        assert 1 < len(only) < LIMIT and len(only) < len(pages)
        until_table(content, shown("pages", only), "the pages of the country's visitors")
        expect(content.locator(".pager")).to_be_hidden()
        until_table(
            acquisition, shown("sources", expected("sources", countries, *month, narrowed)), "sources"
        )
        until_table(
            audience, shown("countries", expected("countries", countries, *month, narrowed)), "countries"
        )
        expect(audience.locator(f'tbody tr[data-value="{c2}"] button')).to_have_attribute(
            "aria-pressed", "true"
        )

    filtered_view()

    # -- a reload keeps the filter; a campaign tab is a view of its own, its values text only ------------
    page.reload()
    expect(page.locator("#project-id")).to_have_text(seeded.project_id)  # the tab's key, still there
    expect(chip).to_have_text(f"Country: {NAMES[c2]}×")
    filtered_view()
    acquisition.get_by_role("tab", name="UTM campaign").click()
    expect(acquisition.get_by_role("tab", name="UTM campaign")).to_have_attribute("aria-selected", "true")
    expect(acquisition.get_by_role("tab", name="Sources")).to_have_attribute("aria-selected", "false")
    assert query_of(page) == {"acquisition": ["utm_campaigns"], "country": [c2]}
    campaigns = expected("utm_campaigns", countries, *month, narrowed)
    assert HOSTILE in [r.value for r in campaigns]
    until_table(acquisition, shown("utm_campaigns", campaigns), "the campaigns of the country's visitors")
    expect(acquisition.locator("img")).to_have_count(0)
    assert page.evaluate("window.__xss") is None

    page.screenshot(path=str(tmp_path / "breakdowns-filtered.png"), full_page=True)

    # -- the filtering value is a toggle: pressed again, it removes the filter; so does the chip ----
    audience.locator(f'tbody tr[data-value="{c2}"] button').click()
    expect(chip).to_have_count(0)
    assert query_of(page) == {"acquisition": ["utm_campaigns"]}
    until_table(audience, shown("countries", expected("countries", countries, *month)), "every country")
    page.go_back()
    expect(chip).to_have_text(f"Country: {NAMES[c2]}×")
    until_table(audience, shown("countries", expected("countries", countries, *month, narrowed)), "back")
    chip.click()
    expect(chip).to_have_count(0)
    expect(page.locator("#bd-filters")).to_be_hidden()
    assert query_of(page) == {"acquisition": ["utm_campaigns"]}
    until_table(content, shown("pages", pages[:LIMIT]), "every page again")
    until_table(
        acquisition, shown("utm_campaigns", expected("utm_campaigns", countries, *month)), "campaigns"
    )

    # -- another period: today only, compared with yesterday --------------------------------------
    page.locator('#bd-range [data-range="today"]').click()
    expect(page.locator('#bd-range [data-range="today"]')).to_have_attribute("aria-pressed", "true")
    assert query_of(page) == {"period": ["today"], "acquisition": ["utm_campaigns"]}
    until_table(content, shown("pages", expected("pages", countries, today, today)[:LIMIT]), "today's pages")
    assert "/blog/kafka" not in [r.value for r in expected("pages", countries, today, today)]
    page.go_back()  # each change is a history entry
    expect(page.locator('#bd-range [data-range="30d"]')).to_have_attribute("aria-pressed", "true")
    until_table(content, shown("pages", pages[:LIMIT]), "the 30 days again, after Back")
    assert errors == []
    page.close()


def test_a_shared_url_opens_the_same_view_after_the_login(
    browser: Browser, seeded: Stack, countries: dict[str, str], tmp_path: Path
) -> None:
    """Someone else's browser (no key in its session yet), on a phone: the URL's period, filter
    and tab are the view once logged in."""
    c1 = countries["C1"]
    ctx = browser.new_context(
        user_agent=UA, viewport={"width": 390, "height": 844}, locale="en-US", is_mobile=True
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    try:
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(page, seeded, f"/?period=7d&content=entry_pages&country={c1}")
        today = datetime.now(UTC).date()
        week = (today - timedelta(days=6), today)
        content = page.locator("#bd-content")
        expect(content.get_by_role("tab", name="Entry")).to_have_attribute("aria-selected", "true")
        expect(page.locator('#bd-range [data-range="7d"]')).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#bd-chips .chip")).to_have_text(f"Country: {NAMES[c1]}×")
        entries = [v for v in VISITS if v.country == "C1" and v.start().date() >= week[0]]
        want: dict[str, set[str]] = {}
        for v in entries:
            want.setdefault(v.paths[0], set()).add(v.visitor)
        rows = sorted(((p, len(w)) for p, w in want.items()), key=lambda r: (-r[1], r[0]))
        shown_rows = [[p, str(n)] for p, n in rows]
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while [c[:2] for c in cells(content)] != shown_rows and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [c[:2] for c in cells(content)] == shown_rows
        # on a phone the cards are no wider than the screen: wide tables scroll inside their card
        widest = page.evaluate(
            "Math.max(...[...document.querySelectorAll('#breakdowns > *, .bd-card')]"
            ".map(e => e.getBoundingClientRect().right))"
        )
        assert 300 < widest <= 390
        page.locator("#breakdowns").screenshot(path=str(tmp_path / "breakdowns-phone.png"))
        assert errors == []
    finally:
        ctx.close()


def test_the_csv_of_a_view_holds_its_rows(
    context: BrowserContext, seeded: Stack, countries: dict[str, str]
) -> None:
    page = context.new_page()
    c1 = countries["C1"]
    log_in(page, seeded, f"/?country={c1}")
    today = datetime.now(UTC).date()
    sources = expected("sources", countries, today - timedelta(days=29), today, {"country": c1})
    acquisition = page.locator("#bd-acquisition")
    until_table(acquisition, shown("sources", sources), "the sources of the country's visitors")
    with page.expect_download() as info:
        acquisition.get_by_role("button", name="Download CSV").click()
    path = info.value.path()
    assert path is not None
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text(), newline="")))
    assert [(r["value"], int(r["visitors"]), int(r["previous_visitors"])) for r in rows] == [
        (r.value, r.visitors, r.previous) for r in sources
    ]
    page.close()


def test_the_visitors_segment_and_a_plan_filter_every_card_and_stay_in_the_url(
    context: BrowserContext, seeded: Stack, countries: dict[str, str]
) -> None:
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, seeded)
    today = datetime.now(UTC).date()
    month = (today - timedelta(days=29), today)
    content, acquisition, audience = (
        page.locator(f"#bd-{c}") for c in ("content", "acquisition", "audience")
    )
    chip = page.locator("#bd-chips .chip")
    every = expected("pages", countries, *month)
    until_table(content, shown("pages", every[:LIMIT]), "every page")

    def narrowed_to(filters: dict[str, str], what: str) -> None:
        pages = expected("pages", countries, *month, filters)
        assert 0 < len(pages) < len(every), what
        until_table(content, shown("pages", pages), f"the pages of {what}")
        until_table(acquisition, shown("sources", expected("sources", countries, *month, filters)), what)
        until_table(audience, shown("countries", expected("countries", countries, *month, filters)), what)

    # -- the Visitors select: a segment of Users, a chip, in the URL ------------------------------
    page.locator("#bd-segment").select_option("premium")
    expect(chip).to_have_text("Segment: Premium×")
    assert query_of(page) == {"segment": ["premium"]}
    narrowed_to({"segment": "premium"}, "the premium persons (a1 and d1, one person)")

    # -- a reload keeps it, in the select and the chip ----------------------------------------------
    page.reload()
    expect(page.locator("#project-id")).to_have_text(seeded.project_id)
    expect(chip).to_have_text("Segment: Premium×")
    expect(page.locator("#bd-segment")).to_have_value("premium")
    narrowed_to({"segment": "premium"}, "the premium persons, after a reload")

    # -- with a country too; Everyone takes the segment away and leaves the country -----------------
    c1 = countries["C1"]
    audience.locator(f'tbody tr[data-value="{c1}"] button').click()
    expect(chip).to_have_count(2)
    assert query_of(page) == {"segment": ["premium"], "country": [c1]}
    narrowed_to({"segment": "premium", "country": c1}, "the premium persons in C1")
    page.locator("#bd-segment").select_option("")
    expect(chip).to_have_text(f"Country: {NAMES[c1]}×")
    assert query_of(page) == {"country": [c1]}
    narrowed_to({"country": c1}, "C1's visitors")

    # -- Users holds C1's persons only (b1, bd-u2, is from C2); the country goes ---------------------
    expect(page.locator('#users-table tbody tr[data-person="bd-u1"]')).to_have_count(1)
    expect(page.locator('#users-table tbody tr[data-person="bd-u2"]')).to_have_count(0)
    chip.first.click()
    expect(chip).to_have_count(0)

    # -- a plan, from a person's detail in Users: a chip, in the URL, kept by a reload --------------
    page.locator('#users-table tbody tr[data-person="bd-u2"] button').click()
    page.get_by_role("dialog").get_by_role("button", name="trial").click()
    expect(page.get_by_role("dialog")).to_be_hidden()
    expect(chip).to_have_text("Plan: trial×")
    assert query_of(page) == {"plan": ["trial"]}
    narrowed_to({"plan": "trial"}, "the trial person (b1)")
    page.reload()
    expect(chip).to_have_text("Plan: trial×")
    expect(page.locator("#bd-segment")).to_have_value("")
    narrowed_to({"plan": "trial"}, "the trial person, after a reload")

    # -- a segment the API does not know, in a hand-made URL, is no filter ---------------------------
    page.goto(f"{seeded.api}/?segment=vip")
    expect(page.locator("#project-id")).to_have_text(seeded.project_id)
    until_table(content, shown("pages", every[:LIMIT]), "every page, the unknown segment ignored")
    expect(chip).to_have_count(0)
    assert errors == []
    page.close()


def expected_activity(codes: dict[str, str], country: str, today: date) -> list[list[str]]:
    """The activity chart's 30 rows (day, active users, new users, sessions, page views) narrowed
    to the sessions from `country` (docs/definitions.md, "Filters"): each visit is one session
    with a page view, counted on the day it starts; a person is new on the day of its first
    visit, its identify call's session included."""
    first: dict[str, datetime] = {}
    for visit in VISITS:
        person = USERS.get(visit.visitor, visit.visitor)
        start = visit.start()
        times = [start]
        if visit.visitor in USERS:
            times.append(start + (timedelta(hours=2) if visit.days_ago else -timedelta(hours=2)))
        first[person] = min([first.get(person, start), *times])
    rows = []
    for back in range(29, -1, -1):
        day = today - timedelta(days=back)
        found = [v for v in VISITS if v.start().date() == day and codes.get(v.country, "") == country]
        persons = {USERS.get(v.visitor, v.visitor) for v in found}
        new = {p for p in persons if first[p].date() == day}
        views = sum(len(v.paths) for v in found)
        rows.append([day.isoformat(), str(len(persons)), str(len(new)), str(len(found)), str(views)])
    return rows


def test_a_filter_narrows_the_chart_cards_and_users_and_survives_a_reload(
    context: BrowserContext, seeded: Stack, countries: dict[str, str]
) -> None:
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, seeded)
    chart = page.locator("#activity-chart")
    note = page.locator("#activity-filters")

    def chart_rows() -> list[list[str]]:
        rows: list[list[str]] = chart.locator("table tr").evaluate_all(
            "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent.trim()))"
        )
        return rows

    def until_chart(want: list[list[str]], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while chart_rows() != want and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chart_rows() == want, what

    # Unfiltered: the API's daily statistics, as before.
    status, body, _ = seeded.get(seeded.project("activity?days=30"))
    assert status == 200 and body["filters"] == {}
    every = [
        [d["day"], *(str(d[k]) for k in ("active_users", "new_users", "sessions", "page_views"))]
        for d in body["days"]
    ]
    until_chart(every, "the unfiltered chart")
    expect(note).to_be_hidden()

    # The cards and the users list, unfiltered: every person (the API's figures, as before).
    cards_note, users_note = page.locator("#metrics-filters"), page.locator("#users-filters")
    everyone = {USERS.get(v.visitor, f"bd-{v.visitor}") for v in VISITS}
    total = page.locator('[data-metric="total_users"] .value')
    new = page.locator('[data-metric="new_this_week"] .value')
    expect(total).to_have_text(str(len(everyone)))
    expect(cards_note).to_be_hidden()
    expect(users_note).to_be_hidden()

    def listed() -> set[str]:
        return set(
            page.locator("#users-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.person)")
        )

    def until_listed(want: set[str], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while listed() != want and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listed() == want, what

    until_listed(everyone, "every person")

    # A country from the audience card narrows the chart to its visitors' sessions, the cards and
    # the users list to the persons with a session from there (docs/definitions.md, "Filters").
    c2 = countries["C2"]
    now = datetime.now(UTC)
    narrowed = expected_activity(countries, c2, now.date())
    assert narrowed != every and sum(int(r[3]) for r in narrowed) == 3  # b1, b2 today; d1 3 days ago
    from_c2 = {USERS.get(v.visitor, f"bd-{v.visitor}") for v in VISITS if v.country == "C2"}
    assert from_c2 == {"bd-u1", "bd-u2", "bd-b2"}  # d1 is bd-u1's: all first seen this week
    page.locator(f'#bd-audience tbody tr[data-value="{c2}"] button').click()
    until_chart(narrowed, "the chart of the country's sessions")
    expect(note).to_be_visible()
    expect(note).to_contain_text(f"Country: {NAMES[c2]}")
    expect(chart.locator("svg")).to_have_attribute(
        "aria-label", "Daily activity over the last 30 days, filtered"
    )

    def narrowed_people(what: str) -> None:
        expect(total).to_have_text(str(len(from_c2)))
        expect(new).to_have_text(str(len(from_c2)))
        expect(cards_note).to_contain_text(f"Country: {NAMES[c2]}")
        until_listed(from_c2, what)
        expect(users_note).to_contain_text(f"Country: {NAMES[c2]}")

    narrowed_people("the persons with a session from the country")

    # A reload keeps it (the filter is in the URL); removing the chip brings every session back.
    page.reload()
    expect(page.locator("#project-id")).to_have_text(seeded.project_id)
    until_chart(narrowed, "the narrowed chart after a reload")
    expect(note).to_contain_text(f"Country: {NAMES[c2]}")
    narrowed_people("the persons of the country after a reload")
    page.locator("#bd-chips .chip").click()
    until_chart(every, "the unfiltered chart again")
    expect(note).to_be_hidden()
    expect(total).to_have_text(str(len(everyone)))
    expect(cards_note).to_be_hidden()
    until_listed(everyone, "every person again")
    expect(users_note).to_be_hidden()
    assert errors == []
    page.close()


#: A funnel over the visits: the home page, then /pricing within the hour.
FUNNEL_STEPS = [{"event": "$page", "path": "/"}, {"event": "$page", "path": "/pricing"}]


def expected_funnel(codes: dict[str, str], country: str | None, now: datetime) -> list[str]:
    """The funnel's counts over the last 30 days (docs/definitions.md, "Filters"): per step, the
    persons who reached it (a visit's page views are a minute apart, within the funnel's hour),
    of those with a visit from `country` in those days (None: everyone). A person's level is
    theirs from all their visits, also those from another country."""
    since = now.date() - timedelta(days=29)
    levels: dict[str, int] = {}
    kept: set[str] = set()
    for visit in VISITS:
        if visit.start().date() < since:
            continue
        person = USERS.get(visit.visitor, visit.visitor)
        level = 0
        if "/" in visit.paths:
            level = 2 if "/pricing" in visit.paths[visit.paths.index("/") :] else 1
        levels[person] = max(levels.get(person, 0), level)
        if country is None or codes.get(visit.country, "") == country:
            kept.add(person)
    return [str(sum(1 for p, n in levels.items() if p in kept and n >= k)) for k in (1, 2)]


def test_a_filter_narrows_the_funnel_and_survives_a_reload(
    context: BrowserContext, seeded: Stack, countries: dict[str, str]
) -> None:
    request = urllib.request.Request(
        f"{seeded.api}{seeded.project('funnels')}",
        data=json.dumps({"name": "Home to pricing", "steps": FUNNEL_STEPS, "window_seconds": 3600}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {seeded.read_key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        funnel_id = json.loads(response.read())["funnel_id"]
    now = datetime.now(UTC)
    c2 = countries["C2"]
    every, narrowed = expected_funnel(countries, None, now), expected_funnel(countries, c2, now)
    # a2 and bd-u1 reach /pricing, a3 and b2 only the home page; from C2: b2, and bd-u1 by d1's
    # visit (its steps are a1's, from C1)
    assert (every, narrowed) == (["4", "2"], ["2", "1"])

    def counted(query: str) -> list[str] | None:
        status, body, _ = seeded.get(seeded.project(f"funnels/{funnel_id}?{query}"))
        assert status == 200, body
        return [str(s["count"]) for s in body["steps"]] if body["funnel"]["backfilled"] else None

    wait_for(lambda: counted("days=30") == every, "the funnel back-filled from the visits", timeout=60)
    assert counted(urllib.parse.urlencode({"days": 30, "country": c2})) == narrowed

    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, seeded)
    page.locator("#funnel-select").select_option(funnel_id)
    counts = page.locator("#funnel-steps li .stats strong")
    note = page.locator("#funnel-filters")
    expect(counts).to_have_text(every)
    expect(note).to_be_hidden()

    # A country from the audience card narrows the funnel to the persons with a visit from it.
    page.locator(f'#bd-audience tbody tr[data-value="{c2}"] button').click()
    expect(counts).to_have_text(narrowed)
    expect(note).to_be_visible()
    expect(note).to_contain_text(f"Country: {NAMES[c2]}")

    # A reload keeps it (the filter is in the URL); removing the chip counts everyone again.
    page.reload()
    expect(page.locator("#project-id")).to_have_text(seeded.project_id)
    page.locator("#funnel-select").select_option(funnel_id)
    expect(counts).to_have_text(narrowed)
    expect(note).to_contain_text(f"Country: {NAMES[c2]}")
    page.locator("#bd-chips .chip").click()
    expect(counts).to_have_text(every)
    expect(note).to_be_hidden()
    assert errors == []
    page.close()


def test_the_filters_narrow_who_is_online_and_stay_after_a_reload(
    browser: Browser, stack: Stack, countries: dict[str, str]
) -> None:
    """The chips narrow the live table, its count and its stream as they do the cards. A project
    of its own: its visitors online now would change the other tests' figures."""
    site = stack.new_project("Who is online, filtered")
    now = datetime.now(UTC)
    for visitor, country in (("on-c1", "C1"), ("on-c2", "C2")):
        view = {
            "type": "page",
            "anonymousId": visitor,
            "messageId": f"{visitor}-0",
            "timestamp": (now - timedelta(seconds=30)).isoformat(),
            "properties": {"url": f"https://shop.example/{visitor}", "path": f"/{visitor}"},
            "context": {"userAgent": UA},
        }
        post(site, [view], countries[f"address:{country}"])
    c1 = countries["C1"]

    def narrowed() -> bool:  # the sessions' breakdown rows, which the filters read, are in
        status, body, _ = site.get(site.project(f"online?country={c1}"))
        return status == 200 and [u["anonymous_id"] for u in body["users"]] == ["on-c1"]

    wait_for(narrowed, "the online visitor of C1 found by the filter", timeout=60)
    ctx = browser.new_context(user_agent=UA, viewport={"width": 1280, "height": 900}, locale="en-US")
    ctx.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    try:
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(page, site)
        rows = page.locator("#live-table tbody tr")
        count = page.locator("#online-count")
        expect(rows).to_have_count(2)
        expect(count).to_have_text("2")

        def only_c1() -> None:
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-person", "on-c1")
            expect(count).to_have_text("1")
            expect(page.locator("#live-state")).to_have_text("live, filtered")

        page.locator(f'#bd-audience tbody tr[data-value="{c1}"] button').click()
        assert query_of(page) == {"country": [c1]}
        only_c1()
        page.reload()
        expect(page.locator("#project-id")).to_have_text(site.project_id)
        expect(page.locator("#bd-chips .chip")).to_have_text(f"Country: {NAMES[c1]}×")
        only_c1()
        page.locator("#bd-chips .chip").click()  # the chip goes: everyone online again
        expect(rows).to_have_count(2)
        expect(count).to_have_text("2")
        expect(page.locator("#live-state")).to_have_text("live")
        assert errors == []
    finally:
        ctx.close()
