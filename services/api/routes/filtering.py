"""The filters every view takes (`?country=NL&page=/blog/*&segment=premium`), as one dependency:
the query parameters, their validation (a 422 naming the field and the reason), and the
Filters they make (services/api/filters.py, whose SQL narrows the view). The users list and its
export take every filter but `segment` (SessionFiltersDep): their own `segment` (which also
takes "all") is the same person condition, and keeps its name and values."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, status

from services.api.deps import NowDep
from services.api.filters import MAX_VALUE, SEGMENTS, Filters


def invalid(field: str, reason: str, message: str, given: Any) -> HTTPException:
    """A 422 in FastAPI's own shape: detail[0] names the field (loc) and the reason (type)."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"type": reason, "loc": ["query", field], "msg": message, "input": given}],
    )


FilterQ = Annotated[str | None, Query(max_length=MAX_VALUE)]
PathFilterQ = Annotated[
    str | None, Query(max_length=MAX_VALUE, description="an exact path, or a glob where * matches anything")
]


async def session_filters_of(
    now: NowDep,
    page: PathFilterQ = None,
    entry_page: PathFilterQ = None,
    exit_page: PathFilterQ = None,
    source: Annotated[str | None, Query(max_length=MAX_VALUE, description='"" is Direct / None')] = None,
    utm_source: FilterQ = None,
    utm_medium: FilterQ = None,
    utm_campaign: FilterQ = None,
    country: Annotated[
        str | None, Query(max_length=MAX_VALUE, description="ISO 3166-1 alpha-2, '' unknown")
    ] = None,
    device: Annotated[
        str | None, Query(max_length=MAX_VALUE, description="desktop, mobile, tablet, unknown")
    ] = None,
    browser: FilterQ = None,
    os: FilterQ = None,
    plan: Annotated[
        str | None,
        Query(max_length=MAX_VALUE, description="the visitor's person's current plan trait, '' none"),
    ] = None,
) -> Filters:
    """Every filter but `segment`: what the users list and its export take, whose own `segment`
    (with "all") is already the person's segment."""
    return Filters.parse(
        {
            "page": page,
            "entry_page": entry_page,
            "exit_page": exit_page,
            "source": source,
            "utm_source": utm_source,
            "utm_medium": utm_medium,
            "utm_campaign": utm_campaign,
            "country": country,
            "device": device,
            "browser": browser,
            "os": os,
            "plan": plan,
        },
        now,
    )


SessionFiltersDep = Annotated[Filters, Depends(session_filters_of)]


async def filters_of(
    given: SessionFiltersDep,
    segment: Annotated[
        str | None,
        Query(
            max_length=MAX_VALUE,
            description=f"the visitor's person's segment now, as on the users list: {', '.join(SEGMENTS)}",
        ),
    ] = None,
) -> Filters:
    if segment is None:
        return given
    return with_segment(given, segment)


def with_segment(given: Filters, segment: str) -> Filters:
    """`given` and the person filter `segment` (a 422 unless one of SEGMENTS)."""
    if segment not in SEGMENTS:
        raise invalid("segment", "unknown_segment", f"segment must be one of {', '.join(SEGMENTS)}", segment)
    return Filters.parse({**given.values, "segment": segment}, given.now)


FiltersDep = Annotated[Filters, Depends(filters_of)]
