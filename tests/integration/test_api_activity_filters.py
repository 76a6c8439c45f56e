"""The activity chart narrowed by the breakdowns' filters, over the real path: hand-made events
sent through ingest's HTTP API (countries from trusted X-Forwarded-For addresses), Kafka, the
aggregator's recomputation, ClickHouse and the API. Each filtered day is held to an oracle built
here from `events` alone (sessions by the 30-minute rule in SQL, test_api_breakdowns.ORACLE_SQL;
the figures added up in Python), and the unfiltered days to daily_stats, as before.

Days d0..d3 are the four UTC days before today; times are hh:mm of a day.
  a1 (country A): d0 10:00 / from Google (utm news/email/spring), 10:02 /pricing, heartbeat
     10:05; d1 09:00 /pricing from Hacker News (a bounce); identified u1 (premium) d1 14:00
  a2 (A): d0 23:50 /blog/launch, d1 00:10 /blog/other, a track at 00:15: one session across
     midnight, counted on d0
  pa (A) and pb (B, mobile): one person u4 (trial): pa d2 12:00 /docs from blog.example.org,
     /pricing 10 s later; pb d2 15:00 /pricing from Google (a bounce); identified d2 14:30, 17:30
  b1 (B, mobile): d1 11:00 /blog/launch from t.co, /blog/launch 11:01, / 11:03; u2 (free) 13:30
  c1 (unknown country): d3 08:00 /pricing (campaign partner/cpc/launch), a track 30 s later
  c2: only a track on d2 (no page view: no matching session under any filter)
  o1 (A): /pricing 14 days ago (an inactive person); a bot's page view on d1 (curl).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.api.filters import COLUMNS
from tests.conftest import Infra
from tests.integration.stack import Stack
from tests.integration.test_api import identify, track
from tests.integration.test_api_breakdowns import (
    ORACLE_SQL,
    OraclePerson,
    glob_match,
    oracle_persons,
    page,
    persons_made,
)
from tests.integration.test_countries import two_countries
from werkstroom.clickhouse.tables import DAILY_STATS_FIGURES, ENTRY_ATTRIBUTES
from werkstroom.demo import AGENTS

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
S = timedelta(seconds=1)
D = timedelta(days=1)
SITE = "https://shop.example"
ATTRIBUTE_FILTERS = {name: column for name, column in COLUMNS.items() if name != "page"}
RATES = ("bounce_rate", "avg_session_seconds")


class Session:
    """A session with a page view, from `events` (ORACLE_SQL's rows)."""

    def __init__(self, anonymous_id: str, start_at: datetime, last_at: datetime, attributes: dict[str, str]):
        self.anonymous_id = anonymous_id
        self.day = start_at.date()
        self.duration_ms = (last_at - start_at) // timedelta(milliseconds=1)
        self.attributes = attributes
        self.paths: list[str] = []


def oracle_sessions(stack: Stack, project_id: str) -> list[Session]:
    sessions: dict[tuple[str, int], Session] = {}
    for anon, k, _at, _id, path, *attrs, start_at, last_at in stack.rows(ORACLE_SQL, p=project_id):
        s = sessions.get((anon, k))
        if s is None:
            s = sessions[(anon, k)] = Session(
                anon, start_at, last_at, dict(zip(ENTRY_ATTRIBUTES, attrs, strict=True))
            )
        s.paths.append(path)
    for s in sessions.values():
        s.attributes["entry_path"], s.attributes["exit_path"] = s.paths[0], s.paths[-1]
    return list(sessions.values())


def oracle_first_days(stack: Stack, project_id: str, people: dict[str, OraclePerson]) -> dict[str, date]:
    """Each person's first day (UTC): the earliest event of any of its visitors, from `events`."""
    first_days: dict[str, date] = {}
    for anon, first in stack.rows(
        "SELECT anonymous_id, min(timestamp) FROM events FINAL "
        "WHERE project_id = {p:String} AND anonymous_id != '' GROUP BY anonymous_id",
        p=project_id,
    ):
        person = people[anon].person_id
        first_days[person] = min(first_days.get(person, first.date()), first.date())
    return first_days


def matches(s: Session, filters: dict[str, str], person: OraclePerson, now: datetime) -> bool:
    for name, value in filters.items():
        if name in ("entry_page", "exit_page"):
            if not glob_match(value, s.attributes[ATTRIBUTE_FILTERS[name]]):
                return False
        elif name in ATTRIBUTE_FILTERS and s.attributes[ATTRIBUTE_FILTERS[name]] != value:
            return False
    if "page" in filters and not any(glob_match(filters["page"], p) for p in s.paths):
        return False
    return person.has(filters, now)


def oracle_days(
    sessions: list[Session],
    persons: dict[str, OraclePerson],
    first_days: dict[str, date],
    bots: dict[date, int],
    filters: dict[str, str],
    today: date,
    days: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """docs/definitions.md, "Filters": each day from the matching sessions starting on it."""
    out = []
    for i in range(days):
        day = today - (days - 1 - i) * D
        found = [s for s in sessions if s.day == day and matches(s, filters, persons[s.anonymous_id], now)]
        who = {persons[s.anonymous_id].person_id for s in found}
        views = sum(len(s.paths) for s in found)
        n = len(found)
        out.append(
            {
                "day": day.isoformat(),
                "active_users": len(who),
                "new_users": len({p for p in who if first_days[p] == day}),
                "sessions": n,
                "page_views": views,
                "events": views,
                "bounce_rate": round(sum(len(s.paths) == 1 for s in found) / n, 6) if n else 0.0,
                "avg_session_seconds": round(sum(s.duration_ms for s in found) / n / 1000, 3) if n else 0.0,
                "bots": bots.get(day, 0),
            }
        )
    return out


def same_days(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """Equal, the two rates to a millionth (ClickHouse's round and Python's may differ in the
    last bit of a double)."""
    strip = [{k: v for k, v in d.items() if k not in RATES} for d in got]
    if strip != [{k: v for k, v in d.items() if k not in RATES} for d in want]:
        return False
    return all(abs(g[k] - w[k]) < 1e-6 for g, w in zip(got, want, strict=True) for k in RATES)


async def test_filters_narrow_the_activity(infra: Infra, names: dict[str, str], tmp_path: Any) -> None:
    addr_a, country_a, addr_b, country_b = two_countries()

    now = datetime.now(UTC).replace(microsecond=0)
    today = now.date()
    d0 = today - 4 * D

    def at(day: int, hh: int, mm: int) -> datetime:
        return datetime.combine(d0 + day * D, datetime.min.time(), tzinfo=UTC) + hh * 60 * M + mm * M

    mobile = AGENTS["mobile"]
    google = "https://www.google.com/"
    identifies = [
        identify("a1", at(1, 14, 0), "u1", {"plan": "premium"}),
        identify("b1", at(1, 13, 30), "u2", {"plan": "free"}),
        identify("pa", at(2, 14, 30), "u4", {"plan": "trial"}),
        identify("pb", at(2, 17, 30), "u4", {"plan": "trial"}),
    ]
    bot = page("bot", at(1, 10, 0), "/", ua="curl/8.5.0")
    by_address = {
        addr_a: [
            page("a1", at(0, 10, 0), "/", google, "?utm_source=news&utm_medium=email&utm_campaign=spring"),
            page("a1", at(0, 10, 2), "/pricing", f"{SITE}/"),
            track("a1", at(0, 10, 5), "$heartbeat"),
            page("a1", at(1, 9, 0), "/pricing", "https://news.ycombinator.com/item?id=1"),
            page("a2", at(0, 23, 50), "/blog/launch"),
            page("a2", at(1, 0, 10), "/blog/other", f"{SITE}/blog/launch"),
            track("a2", at(1, 0, 15), "Clicked"),
            page("pa", at(2, 12, 0), "/docs", "https://blog.example.org/post"),
            page("pa", at(2, 12, 0) + 10 * S, "/pricing", f"{SITE}/docs"),
            page("o1", at(-10, 9, 0), "/pricing"),
        ],
        addr_b: [
            page("b1", at(1, 11, 0), "/blog/launch", "https://t.co/x", ua=mobile),
            page("b1", at(1, 11, 1), "/blog/launch", ua=mobile),
            page("b1", at(1, 11, 3), "/", ua=mobile),
            page("pb", at(2, 15, 0), "/pricing", google, ua=mobile),
        ],
        "": [
            page(
                "c1",
                at(3, 8, 0),
                "/pricing",
                campaign={"source": "partner", "medium": "cpc", "name": "launch"},
            ),
            track("c1", at(3, 8, 0) + 30 * S, "Clicked"),
            track("c2", at(2, 9, 0), "Signed Up"),
            *identifies,
        ],
    }
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, trust_forwarded_for=True, bots=True
    ) as stack:
        pid, key = stack.project.project_id, stack.project.write_key
        await stack.send_from(by_address)
        sent = await stack.post(
            "/v1/batch", {"writeKey": key, "batch": [bot]}, headers={"User-Agent": "curl/8.5.0"}
        )
        assert sent.status_code == 200 and sent.json()["bots"] == 1, sent.text
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
        }

        def settled() -> bool:
            def count(sql: str) -> Any:
                return stack.scalar(sql, p=pid)

            return (
                count(
                    "SELECT count() FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0"
                )
                == 8
                # the page-view sessions, and five without: four identify calls and c2's track
                and count(
                    "SELECT count() FROM sessions_daily FINAL WHERE project_id = {p:String} AND is_deleted = 0"
                )
                == 13
                and count("SELECT sum(sessions) FROM daily_stats FINAL WHERE project_id = {p:String}") == 13
                and count("SELECT count() FROM bot_events WHERE project_id = {p:String}") == 1
                and persons_made(stack, pid) == want_persons
            )

        await stack.until(settled, timeout=30)

        sessions = oracle_sessions(stack, pid)
        assert sorted((s.anonymous_id, s.day, len(s.paths)) for s in sessions) == sorted(
            [
                ("a1", d0, 2),
                ("a1", d0 + D, 1),
                ("a2", d0, 2),  # across midnight: under the day it starts on
                ("b1", d0 + D, 3),
                ("c1", d0 + 3 * D, 1),
                ("o1", d0 - 10 * D, 1),
                ("pa", d0 + 2 * D, 2),
                ("pb", d0 + 2 * D, 1),
            ]
        )
        people = oracle_persons(stack, pid, identifies)
        assert {(p.person_id, p.plan) for p in people.values()} == {
            (p, plan) for p, _ids, plan in want_persons
        }
        first_days = oracle_first_days(stack, pid, people)
        bots = {d0 + D: 1}

        url = await stack.start_api(clock=lambda: now)
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def get(days: int, **filters: str) -> dict[str, Any]:
                response = await api.get(f"/api/projects/{pid}/activity", params={"days": days, **filters})
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            # Unfiltered: daily_stats, exactly as before (sessions without a page view count there).
            plain = await get(30)
            assert plain["filters"] == {}
            stored = {
                row[0]: row[1:]
                for row in stack.rows(
                    f"SELECT day, {', '.join(DAILY_STATS_FIGURES)} FROM daily_stats FINAL "
                    "WHERE project_id = {p:String}",
                    p=pid,
                )
            }
            for d in plain["days"]:
                day = date.fromisoformat(d["day"])
                figures = stored.get(day, (0, 0, 0, 0, 0, 0.0, 0.0))
                assert [d[c] for c in DAILY_STATS_FIGURES] == list(figures), d
                assert d["bots"] == bots.get(day, 0)
            by_day = {d["day"]: d for d in plain["days"]}
            # d2: pa, pb, their identify calls and c2's track; a2 (across midnight) is active on d1 too
            assert by_day[(d0 + 2 * D).isoformat()]["sessions"] == 5
            assert by_day[(d0 + D).isoformat()]["active_users"] == 3  # u1, a2, u2

            # By hand: country A on d0..d2. d0: a1 (2 views, 300 s) and a2 (2 views, 25 min),
            # both new; d1: a1's bounce, not new; d2: pa, u4's first day.
            country = await get(5, country=country_a)
            assert country["filters"] == {"country": country_a}
            assert [
                (d["active_users"], d["new_users"], d["sessions"], d["page_views"], d["bounce_rate"])
                for d in country["days"]
            ] == [
                (2, 2, 2, 4, 0.0),
                (1, 0, 1, 1, 1.0),
                (1, 1, 1, 2, 0.0),
                (0, 0, 0, 0, 0.0),
                (0, 0, 0, 0, 0.0),
            ]
            assert country["days"][0]["avg_session_seconds"] == (300 + 1500) / 2
            assert [d["bots"] for d in country["days"]] == [0, 1, 0, 0, 0]  # bots are not sessions
            # A person of two visitors is one active user: /pricing on d2 is pa's and pb's session.
            pricing = await get(5, page="/pricing")
            assert [(d["active_users"], d["sessions"]) for d in pricing["days"]][2] == (1, 2)

            # Every filter set against the oracle, over 30 days (o1 included) and 7.
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
                {"country": country_a, "segment": "active", "exit_page": "/pricing"},
                {"device": "mobile", "plan": "trial"},
                {"source": "Google", "plan": "premium", "entry_page": "/"},
            ]
            for days in (30, 7):
                for filters in cases:
                    got = (await get(days, **filters))["days"]
                    want = oracle_days(sessions, people, first_days, bots, filters, today, days, now)
                    assert same_days(got, want), (days, filters, got, want)
            inactive = (await get(30, segment="inactive"))["days"]
            assert [d["sessions"] for d in inactive if d["sessions"]] == [1]  # o1's

            # The CSV takes the same filters, and gives the same days.
            csv = await api.get(
                f"/api/projects/{pid}/export/activity.csv", params={"days": 7, "plan": "trial"}
            )
            assert csv.status_code == 200, csv.text
            assert "activity-" in csv.headers["content-disposition"]
            lines = [line.split(",") for line in csv.text.split("\r\n") if line]
            assert lines[0] == ["day", *DAILY_STATS_FIGURES]
            trial = (await get(7, plan="trial"))["days"]
            assert lines[1:] == [[str(d[c]) for c in lines[0]] for d in trial]
            assert sum(int(row[3]) for row in lines[1:]) == 2  # pa's and pb's sessions
            unfiltered_csv = await api.get(f"/api/projects/{pid}/export/activity.csv", params={"days": 7})
            assert [line.split(",")[3] for line in unfiltered_csv.text.split("\r\n")[1:] if line] == [
                str(d["sessions"]) for d in (await get(7))["days"]
            ]

            # A bad filter value is a 422 naming the field, on both.
            for path in ("activity", "export/activity.csv"):
                for params in ({"segment": "vip"}, {"segment": "all"}):
                    response = await api.get(f"/api/projects/{pid}/{path}", params=params)
                    assert response.status_code == 422, (path, response.text)
                    detail = response.json()["detail"][0]
                    assert (detail["loc"][-1], detail["type"]) == ("segment", "unknown_segment")
                response = await api.get(f"/api/projects/{pid}/{path}", params={"country": "x" * 3000})
                assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "country"
            # The users export keeps its own segment ("all" included).
            users = await api.get(f"/api/projects/{pid}/export/users.csv", params={"segment": "all"})
            assert users.status_code == 200 and len([line for line in users.text.split("\r\n") if line]) == 8
