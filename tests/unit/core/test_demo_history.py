"""The demo's history (werkstroom.demo.build_history) and the figures expected from it
(expected_figures): deterministic, and every dashboard view has something to show.
tests/e2e/test_demo.py checks the same figures against the API of a running pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ingest.enrich import analyse
from werkstroom.demo import (
    BROWSERS,
    CRAWLERS,
    FUNNEL_STEPS,
    RETURNING_SESSIONS,
    SEGMENTS,
    build_history,
    expected_figures,
)

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> datetime:
    return datetime.fromisoformat(moment.isoformat())


def when(call: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00"))


def test_the_same_seed_and_now_give_the_same_calls_another_seed_others() -> None:
    first = build_history(NOON, seed=3)
    assert build_history(NOON, seed=3).calls == first.calls
    assert build_history(NOON, seed=4).calls != first.calls
    # Message ids depend on "now": a second demo is not taken for the first one replayed.
    later = build_history(NOON + timedelta(minutes=1), seed=3)
    assert {c["messageId"] for c in later.calls}.isdisjoint(c["messageId"] for c in first.calls)


def test_calls_are_past_ordered_unique_and_spread_over_the_days() -> None:
    history = build_history(NOON, days=60)
    times = [when(c) for c in history.calls]
    assert times == sorted(times)
    assert max(times) <= NOON  # ingest takes nothing from the future
    assert NOON - timedelta(days=60) <= min(times) < NOON - timedelta(days=50)
    assert len({c["messageId"] for c in history.calls}) == len(history.calls)
    # Visits on most of the 60 UTC days, not bunched up on a few.
    days = {
        t.date() for t, c in zip(times, history.calls, strict=True) if c["anonymousId"].startswith("anon")
    }
    assert len(days) >= 45


def test_every_call_has_a_browser_user_agent_except_the_crawlers_ingest_files_as_bots() -> None:
    history = build_history(NOON)
    agents = {c["context"]["userAgent"] for c in history.calls}
    assert agents <= {*BROWSERS, *CRAWLERS}
    assert {analyse(a).device_type for a in BROWSERS} == {"desktop", "mobile", "tablet"}
    assert not any(analyse(a).is_bot for a in BROWSERS)
    assert all(analyse(a).is_bot for a in CRAWLERS)
    assert all(
        c["anonymousId"].startswith("crawler") for c in history.calls if c["context"]["userAgent"] in CRAWLERS
    )
    assert history.bot_calls > 0


def test_identified_visitors_carry_a_plan_trait() -> None:
    history = build_history(NOON)
    identifies = [c for c in history.calls if c["type"] == "identify"]
    assert {c["traits"]["plan"] for c in identifies} == {"premium", "trial", "free"}
    assert all(c["userId"] and "@" in c["traits"]["email"] for c in identifies)


@pytest.mark.parametrize("seed", [1, 7, 42])
@pytest.mark.parametrize(("visitors", "live"), [(20, 2), (150, 12), (400, 30)])
@pytest.mark.parametrize("now", [NOON, datetime(2026, 11, 25, 0, 3, tzinfo=UTC)])
def test_every_view_has_something_to_show(seed: int, visitors: int, live: int, now: datetime) -> None:
    history = build_history(now, visitors=visitors, live=live, seed=seed)
    figures = expected_figures(history.calls, now)
    assert figures.persons == figures.total_users == visitors
    assert all(figures.segments[s] > 0 for s in SEGMENTS), figures.segments
    assert sum(figures.segments[s] for s in ("active", "inactive", "churned")) == visitors
    assert figures.returning >= 2 and figures.most_sessions > RETURNING_SESSIONS
    assert len(figures.funnel) == len(FUNNEL_STEPS) and figures.funnel[0] > 0
    drops = figures.drop_offs()
    assert any(d is not None and d > 50 for d in drops), figures.funnel
    assert figures.online == live and figures.stuck == max(2, live // 4)
    assert figures.new_this_week > 0 and figures.churn_rate is not None
    assert figures.churn_rate > 0 or visitors < 100
    # The figures hold for a minute after "now": the demo reads them back within seconds.
    assert expected_figures(history.calls, now + timedelta(minutes=1)) == figures


def test_crawlers_come_today_once_the_day_is_long_enough() -> None:
    assert expected_figures(build_history(NOON).calls, NOON).bots_today > 0
    just_after_midnight = datetime(2026, 11, 25, 0, 2, tzinfo=UTC)
    history = build_history(just_after_midnight)
    assert history.bot_calls > 0 and expected_figures(history.calls, just_after_midnight).bots_today == 0


def test_a_cohort_gives_new_ids_for_the_same_visitors() -> None:
    plain, again = build_history(NOON), build_history(NOON, cohort="-x1")
    ids = {c["anonymousId"] for c in plain.calls} | {c.get("userId") for c in plain.calls}
    other = {c["anonymousId"] for c in again.calls} | {c.get("userId") for c in again.calls}
    assert ids & other == {None}
    assert len(again.calls) == len(plain.calls)


@pytest.mark.parametrize(
    "arguments",
    [{"visitors": 19}, {"days": 34}, {"live": 1}, {"visitors": 20, "live": 6}],
)
def test_too_small_a_demo_is_refused(arguments: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="the demo needs"):
        build_history(NOON, **arguments)


# -- expected_figures on calls made by hand: the definitions, one by one --------------------

UA = BROWSERS[0]


def page(anon: str, at: datetime, path: str = "/", user: str | None = None) -> dict[str, Any]:
    call = {
        "type": "page",
        "anonymousId": anon,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "properties": {"path": path},
        "context": {"userAgent": UA},
    }
    return call | ({"userId": user} if user else {})


def track(anon: str, at: datetime, event: str, ua: str = UA) -> dict[str, Any]:
    return {
        "type": "track",
        "anonymousId": anon,
        "event": event,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "context": {"userAgent": ua},
    }


def identify(anon: str, at: datetime, user: str, plan: str) -> dict[str, Any]:
    return {
        "type": "identify",
        "anonymousId": anon,
        "userId": user,
        "traits": {"plan": plan},
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "context": {"userAgent": UA},
    }


def test_sessions_split_after_30_minutes_and_identify_makes_one_person_of_two_visitors() -> None:
    t = NOON - timedelta(days=2)
    calls = [
        page("a", t),
        page("a", t + timedelta(minutes=30)),  # exactly 30 minutes: the same session
        page("a", t + timedelta(minutes=61)),  # 31 minutes later: a new one
        identify("a", t + timedelta(minutes=62), "u-1", "premium"),
        page("b", t + timedelta(hours=5)),  # the same user on another device
        identify("b", t + timedelta(hours=5, seconds=1), "u-1", "premium"),
    ]
    figures = expected_figures(calls, NOON)
    assert figures.persons == 1 and figures.segments["premium"] == 1
    assert figures.most_sessions == 3


def test_segments_follow_last_seen_and_plans_follow_the_trait() -> None:
    calls = [
        page("recent", NOON - timedelta(days=6, hours=23)),
        page("quiet", NOON - timedelta(days=7, minutes=1)),
        page("quieter", NOON - timedelta(days=29, hours=23)),
        page("gone", NOON - timedelta(days=30, minutes=1)),
        identify("gone", NOON - timedelta(days=30, minutes=1), "u-gone", "trial"),
    ]
    figures = expected_figures(calls, NOON)
    assert figures.segments == {"active": 1, "inactive": 2, "churned": 1, "premium": 0, "trial": 1}


def test_online_and_stuck_by_last_event_and_page_entered() -> None:
    calls = [
        page("stuck", NOON - timedelta(minutes=6)),
        track("stuck", NOON - timedelta(seconds=10), "$heartbeat"),
        page("reading", NOON - timedelta(minutes=4)),
        page("left", NOON - timedelta(minutes=6)),  # last event 6 minutes ago: offline
        track("bot", NOON - timedelta(seconds=5), "$heartbeat", CRAWLERS[0]),
    ]
    figures = expected_figures(calls, NOON)
    assert (figures.online, figures.stuck, figures.persons) == (2, 1, 3)
    assert figures.bots_today == 1


def test_the_funnel_counts_ordered_steps_of_attempts_in_the_last_30_days() -> None:
    recent, old = NOON - timedelta(days=3), NOON - timedelta(days=40)
    calls = [
        page("a", recent, "/pricing"),
        track("a", recent + timedelta(minutes=1), "Plan Selected"),
        track("a", recent + timedelta(minutes=2), "Order Completed"),
        page("b", recent, "/pricing"),
        track("b", recent - timedelta(minutes=1), "Plan Selected"),  # before pricing: not step 2
        page("c", old, "/pricing"),  # an attempt older than 30 days
        track("c", old + timedelta(minutes=1), "Plan Selected"),
        page("d", recent, "/blog"),
    ]
    figures = expected_figures(calls, NOON)
    assert figures.funnel == (2, 1, 1)
    assert figures.drop_offs() == [None, 50.0, 0.0]


def test_new_this_week_and_churn_in_utc_days() -> None:
    today = NOON.replace(hour=0)
    calls = [
        page("new", today - timedelta(days=6) + timedelta(minutes=1)),  # first seen 6 days ago: new
        page("older", today - timedelta(days=7) + timedelta(hours=23)),  # 7 days ago: not new
        page("back", today - timedelta(days=10)),
        page("back", today - timedelta(days=1)),  # base, came back: not churned
        page("lost", today - timedelta(days=13)),  # base, not back: churned
    ]
    figures = expected_figures(calls, NOON)
    assert figures.new_this_week == 1
    assert figures.churn_rate == round(2 / 3 * 100, 1)  # base: older, back, lost; churned: older, lost
