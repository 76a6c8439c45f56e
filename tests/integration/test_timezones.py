"""A project's days are local days of its time zone, over the real path: the same hand-made
events sent through ingest's HTTP API to four projects (UTC, Europe/Amsterdam,
America/Los_Angeles, Asia/Kolkata), Kafka, and the aggregator's counting and recomputation into
ClickHouse. Every day-keyed table is held to what the zone's local days say, worked out here in
Python (zoneinfo) and by an independent SQL over `events` (toDate(timestamp, zone)).

The instants sit on the zones' day boundaries: Amsterdam's two daylight-saving days of 2026
(03-29 has 23 hours, 10-25 has 25), a session across Amsterdam's midnight, Kolkata's half-hour
offset, Los Angeles' midnight; two visitors identified as one person.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client

from services.api import queries
from tests.integration.stack import Stack
from tests.integration.test_api import identify, page, track
from tests.integration.test_cli_funnels import run as run_cli
from tests.integration.test_grafana_dashboards import Grafana, dashboards, panels, run
from werkstroom import funnels, timezones

pytestmark = pytest.mark.integration

ZONES = ("UTC", "Europe/Amsterdam", "America/Los_Angeles", "Asia/Kolkata")
#: The API's clock: 20:00 UTC is already 12-01 in Kolkata, 21:00 in Amsterdam, noon in LA.
NOW = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
GAP = timedelta(minutes=30)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


CALLS: list[dict[str, Any]] = [
    # Amsterdam, 03-29 (23 hours: 03-28 23:00Z .. 03-29 22:00Z)
    page("v1", at("2026-03-28T22:30:00"), "/a"),  # Ams 03-28 23:30
    page("v1", at("2026-03-28T23:10:00"), "/b"),  # Ams 03-29 00:10, 40 min later: a new session
    page("v2", at("2026-03-29T21:50:00"), "/a"),  # Ams 03-29 23:50 (CEST)
    page("v2", at("2026-03-29T22:05:00"), "/b"),  # Ams 03-30 00:05: the same session, across midnight
    track("v2", at("2026-03-29T22:06:00"), "Clicked"),
    # Amsterdam, 10-25 (25 hours: 10-24 22:00Z .. 10-25 23:00Z)
    page("v3", at("2026-10-24T22:30:00"), "/a"),  # Ams 10-25 00:30 (CEST)
    page("v3", at("2026-10-25T22:45:00"), "/a"),  # Ams 10-25 23:45 (CET): the same day, 24h15 later
    track("v3", at("2026-10-25T22:46:00"), "$heartbeat"),  # not an event in the counts
    # Kolkata's midnight is 18:30Z
    page("v4", at("2026-07-01T18:20:00"), "/a"),  # Kol 07-01 23:50
    page("v4", at("2026-07-01T18:40:00"), "/b"),  # Kol 07-02 00:10, the same session
    # Los Angeles' midnight is 07:00Z in summer
    page("v5", at("2026-07-02T06:50:00"), "/a"),  # LA 07-01 23:50
    page("v5", at("2026-07-02T07:10:00"), "/b"),  # LA 07-02 00:10, the same session
    identify("v4", at("2026-07-02T07:20:00"), "u45", {"plan": "premium"}),
    identify("v5", at("2026-07-02T07:25:00"), "u45", {"plan": "premium"}),
]
PERSON = {"v4": "u45", "v5": "u45"}


def sessions(calls: list[dict[str, Any]]) -> list[tuple[str, datetime, datetime, bool]]:
    """(visitor, start, last event, whether it has a page view) of every session: the 30-minute
    rule over what is sent (identify calls open and extend sessions, as the aggregator counts
    them; a session without a page view has no breakdown row)."""
    by_visitor: dict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for call in calls:
        t = datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00"))
        by_visitor[call["anonymousId"]].append((t, call["type"] == "page"))
    out = []
    for visitor, ts in by_visitor.items():
        ts.sort()
        start, last, viewed = ts[0][0], ts[0][0], ts[0][1]
        for t, is_page in ts[1:]:
            if t - last > GAP:
                out.append((visitor, start, last, viewed))
                start, viewed = t, False
            last, viewed = t, viewed or is_page
        out.append((visitor, start, last, viewed))
    return out


def expected_daily(calls: list[dict[str, Any]], zone: str) -> dict[date, tuple[int, int, int, int, int]]:
    """Per local day with anything: (active_users, new_users, sessions, page_views, events)."""
    day = lambda t: timezones.day_of(t, zone)  # noqa: E731
    active: dict[date, set[str]] = defaultdict(set)
    started: dict[date, int] = defaultdict(int)
    first: dict[str, date] = {}
    for visitor, start, last, _viewed in sessions(calls):
        person = PERSON.get(visitor, visitor)
        d = day(start)
        started[d] += 1
        while d <= day(last):
            active[d].add(person)
            d += timedelta(days=1)
        first[person] = min(first.get(person, day(start)), day(start))
    views: dict[date, int] = defaultdict(int)
    events: dict[date, int] = defaultdict(int)
    for call in calls:
        d = day(datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00")))
        views[d] += call["type"] == "page"
        events[d] += call.get("event") != "$heartbeat"
    new: dict[date, int] = defaultdict(int)
    for d in first.values():
        new[d] += 1
    days = set(active) | set(views) | set(events)
    return {d: (len(active[d]), new[d], started[d], views[d], events[d]) for d in sorted(days)}


def this_week(zone: str) -> list[dict[str, Any]]:
    """A visitor 10 minutes into the zone's week (today at NOW and the 6 days before), one 10
    minutes before it: new this week, and new the week before, in that zone's days only."""
    start = timezones.start_of(timezones.today(NOW, zone) - timedelta(days=6), zone)
    return [page("w", start + timedelta(minutes=10), "/w"), page("x", start - timedelta(minutes=10), "/x")]


async def test_every_day_keyed_table_counts_the_project_s_local_days(stack: Stack) -> None:
    projects = {"UTC": stack.project}
    for zone in ZONES[1:]:
        projects[zone] = await stack.create_project(zone, timezone=zone)
    sent = {zone: CALLS + this_week(zone) for zone in ZONES}
    steps = [{"event": "$page", "path": "/a"}, {"event": "$page", "path": "/b"}]
    funnel_ids = {
        zone: funnels.create_funnel(stack.client, p.project_id, "a to b", steps, 3600).funnel_id
        for zone, p in projects.items()
    }
    for zone, project in projects.items():
        answer = await stack.post("/v1/batch", {"writeKey": project.write_key, "batch": sent[zone]})
        assert answer.status_code == 200 and answer.json()["accepted"] == len(sent[zone]), answer.text
    total = sum(len(c) for c in sent.values())
    assert await stack.wait_count(total) == total

    for zone, project in projects.items():
        p = project.project_id
        calls = sent[zone]
        expected = expected_daily(calls, zone)

        def daily(pid: str = p) -> dict[date, tuple[int, ...]]:
            return {
                d: tuple(figures)
                for d, *figures in stack.rows(
                    "SELECT day, active_users, new_users, sessions, page_views, events "
                    "FROM daily_stats FINAL WHERE project_id = {p:String} "
                    "AND active_users + new_users + sessions + page_views + events > 0 ORDER BY day",
                    p=pid,
                )
            }

        try:
            await stack.until(lambda e=expected, f=daily: f() == e, timeout=30)
        except AssertionError:
            assert daily() == expected, zone
        # The days are not UTC's but for UTC (the test is not blind to the zone).
        assert (expected == expected_daily(calls, "UTC")) == (zone == "UTC")

        # An independent count over the raw events, in the zone.
        raw = stack.rows(
            "SELECT toDate(timestamp, {tz:String}) AS d, countIf(type = 'page'), "
            "countIf(event != '$heartbeat') FROM events FINAL WHERE project_id = {p:String} "
            "GROUP BY d ORDER BY d",
            p=p,
            tz=zone,
        )
        assert [(d, v, e) for d, v, e in raw] == [(d, f[3], f[4]) for d, f in expected.items()]

        # Each session under the local day it starts on, in sessions_daily and the breakdowns.
        starts = sorted((timezones.day_of(s, zone), v) for v, s, _l, _p in sessions(calls))
        viewed = sorted((timezones.day_of(s, zone), v) for v, s, _l, p in sessions(calls) if p)
        for table, expected_rows in (("sessions_daily", starts), ("breakdown_sessions", viewed)):

            def stored(pid: str = p, t: str = table) -> list[tuple[Any, ...]]:
                return stack.rows(
                    f"SELECT day, anonymous_id FROM {t} FINAL WHERE project_id = {{p:String}} "
                    "AND is_deleted = 0 ORDER BY day, anonymous_id",
                    p=pid,
                )

            try:  # the breakdown tables are recomputed a little after the rest
                await stack.until(lambda e=expected_rows, f=stored: f() == e, timeout=15)
            except AssertionError:
                assert stored() == expected_rows, (zone, table)
        first_days = stack.rows(
            "SELECT person_id, day FROM persons_first_day FINAL WHERE project_id = {p:String} "
            "AND is_deleted = 0 ORDER BY person_id",
            p=p,
        )
        firsts: dict[str, date] = {}
        for visitor, start, _last, _viewed in sessions(calls):
            person = PERSON.get(visitor, visitor)
            firsts[person] = min(firsts.get(person, date.max), timezones.day_of(start, zone))
        assert first_days == sorted(firsts.items()), zone

        # A funnel's attempts are under the local day of their first step.
        attempts = {
            (person, timezones.day_of(at(t), zone))
            for person, t in (
                ("v1", "2026-03-28T22:30:00"),
                ("v2", "2026-03-29T21:50:00"),
                ("v3", "2026-10-24T22:30:00"),
                ("v3", "2026-10-25T22:45:00"),
                ("u45", "2026-07-01T18:20:00"),
                ("u45", "2026-07-02T06:50:00"),
            )
        }

        def progress(pid: str = p, f: str = funnel_ids[zone]) -> set[tuple[str, date]]:
            return set(
                stack.rows(
                    "SELECT person_id, day FROM funnel_progress FINAL WHERE project_id = {p:String} "
                    "AND funnel_id = {f:String} AND is_deleted = 0",
                    p=pid,
                    f=f,
                )
            )

        try:
            await stack.until(lambda e=attempts, f=progress: f() == e, timeout=15)
        except AssertionError:
            assert progress() == attempts, zone

        await api_answers_in_local_days(stack, project, zone, calls, expected)
        grafana_shows_local_days(stack, project.project_id, zone, expected)


def grafana_shows_local_days(
    stack: Stack, project_id: str, zone: str, expected: dict[date, tuple[int, ...]]
) -> None:
    """The site dashboard's daily activity over a time range of exactly the zone's 03-28 and
    03-29 (its first instant to the last before 03-30): those two local days, with their
    figures. The dashboard reads the zone from the project (its hidden `timezone` variable)."""
    board = dashboards()["site-overview.json"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    first, last = date(2026, 3, 28), date(2026, 3, 29)
    start, end = timezones.bounds(first, last, zone)
    grafana = Grafana(start, end - timedelta(seconds=1), {"project_id": project_id})
    database = stack.settings.clickhouse_database
    assert run(stack, grafana.expand(variables["timezone"]["query"], database))[1] == [(zone,)]
    grafana.variables["timezone"] = zone
    (panel,) = [p for p in panels(board) if p["title"] == "Daily activity"]
    names, rows = run(stack, grafana.expand(panel["targets"][0]["rawSql"], database))
    shown = {r[0]: tuple(r[1:]) for r in rows}
    zero = (0, 0, 0, 0, 0)
    assert shown == {d: tuple(expected.get(d, zero)[i] for i in (0, 1, 2, 3)) for d in (first, last)}, (
        zone,
        names,
    )


def test_python_and_clickhouse_agree_on_every_local_day(database: Client) -> None:
    """Every 15 minutes over both daylight-saving switches of 2026, and the first instant of
    the switch days and the instant before: ClickHouse's toDate(instant, zone) is day_of's, in
    zones with half- and three-quarter-hour offsets and half-hour daylight saving too."""
    for name in (*ZONES, "Australia/Lord_Howe", "Pacific/Chatham", "Asia/Kathmandu"):
        agree(database, name)


def agree(database: Client, name: str) -> None:
    instants = [at("2026-03-01T00:00:00") + timedelta(minutes=15 * i) for i in range(96 * 40)]
    instants += [at("2026-10-20T00:00:00") + timedelta(minutes=15 * i) for i in range(96 * 20)]
    for day in (date(2026, 3, 29), date(2026, 4, 5), date(2026, 10, 25), date(2026, 11, 1)):
        start = timezones.start_of(day, name)
        instants += [start, start - timedelta(milliseconds=1)]
    millis = ",".join(str(int(i.timestamp() * 1000)) for i in instants)
    sql = (
        "SELECT toDate(fromUnixTimestamp64Milli(toInt64(m), 'UTC'), {tz:String}) "
        f"FROM (SELECT arrayJoin([{millis}]) AS m)"
    )
    clickhouse = [d for (d,) in database.query(sql, parameters={"tz": name}).result_rows]
    assert clickhouse == [timezones.day_of(i, name) for i in instants], name


async def api_answers_in_local_days(
    stack: Stack, project: Any, zone: str, calls: list[dict[str, Any]], expected: dict[date, tuple[int, ...]]
) -> None:
    """The API, at the fixed clock NOW, answers in the project's days: the activity chart's days,
    this week's new users, a breakdown of one local day, a funnel's days, the sessions export."""
    if stack.api_server is None:
        await stack.start_api(clock=lambda: NOW)
    async with httpx.AsyncClient(
        base_url=f"{stack.api_url}/api/projects/{project.project_id}",
        headers={"Authorization": f"Bearer {project.read_key}"},
        timeout=30,
    ) as api:

        async def get(path: str) -> Any:
            response = await api.get(path)
            assert response.status_code == 200, response.text
            return response.json()

        today = timezones.today(NOW, zone)
        days = (await get("activity?days=366"))["days"]
        assert days[-1]["day"] == today.isoformat() and len(days) == 366
        figures = ("active_users", "new_users", "sessions", "page_views", "events")
        shown = {date.fromisoformat(d["day"]): tuple(d[f] for f in figures) for d in days}
        assert {d: f for d, f in shown.items() if any(f)} == expected, zone

        metrics = (await get("metrics"))["metrics"]
        assert (metrics["new_this_week"]["value"], metrics["new_this_week"]["previous"]) == (1, 1), zone
        assert metrics["total_users"]["value"] - metrics["total_users"]["previous"] == 1

        day = date(2026, 3, 29)  # Amsterdam's 23-hour day
        rows = (await get(f"breakdowns/countries?from={day}&to={day}"))["rows"]
        started = [v for v, s, _l, viewed in sessions(calls) if viewed and timezones.day_of(s, zone) == day]
        assert sum(r["sessions"] for r in rows) == len(started), zone

        # The sessions export's `days`: the sessions started since the start of the project's
        # day 6 days before today: w (10 minutes into it), not x (10 minutes before).
        response = await api.get("export/sessions.csv?days=7")
        assert response.status_code == 200, response.text
        exported = {line.split(",")[1] for line in response.text.splitlines()[1:]}  # anonymous_id
        assert exported == {"w"}, (zone, exported)


async def test_a_project_is_created_in_its_time_zone_and_an_unknown_zone_is_refused(stack: Stack) -> None:
    """POST /api/projects takes `timezone` (an IANA name; a 422 naming the field otherwise);
    GET /api/me and the listing say it."""
    await stack.start_api()
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": "Bearer test-admin"}, timeout=30
    ) as admin:
        for bad in ("Mars/Olympus", "+01:00", "europe/amsterdam", ""):
            refused = await admin.post("/api/projects", json={"name": "Shop", "timezone": bad})
            assert refused.status_code == 422, refused.text
            (detail,) = refused.json()["detail"]
            assert detail["loc"] == ["body", "timezone"] and "timezone" in detail["msg"], detail
        created = await admin.post("/api/projects", json={"name": "Shop", "timezone": "Asia/Kolkata"})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["timezone"] == "Asia/Kolkata"
        default = (await admin.post("/api/projects", json={"name": "Plain"})).json()
        assert default["timezone"] == "UTC"
        listed = {p["project_id"]: p["timezone"] for p in (await admin.get("/api/projects")).json()}
        assert listed[body["project_id"]] == "Asia/Kolkata" and listed[default["project_id"]] == "UTC"
        me = await admin.get("/api/me", headers={"Authorization": f"Bearer {body['read_key']}"})
        assert me.status_code == 200 and me.json()["timezone"] == "Asia/Kolkata", me.text


def test_the_cli_creates_a_project_in_its_time_zone(tmp_path: Path) -> None:
    created = run_cli(tmp_path, "projects", "create", "Shop", "--timezone", "Europe/Amsterdam", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["timezone"] == "Europe/Amsterdam"
    listed = run_cli(tmp_path, "projects", "list")
    assert "Europe/Amsterdam" in listed.stdout, listed.stdout
    refused = run_cli(tmp_path, "projects", "create", "Shop", "--timezone", "Mars/Olympus")
    assert refused.returncode == 2 and "timezone" in refused.stderr and "Mars/Olympus" in refused.stderr


#: What each day-keyed table holds for a project, as rows comparable across projects (no ids a
#: project makes up: sessions by visitor and day); zero rows left out (a recomputation writes
#: zeros where a day emptied, a fresh project has no row there). breakdown_daily is rolled up on
#: its own cadence: the API's breakdown of a settled day reads it (api_answers_in_local_days).
TABLES = {
    "daily_stats": "SELECT day, active_users, new_users, sessions, page_views, events, bounce_rate, "
    "avg_session_seconds FROM daily_stats FINAL WHERE project_id = {p:String} "
    "AND active_users + new_users + sessions + page_views + events > 0",
    "events_daily": "SELECT day, sum(page_views) AS v, sum(events) AS e FROM events_daily FINAL "
    "WHERE project_id = {p:String} GROUP BY day HAVING v + e > 0",
    "person_activity": "SELECT day, person_id FROM person_activity FINAL WHERE project_id = {p:String} "
    "AND is_deleted = 0",
    "person_activity_by": "SELECT day, filter, filter_value, person_id FROM person_activity_by FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "person_first_by": "SELECT filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days, "
    "recent_active FROM person_first_by FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "persons_first_day": "SELECT day, person_id FROM persons_first_day FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "sessions_daily": "SELECT day, anonymous_id, page_views, duration_ms FROM sessions_daily FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "breakdown_sessions": "SELECT day, anonymous_id, entry_path, exit_path, page_views "
    "FROM breakdown_sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0",
    "plan_sessions": "SELECT plan, day, anonymous_id, person_id, first_seen, page_views FROM plan_sessions FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "breakdown_pages": "SELECT day, anonymous_id, path, views, time_ms, bounced FROM breakdown_pages FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "plan_pages": "SELECT plan, day, anonymous_id, path, views, time_ms, bounced FROM plan_pages FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "churn_daily": "SELECT day, base, churned FROM churn_daily FINAL WHERE project_id = {p:String} "
    "AND base + churned > 0",
    "funnel_progress": "SELECT person_id, day, level FROM funnel_progress FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
    "funnel_counts": "SELECT level, day, persons FROM funnel_counts FINAL WHERE project_id = {p:String} "
    "AND persons > 0",
    "funnel_levels_by": "SELECT filter, filter_value, level, person_id, last_day, plan FROM funnel_levels_by FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0",
}


def tables_of(stack: Stack, project_id: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: sorted(stack.rows(sql, p=project_id)) for name, sql in TABLES.items()}


async def same_tables(stack: Stack, a: str, b: str) -> None:
    """Wait until two projects' day-keyed tables hold the same rows; else fail showing the
    tables that differ, each side's rows."""
    try:
        await stack.until(lambda: tables_of(stack, a) == tables_of(stack, b), timeout=30)
    except AssertionError:
        left, right = tables_of(stack, a), tables_of(stack, b)
        differ = [name for name in TABLES if left[name] != right[name]]
        assert {n: left[n] for n in differ} == {n: right[n] for n in differ}
        raise


async def test_a_project_moved_to_another_zone_is_recomputed_as_if_it_had_been_there(stack: Stack) -> None:
    """The test project (UTC) gets the hand-made events, then moves to Europe/Amsterdam (PATCH,
    admin): every day-keyed table becomes what a project created in Amsterdam with the same
    events holds, and an event sent after the move counts on top of the recomputed days."""
    zone = "Europe/Amsterdam"
    moved, fresh = stack.project, await stack.create_project("fresh", timezone=zone)
    steps = [{"event": "$page", "path": "/a"}, {"event": "$page", "path": "/b"}]
    for project in (moved, fresh):
        funnels.create_funnel(stack.client, project.project_id, "a to b", steps, 3600)
    calls = CALLS + this_week(zone)

    async def send(batch: list[dict[str, Any]]) -> None:
        for project in (moved, fresh):
            answer = await stack.post("/v1/batch", {"writeKey": project.write_key, "batch": batch})
            assert answer.status_code == 200 and answer.json()["accepted"] == len(batch), answer.text

    await send(calls)
    assert await stack.wait_count(2 * len(calls)) == 2 * len(calls)

    def daily(pid: str) -> dict[date, tuple[int, ...]]:
        return {d: tuple(f[:5]) for d, *f in stack.rows(TABLES["daily_stats"], p=pid)}

    await stack.until(lambda: daily(moved.project_id) == expected_daily(calls, "UTC"), timeout=30)
    await stack.until(lambda: daily(fresh.project_id) == expected_daily(calls, zone), timeout=30)
    assert daily(moved.project_id) != daily(fresh.project_id)  # the two zones' days differ here

    await stack.start_api(clock=lambda: NOW)

    async def recomputing() -> Any:
        """What every answer's pipeline says of the moved project's zone."""
        async with httpx.AsyncClient(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {moved.read_key}"}, timeout=30
        ) as api:
            answer = await api.get(f"/api/projects/{moved.project_id}/metrics")
        assert answer.status_code == 200, answer.text
        return answer.json()["pipeline"]["recomputing_timezone"]

    assert await recomputing() is None
    # With the aggregator stopped, the change waits: every answer says its days are recomputing.
    await stack.stop_sink()
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": "Bearer test-admin"}, timeout=30
    ) as admin:
        refused = await admin.patch(f"/api/projects/{moved.project_id}", json={"timezone": "Mars/Olympus"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "timezone"]
        missing = await admin.patch("/api/projects/p_nope", json={"timezone": zone})
        assert missing.status_code == 404, missing.text
        changed = await admin.patch(f"/api/projects/{moved.project_id}", json={"timezone": zone})
        assert changed.status_code == 200 and changed.json()["timezone"] == zone, changed.text

    # at once: the API that took the change forgot the read key's cached zone
    assert await recomputing() == zone
    # the live stream's polls read it with the pipeline's own statement
    polled = queries.polled_pipeline(stack.client, stack.topics.events, moved.project_id, NOW.date(), zone)
    assert polled["recomputing_timezone"] == zone
    stack.start_sink()

    def recorded() -> bool:
        return (moved.project_id, -1, zone) in stack.rows(
            "SELECT project_id, kafka_partition, timezone FROM project_zones FINAL"
        )

    await stack.until(recorded, timeout=60)
    await stack.until(
        lambda: (
            queries.polled_pipeline(stack.client, stack.topics.events, moved.project_id, NOW.date(), zone)[
                "recomputing_timezone"
            ]
            is None
        ),
        timeout=5,
    )

    async def says_done() -> bool:  # the API's answers, once its cached check expired
        return await recomputing() is None

    await stack.until(says_done, timeout=15)
    await same_tables(stack, moved.project_id, fresh.project_id)
    assert daily(moved.project_id) == expected_daily(calls, zone)

    # After the move, an event on a day both projects have counts on top of it, in the new zone.
    later = [page("v9", at("2026-03-29T22:30:00"), "/a")]  # Amsterdam's 03-30 00:30
    await send(later)
    calls += later
    await stack.until(lambda: daily(moved.project_id) == expected_daily(calls, zone), timeout=30)
    await same_tables(stack, moved.project_id, fresh.project_id)
    await api_answers_in_local_days(stack, moved, zone, calls, expected_daily(calls, zone))


def test_the_cli_changes_a_project_s_time_zone(tmp_path: Path) -> None:
    created = json.loads(run_cli(tmp_path, "projects", "create", "Shop", "--json").stdout)
    assert created["timezone"] == "UTC"
    changed = run_cli(tmp_path, "projects", "set-timezone", created["project_id"], "Asia/Kolkata", "--json")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)[0]["timezone"] == "Asia/Kolkata"
    listed = json.loads(run_cli(tmp_path, "projects", "list", "--json").stdout)
    assert [p["timezone"] for p in listed] == ["Asia/Kolkata"]
    for args, reason in (
        ((created["project_id"], "Mars/Olympus"), "Mars/Olympus"),
        (("p_nope", "UTC"), "no such project"),
    ):
        refused = run_cli(tmp_path, "projects", "set-timezone", *args)
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
