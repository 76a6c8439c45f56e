"""Project administration (admin token) and /api/me (a read key's own project)."""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime
from typing import Annotated

from clickhouse_connect.driver.client import Client
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from services.api import queries
from services.api.deps import AUTH_RESPONSES, UNAVAILABLE, PoolDep, ReadKeyDep, key_check, unauthorized
from services.api.models import Me
from werkstroom import projects, timezones
from werkstroom.logging import get_logger

log = get_logger(__name__)
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="WERKSTROOM_ADMIN_TOKEN")


def _zone(timezone: str) -> str:
    """An IANA zone name, checked (werkstroom.timezones), or the documented 422 on the field."""
    try:
        return projects.validate_timezone(timezone)
    except projects.ProjectError as exc:
        raise PydanticCustomError("unknown_timezone", str(exc)) from None


#: A time zone in a request body: an IANA name, checked (422 `unknown_timezone` on the field).
ZoneName = Annotated[
    str,
    Field(
        max_length=timezones.MAX_NAME,
        description="the site's IANA time zone: its days, weeks and today are local days there",
        examples=["Europe/Amsterdam"],
    ),
    AfterValidator(_zone),
]


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=projects.MAX_NAME, examples=["My shop"])
    timezone: ZoneName = timezones.DEFAULT

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        # The rules of werkstroom.projects (not blank, no control characters), checked here so
        # that a bad name is the documented 422 (detail: [{loc: ["body", "name"], msg, type}]).
        try:
            projects.validate_name(name)
        except projects.ProjectError as exc:
            raise PydanticCustomError("value_error", str(exc)) from None
        return name


class ProjectOut(BaseModel):
    project_id: str = Field(examples=["p_6b6d7f28c6a1a5e1"])
    name: str = Field(examples=["My shop"])
    write_key: str = Field(examples=["wk_…"])
    created_at: datetime
    timezone: str = Field(description="its IANA time zone: its days are local days there", examples=["UTC"])


class ProjectCreated(ProjectOut):
    read_key: str = Field(description="Secret; shown only once. Stored hashed.", examples=["rk_…"])


async def clickhouse_client(request: Request) -> Client:
    """The admin client, opened on first use (AdminClient): 503 while ClickHouse is away."""
    client: Client = await request.app.state.admin_client.get()
    return client


ClickHouseDep = Annotated[Client, Depends(clickhouse_client)]


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]
) -> None:
    expected: str = request.app.state.admin_token
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin token required: Authorization: Bearer <WERKSTROOM_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Annotated[None, Depends(require_admin)]

admin = APIRouter(prefix="/api/projects", tags=["projects"], responses={503: UNAVAILABLE})


@admin.post("", status_code=201, response_model=ProjectCreated, summary="Create a project (admin)")
async def create_project(body: ProjectIn, _: AdminDep, client: ClickHouseDep) -> ProjectCreated:
    try:
        created = await asyncio.to_thread(projects.create_project, client, body.name, body.timezone)
    except projects.ProjectError as exc:  # the model's validator runs the same rules first
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "name"), "msg": str(exc), "input": body.name}]
        ) from None
    log.info("project_created", project_id=created.project_id, name=created.name)
    return ProjectCreated(**created.__dict__)


@admin.get("", response_model=list[ProjectOut], summary="List projects (admin)")
async def list_projects(_: AdminDep, client: ClickHouseDep) -> list[ProjectOut]:
    found = await asyncio.to_thread(projects.list_projects, client)
    return [ProjectOut(**p.__dict__) for p in found]


class ProjectZoneIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"timezone": "Europe/Amsterdam"}]})
    timezone: ZoneName


@admin.patch(
    "/{project_id}",
    response_model=ProjectOut,
    summary="Change a project's time zone (admin)",
    description="Its days become local days of the new zone: the aggregator recomputes every "
    "day-keyed row of the project in it within seconds (longer for a large project); until "
    "then the answers mix the two zones' days. docs/timezones.md.",
    responses={404: {"description": "no such project"}},
)
async def change_project(
    request: Request, project_id: str, body: ProjectZoneIn, _: AdminDep, client: ClickHouseDep
) -> ProjectOut:
    changed = await asyncio.to_thread(projects.set_timezone, client, project_id, body.timezone)
    if changed is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such project")
    # This process's answers take the new zone (and read the roll-ups' markers anew) from the next
    # request on, not after its caches.
    request.app.state.auth_cache.forget(project_id)
    request.app.state.rolled_days.forget(project_id)
    log.info("project_timezone_changed", project_id=project_id, timezone=changed.timezone)
    return ProjectOut(**changed.__dict__)


me = APIRouter(prefix="/api", tags=["projects"])


@me.get(
    "/me",
    response_model=Me,
    summary="The project a read key opens",
    description="Lets the dashboard log in with the read key alone.",
    responses={401: AUTH_RESPONSES[401], 429: AUTH_RESPONSES[429], 503: UNAVAILABLE},
)
async def whoami(request: Request, key: ReadKeyDep, pool: PoolDep) -> Me:
    with key_check(request) as failed:  # the same budget of failed checks as the project routes
        found = await pool.run(queries.project_by_read_key, projects.hash_key(key))
        if found is None:
            failed()
            raise unauthorized()
    return Me(**found)
