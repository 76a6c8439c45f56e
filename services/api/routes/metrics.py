"""Metric cards (total users, online now, new this week, churn rate) and the activity chart."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api import queries
from services.api.deps import AUTH_RESPONSES, ClickHousePool, NowDep, PoolDep, ProjectDep, TopicDep
from services.api.models import Activity, Metrics

router = APIRouter(prefix="/api/projects/{project_id}", tags=["metrics"], responses=AUTH_RESPONSES)


async def metric_cards(pool: ClickHousePool, project_id: str, now: datetime) -> dict[str, Any]:
    """The four cards' reads run concurrently, each on a pooled client."""
    persons, online_now, online_before, churn = await asyncio.gather(
        pool.run(queries.persons_counts, project_id, now),
        pool.run(queries.online_count, project_id, now),
        pool.run(queries.online_week_ago, project_id, now),
        pool.run(queries.churn_counts, project_id, now),
    )
    return queries.metric_cards(persons, online_now, online_before, churn)


Days = Annotated[int, Query(ge=1, le=366, description="how many UTC days, ending today")]


@router.get(
    "/metrics",
    response_model=Metrics,
    summary="Total users, online now, new this week and churn rate, with week-over-week trends",
    description="Each metric has its value now, the value one week earlier and the trend "
    "round((value - previous) / previous * 100, 1), null when previous is 0. "
    "Weeks are UTC days: this week is today and the 6 days before. "
    "total_users: persons first seen by today (a week earlier: by the same day a week ago); "
    "new_this_week: first seen this week (earlier: the 7 days before); "
    "online_now: visitors with an event in the last 5 minutes (a week earlier: the count the "
    "aggregator recorded that minute, or, without a record, visitors with a session spanning "
    "that moment); churn_rate: of the persons active 7 to 13 days ago, the percentage with no "
    "activity in the last 7 days (a week earlier: the same, shifted).",
)
async def get_metrics(scope: ProjectDep, pool: PoolDep, now: NowDep, topic: TopicDep) -> Metrics:
    data, fresh = await asyncio.gather(
        metric_cards(pool, scope.project_id, now),
        pool.run(queries.pipeline, topic, scope.project_id, now.date()),
    )
    return Metrics.model_validate({"as_of": now, "pipeline": fresh, "metrics": data})


@router.get(
    "/activity",
    response_model=Activity,
    summary="Daily active users, new users, sessions, page views and events",
    description="Exactly `days` entries, oldest first, ending today (UTC); days without "
    "traffic are zeros. From the aggregator's daily statistics (event time).",
)
async def get_activity(
    scope: ProjectDep, pool: PoolDep, now: NowDep, topic: TopicDep, days: Days = 30
) -> Activity:
    data, fresh = await asyncio.gather(
        pool.run(queries.activity, scope.project_id, now.date(), days),
        pool.run(queries.pipeline, topic, scope.project_id, now.date()),
    )
    return Activity.model_validate({"as_of": now, "pipeline": fresh, "days": data})
