"""Persons: the segmented, searchable list (keyset-paginated), a profile, and its sessions."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from services.api import people, queries
from services.api.deps import AUTH_RESPONSES, NowDep, PoolDep, ProjectDep, TopicDep
from services.api.models import SegmentFilter, UserProfile, UserSessions, UsersPage
from services.api.routes.filtering import SessionFiltersDep

router = APIRouter(prefix="/api/projects/{project_id}", tags=["users"], responses=AUTH_RESPONSES)

MAX_Q = 200

SegmentQ = Annotated[
    SegmentFilter,
    Query(
        description="active: seen in the last 7 days; inactive: 7 to 30; churned: > 30; premium, trial: plan"
    ),
]
SearchQ = Annotated[
    str, Query(max_length=MAX_Q, description="case-insensitive substring of the person id or traits")
]
CursorQ = Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page")]


def parse_cursor(cursor: str | None) -> queries.Cursor | None:
    if not cursor:
        return None
    try:
        return queries.Cursor.decode(cursor)
    except queries.BadCursor as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"type": "value_error", "loc": ["query", "cursor"], "msg": str(exc), "input": cursor}],
        ) from None


#: What the filters do to the users list: the route's description and the CSV's.
FILTERED_USERS = (
    "Filters (those of the breakdowns but segment: page, entry_page, exit_page, source, "
    "utm_source, utm_medium, utm_campaign, country, device, browser, os, plan) keep the persons "
    "with at least one matching session on any day (a session with a page view, matching as "
    "the breakdowns match, of one of the person's visitors), AND-ed with `segment` and `q`. "
    "The list's `segment` is the person filter `segment` of the other views, and also takes "
    "`all` (no segment, the default)."
)


@router.get(
    "/users",
    response_model=UsersPage,
    summary="Persons, newest activity first, by segment, search and filters",
    description="Pages of at most `limit` persons ordered by last seen (desc) then person id; "
    "pass `next_cursor` as `cursor` for the next page, with the same segment, q and filters "
    f"(stable while data changes: keyset). {FILTERED_USERS} Definitions: docs/definitions.md.",
)
async def list_users(
    scope: ProjectDep,
    pool: PoolDep,
    now: NowDep,
    topic: TopicDep,
    filters: SessionFiltersDep,
    segment: SegmentQ = "all",
    q: SearchQ = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorQ = None,
) -> UsersPage:
    position = parse_cursor(cursor)
    narrowing = people.listed(filters, scope.timezone)
    (users, following), fresh = await asyncio.gather(
        pool.run(
            queries.users_page,
            scope.project_id,
            now,
            segment,
            q,
            limit,
            position,
            narrowing,
            people.members(filters),
        ),
        scope.pipeline(pool, topic, now),
    )
    return UsersPage.model_validate(
        {
            "as_of": now,
            "pipeline": fresh,
            "filters": dict(filters.values),
            "users": users,
            "next_cursor": following,
        }
    )


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail="no such user")


# Registered before the profile: person ids may contain "/", so both use the path convertor.
@router.get(
    "/users/{person_id:path}/sessions",
    response_model=UserSessions,
    summary="A person's most recent sessions",
    description="Newest first, with the pages visited, duration, device, and whether the session "
    "is still active (an event in the last 30 minutes) or completed.",
    responses={404: {"description": "no such user"}},
)
async def user_sessions(
    scope: ProjectDep,
    pool: PoolDep,
    now: NowDep,
    topic: TopicDep,
    person_id: str,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> UserSessions:
    sessions, fresh = await asyncio.gather(
        pool.run(queries.user_sessions, scope.project_id, person_id, now, limit),
        scope.pipeline(pool, topic, now),
    )
    if sessions is None:
        raise _not_found()
    return UserSessions.model_validate({"as_of": now, "pipeline": fresh, "sessions": sessions})


@router.get(
    "/users/{person_id:path}",
    response_model=UserProfile,
    summary="A person's profile: traits and the anonymous ids merged into them",
    responses={404: {"description": "no such user"}},
)
async def user_profile(
    scope: ProjectDep, pool: PoolDep, now: NowDep, topic: TopicDep, person_id: str
) -> UserProfile:
    profile, fresh = await asyncio.gather(
        pool.run(queries.user_profile, scope.project_id, person_id, now),
        scope.pipeline(pool, topic, now),
    )
    if profile is None:
        raise _not_found()
    return UserProfile.model_validate({"as_of": now, "pipeline": fresh, **profile})
