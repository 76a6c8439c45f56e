"""The live users stream (`GET /api/projects/{id}/live`, Server-Sent Events).

Design: each API process (replica) runs at most one poller per project and filters
(services/api/filters.py; none is one set of filters) that have subscribers: subscribers with
the same filters share it, each set of filters has its own answer. It reads the online view
from ClickHouse about every 500 ms (the same query as `GET online` with those filters, with the
largest `limit` any of its subscribers asked for) and hands each subscriber its own slice; a
subscriber is sent an `online` event on connect and then only when its count or list changed
(time-on-page ticking alone is not a change; a visitor turning stuck is). Comment pings every
15 s keep proxies from closing an idle stream. A slow client never queues snapshots: it gets
the newest one when it is ready to read.

Why a short ClickHouse poll rather than a Kafka topic of live changes:
- ClickHouse is the source of truth: the aggregator writes `online_visitors` and the stream
  shows exactly what `GET online` would answer, with nothing to reconcile on (re)connect.
- It works behind any number of replicas without coordination: every replica polls on its
  own, no consumer group, offsets or topic-to-replica fan-out to manage, and a replica that
  restarts has nothing to catch up on.
- No extra topic for the aggregator to produce, and no second copy of the state to get wrong.
- The cost is bounded: one read per project and set of filters in use per replica per 500 ms,
  whatever the number of viewers: a small indexed one unfiltered; a filtered one also reads the
  breakdown rows of the last two days (services/api/filters.py, Filters.online). The
  freshness the dashboard sees is the aggregator's flush interval plus at most one poll.

Shutdown: `close()` (called when the app shuts down, and by whoever stops the server) ends
every stream: each subscriber's generator returns, so its response finishes cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from services.api import queries
from services.api.deps import ClickHousePool
from services.api.filters import Filters
from services.api.models import Online
from werkstroom import timezones
from werkstroom.logging import get_logger

log = get_logger(__name__)

POLL_SECONDS = 0.5
RETRY_SECONDS = 2.0
PING_SECONDS = 15
NO_FILTERS = Filters()

#: What a poller is kept per: the project and the filters' values (in Filters' own order, so
#: the same filters given in another order share a poller).
FeedKey = tuple[str, tuple[tuple[str, str], ...]]


def feed_key(project_id: str, filters: Filters = NO_FILTERS) -> FeedKey:
    return project_id, tuple(filters.values.items())


#: What makes two snapshots "the same" for a viewer: everything but the ticking times.
_SAME = (
    "person_id",
    "anonymous_id",
    "user_id",
    "current_path",
    "current_url",
    "current_title",
    "device_type",
    "browser",
    "os",
    "stuck",
    "last_event_at",
    "page_entered_at",
    "session_id",
    "last_event",
)


class Subscription:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._key: Any = None
        self._latest: dict[str, Any] | None = None
        self._ready = asyncio.Event()

    def offer(self, snapshot: dict[str, Any]) -> None:
        users = snapshot["users"][: self.limit]
        key = (snapshot["online"], tuple(tuple(u[k] for k in _SAME) for u in users))
        if key == self._key:
            return
        self._key = key
        self._latest = {**snapshot, "users": users}
        self._ready.set()

    async def next(self, closed: asyncio.Event) -> dict[str, Any] | None:
        """The next changed snapshot; None once the hub closed."""
        if not self._ready.is_set():
            ready = asyncio.ensure_future(self._ready.wait())
            stop = asyncio.ensure_future(closed.wait())
            try:
                await asyncio.wait([ready, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
                stop.cancel()
        if closed.is_set():
            return None
        self._ready.clear()
        return self._latest


class _Feed:
    """The poller of one project and set of filters, alive while it has subscribers."""

    def __init__(self, hub: LiveHub, project_id: str, filters: Filters) -> None:
        self.hub = hub
        self.project_id = project_id
        self.filters = filters
        self.subscribers: set[Subscription] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        hub = self.hub
        while self.subscribers and not hub.closed.is_set():
            self.wake.clear()
            pause = hub.poll_seconds
            try:
                limit = max(s.limit for s in self.subscribers)
                snapshot = await hub.snapshot(self.project_id, limit, self.filters)
                for subscriber in list(self.subscribers):
                    subscriber.offer(snapshot)
            except Exception as exc:  # ClickHouse hiccup: keep the streams, try again shortly
                log.warning("live_poll_failed", project_id=self.project_id, error=str(exc))
                pause = RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), pause)


class LiveHub:
    def __init__(
        self,
        pool: ClickHousePool,
        topic: str,
        clock: Callable[[], datetime],
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.pool = pool
        self.topic = topic
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.closed = asyncio.Event()
        self.feeds: dict[FeedKey, _Feed] = {}
        self.zones: dict[str, str] = {}  # project -> its time zone, as its last stream was given

    async def snapshot(self, project_id: str, limit: int, filters: Filters = NO_FILTERS) -> dict[str, Any]:
        now = self.clock()
        zone = self.zones.get(project_id, timezones.DEFAULT)
        today = timezones.today(now, zone)  # the project's
        # At each poll's clock: a segment (active, inactive, ...) is decided at the answer's time.
        narrowing = dataclasses.replace(filters, now=now).online(today)
        data, fresh = await asyncio.gather(
            self.pool.run(queries.online, project_id, now, limit, narrowing),
            self.pool.run(queries.polled_pipeline, self.topic, project_id, today, zone),
        )
        return {"as_of": now, "pipeline": fresh, **data}

    @asynccontextmanager
    async def subscribe(
        self, project_id: str, limit: int, filters: Filters = NO_FILTERS
    ) -> AsyncIterator[Subscription]:
        subscription = Subscription(limit)
        key = feed_key(project_id, filters)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = _Feed(self, project_id, filters)
        feed.subscribers.add(subscription)
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(feed.run(), name=f"live:{project_id}")
        else:
            feed.wake.set()  # poll now: the newcomer's first snapshot should not wait
        try:
            yield subscription
        finally:
            feed.subscribers.discard(subscription)
            if not feed.subscribers:
                if self.feeds.get(key) is feed:
                    del self.feeds[key]
                if feed.task is not None:
                    feed.task.cancel()

    async def stream(
        self, project_id: str, limit: int, filters: Filters = NO_FILTERS, zone: str = timezones.DEFAULT
    ) -> AsyncIterator[dict[str, str]]:
        """The SSE events of one subscriber: `online` snapshots (of the visitors `filters`
        keep, the project's days those of its time `zone`) until the hub closes."""
        self.zones[project_id] = zone
        async with self.subscribe(project_id, limit, filters) as subscription:
            while True:
                snapshot = await subscription.next(self.closed)
                if snapshot is None:
                    return
                yield {"event": "online", "data": Online.model_validate(snapshot).model_dump_json()}

    async def close(self) -> None:
        """End every stream and stop the pollers."""
        self.closed.set()
        tasks = [f.task for f in self.feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.feeds.clear()

    @property
    def subscribers(self) -> int:
        return sum(len(f.subscribers) for f in self.feeds.values())
