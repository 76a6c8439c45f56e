"""A funnel's report narrowed by the breakdowns' filters, over the real path: hand-made events sent
through ingest's HTTP API (countries from trusted X-Forwarded-For addresses), Kafka, the
aggregator (persons, breakdown rows, the funnel's back-fill), ClickHouse and the API. Each
filtered report is held to an oracle built here: each person's level, stated by hand below (and
the unfiltered report, that level's counts, held to windowFunnel over the raw events), counted
when one of the person's sessions, cut from `events` by the 30-minute rule
(test_api_activity_filters.oracle_sessions), matches the filters and starts in the report's days.

The funnel: page /pricing -> "Signed Up" -> "Order Completed", within an hour. Days d0..d3 are the
four UTC days before today; times are hh:mm of a day. Levels over 30 days | over 3 (d2 on):
  u1 = a1 (country A, premium): d0 10:00 / from Google (utm news/email/spring), 10:02 /pricing,
       10:05 Signed Up, 10:10 Order Completed                                        3 | 0
  a2 (A): d2 09:00 /pricing, 09:20 Signed Up                                         2 | 2
  u2 = b1 (B, mobile, free): d1 11:00 /blog/launch from t.co, 11:01 /pricing, 11:30 Signed Up
                                                                                     2 | 0
  u4 = pa (A) + pb (B, mobile), trial: pa d2 12:00 /pricing from blog.example.org; pb d2 12:20
       /checkout from Google, 12:21 Signed Up, 12:40 Order Completed: one person's steps, from
       two visitors and two countries                                                3 | 3
  c1 (unknown country): d3 08:00 /pricing (campaign partner/cpc/launch), 10:00 Signed Up
       (past the hour)                                                               1 | 1
  o2 (unknown): d1 23:50 /pricing, d2 00:05 /pricing, 00:10 Signed Up: one session, under d1
       (so over 3 days it reaches 2 from d2 on, with no session starting in them)    2 | 2
  o1 (A, inactive): /pricing 14 days ago, Signed Up 5 minutes later                  2 | 0
  c2: only Signed Up and Order Completed on d2, no page view                         0 | 0
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Infra
from tests.integration.stack import Stack
from tests.integration.test_api import identify, track
from tests.integration.test_api_activity_filters import Session, matches, oracle_sessions
from tests.integration.test_api_breakdowns import OraclePerson, oracle_persons, page, persons_made
from tests.integration.test_countries import two_countries
from tests.integration.test_funnels import window_funnel
from werkstroom import funnels
from werkstroom.demo import AGENTS

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
S = timedelta(seconds=1)
D = timedelta(days=1)
SITE = "https://shop.example"
STEPS = [
    {"event": "$page", "path": "/pricing"},
    {"event": "Signed Up", "path": ""},
    {"event": "Order Completed", "path": ""},
]
#: The module docstring's levels: person -> (over 30 days, over 3 days).
LEVELS = {
    "u1": (3, 0),
    "a2": (2, 2),
    "u2": (2, 0),
    "u4": (3, 3),
    "c1": (1, 1),
    "o2": (2, 2),
    "o1": (2, 0),
    "c2": (0, 0),
}
WINDOWS = (30, 3)


def oracle_counts(
    sessions: list[Session],
    persons: dict[str, OraclePerson],
    filters: dict[str, str],
    days: int,
    now: datetime,
) -> list[int]:
    """docs/definitions.md, "Filters": per step, the persons who reached it in the last `days`
    days and have a session starting in them that matches the filters."""
    since = now.date() - (days - 1) * D
    kept = {
        persons[s.anonymous_id].person_id
        for s in sessions
        if since <= s.day <= now.date() and matches(s, filters, persons[s.anonymous_id], now)
    }
    reached = {person: levels[WINDOWS.index(days)] for person, levels in LEVELS.items() if person in kept}
    return [sum(level >= k for level in reached.values()) for k in range(1, len(STEPS) + 1)]


def unfiltered(days: int) -> list[int]:
    return [
        sum(levels[WINDOWS.index(days)] >= k for levels in LEVELS.values()) for k in range(1, len(STEPS) + 1)
    ]


async def test_filters_narrow_the_funnel_report(infra: Infra, names: dict[str, str], tmp_path: Any) -> None:
    addr_a, country_a, addr_b, country_b = two_countries()

    now = datetime.now(UTC).replace(microsecond=0)
    today = now.date()
    d0 = today - 4 * D

    def at(day: int, hh: int, mm: int) -> datetime:
        return datetime.combine(d0 + day * D, datetime.min.time(), tzinfo=UTC) + hh * 60 * M + mm * M

    mobile = AGENTS["mobile"]
    google = "https://www.google.com/"
    identifies = [
        identify("a1", at(0, 14, 0), "u1", {"plan": "premium"}),
        identify("b1", at(1, 13, 0), "u2", {"plan": "free"}),
        identify("pa", at(2, 14, 30), "u4", {"plan": "trial"}),
        identify("pb", at(2, 17, 30), "u4", {"plan": "trial"}),
    ]
    by_address = {
        addr_a: [
            page("a1", at(0, 10, 0), "/", google, "?utm_source=news&utm_medium=email&utm_campaign=spring"),
            page("a1", at(0, 10, 2), "/pricing", f"{SITE}/"),
            track("a1", at(0, 10, 5), "Signed Up"),
            track("a1", at(0, 10, 10), "Order Completed"),
            page("a2", at(2, 9, 0), "/pricing"),
            track("a2", at(2, 9, 20), "Signed Up"),
            page("pa", at(2, 12, 0), "/pricing", "https://blog.example.org/post"),
            page("o1", at(-10, 9, 0), "/pricing"),
            track("o1", at(-10, 9, 5), "Signed Up"),
        ],
        addr_b: [
            page("b1", at(1, 11, 0), "/blog/launch", "https://t.co/x", ua=mobile),
            page("b1", at(1, 11, 1), "/pricing", f"{SITE}/blog/launch", ua=mobile),
            track("b1", at(1, 11, 30), "Signed Up", ua=mobile),
            page("pb", at(2, 12, 20), "/checkout", google, ua=mobile),
            track("pb", at(2, 12, 21), "Signed Up", ua=mobile),
            track("pb", at(2, 12, 40), "Order Completed", ua=mobile),
        ],
        "": [
            page(
                "c1",
                at(3, 8, 0),
                "/pricing",
                campaign={"source": "partner", "medium": "cpc", "name": "launch"},
            ),
            track("c1", at(3, 10, 0), "Signed Up"),
            page("o2", at(1, 23, 50), "/pricing"),
            page("o2", at(2, 0, 5), "/pricing", f"{SITE}/pricing"),
            track("o2", at(2, 0, 10), "Signed Up"),
            track("c2", at(2, 9, 0), "Signed Up"),
            track("c2", at(2, 9, 1), "Order Completed"),
            *identifies,
        ],
    }
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, trust_forwarded_for=True
    ) as stack:
        pid = stack.project.project_id
        await stack.send_from(by_address)
        total = sum(len(c) for c in by_address.values())
        assert await stack.wait_count(total) == total

        want_persons = {
            ("u1", ("a1",), "premium"),
            ("a2", ("a2",), ""),
            ("u2", ("b1",), "free"),
            ("u4", ("pa", "pb"), "trial"),
            ("c1", ("c1",), ""),
            ("c2", ("c2",), ""),
            ("o1", ("o1",), ""),
            ("o2", ("o2",), ""),
        }

        def settled() -> bool:
            breakdown_rows = stack.scalar(
                "SELECT count() FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                p=pid,
            )
            return bool(breakdown_rows == 8 and persons_made(stack, pid) == want_persons)

        await stack.until(settled, timeout=30)

        sessions = oracle_sessions(stack, pid)
        assert sorted((s.anonymous_id, s.day, len(s.paths)) for s in sessions) == sorted(
            [
                ("a1", d0, 2),
                ("a2", d0 + 2 * D, 1),
                ("b1", d0 + D, 2),
                ("c1", d0 + 3 * D, 1),
                ("o1", d0 - 10 * D, 1),
                ("o2", d0 + D, 2),  # across midnight: under the day it starts on
                ("pa", d0 + 2 * D, 1),
                ("pb", d0 + 2 * D, 1),
            ]
        )
        people = oracle_persons(stack, pid, identifies)
        assert {(p.person_id, p.plan) for p in people.values()} == {
            (p, plan) for p, _ids, plan in want_persons
        }

        url = await stack.start_api(clock=lambda: now)
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
            created = await api.post(
                f"/api/projects/{pid}/funnels",
                json={"name": "Checkout", "steps": STEPS, "window_seconds": 3600},
            )
            assert created.status_code == 201, created.text
            report = f"/api/projects/{pid}/funnels/{created.json()['funnel_id']}"

            async def get(days: int, **filters: str) -> dict[str, Any]:
                response = await api.get(report, params={"days": days, **filters})
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            def counts(body: dict[str, Any]) -> list[int]:
                return [s["count"] for s in body["steps"]]

            async def backfilled() -> bool:
                body = await get(30)
                return bool(body["funnel"]["backfilled"] and counts(body) == unfiltered(30))

            await stack.until(backfilled, timeout=30)

            # Unfiltered: funnel_counts, as before; the hand-stated levels agree with windowFunnel
            # over the raw events.
            funnel = funnels.get_funnel(stack.client, pid, created.json()["funnel_id"])
            assert funnel is not None
            for days in WINDOWS:
                plain = await get(days)
                assert plain["filters"] == {}
                assert (
                    counts(plain) == unfiltered(days) == window_funnel(stack, funnel, today - (days - 1) * D)
                )
            assert unfiltered(30) == [7, 6, 2] and unfiltered(3) == [4, 3, 1]

            # A filter every counted person matches is the unfiltered report: each of them has a
            # session with a page view in the last 30 days.
            for everyone in ({"page": "*"}, {"entry_page": "*"}, {"page": "*", "exit_page": "*"}):
                body = await get(30, **everyone)
                assert body["filters"] == everyone
                assert body["steps"] == (await get(30))["steps"], everyone
            # Over 3 days o2 reached step 2 (from d2 on) but its session starts on d1: no filter
            # keeps it, not even page=*.
            assert counts(await get(3, page="*")) == [3, 2, 1]

            # By hand: country B is u2 (b1) and u4 (pb's session: u4's steps, done from A too).
            by_b = await get(30, country=country_b)
            assert by_b["filters"] == {"country": country_b}
            assert counts(by_b) == [2, 2, 1]
            assert [s["conversion_pct"] for s in by_b["steps"]] == [100.0, 100.0, 50.0]
            assert counts(await get(3, country=country_b)) == [1, 1, 1]  # b1's session is d1's
            assert counts(await get(30, country=country_a)) == [4, 4, 2]  # u1, a2, u4 (pa), o1
            assert counts(await get(30, segment="inactive")) == [1, 1, 0]  # o1
            assert counts(await get(30, page="/checkout")) == [1, 1, 1]  # u4, by pb's page view

            cases: list[dict[str, str]] = [
                {"country": country_a},
                {"country": country_b},
                {"country": ""},
                {"source": "Google"},
                {"source": ""},
                {"page": "/pricing"},
                {"page": "/blog/*"},
                {"page": "/checkout"},
                {"entry_page": "/"},
                {"exit_page": "/pr*"},
                {"device": "mobile"},
                {"device": "desktop"},
                {"utm_campaign": "launch"},
                {"utm_source": "news"},
                {"plan": "premium"},
                {"plan": "trial"},
                {"plan": ""},
                {"plan": "nope"},
                {"segment": "trial"},
                {"segment": "active"},
                {"segment": "inactive"},
                {"segment": "churned"},
                {"country": country_a, "page": "/pricing"},
                {"country": country_b, "plan": "trial"},
                {"country": country_a, "segment": "active", "exit_page": "/pricing"},
                {"device": "mobile", "plan": "free"},
                {"source": "Google", "plan": "premium", "entry_page": "/"},
                {"country": country_a, "segment": "premium"},
                {"country": country_b, "segment": "trial", "plan": "trial"},
                {"device": "desktop", "plan": ""},
                {"country": country_a, "segment": "premium", "plan": "trial"},  # no one
            ]
            for days in WINDOWS:
                for filters in cases:
                    body = await get(days, **filters)
                    want = oracle_counts(sessions, people, filters, days, now)
                    assert (body["filters"], counts(body)) == (filters, want), (days, filters)
            # The cases narrow to different persons (the oracle is not trivially the unfiltered
            # report, nor empty).
            assert len({tuple(oracle_counts(sessions, people, f, 30, now)) for f in cases}) >= 6

            # A value is data, not SQL; a bad one is a 422 naming the field.
            assert counts(await get(30, country="x' OR 1=1 --", page="%")) == [0, 0, 0]
            for params in ({"segment": "vip"}, {"segment": "all"}):
                response = await api.get(report, params=params)
                assert response.status_code == 422, response.text
                detail = response.json()["detail"][0]
                assert (detail["loc"][-1], detail["type"]) == ("segment", "unknown_segment")
            response = await api.get(report, params={"country": "x" * 3000})
            assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "country"
            assert (
                await api.get(f"/api/projects/{pid}/funnels/f_nope", params={"country": "NL"})
            ).status_code == 404
