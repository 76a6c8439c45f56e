"""Who is online, narrowed by the filters of the breakdowns (issue 23), over the real path:
hand-made events through ingest's HTTP API (countries from trusted X-Forwarded-For addresses),
Kafka, the aggregator and its recomputation, answered by the API (real HTTP, clock fixed at NOW)
as GET online, the online CSV and the live stream. Every expected list is worked out by hand
from the visitors below (docs/definitions.md, "Who is online, filtered").

The visitors, relative to NOW (m = minutes), newest activity first:
  dan   (country A)  only a track "Signed Up" at -1m and a heartbeat at -30s: online, no page view
  finn  (no country) a session since yesterday 23:50 UTC (under yesterday's day): /landing from
                     Hacker News, then /read every 20 m, the last at -45s
  anna  (country A)  / from Google (utm_campaign=spring) at -4m, /blog/post at -3m, identified as
                     anna with plan premium at -150s, a heartbeat at -1m
  cleo  (no country) /blog/launch at -90s, direct
  ben   (country B, mobile) an earlier session at -3h on /blog/old; now /docs from t.co at -2m
  eve   (country A)  / from Google at -8m: not online
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from services.api import queries
from services.api.filters import Filters
from services.api.live import feed_key
from services.api.routes.export import ONLINE_HEADER
from tests.conftest import Infra
from tests.integration.stack import BROWSER_UA, Stack
from tests.integration.test_api import identify, iso, ms_now, read_event, track
from tests.integration.test_countries import two_countries
from werkstroom.demo import AGENTS

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
S = timedelta(seconds=1)
SITE = "https://shop.example"


def page(
    anon: str, at: datetime, path: str, referrer: str = "", query: str = "", ua: str = BROWSER_UA
) -> dict[str, Any]:
    return {
        "type": "page",
        "anonymousId": anon,
        "messageId": f"{anon}-{iso(at)}-{path}",
        "timestamp": iso(at),
        "properties": {"path": path, "url": f"{SITE}{path}{query}", "referrer": referrer, "title": path},
        "context": {"userAgent": ua},
    }


def finn(now: datetime) -> list[dict[str, Any]]:
    """A session started before midnight (UTC) and still going: a page view every 20 minutes."""
    at = datetime.combine(now.date(), datetime.min.time(), tzinfo=UTC) - 10 * M
    calls = [page("finn", at, "/landing", "https://news.ycombinator.com/item?id=1")]
    while at + 20 * M < now - 45 * S:
        at += 20 * M
        calls.append(page("finn", at, "/read"))
    calls.append(page("finn", now - 45 * S, "/read"))
    return calls


async def test_who_is_online_takes_the_filters(infra: Infra, names: dict[str, str], tmp_path: Any) -> None:
    addr_a, a, addr_b, b = two_countries()

    now = ms_now()
    mobile = AGENTS["mobile"]
    google = "https://www.google.com/"
    by_address = {
        addr_a: [
            track("dan", now - M, "Signed Up"),
            track("dan", now - 30 * S, "$heartbeat"),
            page("anna", now - 4 * M, "/", google, "?utm_source=news&utm_campaign=spring"),
            page("anna", now - 3 * M, "/blog/post", f"{SITE}/"),
            identify("anna", now - 150 * S, "anna", {"plan": "premium"}),
            track("anna", now - M, "$heartbeat"),
            page("eve", now - 8 * M, "/", google),
        ],
        addr_b: [
            page("ben", now - 180 * M, "/blog/old", ua=mobile),
            page("ben", now - 2 * M, "/docs", "https://t.co/x", ua=mobile),
        ],
        "": [page("cleo", now - 90 * S, "/blog/launch"), *finn(now)],
    }
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, trust_forwarded_for=True
    ) as stack:
        pid, key = stack.project.project_id, stack.project.write_key
        await stack.send_from(by_address)
        total = sum(len(c) for c in by_address.values())
        assert await stack.wait_count(total) == total

        def recomputed() -> bool:
            sessions = stack.rows(
                "SELECT anonymous_id, day FROM breakdown_sessions FINAL "
                "WHERE project_id = {p:String} AND is_deleted = 0 ORDER BY anonymous_id, day",
                p=pid,
            )
            plans = stack.rows(
                "SELECT person_id, plan FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                p=pid,
            )
            return [s for s, _day in sessions] == ["anna", "ben", "ben", "cleo", "eve", "finn"] and (
                "anna",
                "premium",
            ) in plans

        await stack.until(recomputed, timeout=30)
        # finn's session is under the day it started on: yesterday (UTC)
        assert stack.rows(
            "SELECT day FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND anonymous_id = 'finn'",
            p=pid,
        ) == [(now.date() - timedelta(days=1),)]

        clock = [now]  # moved a week on below, for the "online a week ago" card
        url = await stack.start_api(clock=lambda: clock[0])
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def online(**filters: str) -> dict[str, Any]:
                response = await api.get(f"/api/projects/{pid}/online", params=filters)
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            everyone = await online()
            assert everyone["online"] == 5
            assert [u["anonymous_id"] for u in everyone["users"]] == ["dan", "finn", "anna", "cleo", "ben"]
            row = {u["anonymous_id"]: u for u in everyone["users"]}
            cases: list[tuple[dict[str, str], list[str]]] = [
                ({"country": a}, ["anna"]),  # dan has no page view: no filter keeps him; eve is gone
                ({"country": b}, ["ben"]),
                ({"country": ""}, ["finn", "cleo"]),
                ({"source": "Google"}, ["anna"]),
                ({"source": ""}, ["cleo"]),
                ({"source": "Hacker News"}, ["finn"]),  # a session that began yesterday
                ({"utm_campaign": "spring"}, ["anna"]),
                ({"page": "/blog/*"}, ["anna", "cleo"]),  # ben viewed /blog/old in his last session
                ({"page": "/docs"}, ["ben"]),
                ({"page": "/read"}, ["finn"]),
                ({"entry_page": "/"}, ["anna"]),
                ({"exit_page": "/blog/*"}, ["anna", "cleo"]),
                ({"device": "mobile"}, ["ben"]),
                ({"device": "desktop"}, ["finn", "anna", "cleo"]),
                ({"plan": "premium"}, ["anna"]),
                ({"plan": ""}, ["finn", "cleo", "ben"]),
                ({"segment": "premium"}, ["anna"]),
                ({"segment": "active"}, ["finn", "anna", "cleo", "ben"]),
                ({"segment": "churned"}, []),
                ({"country": a, "page": "/blog/*"}, ["anna"]),
                ({"country": b, "page": "/blog/*"}, []),
                ({"device": "desktop", "plan": "", "page": "/blog/*"}, ["cleo"]),
                ({"country": "x' OR 1=1 --"}, []),
            ]
            for filters, want in cases:
                body = await online(**filters)
                assert [u["anonymous_id"] for u in body["users"]] == want, filters
                assert body["online"] == len(want), filters
                assert body["users"] == [row[w] for w in want], filters  # the same rows, narrowed
            one = await online(page="/blog/*", limit="1")
            assert one["online"] == 2 and [u["anonymous_id"] for u in one["users"]] == ["anna"]

            # the "online now" card's count, for a metrics route that takes filters one day
            def count(**filters: str) -> int:
                narrowing = Filters.parse(filters, now).online(now.date())
                return queries.online_count(stack.client, pid, now, narrowing)

            assert count() == 5 and count(country=a) == 1 and count(page="/blog/*", plan="") == 1

            # The aggregator records those counts under each rolled filter value once a minute
            # (online_history_by): the four visitors online with a page view (dan has none), each
            # under one value of every filter.
            def recorded() -> tuple[datetime | None, dict[tuple[str, str], int]]:
                rows = stack.rows(
                    "SELECT minute, filter, filter_value, online FROM online_history_by FINAL "
                    "WHERE project_id = {p:String} ORDER BY minute DESC, filter, filter_value",
                    p=pid,
                )
                newest = rows[0][0] if rows else None
                return newest, {(f, v): n for m, f, v, n in rows if m == newest}

            want = {
                ("country", a): 1,
                ("country", b): 1,
                ("country", ""): 2,
                ("source", "Google"): 1,
                ("source", "Hacker News"): 1,
                ("source", ""): 1,
                ("utm_source", "news"): 1,
                ("utm_source", ""): 3,
                ("utm_medium", ""): 4,
                ("utm_campaign", "spring"): 1,
                ("utm_campaign", ""): 3,
                ("device_type", "mobile"): 1,
                ("device_type", "desktop"): 3,
            }
            await stack.until(lambda: want.items() <= recorded()[1].items(), timeout=20)
            minute, counts = recorded()
            assert minute is not None
            for name in ("source", "browser", "os"):  # ben's t.co, the agents' names: one each
                assert sum(n for (f, _v), n in counts.items() if f == name) == 4, counts
            assert {f for f, _v in counts} == {*(f for f, _v in want), "browser", "os"}

            # A week on, the filtered "online a week ago" card reads them (as the API's clock
            # is moved: the aggregator's minute, a week later, and 20 seconds).
            clock[0] = minute.replace(tzinfo=UTC) + queries.WEEK + 20 * S
            for filters, previous in (
                ({"country": a}, 1),
                ({"country": ""}, 2),
                ({"device": "desktop"}, 3),
                ({"source": "Hacker News"}, 1),
                ({"utm_medium": "email"}, 0),  # recorded, and nobody had it
            ):
                response = await api.get(f"/api/projects/{pid}/metrics", params=filters)
                assert response.status_code == 200, response.text
                assert response.json()["metrics"]["online_now"]["previous"] == previous, filters
            clock[0] = now

            # the CSV of who is online, filtered
            response = await api.get(f"/api/projects/{pid}/export/online.csv", params={"page": "/blog/*"})
            assert response.status_code == 200, response.text
            rows = list(csv.reader(io.StringIO(response.text, newline="")))
            assert rows[0] == ONLINE_HEADER
            assert [(r[0], r[1], r[3]) for r in rows[1:]] == [
                ("anna", "anna", "/blog/post"),
                ("cleo", "cleo", "/blog/launch"),
            ]
            everyone_csv = await api.get(f"/api/projects/{pid}/export/online.csv")
            assert len(list(csv.reader(io.StringIO(everyone_csv.text, newline="")))) == 1 + 5

            # a bad value is a 422 naming the field, on every online route
            for path in ("online", "live", "export/online.csv"):
                response = await api.get(f"/api/projects/{pid}/{path}", params={"segment": "vip"})
                assert response.status_code == 422, (path, response.text)
                [detail] = response.json()["detail"]
                assert (detail["loc"], detail["type"]) == (["query", "segment"], "unknown_segment"), path
                response = await api.get(f"/api/projects/{pid}/{path}", params={"page": "/" * 2049})
                assert response.status_code == 422, path

            # the live stream, filtered: each set of filters its own answer, one poller each
            hub = stack.api_app.state.live

            async def first(lines: AsyncIterator[str]) -> dict[str, Any]:
                event, data = await asyncio.wait_for(read_event(lines), 10)
                assert event == "online"
                body: dict[str, Any] = orjson.loads(data)
                return body

            live = f"/api/projects/{pid}/live"
            sse = {"Accept": "text/event-stream"}
            async with (
                api.stream("GET", live, params={"device": "mobile"}, headers=sse) as mobile_stream,
                api.stream("GET", live, params={"country": a}, headers=sse) as country_stream,
                api.stream("GET", live, params={"device": "mobile"}, headers=sse) as mobile_again,
            ):
                # the line iterators kept: one let go closes its stream
                lines = [s.aiter_lines() for s in (mobile_stream, country_stream, mobile_again)]
                got = [await first(each) for each in lines]
                assert [(g["online"], [u["anonymous_id"] for u in g["users"]]) for g in got] == [
                    (1, ["ben"]),
                    (1, ["anna"]),
                    (1, ["ben"]),
                ]
                assert got[0]["users"] == [row["ben"]] and got[1]["users"] == [row["anna"]]
                assert set(hub.feeds) == {
                    feed_key(pid, Filters.parse({"device": "mobile"})),
                    feed_key(pid, Filters.parse({"country": a})),
                }
                assert hub.subscribers == 3
                # a mobile visitor arrives: pushed to the mobile streams, narrowed
                gus = page("gus", now - 20 * S, "/new", ua=mobile)
                sent = await stack.post(
                    "/v1/batch", {"writeKey": key, "batch": [gus]}, headers={"X-Forwarded-For": addr_b}
                )
                assert sent.status_code == 200, sent.text
                pushed = await asyncio.wait_for(first(lines[0]), 20)
                assert (pushed["online"], [u["anonymous_id"] for u in pushed["users"]]) == (2, ["gus", "ben"])
            await stack.until(lambda: hub.subscribers == 0 and not hub.feeds, timeout=5)
