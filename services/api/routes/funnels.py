"""Funnels: define, list, delete, and the per-step report.

The model and the definitions are werkstroom/funnels.py's (shared with the aggregator and the
CLI). The aggregator keeps every person's progress current and back-fills a new funnel from the
events stored before it (services/aggregator/funnels.py); the report reads what it keeps,
`funnel_counts`, and says whether the back-fill is done (`backfilled`). Filters narrow the report
to the persons with a matching session in its days (services/api/funnel_report.py)."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from services.api.deps import AUTH_RESPONSES, NowDep, PoolDep, ProjectDep, TopicDep
from services.api.filters import Filters
from services.api.funnel_report import filtered_counts
from services.api.models import FunnelIn, FunnelList, FunnelOut, FunnelReport
from services.api.routes.filtering import FiltersDep
from werkstroom import funnels

router = APIRouter(prefix="/api/projects/{project_id}", tags=["funnels"], responses=AUTH_RESPONSES)

FunnelId = Annotated[str, "the funnel's id"]
NOT_FOUND = {404: {"description": "no such funnel"}}


def _out(funnel: funnels.Funnel, backfilled: bool) -> FunnelOut:
    return FunnelOut.model_validate({**funnel.as_dict(), "backfilled": backfilled})


def _listed(client: Any, project_id: str) -> list[FunnelOut]:
    found = funnels.list_funnels(client, project_id)
    done = funnels.backfilled(client, project_id, [f.funnel_id for f in found])
    return [_out(f, f.funnel_id in done) for f in found]


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="no such funnel")


@router.get("/funnels", response_model=FunnelList, summary="The project's funnels, oldest first")
async def list_funnels(scope: ProjectDep, pool: PoolDep) -> FunnelList:
    return FunnelList(funnels=await pool.run(_listed, scope.project_id))


@router.post(
    "/funnels",
    status_code=status.HTTP_201_CREATED,
    response_model=FunnelOut,
    summary="Create a funnel (its report covers the events already stored once `backfilled`)",
    description="2 to 8 steps, each an event name (page views are `$page`) and an optional path "
    "glob (`*` matches any run of characters); a person reaches step k by doing steps 1..k in "
    "order within `window_seconds` of step 1. The aggregator back-fills it from the events "
    "stored so far within seconds; until then `backfilled` is false in its report and listing.",
)
async def create_funnel(scope: ProjectDep, pool: PoolDep, body: FunnelIn) -> FunnelOut:
    steps = [s.model_dump() for s in body.steps]
    try:
        funnel = await pool.run(
            funnels.create_funnel, scope.project_id, body.name, steps, body.window_seconds
        )
    except funnels.FunnelError as exc:
        loc: list[Any] = ["body", *_field_path(exc.field)]
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"type": "value_error", "loc": loc, "msg": exc.reason}],
        ) from None
    return _out(funnel, backfilled=False)


def _field_path(field: str) -> list[Any]:
    """ "steps[1].event" -> ["steps", 1, "event"], as FastAPI reports locations."""
    out: list[Any] = []
    for part in field.replace("]", "").split("."):
        name, _, index = part.partition("[")
        out.append(name)
        if index.isdigit():
            out.append(int(index))
    return out


@router.delete(
    "/funnels/{funnel_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a funnel",
    responses=NOT_FOUND,
)
async def delete_funnel(scope: ProjectDep, pool: PoolDep, funnel_id: FunnelId) -> Response:
    if not await pool.run(funnels.delete_funnel, scope.project_id, funnel_id):
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def report_steps(funnel: funnels.Funnel, counts: list[int]) -> list[dict[str, Any]]:
    first = counts[0] if counts else 0
    out = []
    for index, (step, count) in enumerate(zip(funnel.steps, counts, strict=True)):
        previous = counts[index - 1] if index else None
        drop = None
        if previous:
            drop = round((previous - count) / previous * 100, 1)
        out.append(
            {
                "step": index + 1,
                "event": step.event,
                "path": step.path,
                "count": count,
                "conversion_pct": round(count / first * 100, 1) if first else None,
                "drop_off_pct": drop,
                "high_drop_off": drop is not None and drop > 50,
            }
        )
    return out


def report_counts(client: Any, funnel: funnels.Funnel, days: int, today: date) -> list[int]:
    """Persons who reached each step, counting attempts that started in the last `days` days
    (the project's days, today included): per level, the persons whose latest day reaching it is one of those
    days (`funnel_counts`, services/aggregator/funnels.py)."""
    since = today - timedelta(days=days - 1)
    reached = dict(
        client.query(
            "SELECT level, sum(persons) FROM funnel_counts FINAL "
            "WHERE project_id = {p:String} AND funnel_id = {f:String} AND day >= {since:Date} "
            "GROUP BY level",
            parameters={"p": funnel.project_id, "f": funnel.funnel_id, "since": since},
        ).result_rows
    )
    return [int(reached.get(k, 0)) for k in range(1, len(funnel.steps) + 1)]


def _report(client: Any, project_id: str, funnel_id: str, days: int, today: date, filters: Filters) -> Any:
    """The funnel, whether it is back-filled, and its counts over the `days` ending `today`
    (the project's day)."""
    funnel = funnels.get_funnel(client, project_id, funnel_id)
    if funnel is None:
        return None
    backfilled = bool(funnels.backfilled(client, project_id, [funnel_id]))
    if filters.values:
        return funnel, backfilled, filtered_counts(client, funnel, days, today, filters)
    return funnel, backfilled, report_counts(client, funnel, days, today)


#: What the filters do to a funnel's report: the route's description (docs/definitions.md).
FILTERED_FUNNEL = (
    "Filters (as on the breakdowns: page, entry_page, exit_page, source, utm_source, utm_medium, "
    "utm_campaign, country, device, browser, os, plan, segment) narrow the persons counted: a "
    "person counts at a step when they reached it as above and one of their visitors has a "
    "matching session (a session with a page view, attributed to its entry page view) that "
    "starts in the same days. The person's steps are all their own, also those done outside the "
    "matching sessions (a visitor's person now, else the visitor). A person whose only sessions "
    "in those days have no page view (server calls, screens) matches no filter."
)


@router.get(
    "/funnels/{funnel_id}",
    response_model=FunnelReport,
    summary="A funnel's report: per step the persons who reached it, conversion and drop-off",
    description="Counts persons whose attempts started in the last `days` days of the project's "
    "time zone (today "
    "included); conversion is from step 1, drop-off from the previous step; a drop-off above "
    f"50 % is flagged. {FILTERED_FUNNEL} Definitions: docs/definitions.md.",
    responses=NOT_FOUND,
)
async def funnel_report(
    scope: ProjectDep,
    pool: PoolDep,
    now: NowDep,
    topic: TopicDep,
    funnel_id: FunnelId,
    filters: FiltersDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> FunnelReport:
    found, fresh = await asyncio.gather(
        pool.run(_report, scope.project_id, funnel_id, days, scope.today(now), filters),
        scope.pipeline(pool, topic, now),
    )
    if found is None:
        raise _not_found()
    funnel, backfilled, counts = found
    return FunnelReport.model_validate(
        {
            "as_of": now,
            "pipeline": fresh,
            "funnel": {**funnel.as_dict(), "backfilled": backfilled},
            "filters": dict(filters.values),
            "days": days,
            "steps": report_steps(funnel, counts),
        }
    )
