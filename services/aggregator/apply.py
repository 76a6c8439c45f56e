"""The apply stage: a batch of events applied to the visitors' state (the in-memory cache of
services.aggregator.processor over the pure session logic of .sessions), giving the rows of
the aggregate tables and the keys the derived tables must recompute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from clickhouse_connect.driver.client import Client

from services.aggregator.processor import Decoded, Dirty, Rows, SessionsProcessor
from services.aggregator.sessions import Changes

APPLY_CHUNK = 2000  # events applied between two turns of the event loop
EVICT_EVERY = 5.0  # seconds between two looks for idle visitors to forget
T = TypeVar("T")
Retrying = Callable[[str, Callable[[], Awaitable[T]]], Awaitable[T]]


class Applier:
    """Applies one batch at a time; partitions revoked meanwhile keep their visitors until the
    batch is applied (`forget`)."""

    def __init__(self, read_zones: Callable[[Client], dict[str, str]] | None = None) -> None:
        self.processor = SessionsProcessor()
        # How the projects' time zones are read (werkstroom.projects.time_zones); None: every
        # project's days are UTC days (a processor driven by hand, in tests and benchmarks).
        self.read_zones = read_zones
        self.applying = False  # a batch was cut and is not applied yet
        self._revoke_after: set[int] = set()
        self._evicted_at = 0.0

    def evict_idle(self, written_seq: int) -> None:
        """Forget idle visitors, at most every EVICT_EVERY seconds (a walk over every visitor
        held). Called before a batch is applied, never between finding the visitors to load
        and applying it: nothing may drop one from memory in between."""
        if time.monotonic() - self._evicted_at >= EVICT_EVERY:
            self._evicted_at = time.monotonic()
            self.processor.evict_idle(written_seq)

    async def aggregate(
        self, events: list[Decoded], seq: int, client: Callable[[], Client], retry: Retrying[None]
    ) -> tuple[Rows, Dirty, dict[int, int]]:
        """Load the visitors not in memory, then apply the events in chunks, giving the event
        loop back between chunks: the Kafka fetcher runs on it, and a batch applied in one go
        (a few hundred ms) kept it from fetching the next one meanwhile; then add the stored
        counts of days first met. `client()` is the visitors' load client.

        A failed attempt leaves the batch applying: the sink retries the same batch, and a
        partition revoked meanwhile must keep its visitors until that retry is done (forgotten
        at once, the retry loaded them again and kept them). The caller calls `done()` when
        it gives the batch up; a success calls it here."""
        self.applying = True
        if self.read_zones is not None and self.processor.needs_zones(events):
            # every ZONES_EVERY seconds, and at once for a project created since the last read
            await asyncio.to_thread(self.processor.load_zones, client(), events, self.read_zones)
        missing = self.processor.missing(events)
        if missing:
            await asyncio.to_thread(self.processor.load, client(), missing)
        changes, dirty = Changes(), Dirty()
        for start in range(0, len(events), APPLY_CHUNK):
            self.processor.apply_events(events[start : start + APPLY_CHUNK], changes, dirty, seq)
            await asyncio.sleep(0)
        if changes.unresolved:
            loader = client()
            # Retried on its own: the batch is applied, and applying it again would skip
            # its events as already applied, and write none of their rows.
            await retry(
                "sink_load_failed",
                lambda: asyncio.to_thread(self.processor.resolve_days, loader, changes, events),
            )
        rows, dirty = self.processor.rows(changes, dirty)
        self.done()
        return rows, dirty, changes.newest

    def done(self) -> None:
        """The batch is applied or given up: forget the partitions revoked meanwhile."""
        self.applying = False
        revoked, self._revoke_after = self._revoke_after, set()
        if revoked:
            self.processor.revoke(revoked)

    def forget(self, partitions: set[int]) -> None:
        """Another worker takes these partitions over: forget their visitors, once the batch
        being applied (if any) is done."""
        if self.applying:
            self._revoke_after |= partitions
        else:
            self.processor.revoke(partitions)
