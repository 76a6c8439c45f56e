"""The API service. For now: operations endpoints and project administration (admin token).

The dashboard endpoints (online, metrics, activity, funnels, users, exports) come with the
API issue; this app is where they will live.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from clickhouse_connect.driver.client import Client
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from services.api.dashboard import mount_dashboard
from werkstroom import projects
from werkstroom.clickhouse.migrate import is_current
from werkstroom.http import ops_router
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)
_bearer = HTTPBearer(auto_error=False)


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=projects.MAX_NAME, examples=["My shop"])


class ProjectOut(BaseModel):
    project_id: str
    name: str
    write_key: str
    created_at: datetime


class ProjectCreated(ProjectOut):
    read_key: str = Field(description="Secret; shown only once. Stored hashed.")


def clickhouse_client(request: Request) -> Client:
    client: Client = request.app.state.clickhouse
    return client


ClickHouseDep = Annotated[Client, Depends(clickhouse_client)]


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected: str = request.app.state.admin_token
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="admin token required: Authorization: Bearer <WERKSTROOM_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Annotated[None, Depends(require_admin)]

admin = APIRouter(prefix="/api/projects", tags=["projects"])


@admin.post("", status_code=201, response_model=ProjectCreated, summary="Create a project (admin)")
async def create_project(body: ProjectIn, _: AdminDep, client: ClickHouseDep) -> ProjectCreated:
    try:
        created = await asyncio.to_thread(projects.create_project, client, body.name)
    except projects.ProjectError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    log.info("project_created", project_id=created.project_id, name=created.name)
    return ProjectCreated(**created.__dict__)


@admin.get("", response_model=list[ProjectOut], summary="List projects (admin)")
async def list_projects(_: AdminDep, client: ClickHouseDep) -> list[ProjectOut]:
    found = await asyncio.to_thread(projects.list_projects, client)
    return [ProjectOut(**p.__dict__) for p in found]


def create_app(settings: Settings, *, clickhouse: Callable[[], Client], admin_token: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.clickhouse = clickhouse()
        app.state.admin_token = admin_token
        yield

    app = FastAPI(title="Werkstroom API", version="1", lifespan=lifespan)

    async def ready() -> dict[str, Any]:
        try:
            current = await asyncio.to_thread(is_current, app.state.clickhouse)
            return {"clickhouse": "ok" if current else "migrations pending"}
        except Exception as exc:
            return {"clickhouse": f"error: {exc}"}

    app.include_router(ops_router(ready))
    app.include_router(admin)
    mount_dashboard(app)
    return app
