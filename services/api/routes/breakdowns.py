"""Breakdowns: a project's pages, entry and exit pages, sources, campaigns, countries, devices,
browsers and OSes over a range of the project's days (local days of its time zone), sorted by
visitors, with the period before beside them, narrowed by filters (services/api/filters.py). The
queries are in services/api/breakdowns.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from services.api import breakdowns
from services.api.breakdowns import Dimension, Period
from services.api.deps import AUTH_RESPONSES, NowDep, PoolDep, ProjectDep, RolledDaysDep
from services.api.filters import Filters
from services.api.models import Breakdown
from services.api.routes.filtering import FiltersDep, invalid

router = APIRouter(prefix="/api/projects/{project_id}", tags=["breakdowns"], responses=AUTH_RESPONSES)


def period_of(start: date | None, end: date | None, today: date) -> Period:
    """The period asked for: by default the 30 days ending today (the project's); `from` alone runs to
    today, `to` alone covers the 30 days ending there. 422 when it ends before it starts, is
    longer than MAX_DAYS, or lies outside what a day column holds."""
    end = end or (today if start is None or start <= today else start)
    start = start or end - timedelta(days=breakdowns.DEFAULT_DAYS - 1)
    for field, day in (("from", start), ("to", end)):
        if not breakdowns.EARLIEST <= day <= breakdowns.LATEST:
            raise invalid(
                field,
                "out_of_range",
                f"{field} must lie between {breakdowns.EARLIEST} and {breakdowns.LATEST}",
                day.isoformat(),
            )
    if end < start:
        raise invalid("to", "to_before_from", "to must not be before from", end.isoformat())
    if (end - start).days + 1 > breakdowns.MAX_DAYS:
        raise invalid(
            "to", "range_too_long", f"a range covers at most {breakdowns.MAX_DAYS} days", end.isoformat()
        )
    return Period(start, end)


@dataclass(frozen=True)
class BreakdownArgs:
    """What a breakdown reads, whether answered as JSON or exported as CSV."""

    period: Period
    filters: Filters
    today: date  # the API's clock: the days before it may be read from their roll-up


async def breakdown_args(
    scope: ProjectDep,
    now: NowDep,
    filters: FiltersDep,
    start: Annotated[
        date | None,
        Query(alias="from", description="first day, the project's (default: 29 days before `to`)"),
    ] = None,
    end: Annotated[
        date | None, Query(alias="to", description="last day, the project's, included (default: its today)")
    ] = None,
) -> BreakdownArgs:
    today = scope.today(now)  # the project's: its days are local days of its time zone
    return BreakdownArgs(period_of(start, end, today), filters, today)


BreakdownArgsDep = Annotated[BreakdownArgs, Depends(breakdown_args)]


@router.get(
    "/breakdowns/{dimension}",
    response_model=Breakdown,
    summary="Pages, entry/exit pages, sources, campaigns, countries, devices, browsers or OSes by visitors",
    description="One page of the values of `dimension` in the period (the project's days "
    "`from`..`to`, local days of its time zone), "
    "sorted by visitors (desc) then value, each with the same figures for the period of equal "
    "length just before (`previous`, zeros when absent there). `total` counts the values in the "
    "period. Filters narrow the sessions counted: page (sessions that viewed a matching path; "
    'on pages, the matching paths), entry_page, exit_page (exact or with *), source ("" is '
    "Direct / None), utm_source, utm_medium, utm_campaign, country, device, browser, os; and "
    'by the person of the visitor now: plan (its plan trait, "" none) and segment (active, '
    "inactive, churned, premium, trial, as on the users list). "
    "Definitions: docs/definitions.md.",
)
async def get_breakdown(
    scope: ProjectDep,
    pool: PoolDep,
    rolled_days: RolledDaysDep,
    dimension: Dimension,
    args: BreakdownArgsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Breakdown:
    total, rows = await pool.run(
        breakdowns.breakdown,
        scope.project_id,
        dimension,
        args.period,
        args.filters,
        limit,
        offset,
        args.today,
        rolled_days,
    )
    return Breakdown.model_validate(answer(dimension, args, total, rows, limit, offset))


def answer(
    dimension: str, args: BreakdownArgs, total: int, rows: list[dict[str, Any]], limit: int, offset: int
) -> dict[str, Any]:
    previous = args.period.previous
    return {
        "dimension": dimension,
        "from": args.period.start,
        "to": args.period.end,
        "previous_from": previous.start,
        "previous_to": previous.end,
        "filters": dict(args.filters.values),
        "total": total,
        "limit": limit,
        "offset": offset,
        "rows": rows,
    }
