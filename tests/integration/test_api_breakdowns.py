"""Breakdowns over the real path: hand-made events sent through ingest's HTTP API (countries
from trusted X-Forwarded-For addresses), through Kafka and the aggregator's recomputation into
breakdown_sessions and breakdown_pages, answered by the API. Every dimension, with and without
filters, is held to hand-computed values for a few and, for all, to an oracle built in this file
from `events` alone: sessions cut by the 30-minute rule in SQL, breakdowns added up in Python.

The fixture, around B = noon two days ago (UTC), the period being B-3d .. B+2d (today is B+2d):
  v1 (country A, desktop): B: / (from Google, utm news/email/spring), /pricing at +2m, a
     heartbeat at +5m; B+1d: /pricing from Hacker News (a bounce, its time unknown)
  v2 (country B, mobile): B: /blog/launch from t.co, /blog/launch again at +1m, / at +3m
  v3 (unknown country): B-1d: /pricing, direct, context.campaign partner/cpc/launch; a track at +30s
  v4 (country A): B-1d: /docs from blog.example.org, /pricing at +10s (its own site as referrer)
  v6: only a track event (no page view: no breakdown row)
  previous period: v5 (A): B-8d /pricing from Google; v1: B-8d / direct.
  before both: v9 (A): B-20d /pricing; v10 (B): B-35d /docs from Google.
Persons, from identify calls two hours away from any page view (each its own page-less session):
  u1 = v1, identified at B+1d+2h (after all its sessions), plan premium;
  u2 = v2, plan trial at B-3h, then free at B+2h (the latest wins);
  u4 = v5 (identified at B-8d+2h, plan free) and v4 (B-1d+2h, plan trial): two visitors;
  u9 = v9, plan premium, last seen about 20 days ago (inactive);
  v3, v6 and v10 are never identified: each its own person, no plan (v10 churned).
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.api.filters import COLUMNS, PERSON_FILTERS, SEGMENTS
from tests.conftest import Infra
from tests.integration.stack import BROWSER_UA, Stack
from tests.integration.test_api import identify, iso, track
from tests.integration.test_countries import two_countries
from werkstroom.breakdowns import ROLLED_FILTERS
from werkstroom.clickhouse.tables import BREAKDOWN_DIMENSIONS, ENTRY_ATTRIBUTES
from werkstroom.demo import AGENTS

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
S = timedelta(seconds=1)
D = timedelta(days=1)
SITE = "https://shop.example"
DIMENSIONS = BREAKDOWN_DIMENSIONS
FILTER_COLUMNS = {name: column for name, column in COLUMNS.items() if name != "page"}
#: users-list segments by last seen, before the API's now (docs/definitions.md, "Users")
ACTIVE, INACTIVE = timedelta(days=7), timedelta(days=30)


def persons_made(stack: Stack, project_id: str) -> set[tuple[str, tuple[str, ...], str]]:
    """The project's live persons as (person id, its visitors sorted, plan): what the identifies
    sent make them."""
    return {
        (person, tuple(ids), plan)
        for person, ids, plan in stack.rows(
            "SELECT person_id, arraySort(anonymous_ids), plan FROM persons FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0",
            p=project_id,
        )
    }


def page(
    anon: str,
    at: datetime,
    path: str,
    referrer: str = "",
    query: str = "",
    ua: str = BROWSER_UA,
    campaign: dict[str, str] | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userAgent": ua}
    if campaign:
        context["campaign"] = campaign
    return {
        "type": "page",
        "anonymousId": anon,
        "messageId": uuid.uuid4().hex,
        "timestamp": iso(at),
        "properties": {"path": path, "url": f"{SITE}{path}{query}", "referrer": referrer},
        "context": context,
    }


# -- the oracle: sessions from `events` by the 30-minute rule, in SQL; breakdowns in Python ----

ORACLE_SQL = """
SELECT anonymous_id, k, timestamp, event_id, path, source, utm_source, utm_medium, utm_campaign,
       country, device_type, browser, os, start_at, last_at
FROM (
    SELECT *, sum(gap) OVER (PARTITION BY anonymous_id ORDER BY timestamp, event_id ROWS UNBOUNDED PRECEDING) AS k
    FROM (
        SELECT *, toUInt8(dateDiff('millisecond', lagInFrame(timestamp, 1, timestamp) OVER (
                   PARTITION BY anonymous_id ORDER BY timestamp, event_id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW),
                   timestamp) > 1800000) AS gap
        FROM events FINAL WHERE project_id = {p:String} AND anonymous_id != ''
    )
) AS e
INNER JOIN (
    SELECT anonymous_id, k, min(timestamp) AS start_at, max(timestamp) AS last_at
    FROM (
        SELECT anonymous_id, timestamp,
               sum(gap) OVER (PARTITION BY anonymous_id ORDER BY timestamp, event_id ROWS UNBOUNDED PRECEDING) AS k
        FROM (
            SELECT anonymous_id, timestamp, event_id,
                   toUInt8(dateDiff('millisecond', lagInFrame(timestamp, 1, timestamp) OVER (
                       PARTITION BY anonymous_id ORDER BY timestamp, event_id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW),
                       timestamp) > 1800000) AS gap
            FROM events FINAL WHERE project_id = {p:String} AND anonymous_id != ''
        )
    )
    GROUP BY anonymous_id, k
) AS b USING (anonymous_id, k)
WHERE e.type = 'page'
ORDER BY anonymous_id, k, timestamp, path
"""


@dataclass
class OracleSession:
    anonymous_id: str
    day: date
    views: list[tuple[datetime, str]] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    last_at: datetime | None = None


def oracle_sessions(stack: Stack, project_id: str) -> list[OracleSession]:
    sessions: dict[tuple[str, int], OracleSession] = {}
    for row in stack.rows(ORACLE_SQL, p=project_id):
        anon, k, at, _id, path, *attrs, start_at, last_at = row
        s = sessions.get((anon, k))
        if s is None:
            s = sessions[(anon, k)] = OracleSession(anon, start_at.date(), last_at=last_at)
            s.attributes = dict(zip(ENTRY_ATTRIBUTES, attrs, strict=True))
        s.views.append((at, path))
    for s in sessions.values():
        s.attributes["entry_path"] = s.views[0][1]
        s.attributes["exit_path"] = s.views[-1][1]
    return list(sessions.values())


@dataclass(frozen=True)
class OraclePerson:
    """What the filters on a visitor's person look at: its plan and when it was last seen."""

    person_id: str
    plan: str
    last_seen: datetime

    def has(self, filters: dict[str, str], now: datetime) -> bool:
        if "plan" in filters and self.plan != filters["plan"]:
            return False
        age = now - self.last_seen
        return {
            None: True,
            "active": age <= ACTIVE,
            "inactive": ACTIVE < age <= INACTIVE,
            "churned": age > INACTIVE,
            "premium": self.plan == "premium",
            "trial": self.plan == "trial",
        }[filters.get("segment")]


def oracle_persons(
    stack: Stack, project_id: str, identifies: list[dict[str, Any]]
) -> dict[str, OraclePerson]:
    """anonymous id -> its person, from the identify calls sent (the latest one of a visitor
    names its user; a user's plan is its latest identify's) and from `events` (a person's last
    seen is its visitors' newest event)."""
    user_of: dict[str, str] = {}
    plans: dict[str, str] = {}
    for call in sorted(identifies, key=lambda c: c["timestamp"]):
        user_of[call["anonymousId"]] = call["userId"]
        if "plan" in call["traits"]:
            plans[call["userId"]] = call["traits"]["plan"]
    newest = dict(
        stack.rows(
            "SELECT anonymous_id, max(timestamp) FROM events FINAL "
            "WHERE project_id = {p:String} AND anonymous_id != '' GROUP BY anonymous_id",
            p=project_id,
        )
    )
    person_of = {anon: user_of.get(anon, anon) for anon in newest}
    seen: dict[str, datetime] = {}
    for anon, person in person_of.items():
        seen[person] = max(seen.get(person, newest[anon]), newest[anon])
    return {
        anon: OraclePerson(person, plans.get(person, ""), seen[person].replace(tzinfo=UTC))
        for anon, person in person_of.items()
    }


def glob_match(glob: str, value: str) -> bool:
    return re.fullmatch(".*".join(re.escape(p) for p in glob.split("*")), value, re.S) is not None


def oracle(
    sessions: list[OracleSession],
    dimension: str,
    start: date,
    end: date,
    filters: dict[str, str],
    persons: dict[str, OraclePerson] | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    length = end - start
    if set(PERSON_FILTERS) & set(filters):
        assert persons is not None and now is not None
    previous = (start - D - length, start - D)

    def figures(lo: date, hi: date) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = defaultdict(
            lambda: {
                "visitors": set(),
                "sessions": 0,
                "page_views": 0,
                "bounced": 0,
                "entered": 0,
                "time": 0.0,
                "timed": 0,
            }
        )
        for s in sessions:
            if not lo <= s.day <= hi:
                continue
            if any(
                not glob_match(v, s.attributes[FILTER_COLUMNS[n]])
                if n in ("entry_page", "exit_page")
                else s.attributes[FILTER_COLUMNS[n]] != v
                for n, v in filters.items()
                if n in FILTER_COLUMNS
            ):
                continue
            if persons is not None and not persons[s.anonymous_id].has(filters, now):  # type: ignore[arg-type]
                continue
            if (
                "page" in filters
                and dimension != "pages"
                and not any(glob_match(filters["page"], p) for _t, p in s.views)
            ):
                continue
            if dimension == "pages":
                for i, (at, path) in enumerate(s.views):
                    if "page" in filters and not glob_match(filters["page"], path):
                        continue
                    f = out[path]
                    f["visitors"].add(s.anonymous_id)
                    f["page_views"] += 1
                    after = s.views[i + 1][0] if i + 1 < len(s.views) else s.last_at
                    if i + 1 < len(s.views) or s.last_at > at:
                        f["time"] += (after - at).total_seconds()
                        f["timed"] += 1
                    if i == 0:
                        f["entered"] += 1
                        f["bounced"] += len(s.views) == 1
                for path in {
                    p for _t, p in s.views if "page" not in filters or glob_match(filters["page"], p)
                }:
                    out[path]["sessions"] += 1
            else:
                f = out[s.attributes[DIMENSIONS[dimension]]]
                f["visitors"].add(s.anonymous_id)
                f["sessions"] += 1
                f["entered"] += 1
                f["page_views"] += len(s.views)
                f["bounced"] += len(s.views) == 1
        return out

    now, before = figures(start, end), figures(*previous)
    rows = []
    for value, f in now.items():
        p = before.get(value)
        rows.append(
            {
                "value": value,
                "visitors": len(f["visitors"]),
                "sessions": f["sessions"],
                "page_views": f["page_views"],
                "bounce_rate": round(f["bounced"] * 100 / f["entered"], 1) if f["entered"] else None,
                "avg_time_on_page_s": round(f["time"] / f["timed"], 1)
                if dimension == "pages" and f["timed"]
                else None,
                "previous": {
                    "visitors": len(p["visitors"]) if p else 0,
                    "sessions": p["sessions"] if p else 0,
                    "page_views": p["page_views"] if p else 0,
                },
            }
        )
    return sorted(rows, key=lambda r: (-r["visitors"], r["value"]))


# -- the test -------------------------------------------------------------------------------


async def test_breakdowns_every_dimension_and_filters(
    infra: Infra, names: dict[str, str], tmp_path: Any
) -> None:
    addr_a, country_a, addr_b, country_b = two_countries()

    now = datetime.now(UTC).replace(microsecond=0)
    b = datetime.combine(now.date() - 2 * D, datetime.min.time(), tzinfo=UTC) + 12 * timedelta(hours=1)
    start, end = (b - 3 * D).date(), (b + 2 * D).date()
    mobile = AGENTS["mobile"]
    google = "https://www.google.com/"
    by_address = {
        addr_a: [
            page("v1", b, "/", google, "?utm_source=news&utm_medium=email&utm_campaign=spring"),
            page("v1", b + 2 * M, "/pricing", f"{SITE}/"),
            track("v1", b + 5 * M, "$heartbeat"),
            page("v1", b + D, "/pricing", "https://news.ycombinator.com/item?id=1"),
            page("v4", b - D, "/docs", "https://blog.example.org/post"),
            page("v4", b - D + 10 * S, "/pricing", f"{SITE}/docs"),
            page("v5", b - 8 * D, "/pricing", google),
            page("v1", b - 8 * D, "/"),
            page("v9", b - 20 * D, "/pricing"),
        ],
        addr_b: [
            page("v2", b, "/blog/launch", "https://t.co/x", ua=mobile),
            page("v2", b + M, "/blog/launch", ua=mobile),
            page("v2", b + 3 * M, "/", ua=mobile),
            page("v10", b - 35 * D, "/docs", google, ua=mobile),
        ],
        "": [
            page("v3", b - D, "/pricing", campaign={"source": "partner", "medium": "cpc", "name": "launch"}),
            track("v3", b - D + 30 * S, "Clicked"),
            track("v6", b, "Signed Up"),
        ],
    }
    hours = timedelta(hours=2)
    identifies = [
        identify("v1", b + D + hours, "u1", {"plan": "premium", "email": "u1@example.com"}),
        identify("v2", b - 3 * timedelta(hours=1), "u2", {"plan": "trial"}),
        identify("v2", b + hours, "u2", {"plan": "free"}),
        identify("v5", b - 8 * D + hours, "u4", {"plan": "free"}),
        identify("v4", b - D + hours, "u4", {"plan": "trial"}),
        identify("v9", b - 20 * D + hours, "u9", {"plan": "premium"}),
    ]
    by_address[""] += identifies
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        trust_forwarded_for=True,
        breakdown_rollup_seconds=0,  # every refresh rolls up: the settled days read breakdown_daily
    ) as stack:
        pid = stack.project.project_id
        await stack.send_from(by_address)
        total_events = sum(len(c) for c in by_address.values())
        assert await stack.wait_count(total_events) == total_events
        people = oracle_persons(stack, pid, identifies)
        want_persons = {
            (p.person_id, tuple(sorted(a for a, q in people.items() if q == p)), p.plan)
            for p in people.values()
        }
        assert len(want_persons) == 7 and ("u4", ("v4", "v5"), "trial") in want_persons
        assert ("v10", ("v10",), "") in want_persons  # never identified: its own person

        def recomputed() -> bool:
            return (
                stack.scalar(
                    "SELECT count() FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                    p=pid,
                )
                == 9
                and stack.scalar(
                    "SELECT sum(views) FROM breakdown_pages FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                    p=pid,
                )
                == 13
                # the persons as the identifies make them: their visitors (anonymous_ids) and plans
                and persons_made(stack, pid) == want_persons
                # and every settled day rolled up (breakdown_daily): the API reads those days there
                and stack.scalar(
                    "SELECT count() FROM (SELECT DISTINCT day FROM breakdown_sessions FINAL "
                    "WHERE project_id = {p:String} AND is_deleted = 0 AND day < today() AND day NOT IN "
                    "(SELECT day FROM breakdown_daily FINAL WHERE project_id = {p:String} AND dimension = ''))",
                    p=pid,
                )
                == 0
                # and under each one-attribute filter (breakdown_daily_by), the same days
                and stack.scalar(
                    "SELECT count() FROM (SELECT DISTINCT day FROM breakdown_sessions FINAL "
                    "WHERE project_id = {p:String} AND is_deleted = 0 AND day < today() AND day NOT IN "
                    "(SELECT day FROM breakdown_daily_by FINAL WHERE project_id = {p:String} AND filter = ''))",
                    p=pid,
                )
                == 0
            )

        await stack.until(recomputed, timeout=30)
        assert stack.scalar(
            "SELECT count() FROM breakdown_daily FINAL WHERE project_id = {p:String} AND dimension = 'pages'",
            p=pid,
        )
        # v2's row (country B, a mobile device) in both roll-ups: the one-filter views of its day read it
        assert stack.scalar(
            "SELECT count() FROM breakdown_daily_by FINAL WHERE project_id = {p:String} AND filter = 'country' "
            "AND filter_value = {c:String} AND dimension = 'pages' AND value = '/blog/launch'",
            p=pid,
            c=country_b,
        )
        sessions = oracle_sessions(stack, pid)
        assert len(sessions) == 9  # v6 has no page view
        # The breakdown tables' visitors are the persons' anonymous_ids, each in one person.
        visitors = stack.rows(
            "SELECT DISTINCT anonymous_id FROM breakdown_sessions FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0 ORDER BY anonymous_id",
            p=pid,
        )
        members = sorted(a for _p, ids, _plan in want_persons for a in ids)
        assert [a for (a,) in visitors] == sorted({s.anonymous_id for s in sessions})
        assert set(members) >= {a for (a,) in visitors} and len(members) == len(set(members))

        url = await stack.start_api(clock=lambda: now)
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def get(dimension: str, **params: Any) -> dict[str, Any]:
                response = await api.get(
                    f"/api/projects/{pid}/breakdowns/{dimension}",
                    params={"from": start.isoformat(), "to": end.isoformat(), **params},
                )
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            # By hand, first: the pages.
            pages = await get("pages")
            length = (end - start).days
            assert {k: v for k, v in pages.items() if k != "rows"} == {
                "dimension": "pages",
                "from": start.isoformat(),
                "to": end.isoformat(),
                "previous_from": (start - D - timedelta(days=length)).isoformat(),
                "previous_to": (start - D).isoformat(),
                "filters": {},
                "total": 4,
                "limit": 10,
                "offset": 0,
            }
            assert pages["rows"] == [
                # v1 twice (B, B+1d), v3, v4: 4 sessions, 4 views; entered by v1 (B+1d, a bounce)
                # and v3 (a bounce): 100 %; time known: v1 at B (180 s), v3 (30 s), not v1 at B+1d
                # (its last event), v4's (its last event): (180 + 30) / 2
                {
                    "value": "/pricing",
                    "visitors": 3,
                    "sessions": 4,
                    "page_views": 4,
                    "bounce_rate": 100.0,
                    "avg_time_on_page_s": 105.0,
                    "previous": {"visitors": 1, "sessions": 1, "page_views": 1},
                },
                {
                    "value": "/",
                    "visitors": 2,
                    "sessions": 2,
                    "page_views": 2,
                    "bounce_rate": 0.0,  # v1 entered there and went on
                    "avg_time_on_page_s": 120.0,  # v1's 120 s; v2's / was its last event
                    "previous": {"visitors": 1, "sessions": 1, "page_views": 1},
                },
                {
                    "value": "/blog/launch",
                    "visitors": 1,
                    "sessions": 1,
                    "page_views": 2,
                    "bounce_rate": 0.0,
                    "avg_time_on_page_s": 90.0,  # 60 s and 120 s
                    "previous": {"visitors": 0, "sessions": 0, "page_views": 0},
                },
                {
                    "value": "/docs",
                    "visitors": 1,
                    "sessions": 1,
                    "page_views": 1,
                    "bounce_rate": 0.0,
                    "avg_time_on_page_s": 10.0,
                    "previous": {"visitors": 0, "sessions": 0, "page_views": 0},
                },
            ]
            sources = await get("sources")
            assert [
                (r["value"], r["visitors"], r["sessions"], r["bounce_rate"]) for r in sources["rows"]
            ] == [
                ("", 1, 1, 100.0),  # v3 (direct); v4 came from blog.example.org
                ("Google", 1, 1, 0.0),
                ("Hacker News", 1, 1, 100.0),
                ("X (Twitter)", 1, 1, 0.0),
                ("blog.example.org", 1, 1, 0.0),
            ]
            assert sources["rows"][1]["previous"] == {"visitors": 1, "sessions": 1, "page_views": 1}
            countries = await get("countries")
            assert {r["value"]: r["visitors"] for r in countries["rows"]} == {
                country_a: 2,
                country_b: 1,
                "": 1,
            }
            campaigns = await get("utm_campaigns")
            assert [(r["value"], r["sessions"]) for r in campaigns["rows"]] == [
                ("", 3),
                ("launch", 1),
                ("spring", 1),
            ]
            narrowed = await get("pages", country=country_a, source="Google")
            assert narrowed["filters"] == {"source": "Google", "country": country_a}
            assert [(r["value"], r["visitors"], r["page_views"]) for r in narrowed["rows"]] == [
                ("/", 1, 1),
                ("/pricing", 1, 1),
            ]

            # Then every dimension, plain and filtered, against the oracle.
            cases: list[dict[str, str]] = [
                {},
                {"country": country_a},
                {"source": "Google"},
                {"source": ""},
                {"page": "/pricing"},
                {"page": "/blog/*"},
                {"entry_page": "/"},
                {"exit_page": "/pr*"},
                {"device": "mobile"},
                {"utm_campaign": "launch"},
                {"country": country_a, "page": "/pricing"},
            ]
            # One filter on an entry page attribute reads the settled days from breakdown_daily_by:
            # each such filter with every value a session has, and one none has.
            cases += [
                {name: value}
                for name, column in FILTER_COLUMNS.items()
                if column in ROLLED_FILTERS
                for value in sorted({s.attributes[column] for s in sessions} | {"none-has-it"})
            ]
            for dimension in DIMENSIONS:
                for filters in cases:
                    got = await get(dimension, limit=1000, **filters)
                    want = oracle(sessions, dimension, start, end, filters)
                    assert got["rows"] == want, (dimension, filters)
                    assert got["total"] == len(want), (dimension, filters)

            # The filters on the visitor's person, by hand first: premium is u1 (v1), identified
            # after its sessions, which all count, the one in the previous period too; trial is
            # u4, whose visitor v5 (previous period) was identified before v4 (this period).
            premium = await get("pages", plan="premium")
            assert premium["filters"] == {"plan": "premium"}
            assert [
                (r["value"], r["visitors"], r["sessions"], r["previous"]["visitors"]) for r in premium["rows"]
            ] == [
                ("/", 1, 1, 1),
                ("/pricing", 1, 2, 0),
            ]
            trial = await get("pages", segment="trial")
            assert [(r["value"], r["visitors"], r["previous"]["visitors"]) for r in trial["rows"]] == [
                ("/docs", 1, 0),
                ("/pricing", 1, 1),
            ]
            unnamed = await get("sources", plan="")  # v3, never identified
            assert [(r["value"], r["visitors"]) for r in unnamed["rows"]] == [("", 1)]
            dutch_premium = await get("utm_campaigns", plan="premium", segment="active", country=country_a)
            assert dutch_premium["filters"] == {"country": country_a, "plan": "premium", "segment": "active"}
            assert [(r["value"], r["visitors"]) for r in dutch_premium["rows"]] == [("", 1), ("spring", 1)]

            # Then against the oracle, in this period and in one reaching back past every
            # segment's bounds (u9 inactive, v10 churned).
            wide = (b - 40 * D).date()
            person_cases: list[dict[str, str]] = [
                *({"segment": segment} for segment in SEGMENTS),
                {"plan": "premium"},
                {"plan": "trial"},
                {"plan": "free"},
                {"plan": ""},
                {"plan": "nope"},
                {"plan": "premium", "segment": "inactive"},
                {"plan": "trial", "segment": "active"},
                {"segment": "active", "country": country_a},
                {"segment": "premium", "country": country_a, "page": "/pricing"},
                {"plan": "", "source": "Google"},
                {"segment": "trial", "exit_page": "/pr*"},
            ]
            for lo in (start, wide):
                for dimension in DIMENSIONS:
                    for filters in person_cases:
                        got = await get(dimension, limit=1000, **{"from": lo.isoformat(), **filters})
                        want = oracle(sessions, dimension, lo, end, filters, people, now)
                        assert got["rows"] == want, (lo, dimension, filters)
                        assert got["total"] == len(want), (lo, dimension, filters)
            churned = await get("pages", segment="churned", **{"from": wide.isoformat()})
            assert [r["value"] for r in churned["rows"]] == ["/docs"]  # v10's
            inactive = await get("countries", segment="inactive", **{"from": wide.isoformat()})
            assert [(r["value"], r["visitors"]) for r in inactive["rows"]] == [(country_a, 1)]  # u9's

            # Pages of a breakdown: limit and offset, total unchanged; past the end, no rows.
            second = await get("pages", limit=2, offset=2)
            assert second["total"] == 4 and [r["value"] for r in second["rows"]] == ["/blog/launch", "/docs"]
            beyond = await get("pages", limit=2, offset=10)
            assert (beyond["total"], beyond["rows"]) == (4, [])

            # The default period: the 30 days ending today (the API's clock).
            default = (await api.get(f"/api/projects/{pid}/breakdowns/pages")).json()
            assert (default["from"], default["to"]) == (
                (now.date() - 29 * D).isoformat(),
                now.date().isoformat(),
            )
            assert (default["previous_from"], default["previous_to"]) == (
                (now.date() - 59 * D).isoformat(),
                (now.date() - 30 * D).isoformat(),
            )

            # The same breakdown as CSV through the export route.
            csv = await api.get(
                f"/api/projects/{pid}/export/breakdown.csv",
                params={"dimension": "sources", "from": start.isoformat(), "to": end.isoformat()},
            )
            assert csv.status_code == 200, csv.text
            lines = csv.text.split("\r\n")
            assert lines[0] == (
                "value,visitors,sessions,page_views,bounce_rate,avg_time_on_page_s,"
                "previous_visitors,previous_sessions,previous_page_views"
            )
            assert lines[1:3] == [",1,1,1,100.0,,1,1,1", "Google,1,1,2,0.0,,1,1,1"]
            assert len([line for line in lines if line]) == 6
            narrowed_csv = await api.get(
                f"/api/projects/{pid}/export/breakdown.csv",
                params={
                    "dimension": "pages",
                    "from": start.isoformat(),
                    "to": end.isoformat(),
                    "segment": "trial",
                },
            )
            assert narrowed_csv.status_code == 200, narrowed_csv.text
            assert [line.split(",")[:3] for line in narrowed_csv.text.split("\r\n")[1:] if line] == [
                ["/docs", "1", "1"],
                ["/pricing", "1", "1"],
            ]

            # Bad input: 422 naming the field.
            async def refused(path: str, params: dict[str, Any]) -> tuple[Any, str]:
                response = await api.get(f"/api/projects/{pid}/{path}", params=params)
                assert response.status_code == 422, response.text
                detail = response.json()["detail"][0]
                return detail["loc"][-1], detail["type"]

            assert (await refused("breakdowns/referrers", {}))[0] == "dimension"
            assert await refused("breakdowns/pages", {"from": "2026-13-01"}) == (
                "from",
                "date_from_datetime_parsing",
            )
            assert await refused("breakdowns/pages", {"from": "2026-12-02", "to": "2026-12-01"}) == (
                "to",
                "to_before_from",
            )
            assert await refused("breakdowns/pages", {"from": "2025-01-01", "to": "2026-01-02"}) == (
                "to",
                "range_too_long",
            )
            assert await refused("breakdowns/pages", {"from": "1900-01-01", "to": "1900-01-02"}) == (
                "from",
                "out_of_range",
            )
            assert (await refused("breakdowns/pages", {"limit": 0}))[0] == "limit"
            assert (await refused("breakdowns/pages", {"limit": 1001}))[0] == "limit"
            assert (await refused("breakdowns/pages", {"offset": -1}))[0] == "offset"
            assert (await refused("export/breakdown.csv", {"dimension": "nope"}))[0] == "dimension"
            for bad in ("vip", "all", "Premium"):
                assert await refused("breakdowns/sources", {"segment": bad, "plan": "premium"}) == (
                    "segment",
                    "unknown_segment",
                )
            assert await refused("export/breakdown.csv", {"dimension": "pages", "segment": "x"}) == (
                "segment",
                "unknown_segment",
            )
