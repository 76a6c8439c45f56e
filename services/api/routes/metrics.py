"""Metric cards (total users, online now, new this week, churn rate) and the activity chart."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api import activity, people, queries
from services.api.deps import (
    AUTH_RESPONSES,
    ClickHousePool,
    NowDep,
    PoolDep,
    ProjectDep,
    RolledDaysDep,
    TopicDep,
)
from services.api.filters import Filters
from services.api.models import Activity, Metrics
from services.api.routes.filtering import FiltersDep
from werkstroom import timezones

NO_FILTERS = Filters()
router = APIRouter(prefix="/api/projects/{project_id}", tags=["metrics"], responses=AUTH_RESPONSES)


async def metric_cards(
    pool: ClickHousePool,
    project_id: str,
    now: datetime,
    filters: Filters = NO_FILTERS,
    zone: str = timezones.DEFAULT,
) -> dict[str, Any]:
    """The four cards' reads run concurrently, each on a pooled client; without filters, the
    queries of services.api.queries, with them services.api.people's (with a filter set of
    Filters.first_by, the persons' and churn's figures in one read). Days are the project's local
    days (its time `zone`)."""
    today = timezones.today(now, zone)
    online = (
        pool.run(queries.online_count, project_id, now, filters.online(today)),
        pool.run(people.online_week_ago, project_id, now, filters, zone),
    )
    if filters.first_by() is not None:  # the persons' figures and churn's in one read
        (persons, churn), online_now, online_before = await asyncio.gather(
            pool.run(people.rolled_cards, project_id, now, filters, zone), *online
        )
    else:
        persons, online_now, online_before, churn = await asyncio.gather(
            pool.run(people.persons_counts, project_id, now, filters, zone),
            *online,
            pool.run(people.churn_counts, project_id, now, filters, zone),
        )
    return queries.metric_cards(persons, online_now, online_before, churn)


#: What the cards are under filters: the route's description and the CSV's.
FILTERED_METRICS = (
    "Filters (as on the breakdowns) narrow each card to the persons with a matching session "
    "(a session with a page view, under the project's day it starts on, matching as the breakdowns "
    "match; its person: the visitor's person now, else the visitor): total_users: the persons "
    "with a matching session by today (a week earlier: by that day); new_this_week: those with "
    "a matching session this week and first seen this week (earlier: both in the 7 days "
    "before); online_now: the visitors online whose current session matches (as GET online); "
    "its previous: under one filter on an entry attribute, the count the aggregator recorded "
    "for its value in the minute nearest a week ago (within 2 minutes), else the visitors with a "
    "matching session spanning the moment a week ago; churn_rate: of the persons with a matching session "
    "7 to 13 days ago, the percentage with no activity at all in the last 7 days (a week "
    "earlier: the same, shifted)."
)

Days = Annotated[
    int, Query(ge=1, le=366, description="how many of the project's days (its time zone's), ending today")
]


@router.get(
    "/metrics",
    response_model=Metrics,
    summary="Total users, online now, new this week and churn rate, with week-over-week trends",
    description="Each metric has its value now, the value one week earlier and the trend "
    "round((value - previous) / previous * 100, 1), null when previous is 0. "
    "Days are the project's (local days of its time zone); this week is today and the 6 days before. "
    "total_users: persons first seen by today (a week earlier: by the same day a week ago); "
    "new_this_week: first seen this week (earlier: the 7 days before); "
    "online_now: visitors with an event in the last 5 minutes (a week earlier: the count the "
    "aggregator recorded that minute, or, without a record, visitors with a session spanning "
    "that moment); churn_rate: of the persons active 7 to 13 days ago, the percentage with no "
    f"activity in the last 7 days (a week earlier: the same, shifted). {FILTERED_METRICS} "
    "Definitions: docs/definitions.md.",
)
async def get_metrics(
    scope: ProjectDep, pool: PoolDep, now: NowDep, topic: TopicDep, filters: FiltersDep
) -> Metrics:
    data, fresh = await asyncio.gather(
        metric_cards(pool, scope.project_id, now, filters, scope.timezone),
        scope.pipeline(pool, topic, now),
    )
    return Metrics.model_validate(
        {"as_of": now, "pipeline": fresh, "filters": dict(filters.values), "metrics": data}
    )


#: What the activity chart's figures are under filters: the route's description and the CSV's.
FILTERED_ACTIVITY = (
    "Filters (as on the breakdowns: page, entry_page, exit_page, source, utm_source, utm_medium, "
    "utm_campaign, country, device, browser, os, plan, segment) narrow each day to the matching "
    "sessions that start on it (sessions with a page view, attributed to their entry page view): "
    "sessions, their page_views, bounce_rate (the share with one page view), "
    "avg_session_seconds; active_users: the distinct persons of those sessions (a visitor's "
    "person now, else the visitor); new_users: those of them first seen that day; events: their "
    "page views (a session's other events are not counted by day under filters); bots: the "
    "day's bots, unfiltered (bots are not sessions)."
)


@router.get(
    "/activity",
    response_model=Activity,
    summary="Daily active users, new users, sessions, page views and events",
    description="Exactly `days` entries, oldest first, ending today (the project's day, in its "
    "time zone); days without traffic are zeros. Without filters, from the aggregator's daily "
    "statistics (event time). "
    f"{FILTERED_ACTIVITY} Definitions: docs/definitions.md.",
)
async def get_activity(
    scope: ProjectDep,
    pool: PoolDep,
    rolled_days: RolledDaysDep,
    now: NowDep,
    topic: TopicDep,
    filters: FiltersDep,
    days: Days = 30,
) -> Activity:
    data, fresh = await asyncio.gather(
        pool.run(
            activity.activity, scope.project_id, scope.today(now), days, filters, scope.timezone, rolled_days
        ),
        scope.pipeline(pool, topic, now),
    )
    return Activity.model_validate(
        {"as_of": now, "pipeline": fresh, "filters": dict(filters.values), "days": data}
    )
