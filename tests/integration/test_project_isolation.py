"""Two projects whose visitors collide on every id a stranger controls: the same anonymous ids,
user ids, paths, event names, messageIds (five of them on the same day in both) and funnel names,
with different counts per project, so that any leak between them shows as a wrong number.

The traffic goes the real way (HTTP ingest -> Kafka -> aggregator -> ClickHouse); then every
route of the API app (listed from the app itself, so a new route without a check here fails the
coverage assertion) and every query of every provisioned Grafana dashboard must show each
project exactly its own data. The Grafana queries are also run on a database holding one
project's rows only: each must answer there what it answers on the shared database.

    Alpha (A)                                        Beta (B)
    m01 anon-1 page /            -30m                m10 anon-1 page /pricing     -40d
    m02 anon-1 page /pricing     -25m                m01 anon-1 page /            -150s
    m03 anon-1 track Clicked     -24m                m02 anon-1 identify user-1   -140s (trial)
    m04 anon-1 identify user-1   -23m (premium)      m03 anon-1 page /pricing     -40s
    m05 anon-1 track Signed Up   -22m                m04 anon-2 page /            -8d
    m06 anon-1 page /signup      -90s                m05 anon-2 page /pricing     -8d+1m
    m07 anon-2 page /            -60s                m06 anon-3 page /            -30s
    m08 anon-3 page /            -10d                m07 anon-4 page /            -120s
    m09 anon-3 page /pricing     -10d+5m             m08 anon-4 track Clicked     -110s
    m10 anon-4 page /            -45d                m09 anon-4 identify user-2   -100s (premium)
    m11 anon-4 page /pricing     -45s                m11 anon-5 page /signup      -19d
    m12 anon-5 page /            -50d                m12 anon-6 page /            -25s
                                                     m13 anon-6 page /docs        -20s

    A: online anon-4, anon-2, user-1; anon-3 inactive, anon-5 churned: 5 persons, 3 online.
    B: online anon-6, anon-3, user-1, user-2; anon-2, anon-5 inactive: 6 persons, 4 online.
    anon-4 is online in both: a person of its own in A, user-2 in B. user-1 is in both, with other
    traits and sessions.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from clickhouse_connect.driver.client import Client
from fastapi.routing import iter_route_contexts

from tests.conftest import Infra
from tests.integration.stack import Stack, own_names
from tests.integration.test_api import identify, ms_now, page, read_event, track
from tests.integration.test_grafana_dashboards import Grafana, at_all, dashboards, panels
from werkstroom import funnels
from werkstroom.serve import prepare_clickhouse

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

S, M, D = timedelta(seconds=1), timedelta(minutes=1), timedelta(days=1)
ADMIN = "test-admin"
FUNNEL_STEPS = [{"event": "$page", "path": "/pricing"}, {"event": "Clicked"}, {"event": "Signed Up"}]
DAYS = 60  # every event of the scenario lies within the last 60 days

# -- the traffic ---------------------------------------------------------------------------------


def _with_id(call: dict[str, Any], message_id: str) -> dict[str, Any]:
    return {**call, "messageId": message_id}


def alpha(now: datetime) -> list[dict[str, Any]]:
    return [
        _with_id(page("anon-1", now - 30 * M, "/", "Home"), "m01"),
        _with_id(page("anon-1", now - 25 * M, "/pricing", "Pricing"), "m02"),
        _with_id(track("anon-1", now - 24 * M, "Clicked"), "m03"),
        _with_id(
            identify("anon-1", now - 23 * M, "user-1", {"plan": "premium", "email": "one@alpha.example"}),
            "m04",
        ),
        _with_id(track("anon-1", now - 22 * M, "Signed Up"), "m05"),
        _with_id(page("anon-1", now - 90 * S, "/signup", "Sign up"), "m06"),
        _with_id(page("anon-2", now - 60 * S, "/", "Home"), "m07"),
        _with_id(page("anon-3", now - 10 * D, "/", "Home"), "m08"),
        _with_id(page("anon-3", now - 10 * D + 5 * M, "/pricing", "Pricing"), "m09"),
        _with_id(page("anon-4", now - 45 * D, "/", "Home"), "m10"),
        _with_id(page("anon-4", now - 45 * S, "/pricing", "Pricing"), "m11"),
        _with_id(page("anon-5", now - 50 * D, "/", "Home"), "m12"),
    ]


def beta(now: datetime) -> list[dict[str, Any]]:
    return [
        _with_id(page("anon-1", now - 40 * D, "/pricing", "Pricing"), "m10"),
        _with_id(page("anon-1", now - 150 * S, "/", "Home"), "m01"),
        _with_id(
            identify("anon-1", now - 140 * S, "user-1", {"plan": "trial", "email": "one@beta.example"}), "m02"
        ),
        _with_id(page("anon-1", now - 40 * S, "/pricing", "Pricing"), "m03"),
        _with_id(page("anon-2", now - 8 * D, "/", "Home"), "m04"),
        _with_id(page("anon-2", now - 8 * D + M, "/pricing", "Pricing"), "m05"),
        _with_id(page("anon-3", now - 30 * S, "/", "Home"), "m06"),
        _with_id(page("anon-4", now - 120 * S, "/", "Home"), "m07"),
        _with_id(track("anon-4", now - 110 * S, "Clicked"), "m08"),
        _with_id(
            identify("anon-4", now - 100 * S, "user-2", {"plan": "premium", "email": "two@beta.example"}),
            "m09",
        ),
        _with_id(page("anon-5", now - 19 * D, "/signup", "Sign up"), "m11"),
        _with_id(page("anon-6", now - 25 * S, "/", "Home"), "m12"),
        _with_id(page("anon-6", now - 20 * S, "/docs", "Docs"), "m13"),
    ]


PERSON_OF = {"A": {"anon-1": "user-1"}, "B": {"anon-1": "user-1", "anon-4": "user-2"}}


@dataclass
class Site:
    """One project and what it should show, worked out by hand from its traffic."""

    label: str
    project_id: str
    read_key: str
    write_key: str
    calls: list[dict[str, Any]]
    funnel_id: str = ""
    old_funnel_id: str = ""
    online: list[str] = field(default_factory=list)  # person ids, newest activity first
    users: list[str] = field(default_factory=list)  # last_seen desc
    segments: dict[str, list[str]] = field(default_factory=dict)
    timezone: str = "UTC"  # the project's (every site here is created in UTC)
    metrics: dict[str, Any] = field(default_factory=dict)
    funnel: list[int] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)  # sums over DAYS days of activity
    entry_pages: dict[str, int] = field(default_factory=dict)  # path -> visitors entering there
    bounces: int = 0  # sessions with a single page view

    @property
    def persons(self) -> dict[str, set[date]]:
        """person -> the UTC days with an event (each visit here is one short session)."""
        out: dict[str, set[date]] = {}
        for call in self.calls:
            person = PERSON_OF[self.label].get(call["anonymousId"], call["anonymousId"])
            out.setdefault(person, set()).add(datetime.fromisoformat(call["timestamp"]).date())
        return out


def expected(site: Site) -> None:
    if site.label == "A":
        site.online = ["anon-4", "anon-2", "user-1"]
        site.users = ["anon-4", "anon-2", "user-1", "anon-3", "anon-5"]
        site.segments = {
            "active": ["anon-4", "anon-2", "user-1"],
            "inactive": ["anon-3"],
            "churned": ["anon-5"],
            "premium": ["user-1"],
            "trial": [],
        }
        site.metrics = {
            "total_users": {"value": 5, "previous": 3, "trend": 66.7},
            "online_now": {"value": 3, "previous": 0, "trend": None},
            "new_this_week": {"value": 2, "previous": 1, "trend": 100.0},
            "churn_rate": {"value": 100.0, "previous": None, "trend": None},
        }
        site.funnel = [3, 1, 1]  # user-1 went all the way; anon-3 and anon-4 saw /pricing
        site.totals = {"page_views": 9, "events": 12, "sessions": 6, "new_users": 5}
        # anon-4's two visits 45 days apart are two sessions, the second entering on /pricing;
        # single page views: anon-2, anon-4 (both), anon-5
        site.entry_pages = {"/": 5, "/pricing": 1}
        site.bounces = 4
    else:
        site.online = ["anon-6", "anon-3", "user-1", "user-2"]
        site.users = ["anon-6", "anon-3", "user-1", "user-2", "anon-2", "anon-5"]
        site.segments = {
            "active": ["anon-6", "anon-3", "user-1", "user-2"],
            "inactive": ["anon-2", "anon-5"],
            "churned": [],
            "premium": ["user-2"],
            "trial": ["user-1"],
        }
        site.metrics = {
            "total_users": {"value": 6, "previous": 3, "trend": 100.0},
            "online_now": {"value": 4, "previous": 0, "trend": None},
            "new_this_week": {"value": 3, "previous": 1, "trend": 200.0},
            "churn_rate": {"value": 100.0, "previous": 100.0, "trend": 0.0},
        }
        site.funnel = [2, 0, 0]  # user-1 and anon-2 saw /pricing; nobody clicked after it
        site.totals = {"page_views": 10, "events": 13, "sessions": 7, "new_users": 6}
        # anon-1 entered on /pricing 40 days ago and on / today; anon-5 on /signup
        site.entry_pages = {"/": 5, "/pricing": 1, "/signup": 1}
        site.bounces = 4  # anon-1's first visit, anon-3, anon-4 (a page, then events), anon-5


# -- the world: two projects created over the admin API, their traffic through the pipeline ------


@dataclass
class World:
    stack: Stack
    now: datetime
    url: str
    a: Site
    b: Site
    empty: Site  # the stack's own project: no traffic at all
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every call

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        """An HTTP client on the API whose every request is recorded for the coverage check."""

        async def record(request: httpx.Request) -> None:
            self.requests.append((request.method, request.url.path))

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=20, event_hooks={"request": [record]}
        )


async def send(stack: Stack, write_key: str, calls: list[dict[str, Any]]) -> None:
    response = await stack.post("/v1/batch", {"writeKey": write_key, "batch": calls})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(calls), response.text


async def settled(stack: Stack, site: Site) -> None:
    """Until the aggregator wrote the persons, their active days and the daily stats."""
    persons = site.persons
    activity_days = sum(len(days) for days in persons.values())

    def done() -> bool:
        p = site.project_id
        return (
            stack.scalar(
                "SELECT count() FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0", p=p
            )
            == len(persons)
            and stack.scalar(
                "SELECT count() FROM person_activity FINAL WHERE project_id = {p:String} AND is_deleted = 0",
                p=p,
            )
            == activity_days
            and stack.scalar("SELECT sum(events) FROM daily_stats FINAL WHERE project_id = {p:String}", p=p)
            == len(site.calls)
        )

    await stack.until(done, timeout=40)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    names = own_names()
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path_factory.mktemp("isolation"),
        # each key is tried on the other project's every route on purpose: more failed checks
        # than a minute's budget from one address
        api_auth_failures_per_minute=0,
    ) as stack:
        now = ms_now()
        url = await stack.start_api(clock=lambda: now)
        empty = stack.project
        w = World(
            stack,
            now,
            url,
            Site("A", "", "", "", alpha(now)),
            Site("B", "", "", "", beta(now)),
            Site("-", empty.project_id, empty.read_key, empty.write_key, []),
        )
        async with w.client(ADMIN) as admin:
            for site, name in ((w.a, "Alpha shop"), (w.b, "Beta shop")):
                created = await admin.post("/api/projects", json={"name": name})
                assert created.status_code == 201, created.text
                body = created.json()
                site.project_id, site.read_key, site.write_key = (
                    body["project_id"],
                    body["read_key"],
                    body["write_key"],
                )
                expected(site)
        await stack.ingest_app.app.state.ingest.s.keys.reload()  # ingest accepts the new keys now
        await asyncio.gather(send(stack, w.a.write_key, w.a.calls), send(stack, w.b.write_key, w.b.calls))
        await settled(stack, w.a)
        await settled(stack, w.b)
        # the same funnel name in both, and one more ("Old") that is deleted in A only
        for site in (w.a, w.b):
            async with w.client(site.read_key) as api:
                for name in ("Signup", "Old"):
                    created = await api.post(
                        f"/api/projects/{site.project_id}/funnels",
                        json={"name": name, "steps": FUNNEL_STEPS, "window_seconds": 86400},
                    )
                    assert created.status_code == 201, created.text
                    if name == "Signup":
                        site.funnel_id = created.json()["funnel_id"]
                    else:
                        site.old_funnel_id = created.json()["funnel_id"]
        async with w.client(w.b.read_key) as api:  # B's key cannot delete A's funnel
            gone = await api.delete(f"/api/projects/{w.b.project_id}/funnels/{w.a.old_funnel_id}")
            assert gone.status_code == 404
        async with w.client(w.a.read_key) as api:
            gone = await api.delete(f"/api/projects/{w.a.project_id}/funnels/{w.a.old_funnel_id}")
            assert gone.status_code == 204
        # the funnels came after the events: the aggregator back-fills them from what is stored
        for site in (w.a, w.b):
            await stack.until(
                lambda site=site: funnels.backfilled(stack.client, site.project_id, [site.funnel_id]),
                timeout=30,
            )
        await stack.until(lambda: stack.scalar("SELECT sum(lag) FROM aggregator_status FINAL") == 0)
        yield w


# -- storage: nothing collapsed across projects ----------------------------------------------------


async def test_colliding_message_ids_are_kept_per_project(world: World) -> None:
    stack = world.stack
    for site in (world.a, world.b):
        ids = sorted(c["messageId"] for c in site.calls)
        stored = stack.rows(
            "SELECT event_id FROM events FINAL WHERE project_id = {p:String} ORDER BY event_id",
            p=site.project_id,
        )
        assert [r[0] for r in stored] == ids
        visitor = stack.rows(
            "SELECT event_id FROM visitor_events FINAL WHERE project_id = {p:String} ORDER BY event_id",
            p=site.project_id,
        )
        assert [r[0] for r in visitor] == ids
    # the same (day, messageId) in both projects: both rows are there (the key leads with project)
    same_day = {
        c["messageId"]
        for c in world.a.calls
        for o in world.b.calls
        if c["messageId"] == o["messageId"] and c["timestamp"][:10] == o["timestamp"][:10]
    }
    # Five ids go to both projects within the world's last 30 minutes: on one UTC day, unless
    # that half hour spans midnight (then fewer: none from 60 to 90 s after it). A world built
    # then has its collisions on two days, which the rows below still hold to.
    if world.now.time() >= time(0, 31):
        assert len(same_day) >= 4
    both = stack.rows(
        "SELECT event_id, uniqExact(project_id) FROM events FINAL "
        "WHERE event_id IN {ids:Array(String)} GROUP BY event_id",
        ids=sorted(same_day),
    )
    assert dict(both) == dict.fromkeys(same_day, 2)
    # session ids come from (project, anonymous id, first event id): anon-1's sessions started
    # by m01 in both projects are different sessions
    sessions = {
        site.label: {
            s
            for (s,) in stack.rows(
                "SELECT session_id FROM sessions FINAL WHERE project_id = {p:String}", p=site.project_id
            )
        }
        for site in (world.a, world.b)
    }
    assert len(sessions["A"]) == 6 and len(sessions["B"]) == 7 and not sessions["A"] & sessions["B"]


# -- Grafana: every query of every dashboard, per project -------------------------------------------


def copy_of_one_project(stack: Stack, project_id: str) -> tuple[Client, str]:
    """A database with the same migrations holding only `project_id`'s rows of every table (and
    the aggregator's status, which belongs to no project)."""
    source = stack.settings.clickhouse_database
    target = f"{source}_only_{project_id[-6:]}"
    settings = stack.settings.model_copy(update={"clickhouse_database": target})
    client = prepare_clickhouse(settings)
    tables = stack.rows(
        "SELECT name, engine FROM system.tables WHERE database = {d:String} ORDER BY name", d=source
    )
    for name, engine in tables:
        # views compute from the tables; visitor_events is filled from events by its view; the
        # migration ledger is the target's own
        if "View" in engine or name in ("visitor_events", "schema_migrations"):
            continue
        columns = {
            c
            for (c,) in stack.rows(
                "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String}",
                d=source,
                t=name,
            )
        }
        where = " WHERE project_id = {p:String}" if "project_id" in columns else ""
        client.command(
            f"INSERT INTO `{target}`.`{name}` SELECT * FROM `{source}`.`{name}`{where}",
            parameters={"p": project_id},
        )
    return client, target


def variables_for(site: Site, dashboard: dict[str, Any], topic: str) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        if name == "project_id":
            out[name] = [site.project_id] if variable.get("multi") else site.project_id
        elif name == "funnel_id":
            out[name] = site.funnel_id
        elif name == "events_topic":
            out[name] = topic
        elif name == "timezone":
            out[name] = site.timezone
        elif variable.get("includeAll"):
            continue  # a filter left at "All": every option its query offers (see with_all)
        else:
            raise AssertionError(f"variable {name} not handled: give it each project's value here")
    return out


def with_all(g: Grafana, dashboard: dict[str, Any], client: Client, database: str) -> Grafana:
    """`g` with each filter variable not set by variables_for at "All": its custom all value, or
    else the list of every value its own query offers (read from `database`)."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query" and variable.get("includeAll") and variable["name"] not in g.variables:
            rows = client.query(g.expand(variable["query"], database)).result_rows
            g.variables[variable["name"]] = at_all(variable, [str(r[0]) for r in rows])
    return g


# The project variable lists every project: Grafana is the operator's view over the whole
# database (its datasource reads every table), not a tenant's.
ALL_PROJECTS_VARIABLE = "project_id"


async def test_every_grafana_query_shows_each_project_only_its_own_rows(world: World) -> None:
    stack = world.stack
    database = stack.settings.clickhouse_database
    topic = stack.settings.topic_events
    boards = dashboards()
    now = datetime.now(UTC)
    checked = 0

    def run(client: Client, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = client.query(sql)
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    answers: dict[tuple[str, str], dict[str, Any]] = {}
    for site in (world.a, world.b):
        alone, alone_db = copy_of_one_project(stack, site.project_id)
        try:
            for name, dashboard in boards.items():
                g = Grafana(now - (DAYS - 1) * D, now, variables_for(site, dashboard, topic))
                g = with_all(g, dashboard, alone, alone_db)
                queries: list[tuple[str, str]] = [
                    (f"variable {v['name']}", v["query"])
                    for v in dashboard["templating"]["list"]
                    if v["type"] == "query" and v["name"] != ALL_PROJECTS_VARIABLE
                ]
                queries += [
                    (p["title"], t["rawSql"]) for p in panels(dashboard) for t in p.get("targets", [])
                ]
                for title, raw in queries:
                    shared_sql, alone_sql = g.expand(raw, database), g.expand(raw, alone_db)
                    # "now" moves between the two reads (seconds on page, "s ago"): a read of
                    # the shared database on each side of the one alone must match it once
                    for _ in range(3):
                        first = run(stack.client, shared_sql)
                        only = run(alone, alone_sql)
                        second = run(stack.client, shared_sql)
                        if only in (first, second):
                            break
                    assert only in (first, second), (site.label, name, title, first, only)
                    answers[(site.label, title)] = {"columns": only[0], "rows": only[1]}
                    checked += 1
        finally:
            alone.command(f"DROP DATABASE IF EXISTS `{alone_db}`")
    per_project = sum(
        len(
            [
                v
                for v in d["templating"]["list"]
                if v["type"] == "query" and v["name"] != ALL_PROJECTS_VARIABLE
            ]
        )
        + sum(len(p.get("targets", [])) for p in panels(d))
        for d in boards.values()
    )
    assert checked == 2 * per_project

    # -- and each project's own numbers, worked out by hand ----------------------------------------
    def one(label: str, title: str) -> dict[str, Any]:
        answer = answers[(label, title)]
        (row,) = answer["rows"]
        return dict(zip(answer["columns"], row, strict=True))

    def table(label: str, title: str) -> list[dict[str, Any]]:
        answer = answers[(label, title)]
        return [dict(zip(answer["columns"], r, strict=True)) for r in answer["rows"]]

    for site in (world.a, world.b):
        x, m = site.label, site.metrics
        assert one(x, "Online now") == {"online now": len(site.online)}
        assert one(x, "Visitors, last 5 minutes") == {"visitors": len(site.online)}
        assert one(x, "Total users") == {
            "total users": m["total_users"]["value"],
            "a week ago": m["total_users"]["previous"],
        }
        assert one(x, "New this week") == {
            "new this week": m["new_this_week"]["value"],
            "the week before": m["new_this_week"]["previous"],
        }
        assert one(x, "Churn rate") == {
            "churn rate": m["churn_rate"]["value"],
            "a week ago": m["churn_rate"]["previous"],
        }
        assert [r["person"] for r in table(x, "Online now: who and where")] == site.online
        assert one(x, "Segments") == {k: len(site.segments[k]) for k in ("active", "inactive", "churned")}
        plans = {"premium": len(site.segments["premium"]), "trial": len(site.segments["trial"])}
        plans["(none)"] = len(site.users) - sum(plans.values())
        assert {r["name"]: r["persons"] for r in table(x, "Plans")} == {k: v for k, v in plans.items() if v}
        assert [r["persons"] for r in table(x, "Funnel: ${funnel_id:text}")] == site.funnel
        assert table(x, "variable funnel_id") == [{"funnel_id": site.funnel_id, "name": "Signup"}] + (
            [{"funnel_id": site.old_funnel_id, "name": "Old"}] if x == "B" else []
        )
        daily = table(x, "Daily activity")
        assert sum(r["page views"] for r in daily) == site.totals["page_views"]
        assert sum(r["sessions"] for r in daily) == site.totals["sessions"]
        assert sum(r["new users"] for r in daily) == site.totals["new_users"]
        pages = {r["path"]: r["pageviews"] for r in table(x, "Top pages")}
        assert pages == _count(c["properties"]["path"] for c in site.calls if c["type"] == "page")
        by_type = table(x, "Events per minute by type")
        assert sum(r["events"] for r in by_type) == len(site.calls)
        # the breakdowns dashboard, every filter at All
        views = [c for c in site.calls if c["type"] == "page"]
        viewers: dict[str, set[str]] = {}
        for c in views:
            viewers.setdefault(c["properties"]["path"], set()).add(c["anonymousId"])
        assert {r["path"]: (r["visitors"], r["page views"]) for r in table(x, "Pages")} == {
            path: (len(who), _count(c["properties"]["path"] for c in views)[path])
            for path, who in viewers.items()
        }
        assert {r["entry page"]: r["visitors"] for r in table(x, "Entry pages")} == site.entry_pages
        everyone = len({c["anonymousId"] for c in views})
        sessions = site.totals["sessions"]
        bounce = round(100 * site.bounces / sessions, 1)
        # no referrer, no campaign and no country in this traffic (the test's client is local)
        assert table(x, "Sources") == [
            {"Source": "Direct / None", "visitors": everyone, "sessions": sessions, "bounce %": bounce}
        ]
        assert table(x, "Countries") == [
            {"Country": "Unknown", "visitors": everyone, "sessions": sessions, "bounce %": bounce}
        ]
        assert table(x, "variable country") == [{"value": "x", "text": "Unknown"}]


def _count(values: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


async def test_grafana_with_both_projects_counts_colliding_visitors_once_per_project(world: World) -> None:
    """The events dashboard with both projects picked: anon-1 is online in both, and is two
    visitors (one per project), not one."""
    stack = world.stack
    (dashboard,) = [d for n, d in dashboards().items() if n == "ingest-overview.json"]
    now = datetime.now(UTC)
    g = Grafana(now - DAYS * D, now, {"project_id": [world.a.project_id, world.b.project_id]})

    def panel(title: str) -> list[dict[str, Any]]:
        (target,) = next(p for p in panels(dashboard) if p["title"] == title)["targets"]
        result = stack.client.query(g.expand(target["rawSql"], stack.settings.clickhouse_database))
        return [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]

    assert panel("Visitors, last 5 minutes") == [{"visitors": len(world.a.online) + len(world.b.online)}]
    visitors = {site.label: {c["anonymousId"] for c in site.calls} for site in (world.a, world.b)}
    assert sum(r["visitors"] for r in panel("Visitors by browser")) == len(visitors["A"]) + len(visitors["B"])
    assert sum(r["visitors"] for r in panel("Visitors by device type")) == len(visitors["A"]) + len(
        visitors["B"]
    )
    home = {r["path"]: r["visitors"] for r in panel("Top pages")}["/"]
    assert home == sum(
        1
        for site in (world.a, world.b)
        for a in visitors[site.label]
        if any(
            c["anonymousId"] == a and c["type"] == "page" and c["properties"]["path"] == "/"
            for c in site.calls
        )
    )


# -- the API: every route, per project ---------------------------------------------------------------

# Routes that serve no project's data: operations, the API's own documents and the dashboard's
# static files. Each is still requested below, and must not mention either project.
NO_PROJECT_DATA = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/docs/assets"),
    ("GET", "/api"),
    ("GET", "/"),
    ("GET", "/static"),
}


def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


async def test_every_api_route_shows_each_project_only_its_own_data(world: World) -> None:
    now = world.now
    for site, other in ((world.a, world.b), (world.b, world.a)):
        async with world.client(site.read_key) as api:
            base = f"/api/projects/{site.project_id}"

            async def get(path: str, **params: Any) -> Any:
                response = await api.get(f"{base}/{path}", params=params)  # noqa: B023
                assert response.status_code == 200, (path, response.text)
                return response.json()

            async def csv_rows(kind: str, **params: Any) -> list[list[str]]:
                response = await api.get(f"{base}/export/{kind}.csv", params=params)  # noqa: B023
                assert response.status_code == 200, (kind, response.text)
                return parse_csv(response.text)

            # -- who am I, the snippet
            me = (await api.get("/api/me")).json()
            assert me["project_id"] == site.project_id and me["write_key"] == site.write_key
            assert (await get("snippet"))["write_key"] == site.write_key

            # -- online, and the same pushed live
            online = await get("online")
            assert online["online"] == len(site.online)
            assert [u["person_id"] for u in online["users"]] == site.online
            assert {u["anonymous_id"] for u in online["users"]} == {
                c["anonymousId"] for c in site.calls if datetime.fromisoformat(c["timestamp"]) > now - 5 * M
            }
            sessions_of_site = {
                s
                for (s,) in world.stack.rows(
                    "SELECT session_id FROM sessions FINAL WHERE project_id = {p:String}", p=site.project_id
                )
            }
            assert {u["session_id"] for u in online["users"]} <= sessions_of_site
            async with api.stream("GET", f"{base}/live") as live:
                assert live.status_code == 200
                event, data = await asyncio.wait_for(read_event(live.aiter_lines()), 10)
                pushed = orjson.loads(data)
                assert (
                    event == "online"
                    and pushed["users"] == online["users"]
                    and pushed["online"] == online["online"]
                )
            exported = await csv_rows("online")
            assert [r[0] for r in exported[1:]] == site.online

            # -- metrics and activity
            assert (await get("metrics"))["metrics"] == site.metrics
            metric_rows = await csv_rows("metrics")
            assert metric_rows[1:] == [
                [k, *("" if v[f] is None else str(v[f]) for f in ("value", "previous", "trend"))]
                for k, v in site.metrics.items()
            ]
            days = (await get("activity", days=DAYS))["days"]
            for column, total in site.totals.items():
                assert sum(d[column] for d in days) == total, column
            active = {(p, d) for p, ds in site.persons.items() for d in ds}
            assert sum(d["active_users"] for d in days) == len(active)
            activity_rows = await csv_rows("activity", days=DAYS)
            assert [int(r[4]) for r in activity_rows[1:]] == [d["page_views"] for d in days]

            # -- users: list, segments, search, pages
            async def ids(**params: Any) -> list[str]:
                return [u["person_id"] for u in (await get("users", **params))["users"]]

            assert await ids() == site.users
            for segment, persons in site.segments.items():
                assert await ids(segment=segment) == persons, segment
            assert await ids(q="user") == [p for p in site.users if p.startswith("user")]
            assert await ids(q="anon") == [p for p in site.users if p.startswith("anon")]
            own, others = ("alpha", "beta") if site.label == "A" else ("beta", "alpha")
            assert await ids(q=own) == [p for p in site.users if p.startswith("user")]
            assert await ids(q=others) == []
            paged, cursor = [], None
            while True:
                body = await get("users", limit=2, **({"cursor": cursor} if cursor else {}))
                paged += [u["person_id"] for u in body["users"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert paged == site.users
            assert [r[0] for r in (await csv_rows("users"))[1:]] == site.users
            assert [r[0] for r in (await csv_rows("users", segment="premium"))[1:]] == site.segments[
                "premium"
            ]
            assert [r[0] for r in (await csv_rows("users", q="anon"))[1:]] == [
                p for p in site.users if p.startswith("anon")
            ]

            # -- a profile and its sessions: user-1 is in both projects, with other traits
            profile = await get("users/user-1")
            if site.label == "A":
                assert (profile["plan"], profile["sessions"], profile["page_views"]) == ("premium", 1, 3)
                assert profile["traits"] == {"plan": "premium", "email": "one@alpha.example"}
            else:
                assert (profile["plan"], profile["sessions"], profile["page_views"]) == ("trial", 2, 3)
                assert profile["traits"] == {"plan": "trial", "email": "one@beta.example"}
            assert profile["anonymous_ids"] == ["anon-1"]
            sessions = (await get("users/user-1/sessions"))["sessions"]
            if site.label == "A":
                assert [s["pages"] for s in sessions] == [["/", "/pricing", "/signup"]]
                assert sessions[0]["events"] == 6 and sessions[0]["duration_seconds"] == 30 * 60 - 90
            else:
                assert [s["pages"] for s in sessions] == [["/", "/pricing"], ["/pricing"]]
                assert sessions[0]["events"] == 3 and sessions[0]["duration_seconds"] == 110
            assert {s["session_id"] for s in sessions} <= sessions_of_site
            # anon-4 is a person in A and user-2 in B; anon-6 is in B only; anon-1 is merged in both
            for person in ("anon-4", "user-2", "anon-6", "anon-1", "anon-3", "anon-5"):
                response = await api.get(f"{base}/users/{person}")
                assert (response.status_code == 200) == (person in site.users), (person, response.text)
                response = await api.get(f"{base}/users/{person}/sessions")
                assert (response.status_code == 200) == (person in site.users), (person, response.text)
            all_sessions = await csv_rows("sessions", days=DAYS)
            assert len(all_sessions) - 1 == site.totals["sessions"]
            assert {r[0] for r in all_sessions[1:]} == sessions_of_site
            mine = await csv_rows("sessions", days=DAYS, person_id="user-1")
            assert [r[0] for r in mine[1:]] == [s["session_id"] for s in sessions]
            missing = await api.get(
                f"{base}/export/sessions.csv",
                params={"person_id": "user-2" if site.label == "A" else "anon-4"},
            )
            assert missing.status_code == 404

            # -- funnels: the same name in both, each its own id, definition and counts
            listed = (await get("funnels"))["funnels"]
            expected_funnels = [site.funnel_id] + ([site.old_funnel_id] if site.label == "B" else [])
            assert [f["funnel_id"] for f in listed] == expected_funnels
            report = await get(f"funnels/{site.funnel_id}", days=30)
            assert report["funnel"]["name"] == "Signup"
            assert [s["count"] for s in report["steps"]] == site.funnel
            for foreign in (other.funnel_id, other.old_funnel_id):
                assert (await api.get(f"{base}/funnels/{foreign}")).status_code == 404
                assert (await api.delete(f"{base}/funnels/{foreign}")).status_code == 404

            # -- breakdowns: the same paths in both, each project's own visitors and views
            window = {"from": (now - (DAYS - 1) * D).date().isoformat(), "to": now.date().isoformat()}
            views = [c for c in site.calls if c["type"] == "page"]
            viewers: dict[str, set[str]] = {}
            for c in views:
                viewers.setdefault(c["properties"]["path"], set()).add(c["anonymousId"])
            per_path = _count(c["properties"]["path"] for c in views)
            pages = (await get("breakdowns/pages", limit=100, **window))["rows"]
            assert {r["value"]: (r["visitors"], r["page_views"]) for r in pages} == {
                path: (len(who), per_path[path]) for path, who in viewers.items()
            }
            entries = (await get("breakdowns/entry_pages", limit=100, **window))["rows"]
            assert {r["value"]: r["visitors"] for r in entries} == site.entry_pages
            sources = (await get("breakdowns/sources", **window))["rows"]
            assert [(r["value"], r["visitors"], r["sessions"]) for r in sources] == [
                ("", len({c["anonymousId"] for c in views}), site.totals["sessions"])
            ]
            exported = await csv_rows("breakdown", dimension="pages", **window)
            assert {r[0]: int(r[1]) for r in exported[1:]} == {p: len(w) for p, w in viewers.items()}

            # -- this key on the other project: 404 on every route, whatever the method
            there = f"/api/projects/{other.project_id}"
            for path in (
                "online",
                "live",
                "metrics",
                "activity",
                "funnels",
                f"funnels/{other.funnel_id}",
                "users",
                "users/user-1",
                "users/user-1/sessions",
                "export/users.csv",
                "export/breakdown.csv?dimension=pages",
                "breakdowns/pages",
                "snippet",
            ):
                assert (await api.get(f"{there}/{path}")).status_code == 404, path
            created = await api.post(f"{there}/funnels", json={"name": "X", "steps": FUNNEL_STEPS})
            assert created.status_code == 404

    # the stack's own project, with no traffic: nothing of the others
    async with world.client(world.empty.read_key) as api:
        base = f"/api/projects/{world.empty.project_id}"
        assert (await api.get(f"{base}/online")).json()["online"] == 0
        assert (await api.get(f"{base}/users")).json()["users"] == []
        assert (await api.get(f"{base}/funnels")).json()["funnels"] == []
        assert {m["value"] for m in (await api.get(f"{base}/metrics")).json()["metrics"].values()} <= {
            0,
            None,
        }

    # -- the admin list sees every project (that is what the admin token is for); a read key, none
    async with world.client(ADMIN) as admin, world.client(world.a.read_key) as reader:
        listed = {p["project_id"] for p in (await admin.get("/api/projects")).json()}
        assert {world.a.project_id, world.b.project_id} <= listed
        assert (await reader.get("/api/projects")).status_code == 401
        assert (await reader.post("/api/projects", json={"name": "x"})).status_code == 401
        # a read key changes no project, not even its own; the admin's change is that project's
        mine = f"/api/projects/{world.a.project_id}"
        assert (await reader.patch(mine, json={"timezone": "UTC"})).status_code == 401
        changed = await admin.patch(mine, json={"timezone": "UTC"})  # its zone, as it was
        assert changed.status_code == 200 and changed.json()["project_id"] == world.a.project_id
        assert world.b.read_key not in changed.text and world.a.read_key not in changed.text

    # -- routes with no project's data mention none
    secrets = [world.a.project_id, world.b.project_id, world.a.read_key, world.b.read_key, "user-1"]
    async with world.client() as anyone:
        for _method, path in sorted(NO_PROJECT_DATA):
            files = {"/static": "/static/app.js", "/docs/assets": "/docs/assets/swagger-ui.css"}
            response = await anyone.get(files.get(path, path))
            assert response.status_code in (200, 503), (path, response.status_code)
            assert not any(s in response.text for s in secrets), path

    # -- every route of the app was called above (a new route needs its isolation check here)
    app = world.stack.api_app
    routes = [r for r in iter_route_contexts(app.routes)]
    covered: set[tuple[str, str]] = set()
    for method, path in world.requests:
        for route in routes:
            methods = route.methods or {method}
            if route.path_regex.match(path) and method in methods:
                covered.add((method, route.path))
                break
    every = {(m, r.path) for r in routes for m in (r.methods or {"GET"}) if m != "HEAD"}
    assert every - covered == set(), f"routes without an isolation check: {sorted(every - covered)}"
    assert NO_PROJECT_DATA <= every  # the exemptions name real routes
