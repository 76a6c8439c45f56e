"""CSV exports: a header row, then rows streamed in chunks as ClickHouse produces them.

A large export (users, sessions) reads ClickHouse's result block by block on a client of its
own (query_row_block_stream) and writes each block as one chunk, so neither the table nor
the CSV is ever held whole in memory. Quoting is the csv module's (RFC 4180: fields with
commas, quotes or line breaks are quoted, quotes doubled; CRLF line ends). A text cell that a
spreadsheet could run as a formula gets a leading apostrophe, the usual defence against CSV
injection (see `neutralise`); numbers are written as they are.
"""

from __future__ import annotations

import asyncio
import csv
import io
import unicodedata
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from services.api import activity, breakdowns, people, queries
from services.api.breakdowns import Dimension, RolledDays
from services.api.deps import (
    AUTH_RESPONSES,
    ClickHousePool,
    NowDep,
    PoolDep,
    ProjectDep,
    ProjectScope,
    RolledDaysDep,
)
from services.api.filters import Filters
from services.api.models import SegmentFilter, iso
from services.api.routes.breakdowns import BreakdownArgs, BreakdownArgsDep
from services.api.routes.filtering import FiltersDep, SessionFiltersDep, invalid, with_segment
from services.api.routes.metrics import FILTERED_ACTIVITY, metric_cards
from services.api.routes.online import FILTERED
from services.api.routes.users import FILTERED_USERS, MAX_Q
from werkstroom import timezones
from werkstroom.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/api/projects/{project_id}", tags=["export"], responses=AUTH_RESPONSES)

Kind = Literal["users", "metrics", "sessions"]
#: What a spreadsheet reads as the start of a formula: = + - @, and their full-width forms,
#: which East Asian locales of Excel and LibreOffice may fold to the ASCII ones on input.
FORMULA = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")
#: A cell starting with one of these is neutralised whatever follows: spreadsheets (and the
#: parsers in between) strip or split on them, so what follows may become a cell's start.
BREAKS = ("\t", "\r", "\n")

ONLINE_HEADER = [
    "person_id",
    "anonymous_id",
    "user_id",
    "current_path",
    "current_url",
    "current_title",
    "time_on_page_seconds",
    "time_on_site_seconds",
    "device_type",
    "browser",
    "os",
    "stuck",
    "last_event_at",
    "page_entered_at",
    "session_id",
]
USERS_HEADER = [
    "person_id",
    "first_seen",
    "last_seen",
    "sessions",
    "page_views",
    "plan",
    "segment",
    "traits",
    "anonymous_ids",
]
METRICS_HEADER = ["metric", "value", "previous", "trend"]
SESSIONS_HEADER = [
    "session_id",
    "anonymous_id",
    "start_at",
    "last_event_at",
    "duration_seconds",
    "page_views",
    "events",
    "pages",
    "entry_path",
    "referrer",
    "device_type",
    "browser",
    "os",
    "active",
]


BREAKDOWN_HEADER = [
    "value",
    "visitors",
    "sessions",
    "page_views",
    "bounce_rate",
    "avg_time_on_page_s",
    "previous_visitors",
    "previous_sessions",
    "previous_page_views",
]
#: The most values a breakdown export holds (a site's pages: far fewer).
BREAKDOWN_EXPORT_MAX = 100_000


def cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(value, str):
        return neutralise(value)
    return value


def _blank(ch: str) -> bool:
    """What a spreadsheet skips before deciding a cell is a formula: white space (spaces,
    no-break and other Unicode spaces, line breaks), control and invisible format characters
    (zero-width space, byte-order mark, direction marks). Excel and LibreOffice trim some of
    these on import, and a visitor's text must not get past the check by starting with one."""
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf")


def neutralise(text: str) -> str:
    """`text` with a leading apostrophe when a spreadsheet could run it: its first character
    that is not blank (`_blank`) starts a formula, or it starts with a tab or a line break.
    Only text gets here (visitors' paths, titles, ids, traits): numbers are never prefixed, so
    a negative trend stays a number."""
    if text.startswith(BREAKS):
        return "'" + text
    for ch in text:
        if not _blank(ch):
            return "'" + text if ch in FORMULA else text
    return text


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return buffer.getvalue()


async def _blocks(pool: ClickHousePool, sql: str, params: dict[str, Any]) -> AsyncIterator[Sequence[Any]]:
    """ClickHouse's result, block by block, from a client of this export's own."""
    async with pool.dedicated() as client:
        stream = await asyncio.to_thread(client.query_row_block_stream, sql, parameters=params)
        async with stream:
            async for block in stream:
                yield block


def _filename(project_id: str, kind: str, now: datetime) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in project_id)
    return f"werkstroom-{safe}-{kind}-{now:%Y%m%d}.csv"


CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "text/csv", "content": {"text/csv": {"schema": {"type": "string"}}}}
}


# Before the route below, which would otherwise take "breakdown" as a kind and refuse it.
@router.get(
    "/export/breakdown.csv",
    summary="Download a breakdown as CSV",
    description="Every value of GET .../breakdowns/{dimension} for the same period and filters, "
    "in its order, with the previous period's counts in previous_* columns. The file is named "
    "werkstroom-<project>-breakdown-<YYYYMMDD>.csv.",
    response_class=StreamingResponse,
    responses=CSV_RESPONSES,
)
async def export_breakdown(
    scope: ProjectDep,
    pool: PoolDep,
    rolled_days: RolledDaysDep,
    now: NowDep,
    dimension: Dimension,
    breakdown: BreakdownArgsDep,
) -> StreamingResponse:
    body = _breakdown(pool, rolled_days, scope.project_id, dimension, breakdown)
    return await _download(body, scope.project_id, "breakdown", now)


# Before the route below too: the activity takes the breakdowns' filters, whose `segment` is
# not the users list's (that one also takes "all").
@router.get(
    "/export/activity.csv",
    summary="Download the activity chart as CSV",
    description="GET .../activity's days (default 30) for the same filters, one row per day, "
    f"oldest first. {FILTERED_ACTIVITY} The file is named "
    "werkstroom-<project>-activity-<YYYYMMDD>.csv.",
    response_class=StreamingResponse,
    responses=CSV_RESPONSES,
)
async def export_activity(
    scope: ProjectDep,
    pool: PoolDep,
    rolled_days: RolledDaysDep,
    now: NowDep,
    filters: FiltersDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> StreamingResponse:
    body = _activity(pool, rolled_days, scope, now, days, filters)
    return await _download(body, scope.project_id, "activity", now)


# Its own route (before the one below): the filters of every view take `segment` for the
# visitor's person, which the users export takes for its own list (with "all").
@router.get(
    "/export/online.csv",
    summary="Download who is online now as CSV",
    description="Every visitor of GET .../online (the same filters), newest activity first, one "
    f"row each. {FILTERED} The file is named werkstroom-<project>-online-<YYYYMMDD>.csv.",
    response_class=StreamingResponse,
    responses=CSV_RESPONSES,
)
async def export_online(
    scope: ProjectDep, pool: PoolDep, now: NowDep, filters: FiltersDep
) -> StreamingResponse:
    body = _online(pool, scope.project_id, now, filters.online(scope.today(now)))
    return await _download(body, scope.project_id, "online", now)


@router.get(
    "/export/{kind}.csv",
    summary="Download CSV (users, metrics or sessions)",
    description="A header row, then one row per item, streamed. users: the persons of GET "
    f"users for the same segment, q and filters. {FILTERED_USERS} metrics: GET metrics' cards "
    "for the same filters (`segment`, but for `all`, is their person filter). sessions: days "
    "(sessions started in the last `days` days of the project's time zone, default 30) and "
    "person_id (that person's "
    "sessions only); the filters are refused (422, `unfiltered_export`). The file is named "
    "werkstroom-<project>-<kind>-<YYYYMMDD>.csv. The activity's CSV: export/activity.csv; who "
    "is online: export/online.csv; a breakdown's: export/breakdown.csv.",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "text/csv",
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "metric,value,previous,trend\r\ntotal_users,120,100,20.0\r\n",
                }
            },
        },
        404: {"description": "no such user (sessions with person_id)"},
    },
)
async def export_csv(
    scope: ProjectDep,
    pool: PoolDep,
    now: NowDep,
    kind: Kind,
    filters: SessionFiltersDep,
    segment: SegmentFilter = "all",
    q: Annotated[str, Query(max_length=MAX_Q)] = "",
    days: Annotated[int, Query(ge=1, le=366)] = 30,
    person_id: Annotated[str | None, Query(max_length=1000)] = None,
) -> StreamingResponse:
    project_id = scope.project_id
    body: AsyncIterator[str]
    if kind == "users":
        body = _users(pool, project_id, now, segment, q, people.listed(filters, scope.timezone))
    elif kind == "metrics":
        cards = filters if segment == "all" else with_segment(filters, segment)
        body = _metrics(pool, scope, now, cards)
    else:
        if filters.values:
            name = next(iter(filters.values))
            raise invalid(
                name, "unfiltered_export", "the sessions export takes no filters", filters.values[name]
            )
        ids = None
        if person_id is not None:
            ids = await pool.run(queries.anonymous_ids, project_id, person_id)
            if ids is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such user")
        body = _sessions(pool, scope, now, days, ids)
    return await _download(body, project_id, kind, now)


async def _download(body: AsyncIterator[str], project_id: str, kind: str, now: datetime) -> StreamingResponse:
    filename = _filename(project_id, kind, now)
    body = await _opened(body)
    return StreamingResponse(
        _guarded(body, kind, project_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


async def _opened(body: AsyncIterator[str]) -> AsyncIterator[str]:
    """`body` with its header row and first chunk of rows read before the status line is sent:
    a ClickHouse that cannot answer at all is then an error answer (503 while it is away, see
    services/api/app.py), not a 200 download cut short. One block is read ahead at most, the
    size the export streams in anyway."""
    head: list[str] = []
    try:
        while len(head) < 2:
            head.append(await anext(body))
    except StopAsyncIteration:
        pass
    except BaseException:
        await _close(body)  # its client of its own, if it got one
        raise

    async def replay() -> AsyncIterator[str]:
        try:
            for chunk in head:
                yield chunk
            async for chunk in body:
                yield chunk
        finally:
            await _close(body)

    return replay()


async def _close(body: AsyncIterator[str]) -> None:
    aclose = getattr(body, "aclose", None)  # every body here is an async generator
    if aclose is not None:
        await aclose()


async def _guarded(body: AsyncIterator[str], kind: str, project_id: str) -> AsyncIterator[str]:
    """The status line is sent already, so a failure mid-stream can only end the file early: log
    it and re-raise, which aborts the chunked response (the client sees a failed download, not
    a complete-looking short file)."""
    try:
        async for chunk in body:
            yield chunk
    except Exception as exc:
        log.error("export_failed", kind=kind, project_id=project_id, error=str(exc))
        raise


async def _breakdown(
    pool: ClickHousePool, rolled_days: RolledDays, project_id: str, dimension: str, args: BreakdownArgs
) -> AsyncIterator[str]:
    yield csv_text([BREAKDOWN_HEADER])
    _total, rows = await pool.run(
        breakdowns.breakdown,
        project_id,
        dimension,
        args.period,
        args.filters,
        BREAKDOWN_EXPORT_MAX,
        0,
        args.today,
        rolled_days,
    )
    yield csv_text(
        [
            *(r[c] for c in BREAKDOWN_HEADER[:6]),
            *(r["previous"][c] for c in ("visitors", "sessions", "page_views")),
        ]
        for r in rows
    )


async def _online(
    pool: ClickHousePool, project_id: str, now: datetime, narrowing: queries.Narrowing
) -> AsyncIterator[str]:
    yield csv_text([ONLINE_HEADER])
    where, extra = narrowing
    params = {**extra, "p": project_id, "since": now - queries.ONLINE_WINDOW}
    async for block in _blocks(pool, queries.online_export_sql(where), params):
        persons = await pool.run(queries.resolve_persons, project_id, [r[0] for r in block])
        users = (queries.online_user(r, persons[r[0]], now) for r in block)
        yield csv_text([u[c] for c in ONLINE_HEADER] for u in users)


async def _users(
    pool: ClickHousePool, project_id: str, now: datetime, segment: str, q: str, narrowing: queries.Narrowing
) -> AsyncIterator[str]:
    yield csv_text([USERS_HEADER])
    where, params = queries.users_filter(project_id, now, segment, q, narrowing)
    sql = (
        f"SELECT {queries.USERS_EXPORT_COLUMNS} FROM persons FINAL WHERE {where} "
        "ORDER BY last_seen DESC, person_id ASC"
    )
    async for block in _blocks(pool, sql, params):
        rows = []
        for r in block:
            user = queries.user_row(r)
            traits = orjson.loads(r[7]) if r[7] else {}
            rows.append([*(user[c] for c in USERS_HEADER[:7]), traits, list(r[8])])
        yield csv_text(rows)


async def _metrics(
    pool: ClickHousePool, scope: ProjectScope, now: datetime, filters: Filters
) -> AsyncIterator[str]:
    yield csv_text([METRICS_HEADER])
    data = await metric_cards(pool, scope.project_id, now, filters, scope.timezone)
    yield csv_text([name, m["value"], m["previous"], m["trend"]] for name, m in data.items())


async def _activity(
    pool: ClickHousePool,
    rolled_days: RolledDays,
    scope: ProjectScope,
    now: datetime,
    days: int,
    filters: Filters,
) -> AsyncIterator[str]:
    yield csv_text([queries.DAY_COLUMNS])
    data = await pool.run(
        activity.activity, scope.project_id, scope.today(now), days, filters, scope.timezone, rolled_days
    )
    yield csv_text([d[c] for c in queries.DAY_COLUMNS] for d in data)


async def _sessions(
    pool: ClickHousePool, scope: ProjectScope, now: datetime, days: int, ids: list[str] | None
) -> AsyncIterator[str]:
    yield csv_text([SESSIONS_HEADER])
    # from the start of the project's day `days - 1` days before today (its time zone)
    since = timezones.start_of(scope.today(now) - timedelta(days=days - 1), scope.timezone)
    sql, params = queries.sessions_export(scope.project_id, since, ids)
    async for block in _blocks(pool, sql, params):
        yield csv_text([s[c] for c in SESSIONS_HEADER] for s in (queries.session_row(r, now) for r in block))
