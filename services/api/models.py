"""Response and request models of the dashboard API, split by use, each with an example.

The shapes are the shared contract in the API spec (frontend and bench code against them):
times are ISO-8601 UTC with milliseconds and "Z", days are YYYY-MM-DD (the project's local days),
and every data answer carries `as_of` (server time) and `pipeline` (the aggregator's freshness).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer


def iso(value: datetime) -> str:
    """2026-11-25T12:00:00.000Z: UTC, milliseconds, Z."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


Time = Annotated[datetime, PlainSerializer(iso, return_type=str, when_used="json")]

T0 = "2026-11-25T12:00:00.000Z"
PIPELINE_EXAMPLE = {
    "last_write_at": "2026-11-25T11:59:59.750Z",
    "last_event_at": T0,
    "lag": 0,
    "bots_today": 12,
    "recomputing_timezone": None,
}


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


class Pipeline(BaseModel):
    """From aggregator_status: a recent last_write_at with an old last_event_at is a quiet site;
    an old last_write_at is a stalled pipeline."""

    model_config = _example(PIPELINE_EXAMPLE)
    last_write_at: Time | None = Field(description="the aggregator's newest write (any partition)")
    last_event_at: Time | None = Field(description="the newest event time it has written")
    lag: int | None = Field(description="messages between its committed offsets and the topic's end")
    bots_today: int = Field(
        ge=0,
        description="this project's events filtered as bots today (the project's day, event time): scripts, "
        "crawlers and headless browsers, by User-Agent; never counted in the other figures",
    )
    recomputing_timezone: str | None = Field(
        None,
        description="after the project's time zone changed, the new zone while the aggregator "
        "recomputes its days in it (answers mix the two zones' days until then); null once its "
        "rows are in the project's zone",
    )


class Fresh(BaseModel):
    as_of: Time = Field(description="server time of this answer")
    pipeline: Pipeline


FRESH = {"as_of": T0, "pipeline": PIPELINE_EXAMPLE}


# -- projects ------------------------------------------------------------------------------


class Me(BaseModel):
    model_config = _example(
        {
            "project_id": "p_6b6d7f28c6a1a5e1",
            "name": "My shop",
            "write_key": "wk_…",
            "timezone": "Europe/Amsterdam",
        }
    )
    project_id: str
    name: str
    write_key: str
    timezone: str = Field(
        description="the project's IANA time zone: every day in its answers is a local day there"
    )


# -- online ----------------------------------------------------------------------------------

ONLINE_USER = {
    "person_id": "user-42",
    "anonymous_id": "5d1c0a4e-…",
    "user_id": "user-42",
    "current_path": "/pricing",
    "current_url": "https://shop.example/pricing",
    "current_title": "Pricing",
    "time_on_page_seconds": 42,
    "time_on_site_seconds": 310,
    "device_type": "desktop",
    "browser": "Chrome",
    "os": "Mac OS X",
    "stuck": False,
    "last_event_at": "2026-11-25T11:59:40.000Z",
    "page_entered_at": "2026-11-25T11:59:18.000Z",
    "session_id": "s_…",
    "last_event": "$page",
}


class OnlineUser(BaseModel):
    person_id: str = Field(description="the user id when identified, else the anonymous id")
    anonymous_id: str
    user_id: str | None
    current_path: str
    current_url: str
    current_title: str
    time_on_page_seconds: int = Field(description="whole seconds since they entered the current page")
    time_on_site_seconds: int = Field(description="whole seconds since their session started")
    device_type: str
    browser: str
    os: str
    stuck: bool = Field(description="on the same page for more than 5 minutes while online")
    last_event_at: Time
    page_entered_at: Time
    session_id: str
    last_event: str = Field(
        "",
        description="their newest event this session, heartbeats aside: `$page` for a page view, "
        "else the event's name (`Signed Up`); what a visitor without a page view is doing. "
        "Empty while their events are not stored yet.",
    )


class Online(Fresh):
    model_config = _example({**FRESH, "online": 1, "users": [ONLINE_USER]})
    online: int = Field(description="visitors whose last event is less than 5 minutes old (all of them)")
    users: list[OnlineUser] = Field(description="newest activity first, at most `limit`")


# -- metrics ---------------------------------------------------------------------------------


class Metric(BaseModel):
    value: int | float | None
    previous: int | float | None = Field(description="the same figure one week earlier")
    trend: float | None = Field(
        description="(value - previous) / previous * 100, 1 decimal; null if previous is 0"
    )


class MetricSet(BaseModel):
    total_users: Metric
    online_now: Metric
    new_this_week: Metric
    churn_rate: Metric = Field(description="percent, 1 decimal; null without a base")


class Metrics(Fresh):
    model_config = _example(
        {
            **FRESH,
            "metrics": {
                "total_users": {"value": 120, "previous": 100, "trend": 20.0},
                "online_now": {"value": 3, "previous": 4, "trend": -25.0},
                "new_this_week": {"value": 20, "previous": 10, "trend": 100.0},
                "churn_rate": {"value": 12.5, "previous": None, "trend": None},
            },
            "filters": {},
        }
    )
    metrics: MetricSet
    filters: dict[str, str] = Field(
        default_factory=dict, description="the filters given, by name (none: every person)"
    )


# -- activity --------------------------------------------------------------------------------

DAY = {
    "day": "2026-11-25",
    "active_users": 31,
    "new_users": 4,
    "sessions": 40,
    "page_views": 122,
    "events": 170,
    "bounce_rate": 0.35,
    "avg_session_seconds": 184.2,
    "bots": 9,
}


class Day(BaseModel):
    day: date
    active_users: int
    new_users: int
    sessions: int
    page_views: int
    events: int = Field(description="all events but heartbeats, page views included")
    bounce_rate: float = Field(description="one-page-view sessions / sessions, a fraction 0..1")
    avg_session_seconds: float
    bots: int = Field(
        ge=0,
        description="events filtered as bots (scripts, crawlers, headless browsers), counted in "
        "no other field; kept 35 days (older days say 0)",
    )


class Activity(Fresh):
    model_config = _example({**FRESH, "filters": {}, "days": [DAY]})
    filters: dict[str, str] = Field(
        default_factory=dict, description="the filters given, by name (none: the daily statistics)"
    )
    days: list[Day] = Field(
        description="oldest first, exactly `days` entries ending today (the project's day, in its "
        "time zone), zero-filled"
    )


# -- funnels ---------------------------------------------------------------------------------

FUNNEL = {
    "funnel_id": "f_3a9c1b2d4e5f",
    "name": "Signup",
    "steps": [{"event": "$page", "path": "/pricing"}, {"event": "Signed Up", "path": ""}],
    "window_seconds": 86400,
    "created_at": T0,
    "backfilled": True,
}


class StepIn(BaseModel):
    event: str = Field(min_length=1, max_length=200, description="event name; page views are `$page`")
    path: str = Field("", max_length=500, description="path glob (`*` = any run of characters); '' = any")


class FunnelIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "Signup", "steps": FUNNEL["steps"], "window_seconds": 86400}]
        },
    )
    name: str = Field(min_length=1, max_length=100)
    steps: list[StepIn] = Field(min_length=2, max_length=8)
    window_seconds: int = Field(86400, ge=60, le=2_592_000)


class StepOut(BaseModel):
    event: str
    path: str


class FunnelOut(BaseModel):
    model_config = _example(FUNNEL)
    funnel_id: str
    name: str
    steps: list[StepOut]
    window_seconds: int
    created_at: Time
    backfilled: bool = Field(
        description="the aggregator has counted the events stored before the funnel was created; "
        "until then the report counts only the persons active since (a new funnel: seconds)"
    )


class FunnelList(BaseModel):
    model_config = _example({"funnels": [FUNNEL]})
    funnels: list[FunnelOut]


class FunnelStep(BaseModel):
    step: int = Field(description="1-based")
    event: str
    path: str
    count: int = Field(description="persons who reached this step")
    conversion_pct: float | None = Field(description="count / first step's count * 100, 1 decimal")
    drop_off_pct: float | None = Field(description="(previous - count) / previous * 100; null for step 1")
    high_drop_off: bool = Field(description="drop_off_pct > 50")


class FunnelReport(Fresh):
    model_config = _example(
        {
            **FRESH,
            "funnel": FUNNEL,
            "filters": {},
            "days": 30,
            "steps": [
                {
                    "step": 1,
                    "event": "$page",
                    "path": "/pricing",
                    "count": 200,
                    "conversion_pct": 100.0,
                    "drop_off_pct": None,
                    "high_drop_off": False,
                },
                {
                    "step": 2,
                    "event": "Signed Up",
                    "path": "",
                    "count": 60,
                    "conversion_pct": 30.0,
                    "drop_off_pct": 70.0,
                    "high_drop_off": True,
                },
            ],
        }
    )
    funnel: FunnelOut
    filters: dict[str, str] = Field(
        default_factory=dict,
        description="the filters given, by name (none: every person who reached a step)",
    )
    days: int
    steps: list[FunnelStep]


# -- users -----------------------------------------------------------------------------------

Segment = Literal["active", "inactive", "churned"]
SegmentFilter = Literal["all", "active", "inactive", "premium", "trial", "churned"]

USER = {
    "person_id": "user-42",
    "first_seen": "2026-11-01T09:12:00.000Z",
    "last_seen": "2026-11-25T11:59:40.000Z",
    "sessions": 12,
    "page_views": 64,
    "plan": "premium",
    "segment": "active",
}


class UserRow(BaseModel):
    person_id: str
    first_seen: Time
    last_seen: Time
    sessions: int
    page_views: int
    plan: str | None = Field(description="the `plan` trait, null when unset")
    segment: Segment = Field(description="active: seen in the last 7 days; inactive: 7 to 30; churned: > 30")


class UsersPage(Fresh):
    model_config = _example({**FRESH, "filters": {}, "users": [USER], "next_cursor": "eyJ…"})
    filters: dict[str, str] = Field(
        default_factory=dict,
        description="the filters given besides segment and q, by name (none: every person)",
    )
    users: list[UserRow] = Field(description="last_seen desc, person_id asc")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class UserProfile(Fresh, UserRow):
    model_config = _example(
        {
            **FRESH,
            **USER,
            "traits": {"email": "user-42@example.com", "plan": "premium"},
            "anonymous_ids": ["5d1c0a4e-…", "9f00b1c2-…"],
        }
    )
    traits: dict[str, Any]
    anonymous_ids: list[str] = Field(description="the visitor ids merged into this person")


SESSION = {
    "session_id": "s_…",
    "anonymous_id": "5d1c0a4e-…",
    "start_at": "2026-11-25T11:50:00.000Z",
    "last_event_at": "2026-11-25T11:59:40.000Z",
    "duration_seconds": 580,
    "page_views": 4,
    "events": 6,
    "pages": ["/", "/pricing", "/signup", "/pricing"],
    "entry_path": "/",
    "referrer": "https://www.google.com/",
    "device_type": "desktop",
    "browser": "Chrome",
    "os": "Mac OS X",
    "active": True,
}


class SessionRow(BaseModel):
    session_id: str
    anonymous_id: str
    start_at: Time
    last_event_at: Time
    duration_seconds: int = Field(description="whole seconds from the first to the last event")
    page_views: int
    events: int = Field(description="all events but heartbeats, page views included")
    pages: list[str] = Field(description="paths visited, in order")
    entry_path: str
    referrer: str
    device_type: str
    browser: str
    os: str
    active: bool = Field(description="last event less than 30 minutes ago (else completed)")


class UserSessions(Fresh):
    model_config = _example({**FRESH, "sessions": [SESSION]})
    sessions: list[SessionRow] = Field(description="newest first")


# -- breakdowns ------------------------------------------------------------------------------

BREAKDOWN_ROW = {
    "value": "/pricing",
    "visitors": 120,
    "sessions": 150,
    "page_views": 300,
    "bounce_rate": 42.5,
    "avg_time_on_page_s": 35.2,
    "previous": {"visitors": 100, "sessions": 130, "page_views": 260},
}


class BreakdownPrevious(BaseModel):
    visitors: int
    sessions: int
    page_views: int


class BreakdownRow(BaseModel):
    model_config = _example(BREAKDOWN_ROW)
    value: str = Field(description='the value ("" is "Direct / None" for sources, unknown otherwise)')
    visitors: int = Field(description="distinct anonymous ids with a session having the value")
    sessions: int = Field(description="pages: sessions that viewed the page; else sessions having the value")
    page_views: int = Field(description="pages: views of the page; else the page views of those sessions")
    bounce_rate: float | None = Field(
        description="percent, one decimal: pages: bounced sessions entering on the page / sessions "
        "entering on it (null when none entered there); else bounced sessions / sessions"
    )
    avg_time_on_page_s: float | None = Field(
        description="pages only: average time on the page in seconds, one decimal, over the views "
        "whose time is known; null otherwise"
    )
    previous: BreakdownPrevious = Field(
        description="the same value in the period just before (zeros when absent)"
    )


class Breakdown(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "dimension": "pages",
                    "from": "2026-11-03",
                    "to": "2026-12-02",
                    "previous_from": "2026-10-04",
                    "previous_to": "2026-11-02",
                    "filters": {"country": "NL"},
                    "total": 42,
                    "limit": 10,
                    "offset": 0,
                    "rows": [BREAKDOWN_ROW],
                }
            ]
        },
    )
    dimension: str
    from_: date = Field(alias="from", description="first day of the period (the project's)")
    to: date = Field(description="last day of the period (the project's, included)")
    previous_from: date
    previous_to: date = Field(description="the day before `from`: the previous period is as long")
    filters: dict[str, str] = Field(description="the filters given, by name")
    total: int = Field(description="distinct values in the period")
    limit: int
    offset: int
    rows: list[BreakdownRow] = Field(description="visitors desc, then value asc")


# -- snippet ---------------------------------------------------------------------------------


class Snippet(BaseModel):
    model_config = _example(
        {
            "write_key": "wk_…",
            "ingest_url": "https://ingest.example.com",
            "html": '<script>(function(w,d,key,host){…})(window,document,"wk_…","https://ingest.example.com");'
            "</script>",
        }
    )
    write_key: str = Field(description="public: it only lets a browser send events")
    ingest_url: str
    html: str = Field(description="paste into every page, ideally in <head>")


class ErrorOut(BaseModel):
    model_config = _example({"detail": "unknown or missing read key"})
    detail: Any
