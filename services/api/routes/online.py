"""Who is online now: the list (GET online) and the same pushed as it changes (GET live, SSE).
Why the live stream polls ClickHouse: see services/api/live.py."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse

from services.api import queries
from services.api.deps import AUTH_RESPONSES, NowDep, PoolDep, ProjectDep, TopicDep
from services.api.live import PING_SECONDS, LiveHub
from services.api.models import ONLINE_USER, Online

router = APIRouter(prefix="/api/projects/{project_id}", tags=["live"], responses=AUTH_RESPONSES)

Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many users in the list")]


@router.get(
    "/online",
    response_model=Online,
    summary="Who is online now",
    description="Visitors whose last event (page view, heartbeat or custom event) is less than 5 "
    "minutes old: the count of all of them and the list, newest activity first. A visitor is "
    "stuck when on the same page for more than 5 minutes.",
)
async def get_online(
    scope: ProjectDep, pool: PoolDep, now: NowDep, topic: TopicDep, limit: Limit = 100
) -> Online:
    data, fresh = await asyncio.gather(
        pool.run(queries.online, scope.project_id, now, limit),
        pool.run(queries.pipeline, topic, scope.project_id, now.date()),
    )
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
    "Read it with fetch() and a ReadableStream so the Authorization header goes along.",
    responses={
        200: {
            "description": "the event stream; each event's data is an `Online` object",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": SSE_EXAMPLE}},
        }
    },
)
async def live(scope: ProjectDep, request: Request, limit: Limit = 100) -> EventSourceResponse:
    hub: LiveHub = request.app.state.live
    return EventSourceResponse(hub.stream(scope.project_id, limit), ping=PING_SECONDS)
