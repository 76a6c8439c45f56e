"""Dependencies of the dashboard routes: the ClickHouse pool, the clock, and read-key auth.

ClickHouse calls are blocking, so they run in threads (`asyncio.to_thread`). A chdb client
(the embedded engine) runs one call at a time: clickhouse-connect serialises the calls on its
handle with a lock, and a call made while that handle streams a result waits for the stream to
end. Separate clients get separate handles that the engine runs concurrently. So the API keeps
a small pool of clients and lends one per call; a CSV export gets a client of its own for the
length of its stream. HTTP clients are thread-safe, but the same pool bounds their concurrency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from clickhouse_connect.driver.client import Client
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api import queries
from werkstroom import projects
from werkstroom.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

POOL_SIZE = 6
EXPORTS_AT_ONCE = 2
AUTH_CACHE_SECONDS = 5.0
MAX_PROJECT_ID = 64


class ClickHousePool:
    """Up to `size` clients made by `factory`, each used by one call at a time."""

    def __init__(self, factory: Callable[[], Client], size: int = POOL_SIZE) -> None:
        self._factory = factory
        self._size = size
        self._idle: asyncio.Queue[Client] = asyncio.Queue()
        self._made: list[Client] = []
        self._making = 0
        self._exports = asyncio.Semaphore(EXPORTS_AT_ONCE)

    async def _acquire(self) -> Client:
        if self._idle.empty() and len(self._made) + self._making < self._size:
            self._making += 1
            try:
                client = await asyncio.to_thread(self._factory)
            finally:
                self._making -= 1
            self._made.append(client)
            return client
        return await self._idle.get()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(client, *args) in a thread. If the caller is cancelled (the HTTP client went away)
        the call still finishes in its thread, and only then is the client lent again."""
        client = await self._acquire()
        task = asyncio.ensure_future(asyncio.to_thread(fn, client, *args))

        def release(done: asyncio.Future[T]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: a cancelled caller's error is not "never retrieved"
            self._idle.put_nowait(client)

        task.add_done_callback(release)
        return await asyncio.shield(task)

    @asynccontextmanager
    async def dedicated(self) -> AsyncIterator[Client]:
        """A client of its own, closed afterwards: for a stream that may last as long as a slow
        reader takes, so it never holds a pooled client (at most EXPORTS_AT_ONCE at a time)."""
        async with self._exports:
            client = await asyncio.to_thread(self._factory)
            try:
                yield client
            finally:
                await asyncio.to_thread(client.close)

    def close(self) -> None:
        for client in self._made:
            try:
                client.close()
            except Exception as exc:  # closing at shutdown: nothing left to do about it
                log.warning("clickhouse_close_failed", error=str(exc))
        self._made.clear()


def get_pool(request: Request) -> ClickHousePool:
    pool: ClickHousePool = request.app.state.pool
    return pool


PoolDep = Annotated[ClickHousePool, Depends(get_pool)]


def get_now(request: Request) -> datetime:
    """The time of this answer (`as_of`), UTC to the millisecond; tests may fix the clock."""
    now: datetime = request.app.state.clock()
    now = now.astimezone(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


NowDep = Annotated[datetime, Depends(get_now)]

_bearer = HTTPBearer(auto_error=False, description="a project's secret read key")


def unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="unknown or missing read key: send Authorization: Bearer <read key>",
        headers={"WWW-Authenticate": "Bearer"},
    )


NOT_FOUND = "project not found"


@dataclass(frozen=True)
class ProjectScope:
    """The project a request reads, after its read key was checked."""

    project_id: str


class AuthCache:
    """Recently verified (project, key hash) pairs, so a dashboard's burst of calls costs one
    lookup. Only successes are kept, and only for a few seconds."""

    def __init__(self) -> None:
        self._until: dict[tuple[str, str], float] = {}

    def hit(self, key: tuple[str, str]) -> bool:
        until = self._until.get(key)
        return until is not None and until > time.monotonic()

    def keep(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        if len(self._until) > 10_000:
            self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[key] = now + AUTH_CACHE_SECONDS


async def read_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None or not credentials.credentials:
        raise unauthorized()
    return credentials.credentials


ReadKeyDep = Annotated[str, Depends(read_key)]


async def project_scope(
    request: Request,
    project_id: Annotated[str, Path(description="the project's id", examples=["p_6b6d7f28c6a1a5e1"])],
    key: ReadKeyDep,
    pool: PoolDep,
) -> ProjectScope:
    """A wrong key is 401; a valid key of another project is 404 whether or not `project_id`
    exists, so a key never tells which other projects exist."""
    cache: AuthCache = request.app.state.auth_cache
    cache_key = (project_id, projects.hash_key(key))
    if cache.hit(cache_key):
        return ProjectScope(project_id)
    if len(project_id) <= MAX_PROJECT_ID and await pool.run(projects.verify_read_key, project_id, key):
        cache.keep(cache_key)
        return ProjectScope(project_id)
    if await pool.run(queries.project_by_read_key, projects.hash_key(key)) is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND)
    raise unauthorized()


ProjectDep = Annotated[ProjectScope, Depends(project_scope)]


def get_topic(request: Request) -> str:
    """The events topic whose aggregator progress is this API's freshness."""
    topic: str = request.app.state.settings.topic_events
    return topic


TopicDep = Annotated[str, Depends(get_topic)]


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "unknown or missing read key", "content": {"application/json": {}}},
    404: {"description": "no such project for this key (or no such item)"},
}
