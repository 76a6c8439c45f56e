"""Who is online now: the list (GET online) and the same pushed as it changes (GET live, SSE),
both narrowed by the filters of every view (routes/filtering.py) to the visitors whose current
session matches. Why the live stream polls ClickHouse: see services/api/live.py."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse

from services.api import queries
from services.api.deps import AUTH_RESPONSES, NowDep, PoolDep, ProjectDep, TopicDep
from services.api.live import PING_SECONDS, LiveHub
from services.api.models import ONLINE_USER, Online
from services.api.routes.filtering import FiltersDep

router = APIRouter(prefix="/api/projects/{project_id}", tags=["live"], responses=AUTH_RESPONSES)

Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many users in the list")]
#: What the filters do to who is online, for the routes' descriptions (docs/definitions.md).
FILTERED = (
    "Filters (those of the breakdowns: page, entry_page, exit_page, source, utm_source, "
    "utm_medium, utm_campaign, country, device, browser, os, plan, segment) keep the visitors "
    "whose current session is one the breakdowns would count with them: `online` is then the "
    "count of those. A visitor whose session has no page view yet matches no filter. "
    "Definitions: docs/definitions.md."
)


@router.get(
    "/online",
    response_model=Online,
    summary="Who is online now",
    description="Visitors whose last event (page view, heartbeat or custom event) is less than 5 "
    "minutes old: the count of all of them and the list, newest activity first. A visitor is "
    f"stuck when on the same page for more than 5 minutes. {FILTERED}",
)
async def get_online(
    scope: ProjectDep, pool: PoolDep, now: NowDep, topic: TopicDep, filters: FiltersDep, limit: Limit = 100
) -> Online:
    rows, fresh = await asyncio.gather(
        pool.run(queries.online_rows, scope.project_id, now, limit, filters.online(scope.today(now))),
        scope.pipeline(pool, topic, now),
    )
    # The visitors' persons and last events are two reads of their own tables: side by side,
    # each on a client of its own (one after the other they made the answer's slowest third).
    persons, events = await asyncio.gather(
        pool.run(queries.online_persons, scope.project_id, rows),
        pool.run(queries.last_events, scope.project_id, rows),
    )
    data = queries.online_answer(rows, persons, events, now)
    return Online.model_validate({"as_of": now, "pipeline": fresh, **data})


SSE_EXAMPLE = (
    'event: online\r\ndata: {"as_of":"2026-11-25T12:00:00.000Z","pipeline":{...},"online":1,'
    f'"users":[{{"person_id":"{ONLINE_USER["person_id"]}",...}}]}}\r\n\r\n'
    ": ping - 2026-11-25 12:00:15\r\n\r\n"
)


@router.get(
    "/live",
    response_class=EventSourceResponse,
    summary="Online users, pushed as they change (Server-Sent Events)",
    description="A text/event-stream: an `online` event (data = the JSON of GET online) on "
    "connect and whenever the count or the list changes, and a comment ping every 15 s. "
    "Read it with fetch() and a ReadableStream so the Authorization header goes along. "
    f"{FILTERED} Another set of filters is another stream.",
    responses={
        200: {
            "description": "the event stream; each event's data is an `Online` object",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": SSE_EXAMPLE}},
        }
    },
)
async def live(
    scope: ProjectDep, request: Request, filters: FiltersDep, limit: Limit = 100
) -> EventSourceResponse:
    hub: LiveHub = request.app.state.live
    return EventSourceResponse(
        hub.stream(scope.project_id, limit, filters, scope.timezone), ping=PING_SECONDS
    )
