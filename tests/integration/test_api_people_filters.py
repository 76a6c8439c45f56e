"""The metric cards and the users list (and their CSVs) narrowed by the breakdowns' filters
(issue 23), over the real path: hand-made events sent through ingest's HTTP API (countries from
trusted X-Forwarded-For addresses), Kafka, the aggregator's recomputation, ClickHouse and the
API (real HTTP, clock fixed at NOW). Every filtered answer is held to an oracle built here from
`events` alone: sessions by the 30-minute rule (in SQL for the page views, ORACLE_SQL; in Python
for every event, for the days a person was active), persons from the identify calls sent, the
figures as docs/definitions.md ("Filters") defines them.

The visitors, relative to NOW (d = days, m = minutes):
  a1 (country A)   / from Google at -20d; /pricing at -10d, identified u1 (premium) a minute
                   later; / at -2m (online now)
  a2 (A)           /blog/launch at -9d, then nothing (churned from today's base)
  b1 (B, mobile)   /pricing from t.co at -3d, identified u2 (trial); /docs at -1m (online now)
  b2 (B, mobile)   /pricing at -7d-20m, /blog/x at -7d+3m: online a week ago (one session
                   spanning the moment, no event in the 5 minutes before it)
  p1 (A), p2 (B)   one person u4 (trial): p1 /docs at -12d, p2 /pricing from Google at -1d
  c1 (unknown)     /pricing (campaign partner/cpc/launch) at -5d, a track 30 s later
  c2               only a track at -2d: no page view, so no filter keeps it
  d1 (A)           /landing at -16d and -15d: in the base of the churn a week ago, churned then
  n1 (unknown)     /blog/launch at -90s (online now)
  e1 (unknown)     / at -20d, /pricing at -13d+1h: in the base of the churn a week ago, and
                   not churned then (active on the first day of that week's window)
  o1 (A)           /pricing at -40d (a churned person)
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.api import queries
from services.api.routes.export import METRICS_HEADER, USERS_HEADER
from tests.conftest import Infra
from tests.integration.stack import Stack
from tests.integration.test_api import identify, ms_now, track
from tests.integration.test_api_activity_filters import matches
from tests.integration.test_api_breakdowns import ORACLE_SQL, OraclePerson, oracle_persons, page, persons_made
from tests.integration.test_countries import two_countries
from werkstroom.clickhouse.tables import ENTRY_ATTRIBUTES
from werkstroom.demo import AGENTS

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
S = timedelta(seconds=1)
D = timedelta(days=1)
SITE = "https://shop.example"
ONLINE = timedelta(minutes=5)
GAP = timedelta(minutes=30)


class Session:
    """A session with a page view (ORACLE_SQL's rows): what `matches` reads, and its span."""

    def __init__(self, anonymous_id: str, start_at: datetime, last_at: datetime, attributes: dict[str, str]):
        self.anonymous_id = anonymous_id
        self.day = start_at.date()
        self.start_at = start_at.replace(tzinfo=UTC)
        self.last_at = last_at.replace(tzinfo=UTC)
        self.attributes = attributes
        self.paths: list[str] = []


def oracle_sessions(stack: Stack, project_id: str) -> list[Session]:
    sessions: dict[tuple[str, int], Session] = {}
    for anon, k, _at, _id, path, *attrs, start_at, last_at in stack.rows(ORACLE_SQL, p=project_id):
        s = sessions.get((anon, k))
        if s is None:
            attributes = dict(zip(ENTRY_ATTRIBUTES, attrs, strict=True))
            s = sessions[(anon, k)] = Session(anon, start_at, last_at, attributes)
        s.paths.append(path)
    for s in sessions.values():
        s.attributes["entry_path"], s.attributes["exit_path"] = s.paths[0], s.paths[-1]
    return list(sessions.values())


class Oracle:
    """The figures of docs/definitions.md ("Filters") from `events`, the identify calls sent and
    the clock."""

    def __init__(self, stack: Stack, project_id: str, identifies: list[dict[str, Any]], now: datetime):
        self.now = now
        self.today = now.date()
        self.sessions = oracle_sessions(stack, project_id)
        self.persons: dict[str, OraclePerson] = oracle_persons(stack, project_id, identifies)
        events = stack.rows(
            "SELECT anonymous_id, timestamp FROM events FINAL "
            "WHERE project_id = {p:String} AND anonymous_id != '' ORDER BY anonymous_id, timestamp, event_id",
            p=project_id,
        )
        # every event's session (30 minutes without an event end one), in Python: the days each
        # person was active on (a session spans its days), each visitor's last event
        self.active: dict[str, set[date]] = defaultdict(set)
        self.first_day: dict[str, date] = {}
        self.last_event: dict[str, datetime] = {}
        start: dict[str, datetime] = {}
        for anon, at in events:
            at = at.replace(tzinfo=UTC)
            person = self.persons[anon].person_id
            if anon not in self.last_event or at - self.last_event[anon] > GAP:
                start[anon] = at
            self.last_event[anon] = at
            day = start[anon].date()
            while day <= at.date():
                self.active[person].add(day)
                day += D
            self.first_day[person] = min(self.first_day.get(person, at.date()), at.date())

    def person(self, s: Session) -> str:
        return self.persons[s.anonymous_id].person_id

    def matching(self, filters: dict[str, str]) -> list[Session]:
        return [s for s in self.sessions if matches(s, filters, self.persons[s.anonymous_id], self.now)]

    def metrics(self, filters: dict[str, str]) -> dict[str, dict[str, Any]]:
        found = self.matching(filters)
        t = self.today

        def total(by: date) -> int:
            return len({self.person(s) for s in found if s.day <= by})

        def new(end: date) -> int:
            # of total(end), those first seen in the 7 days ending `end`
            week = (end - 6 * D, end)
            return len(
                {
                    p
                    for s in found
                    if s.day <= end and week[0] <= self.first_day[p := self.person(s)] <= week[1]
                }
            )

        def online(at: datetime) -> int:
            return len({s.anonymous_id for s in found if s.start_at <= at and s.last_at >= at - ONLINE})

        def online_now() -> int:
            # a visitor online now whose current session (the one holding its last event) matches
            return len(
                {
                    s.anonymous_id
                    for s in found
                    if self.last_event[s.anonymous_id] >= self.now - ONLINE
                    and s.start_at <= self.last_event[s.anonymous_id] <= s.last_at
                }
            )

        def churn(day: date) -> float | None:
            base = {self.person(s) for s in found if day - 13 * D <= s.day <= day - 7 * D}
            churned = {p for p in base if not any(day - 6 * D <= a <= day for a in self.active[p])}
            return round(len(churned) / len(base) * 100, 1) if base else None

        def metric(value: Any, previous: Any) -> dict[str, Any]:
            return {"value": value, "previous": previous, "trend": queries.trend(value, previous)}

        return {
            "total_users": metric(total(t), total(t - 7 * D)),
            "online_now": metric(online_now(), online(self.now - 7 * D)),
            "new_this_week": metric(new(t), new(t - 7 * D)),
            "churn_rate": metric(churn(t), churn(t - 7 * D)),
        }

    def users(self, filters: dict[str, str], segment: str, q: str) -> list[str]:
        """The persons listed, in the list's order (last seen desc, then person id): without
        filters every person, with them those with a matching session."""
        sessions = self.matching(filters) if filters else ()
        listed = {self.persons[s.anonymous_id] for s in sessions} if filters else set(self.persons.values())
        wanted = {} if segment == "all" else {"segment": segment}
        kept = [p for p in listed if p.has(wanted, self.now) and q.lower() in p.person_id.lower()]
        return [p.person_id for p in sorted(kept, key=lambda p: (-p.last_seen.timestamp(), p.person_id))]


async def test_filters_narrow_the_cards_and_the_users_list(
    infra: Infra, names: dict[str, str], tmp_path: Any
) -> None:
    addr_a, country_a, addr_b, country_b = two_countries()
    now = ms_now()
    mobile = AGENTS["mobile"]
    google = "https://www.google.com/"
    week_ago = now - 7 * D
    identifies = [
        identify("a1", now - 10 * D + M, "u1", {"plan": "premium"}),
        identify("b1", now - 3 * D + M, "u2", {"plan": "trial"}),
        identify("p1", now - 12 * D + M, "u4", {"plan": "trial"}),
        identify("p2", now - D + M, "u4", {"plan": "trial"}),
    ]
    by_address = {
        addr_a: [
            page("a1", now - 20 * D, "/", google),
            page("a1", now - 10 * D, "/pricing", google),
            page("a1", now - 2 * M, "/"),
            page("a2", now - 9 * D, "/blog/launch"),
            page("p1", now - 12 * D, "/docs", "https://blog.example.org/post"),
            page("d1", now - 16 * D, "/landing"),
            page("d1", now - 15 * D, "/landing"),
            page("o1", now - 40 * D, "/pricing"),
        ],
        addr_b: [
            page("b1", now - 3 * D, "/pricing", "https://t.co/x", ua=mobile),
            page("b1", now - M, "/docs", ua=mobile),
            page("b2", week_ago - 20 * M, "/pricing", ua=mobile),  # before the 5 minutes
            page("b2", week_ago + 3 * M, "/blog/x", ua=mobile),
            page("p2", now - D, "/pricing", google, ua=mobile),
        ],
        "": [
            page(
                "c1",
                now - 5 * D,
                "/pricing",
                campaign={"source": "partner", "medium": "cpc", "name": "launch"},
            ),
            track("c1", now - 5 * D + 30 * S, "Clicked"),
            track("c2", now - 2 * D, "Signed Up"),
            page("n1", now - 90 * S, "/blog/launch"),
            page("e1", now - 20 * D, "/"),
            page("e1", now - 13 * D + 60 * M, "/pricing"),
            *identifies,
        ],
    }
    want_persons = {
        ("u1", ("a1",), "premium"),
        ("a2", ("a2",), ""),
        ("u2", ("b1",), "trial"),
        ("b2", ("b2",), ""),
        ("u4", ("p1", "p2"), "trial"),
        ("c1", ("c1",), ""),
        ("c2", ("c2",), ""),
        ("d1", ("d1",), ""),
        ("n1", ("n1",), ""),
        ("o1", ("o1",), ""),
        ("e1", ("e1",), ""),
    }
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, trust_forwarded_for=True
    ) as stack:
        pid = stack.project.project_id
        await stack.send_from(by_address)
        total = sum(len(c) for c in by_address.values())
        assert await stack.wait_count(total) == total
        oracle = Oracle(stack, pid, identifies, now)
        page_sessions = len(oracle.sessions)
        # a1 3, a2, b1 2, b2 (one, across the moment), p1, p2, c1, d1 2, n1, o1, e1 2
        assert page_sessions == 16
        activity = {(p, d) for p, days in oracle.active.items() for d in days}

        def settled() -> bool:
            return (
                stack.scalar(
                    "SELECT count() FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                    p=pid,
                )
                == page_sessions
                and persons_made(stack, pid) == want_persons
                # the daily figures (the unfiltered cards' new users) are written after the
                # persons, at the end of the same refresh
                and queries.persons_counts(stack.client, pid, now)[0] == len(want_persons)
                and set(
                    stack.rows(
                        "SELECT person_id, day FROM person_activity FINAL "
                        "WHERE project_id = {p:String} AND is_deleted = 0",
                        p=pid,
                    )
                )
                == activity
                and stack.scalar(
                    "SELECT count() FROM online_visitors FINAL WHERE project_id = {p:String} "
                    "AND last_event_at >= {since:DateTime64(3, 'UTC')}",
                    p=pid,
                    since=now - ONLINE,
                )
                == 3
            )

        await stack.until(settled, timeout=30)

        url = await stack.start_api(clock=lambda: now)
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def get(path: str, **params: str | int) -> Any:
                response = await api.get(f"/api/projects/{pid}/{path}", params=params)
                assert response.status_code == 200, (path, params, response.text)
                return response.json()

            async def users(
                filters: dict[str, str], segment: str = "all", q: str = "", limit: int = 2
            ) -> list[str]:
                """Every page, by the cursor: the person ids in order, each page's filters echoed."""
                out: list[str] = []
                cursor: str | None = None
                params: dict[str, str | int] = {**filters, "segment": segment, "q": q, "limit": limit}
                while True:
                    body = await get("users", **params, **({"cursor": cursor} if cursor else {}))
                    assert body["filters"] == filters
                    assert len(body["users"]) <= limit
                    out += [u["person_id"] for u in body["users"]]
                    cursor = body["next_cursor"]
                    if cursor is None:
                        return out

            # Unfiltered: the same figures as the unfiltered queries give, echoing no filters.
            plain = await get("metrics")
            assert plain["filters"] == {}
            assert plain["metrics"] == queries.metric_cards(
                queries.persons_counts(stack.client, pid, now),
                queries.online_count(stack.client, pid, now),
                queries.online_week_ago(stack.client, pid, now),
                queries.churn_counts(stack.client, pid, now),
            )
            assert plain["metrics"]["total_users"]["value"] == 11  # c2 too: no page view needed
            everyone = await users({}, limit=500)
            assert sorted(everyone) == sorted(p for p, _ids, _plan in want_persons)

            # By hand, country A: a1 (u1), a2, p1 (u4), d1, o1 have sessions there.
            by_hand = (await get("metrics", country=country_a))["metrics"]
            assert by_hand["total_users"] == {"value": 5, "previous": 5, "trend": 0.0}
            assert by_hand["online_now"]["value"] == 1  # a1; b1 and n1 are not in A
            # today's base: u1 (-10d), a2 (-9d), u4 (-12d); a2 alone is gone: 33.3 %. A week
            # earlier: u1 (-20d) and d1 (-16d, -15d); d1 was gone then, u1 had -10d: 50 %.
            assert (by_hand["churn_rate"]["value"], by_hand["churn_rate"]["previous"]) == (33.3, 50.0)
            assert (await get("metrics", country=country_b))["metrics"]["online_now"] == {
                "value": 1,
                "previous": 1,
                "trend": 0.0,
            }  # b1 now; b2 a week ago
            assert await users({"country": country_a}, limit=500) == oracle.users(
                {"country": country_a}, "all", ""
            )

            # Every filter set against the oracle.
            cases: list[dict[str, str]] = [
                {"country": country_a},
                {"country": country_b},
                {"country": ""},
                {"source": "Google"},
                {"source": ""},
                {"page": "/pricing"},
                {"page": "/blog/*"},
                {"entry_page": "/"},
                {"exit_page": "/pr*"},
                {"device": "mobile"},
                {"utm_campaign": "launch"},
                {"plan": "premium"},
                {"plan": "trial"},
                {"plan": ""},
                {"plan": "nope"},
                {"country": country_a, "page": "/pricing"},
                {"device": "mobile", "plan": "trial"},
                {"source": "Google", "entry_page": "/pricing"},
                # a rolled filter with a plan (person_first_by's rows of both)
                {"country": country_a, "plan": "premium"},
                {"country": country_b, "plan": ""},
                {"source": "Google", "plan": "trial"},
            ]
            for filters in cases:
                got = await get("metrics", **filters)
                assert got["filters"] == filters
                assert got["metrics"] == oracle.metrics(filters), filters
                assert await users(filters) == oracle.users(filters, "all", ""), filters
            for segment in ("active", "inactive", "churned", "trial", "premium"):
                assert (await get("metrics", segment=segment))["metrics"] == oracle.metrics(
                    {"segment": segment}
                ), segment
                for country in (country_a, country_b):  # the "Dutch premium users"
                    both = {"country": country, "segment": segment}
                    assert (await get("metrics", **both))["metrics"] == oracle.metrics(both), both
            # `plan` and a plan segment together: the same plan, or none (no one)
            for plan in ("premium", "trial"):
                three = {"country": country_a, "plan": plan, "segment": "premium"}
                assert (await get("metrics", **three))["metrics"] == oracle.metrics(three), three
                for filters in ({}, {"country": country_a}, {"page": "/pricing"}, {"device": "mobile"}):
                    assert await users(filters, segment) == oracle.users(filters, segment, ""), (
                        filters,
                        segment,
                    )
            for q in ("u", "1", "U4"):
                for filters in ({"country": country_b}, {"page": "/pricing"}):
                    assert await users(filters, q=q, limit=1) == oracle.users(filters, "all", q), (filters, q)
            # the filters cut something somewhere, and the oracle is not empty everywhere
            assert oracle.users({"page": "/pricing"}, "all", "") not in ([], sorted(everyone))

            # The CSVs take the same filters.
            for filters, segment in (({"page": "/pricing"}, "all"), ({"country": country_a}, "active")):
                response = await api.get(
                    f"/api/projects/{pid}/export/users.csv", params={**filters, "segment": segment}
                )
                assert response.status_code == 200, response.text
                rows = list(csv.reader(io.StringIO(response.text)))
                assert rows[0] == USERS_HEADER
                assert [r[0] for r in rows[1:]] == oracle.users(filters, segment, "")
            response = await api.get(f"/api/projects/{pid}/export/metrics.csv", params={"country": country_a})
            assert response.status_code == 200, response.text
            rows = list(csv.reader(io.StringIO(response.text)))
            assert rows[0] == METRICS_HEADER
            assert {r[0]: r[1] for r in rows[1:]} == {k: str(v["value"]) for k, v in by_hand.items()}
            response = await api.get(f"/api/projects/{pid}/export/metrics.csv", params={"segment": "trial"})
            rows = list(csv.reader(io.StringIO(response.text)))
            want = oracle.metrics({"segment": "trial"})
            assert {r[0]: r[1] for r in rows[1:]} == {k: str(v["value"]) for k, v in want.items()}

            # Bad input: a 422 naming the field and the reason.
            for path, params, field, reason in (
                ("metrics", {"segment": "all"}, "segment", "unknown_segment"),
                ("metrics", {"country": "x" * 3000}, "country", "string_too_long"),
                ("users", {"segment": "vip"}, "segment", "literal_error"),
                ("users", {"page": "x" * 3000}, "page", "string_too_long"),
                ("export/sessions.csv", {"country": country_a}, "country", "unfiltered_export"),
            ):
                response = await api.get(f"/api/projects/{pid}/{path}", params=params)
                assert response.status_code == 422, (path, response.text)
                detail = response.json()["detail"][0]
                assert (detail["loc"][-1], detail["type"]) == (field, reason), (path, detail)
