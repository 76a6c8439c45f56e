"""Funnels, person activity days and the aggregator's status, through the real path (HTTP ->
ingest -> Kafka -> aggregator -> ClickHouse), cross-checked with ClickHouse's own windowFunnel
over the raw `events` table."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.api.routes.funnels import report_counts
from tests.integration.stack import Stack
from tests.integration.test_aggregator import FUNNEL_LEVELS_BY, funnel_levels_by_agree, send_all
from werkstroom import churn, funnels
from werkstroom.demo import BOT, simulate

pytestmark = pytest.mark.integration

A = [{"event": "$page", "path": "/pricing"}, {"event": "Button Clicked"}, {"event": "Plan Selected"}]
B = [
    {"event": "$page", "path": "/blog*"},
    {"event": "$page", "path": "/signup"},
    {"event": "$page", "path": "/c*"},
]


def window_funnel(stack: Stack, funnel: funnels.Funnel, since: date) -> list[int]:
    """Persons reaching each step, by windowFunnel over raw events (an independent computation:
    no visitor_events, no progress rows, no Python funnel code). A person's events are those of
    the ids it browsed with, of its own id (what a server sent with only its user id), and of
    the ids mapped to it directly or through one other id (the chains these tests make)."""
    params: dict[str, Any] = {"p": funnel.project_id, "since": since, "w": funnel.window_seconds * 1000}
    conditions = []
    for k, step in enumerate(funnel.steps):
        params[f"e{k}"], params[f"l{k}"] = step.event, funnels.like_pattern(step.path or "*")
        conditions.append(f"e.event = {{e{k}:String}} AND e.path LIKE {{l{k}:String}}")
    reached = dict(
        stack.rows(
            "WITH"
            "  live AS (SELECT person_id, anonymous_ids FROM persons FINAL"
            "           WHERE project_id = {p:String} AND is_deleted = 0),"
            "  latest AS (SELECT distinct_id, argMax(person_id, version) AS person_id"
            "             FROM person_distinct_ids WHERE project_id = {p:String} GROUP BY distinct_id),"
            "  members AS ("
            "    SELECT DISTINCT person_id, distinct_id FROM ("
            "      SELECT person_id, arrayJoin(arrayPushBack(anonymous_ids, person_id)) AS distinct_id FROM live"
            "      UNION ALL SELECT person_id, distinct_id FROM latest"
            "      UNION ALL SELECT m2.person_id, m1.distinct_id"
            "                FROM latest AS m1 INNER JOIN latest AS m2 ON m2.distinct_id = m1.person_id"
            "    ) WHERE person_id IN (SELECT person_id FROM live))"
            "SELECT level, count() FROM ("
            "  SELECT m.person_id, windowFunnel({w:UInt64})(toUInt64(toUnixTimestamp64Milli(e.timestamp)), "
            + ", ".join(conditions)
            + ") AS level"
            "  FROM events AS e FINAL"
            "  INNER JOIN members AS m ON m.distinct_id = if(e.anonymous_id != '', e.anonymous_id, e.user_id)"
            "  WHERE e.project_id = {p:String} AND toDate(e.timestamp) >= {since:Date}"
            "  GROUP BY m.person_id"
            ") GROUP BY level",
            **params,
        )
    )
    return [sum(n for lvl, n in reached.items() if lvl >= k) for k in range(1, len(funnel.steps) + 1)]


async def test_funnels_kept_live_and_back_filled_equal_window_funnel(stack: Stack) -> None:
    pid, key = stack.project.project_id, stack.project.write_key
    other = await stack.create_project("Other site")
    live = funnels.create_funnel(stack.client, pid, "Pricing to plan", A, 1800)  # before the traffic
    mirror = funnels.create_funnel(stack.client, other.project_id, "Same steps elsewhere", A, 1800)
    sim = simulate({pid: key, other.project_id: other.write_key}, visitors=70, seed=5, days=4)
    accepted = await send_all(stack, key, sim.calls[key])
    accepted += await send_all(stack, other.write_key, sim.calls[other.write_key])
    assert await stack.wait_count(accepted) == accepted
    today = datetime.now(UTC).date()

    def consistent() -> bool:
        return all(
            report_counts(stack.client, f, 5, today) == window_funnel(stack, f, today - timedelta(days=4))
            for f in (live, mirror)
        )

    await stack.until(consistent, timeout=30)
    back_filled = funnels.create_funnel(stack.client, pid, "Blog to checkout", B)  # after the traffic
    # The aggregator back-fills it (the worker holding partition 0: this one) and says so.
    await stack.until(lambda: funnels.backfilled(stack.client, pid, [back_filled.funnel_id]), timeout=20)
    for funnel in (live, mirror, back_filled):
        counts = []
        for days in range(1, 6):
            since = today - timedelta(days=days - 1)

            def agree(f: funnels.Funnel = funnel, n: int = days, d: date = since) -> list[int] | None:
                got = report_counts(stack.client, f, n, today)
                return got if got == window_funnel(stack, f, d) else None

            counts.append(await stack.until(agree, timeout=15))  # the last refreshes may still land
        assert counts[-1][0] > counts[-1][-1] > 0, (funnel.name, counts)  # not trivially equal

    # Each person's levels under its values (funnel_levels_by, what a filtered report reads):
    # kept live, and written whole at the end of the back-fill, for each of the three funnels.
    await stack.until(lambda: funnel_levels_by_agree(stack), timeout=15)
    held = {r[1] for r in stack.rows(FUNNEL_LEVELS_BY)}
    assert held == {live.funnel_id, mirror.funnel_id, back_filled.funnel_id}

    # Isolation: the other project's funnel counts only its own persons.
    def persons(project_id: str) -> set[str]:
        sql = "SELECT person_id FROM persons FINAL WHERE project_id = {p:String}"
        return {r[0] for r in stack.rows(sql, p=project_id)}

    def progressed(funnel: funnels.Funnel) -> set[str]:
        sql = "SELECT person_id FROM funnel_progress FINAL WHERE funnel_id = {f:String} AND is_deleted = 0"
        return {r[0] for r in stack.rows(sql, f=funnel.funnel_id)}

    assert progressed(live) <= persons(pid) and progressed(mirror) <= persons(other.project_id)
    assert not progressed(live) & progressed(mirror)

    # Deleting hides the funnel; an unknown id is reported as such.
    assert funnels.delete_funnel(stack.client, pid, back_filled.funnel_id)
    assert [f.funnel_id for f in funnels.list_funnels(stack.client, pid)] == [live.funnel_id]
    assert not funnels.delete_funnel(stack.client, other.project_id, live.funnel_id)


async def test_server_side_calls_of_a_person_count_in_its_funnels(stack: Stack) -> None:
    """A step a server sends with only the user id (a server-side SDK's track) counts for the
    person who browsed and identified as that user, live and back-filled, also when an alias
    later gave that person another id; an id with only server-side calls is not a person, and
    order within the window still holds."""
    pid, key = stack.project.project_id, stack.project.write_key
    steps = [{"event": "$page", "path": "/pricing"}, {"event": "Subscription Started"}]
    live = funnels.create_funnel(stack.client, pid, "Pricing to subscription", steps, 3600)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    server = {"library": {"name": "analytics-python", "version": "2.3.0"}}
    counter = 0

    def call(at: timedelta, **fields: Any) -> dict[str, Any]:
        nonlocal counter
        counter += 1
        browser = {"userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}
        return {
            "messageId": f"srv-{counter}",
            "timestamp": (t0 + at).isoformat().replace("+00:00", "Z"),
            "context": browser if "anonymousId" in fields else server,
            **fields,
        }

    def pricing(anonymous_id: str, at: timedelta) -> dict[str, Any]:
        props = {"path": "/pricing", "url": "https://ex.com/pricing"}
        return call(at, type="page", anonymousId=anonymous_id, properties=props)

    def subscribed(user_id: str, at: timedelta) -> dict[str, Any]:
        return call(at, type="track", userId=user_id, event="Subscription Started")

    def identify(anonymous_id: str, user_id: str, at: timedelta) -> dict[str, Any]:
        return call(at, type="identify", anonymousId=anonymous_id, userId=user_id)

    minute = timedelta(minutes=1)
    calls = [
        # Browses, identifies, and the server records the subscription: both steps.
        pricing("anon-s1", 0 * minute),
        identify("anon-s1", "user-s1", 1 * minute),
        subscribed("user-s1", 5 * minute),
        # Browses only: step 1.
        pricing("anon-s2", 0 * minute),
        # Subscribed (server) before seeing the pricing page: step 1 only.
        subscribed("user-s4", 0 * minute),
        pricing("anon-s4", 2 * minute),
        identify("anon-s4", "user-s4", 3 * minute),
        # Subscribed (server) outside the window: step 1 only.
        pricing("anon-s5", 0 * minute),
        identify("anon-s5", "user-s5", 1 * minute),
        subscribed("user-s5", 61 * minute),
        # Never browsed: no person, no funnel progress.
        subscribed("user-s3", 5 * minute),
        # Subscribed (server) as user-s6, which an alias later made acct-s6: both steps.
        pricing("anon-s6", 0 * minute),
        identify("anon-s6", "user-s6", 1 * minute),
        subscribed("user-s6", 5 * minute),
        call(10 * minute, type="alias", previousId="user-s6", userId="acct-s6"),
    ]
    accepted = await send_all(stack, key, calls)
    assert accepted == len(calls)
    assert await stack.wait_count(accepted) == accepted
    today = datetime.now(UTC).date()
    since = t0.date()
    days = (today - since).days + 1
    expected = [5, 2]

    def reported(f: funnels.Funnel) -> list[int]:
        return report_counts(stack.client, f, days, today)

    await stack.until(lambda: reported(live) == expected, timeout=20)
    assert window_funnel(stack, live, since) == expected  # the independent computation agrees
    progressed = stack.rows(
        "SELECT person_id, max(level) FROM funnel_progress FINAL WHERE funnel_id = {f:String} "
        "AND is_deleted = 0 GROUP BY person_id ORDER BY person_id",
        f=live.funnel_id,
    )
    assert progressed == [("acct-s6", 2), ("anon-s2", 1), ("user-s1", 2), ("user-s4", 1), ("user-s5", 1)]
    back_filled = funnels.create_funnel(stack.client, pid, "Same, back-filled", steps, 3600)
    await stack.until(lambda: funnels.backfilled(stack.client, pid, [back_filled.funnel_id]), timeout=20)
    assert reported(back_filled) == expected


async def test_person_activity_days_and_aggregator_status(stack: Stack) -> None:
    pid, key = stack.project.project_id, stack.project.write_key
    sim = simulate({pid: key}, visitors=30, seed=13, days=5)
    accepted = await send_all(stack, key, sim.calls[key])
    assert await stack.wait_count(accepted) == accepted

    expected: set[tuple[date, str]] = set()
    for s in sim.sessions:
        person = sim.identified.get((pid, s.anonymous_id), s.anonymous_id)
        day = s.start.date()
        while day <= s.last.date():
            expected.add((day, person))
            day += timedelta(days=1)
    assert not any(c["context"]["userAgent"] == BOT and c.get("userId") for c in sim.calls[key])

    def activity() -> set[tuple[date, str]]:
        rows = stack.rows(
            "SELECT day, person_id FROM person_activity FINAL WHERE project_id = {p:String} AND is_deleted = 0",
            p=pid,
        )
        return {(d, p) for d, p in rows}

    await stack.until(lambda: activity() == expected, timeout=20)
    # An identified visitor's days moved to the user: no day is left under the anonymous id.
    identified = {a for (_p, a) in sim.identified}
    assert identified and not {p for _d, p in activity()} & identified

    newest = max(datetime.fromisoformat(c["timestamp"].replace("Z", "+00:00")) for c in sim.calls[key])
    newest = newest.replace(microsecond=newest.microsecond // 1000 * 1000)

    def status() -> list[tuple[Any, ...]]:
        sql = (
            "SELECT partition, last_write_at, last_event_at, lag FROM aggregator_status FINAL "
            "WHERE topic = {t:String} ORDER BY partition"
        )
        return stack.rows(sql, t=stack.settings.topic_events)

    def newest_written() -> datetime | None:
        times = [r[2].replace(tzinfo=UTC) for r in status() if r[2] is not None]
        return max(times) if times else None

    await stack.until(lambda: newest_written() == newest)
    assert [r[0] for r in status()] == list(range(stack.settings.topic_partitions))
    await stack.until(
        lambda: (
            stack.scalar(
                "SELECT sum(lag) FROM aggregator_status FINAL WHERE topic = {t:String}",
                t=stack.settings.topic_events,
            )
            == 0
        )
    )
    # Idle, the status keeps being written: a quiet site is not a stalled pipeline.
    first = stack.scalar(
        "SELECT max(version) FROM aggregator_status WHERE topic = {t:String}", t=stack.settings.topic_events
    )
    await stack.until(
        lambda: (
            stack.scalar(
                "SELECT max(version) FROM aggregator_status WHERE topic = {t:String}",
                t=stack.settings.topic_events,
            )
            > first
        ),
        timeout=10,
    )


async def test_churn_per_day_and_online_history_are_kept(stack: Stack) -> None:
    pid, key = stack.project.project_id, stack.project.write_key
    sim = simulate({pid: key}, visitors=40, seed=17, days=20)
    live = [
        {"type": "page", "anonymousId": f"now-{i}", "messageId": f"now-{i}", "properties": {"path": "/"}}
        for i in range(3)
    ]
    accepted = await send_all(stack, key, sim.calls[key] + live)
    assert await stack.wait_count(accepted) == accepted
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=i) for i in range(21)]

    def stored() -> dict[date, tuple[int, int]]:
        sql = "SELECT day, base, churned FROM churn_daily FINAL WHERE project_id = {p:String}"
        return {d: (b, c) for d, b, c in stack.rows(sql, p=pid)}

    def agree() -> bool:
        rows = stored()
        return all(
            rows.get(d, (0, 0)) == computed for d, computed in churn.counts(stack.client, pid, days).items()
        )

    await stack.until(agree, timeout=20)
    assert any(base > churned > 0 for base, churned in stored().values())  # not trivially zero

    def recorded() -> list[int]:
        sql = "SELECT online FROM online_history FINAL WHERE project_id = {p:String} ORDER BY minute"
        return [r[0] for r in stack.rows(sql, p=pid)]

    await stack.until(lambda: recorded() and recorded()[-1] == 3)
