"""Dependencies of the dashboard routes: the ClickHouse pool, the clock, and read-key auth.

ClickHouse calls are blocking, so they run in threads (`asyncio.to_thread`). A chdb client
(the embedded engine) runs one call at a time: clickhouse-connect serialises the calls on its
handle with a lock, and a call made while that handle streams a result waits for the stream to
end. Separate clients get separate handles that the engine runs concurrently. So the API keeps
a small pool of clients and lends one per call; a CSV export gets a client of its own for the
length of its stream. HTTP clients are thread-safe, but the same pool bounds their concurrency.

A read-key check that is not in the AuthCache costs ClickHouse lookups, so failed checks are
budgeted per client address (AuthFailures): past the budget the API answers 429 before any
lookup. Successful checks cost the budget nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar

from clickhouse_connect.driver.client import Client
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api import queries
from services.api.breakdowns import RolledDays
from werkstroom import projects, timezones
from werkstroom.http import client_key
from werkstroom.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

POOL_SIZE = 6
EXPORTS_AT_ONCE = 2
AUTH_CACHE_SECONDS = 5.0
MAX_PROJECT_ID = 64
#: Client addresses whose failure budget is kept at most (least recently seen go first), and how
#: often buckets that have refilled are swept (a bucket refills within a minute).
MAX_CLIENTS = 10_000
PRUNE_SECONDS = 60.0
#: Settings of the API's clients (the pool's and the exports'), not of the aggregator's, which
#: share the factory. Above 10,000 values, the set of an `IN (SELECT ...)` no longer narrows the
#: table's granules by its primary key: the dashboard's large sets (a segment's or a plan's
#: visitors, the persons with a session of a country) hit nearly every granule of the days they
#: are looked for in, and the key analysis cost more than it skipped (at 10M events, p50
#: alone: the funnel with country=NL 118 -> 99 ms, the users list 111 -> 92, online with
#: segment=premium 51 -> 42, bench/README.md, 2026-12-04 stop 39). A small set (the visitors
#: online now, a person's ids) still does. The aggregator's staged ids keep the key at any size.
#: use_uncompressed_cache: the API's reads keep the blocks they decompress in the server's cache
#: (the embedded engine's Settings.clickhouse_uncompressed_cache_mb, a server's
#: uncompressed_cache_size; reads of more than a million rows bypass it): a dashboard reads the
#: same hot rows again and again, and decompressing them was a third of a read's CPU (at 10M
#: events, p50 alone: the filtered cards 25 -> 19.5 ms and 38 -> 25 ms of CPU, the top pages of
#: 30 days 29.7 -> 23.5; bench/README.md, 2026-12-05 stop 51). The aggregator's reads, each of
#: other rows, do not.
READ_SETTINGS: dict[str, int] = {
    "use_index_for_in_with_subqueries_max_values": 10_000,
    "use_uncompressed_cache": 1,
}


class ClickHousePool:
    """Up to `size` clients made by `factory`, each used by one call at a time, with
    READ_SETTINGS."""

    def __init__(self, factory: Callable[[], Client], size: int = POOL_SIZE) -> None:
        self._factory = factory
        self._size = size
        self._idle: asyncio.Queue[Client] = asyncio.Queue()
        self._made: list[Client] = []
        self._making = 0
        self._exports = asyncio.Semaphore(EXPORTS_AT_ONCE)
        self._settings: dict[str, int] | None = None  # READ_SETTINGS the server knows, once read

    async def _acquire(self) -> Client:
        if self._idle.empty() and len(self._made) + self._making < self._size:
            self._making += 1
            try:
                client = await asyncio.to_thread(self._open)
            finally:
                self._making -= 1
            self._made.append(client)
            return client
        return await self._idle.get()

    def _open(self) -> Client:
        """A client of `factory` with READ_SETTINGS, those the server knows: a server that does
        not (older than ClickHouse 23.4 for the IN sets' limit) would refuse every query. The
        server's settings are read with the first client only."""
        client = self._factory()
        if self._settings is None:
            known = {
                name
                for (name,) in client.query(
                    "SELECT name FROM system.settings WHERE name IN {names:Array(String)}",
                    parameters={"names": sorted(READ_SETTINGS)},
                ).result_rows
            }
            for name in sorted(READ_SETTINGS.keys() - known):
                log.warning("clickhouse_setting_unknown", setting=name, effect="the API reads without it")
            self._settings = {name: value for name, value in READ_SETTINGS.items() if name in known}
        for name, value in self._settings.items():
            client.set_client_setting(name, value)
        return client

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
            client = await asyncio.to_thread(self._open)
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


class AdminClient:
    """The one client of the administration routes and the readiness check, opened on first
    use (and again after a failed open), so the API starts, and answers 503, while ClickHouse
    is away; an HTTP client reconnects by itself once it is back."""

    def __init__(self, factory: Callable[[], Client]) -> None:
        self._factory = factory
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._factory)
            return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as exc:  # closing at shutdown: nothing left to do about it
                log.warning("clickhouse_close_failed", error=str(exc))
            self._client = None


#: The reason of a 503 while ClickHouse cannot answer (away, refusing, timing out, overloaded,
#: or its tables not migrated yet), and the seconds a client is asked to wait before retrying.
CLICKHOUSE_UNAVAILABLE = "clickhouse_unavailable"
RETRY_AFTER_SECONDS = 5


def _unavailable_body(what: str) -> dict[str, str]:
    return {
        "detail": f"ClickHouse is unavailable ({what}); try again in {RETRY_AFTER_SECONDS} s",
        "reason": CLICKHOUSE_UNAVAILABLE,
    }


def clickhouse_unavailable(what: str) -> JSONResponse:
    """503 with a reason and Retry-After: `what` names the failure (OperationalError,
    MEMORY_LIMIT_EXCEEDED), never its text, which may hold the server's address or a query."""
    return JSONResponse(
        _unavailable_body(what),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
    )


# The dependencies that only read the app's state or parse parameters are `async def`: FastAPI
# runs a plain `def` dependency in its thread pool, a hop to a thread and back for each (five per
# filtered answer), which on 2 cores busy with ClickHouse's reads took ~2 ms of an answer
# (bench/README.md, 2026-12-05 stop 50). routes/filtering.py's and breakdown_args are too.
async def get_pool(request: Request) -> ClickHousePool:
    pool: ClickHousePool = request.app.state.pool
    return pool


PoolDep = Annotated[ClickHousePool, Depends(get_pool)]


async def get_rolled_days(request: Request) -> RolledDays:
    """The process's kept reads of the roll-ups' markers (breakdowns.RolledDays)."""
    days: RolledDays = request.app.state.rolled_days
    return days


RolledDaysDep = Annotated[RolledDays, Depends(get_rolled_days)]


async def get_now(request: Request) -> datetime:
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
    """The project a request reads, after its read key was checked, and its time zone: the
    project's days are local days there (werkstroom.timezones)."""

    project_id: str
    timezone: str = timezones.DEFAULT
    #: the zone while the project's days are being recomputed in it (projects.recomputing)
    rezoning: str | None = None

    def today(self, now: datetime) -> date:
        """The project's today at `now`."""
        return timezones.today(now, self.timezone)

    async def pipeline(self, pool: ClickHousePool, topic: str, now: datetime) -> dict[str, Any]:
        """Every answer's `pipeline` (queries.pipeline) for this project at `now`, with the
        rezoning the read-key check found."""
        return await pool.run(
            queries.pipeline, topic, self.project_id, self.today(now), self.timezone, self.rezoning
        )


class AuthCache:
    """Recently verified (project, key hash) pairs, so a dashboard's burst of calls costs one
    lookup. Only successes are kept, and only for a few seconds."""

    def __init__(self) -> None:
        self._until: dict[tuple[str, str], tuple[float, str, str | None]] = {}

    def hit(self, key: tuple[str, str]) -> tuple[str, str | None] | None:
        """The project's time zone and rezoning (ProjectScope's) if the pair was verified
        lately, else None."""
        found = self._until.get(key)
        return (found[1], found[2]) if found is not None and found[0] > time.monotonic() else None

    def keep(
        self, key: tuple[str, str], timezone: str = timezones.DEFAULT, rezoning: str | None = None
    ) -> None:
        now = time.monotonic()
        if len(self._until) > 10_000:
            self._until = {k: t for k, t in self._until.items() if t[0] > now}
        self._until[key] = (now + AUTH_CACHE_SECONDS, timezone, rezoning)

    def forget(self, project_id: str) -> None:
        """Drop the project's verified pairs (its zone changed): its next answer reads it anew.
        Other API processes keep theirs for at most AUTH_CACHE_SECONDS."""
        self._until = {k: t for k, t in self._until.items() if k[0] != project_id}


class AuthFailures:
    """A budget of failed read-key checks per client address: a token bucket holding up to
    `per_minute` tokens, refilled at `per_minute` a minute (0 = no limit).

    A check takes a token before its ClickHouse lookups and gives it back when the key was
    good, so only failures spend the budget; a client with no token left is refused before any
    lookup. Concurrent checks each hold a token, so a burst of them cannot overrun it either.

    Memory is bounded: at most `max_clients` buckets, the least recently used dropped first,
    and buckets that have refilled (the same as none) swept every PRUNE_SECONDS. Dropping a
    bucket early only gives that client a fresh budget, no more than an attacker with many
    addresses has anyway; the buckets of clients still failing are recently used, so they stay.
    """

    def __init__(
        self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._pruned = self._logged = clock()
        self._refused = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, client: str, now: float) -> float:
        found = self._buckets.get(client)
        if found is None:
            return self.capacity
        tokens, at = found
        return min(self.capacity, tokens + (now - at) * self.rate)

    def _store(self, client: str, tokens: float, now: float) -> None:
        if tokens >= self.capacity:  # full: the same as no bucket
            self._buckets.pop(client, None)
        else:
            self._buckets[client] = (tokens, now)
            self._buckets.move_to_end(client)
        if now - self._pruned >= PRUNE_SECONDS:
            self._pruned = now
            full = [c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.capacity]
            for gone in full:
                del self._buckets[gone]
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    def take(self, client: str) -> float:
        """Take a token for one key check: 0.0 when allowed, else the seconds until one is back."""
        if self.capacity <= 0:
            return 0.0
        now = self._clock()
        tokens = self._tokens(client, now)
        if tokens < 1:
            self._store(client, tokens, now)  # recently used: an active attacker's bucket stays
            self._refused += 1
            if now - self._logged >= PRUNE_SECONDS:  # a summary a minute at most, never who
                log.warning(
                    "api_auth_failures_refused",
                    refused=self._refused,
                    clients_over_budget=sum(1 for t, _at in self._buckets.values() if t < 1),
                    per_minute=int(self.capacity),
                )
                self._logged, self._refused = now, 0
            return (1 - tokens) / self.rate
        self._store(client, tokens - 1, now)
        return 0.0

    def give_back(self, client: str) -> None:
        """The key was good (or was never judged): its check costs the budget nothing."""
        if self.capacity <= 0:
            return
        now = self._clock()
        self._store(client, min(self.capacity, self._tokens(client, now) + 1), now)


def client_address(request: Request, trust_forwarded_for: bool) -> str:
    """Whom a failure budget belongs to (werkstroom.http.client_key): the connection's address
    or, behind a trusted proxy, the right-most X-Forwarded-For entry of the last such header."""
    forwarded = request.headers.getlist("x-forwarded-for")
    peer = request.client.host if request.client else None
    return client_key(peer, forwarded[-1] if forwarded else None, trust_forwarded_for) or ""


AUTH_LIMITED = "auth_rate_limited"


def too_many_failures(wait: float) -> HTTPException:
    seconds = max(1, math.ceil(wait))
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=[
            {
                "type": AUTH_LIMITED,
                "loc": ["header", "Authorization"],
                "msg": f"too many failed read-key checks from this client; retry in {seconds} s",
            }
        ],
        headers={"Retry-After": str(seconds)},
    )


@contextmanager
def key_check(request: Request) -> Iterator[Callable[[], None]]:
    """One read-key check that may query ClickHouse: takes a token of the client's failure
    budget first (429 with Retry-After when none is left, before any query). The block calls
    the yielded `failed()` once the key is known to be wrong; otherwise (a good key, or an
    error that judged nothing, such as ClickHouse failing) the token is given back. A caller
    cancelled mid-check keeps it spent: its lookups still run to the end in their threads
    (ClickHousePool.run), so hanging up early must not make them free."""
    failures: AuthFailures = request.app.state.auth_failures
    client = client_address(request, request.app.state.settings.trust_forwarded_for)
    wait = failures.take(client)
    if wait > 0:
        raise too_many_failures(wait)
    outcome = {"failed": False}

    def failed() -> None:
        outcome["failed"] = True

    try:
        yield failed
    except asyncio.CancelledError:
        failed()
        raise
    finally:
        if not outcome["failed"]:
            failures.give_back(client)


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
    exists, so a key never tells which other projects exist. Every route under a project (the
    live stream and the exports included) authenticates here; past the client's budget of
    failed checks, 429 (key_check)."""
    cache: AuthCache = request.app.state.auth_cache
    cache_key = (project_id, projects.hash_key(key))
    hit = cache.hit(cache_key)
    if hit is not None:
        return ProjectScope(project_id, *hit)
    with key_check(request) as failed:
        # the rezoning is read here, with the key, not in every answer's pipeline: a table read
        # costs milliseconds
        found = None
        if len(project_id) <= MAX_PROJECT_ID:
            found = await pool.run(projects.read_key_scope, project_id, key)
        if found is not None:
            cache.keep(cache_key, *found)
            return ProjectScope(project_id, *found)
        failed()  # a valid key on another project's id counts too: it cost the same lookups
        if await pool.run(queries.project_by_read_key, projects.hash_key(key)) is not None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=NOT_FOUND)
        raise unauthorized()


ProjectDep = Annotated[ProjectScope, Depends(project_scope)]


async def get_topic(request: Request) -> str:
    """The events topic whose aggregator progress is this API's freshness."""
    topic: str = request.app.state.settings.topic_events
    return topic


TopicDep = Annotated[str, Depends(get_topic)]


TOO_MANY_FAILURES: dict[str, Any] = {
    "description": "too many failed read-key checks from this client (detail[0].type = "
    f"{AUTH_LIMITED}); retry after Retry-After seconds",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    "content": {"application/json": {}},
}
UNAVAILABLE: dict[str, Any] = {
    "description": f"ClickHouse cannot answer now (reason = {CLICKHOUSE_UNAVAILABLE}); retry after "
    "Retry-After seconds",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    "content": {"application/json": {"example": _unavailable_body("OperationalError")}},
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "unknown or missing read key", "content": {"application/json": {}}},
    404: {"description": "no such project for this key (or no such item)"},
    429: TOO_MANY_FAILURES,
    503: UNAVAILABLE,
}
