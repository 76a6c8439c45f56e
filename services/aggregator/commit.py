"""The recompute-and-commit stage: once batches are written, recompute the derived tables for
the keys they touched (services.aggregator.derived), record the partitions' positions, then
commit their offsets. A crash before the commit re-reads those batches, which dirties the keys
again: commit after the write, never before. On its own clock (`RefreshCadence`), so that the
writer keeps the live tables fresh while a recomputation runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from clickhouse_connect.driver.client import Client

from services.aggregator.batching import RefreshCadence
from services.aggregator.breakdowns import RollUps
from services.aggregator.derived import refresh
from services.aggregator.errors import started
from services.aggregator.processor import Dirty
from services.aggregator.retry import Retry
from werkstroom import metrics
from werkstroom.logging import get_logger

log = get_logger(__name__)


class Committer:
    def __init__(
        self,
        cadence: RefreshCadence,
        retry: Retry,
        record: Callable[[dict[TopicPartition, int]], Awaitable[None]],
        committed_hook: Callable[[], Awaitable[None]],
        rollups: RollUps | None = None,
    ) -> None:
        self.cadence = cadence
        self.rollups = rollups  # this worker's roll-ups of settled days' breakdowns
        self.retry = retry
        self.record = record  # the positions, recorded before the offsets are committed
        self.committed_hook = committed_hook  # after a commit (the status rows)
        self.pending_dirty = Dirty()
        self.pending_offsets: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.client: Client | None = None  # the recomputations' own session (a staging table)
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    def written(self, dirty: Dirty, offsets: dict[TopicPartition, int]) -> None:
        """A batch is written: its keys to recompute and its offsets to commit."""
        self.pending_dirty.update(dirty)
        self.pending_offsets.update(offsets)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Revoked: neither their pending offsets nor their last commit are this worker's now
        (assigned again, perhaps onto a log that started over, the lag counts from the new start)."""
        for tp in partitions:
            self.pending_offsets.pop(tp, None)
            self.committed.pop(tp, None)

    async def refresh_and_commit(self) -> bool:
        """Recompute persons and daily stats for what the written batches touched, then commit
        their offsets. Returns whether there was anything to commit. Keys dirtied with no
        offsets to commit (a tail replayed from `events`) are recomputed too."""
        async with self._lock:
            if not self.pending_offsets and not self.pending_dirty.days and not self.pending_dirty.ids:
                return False
            dirty, offsets = self.pending_dirty, self.pending_offsets
            self.pending_dirty, self.pending_offsets = Dirty(), {}
            client = started(self.client, "the recomputations' client")
            began = time.monotonic()
            await self.retry(
                "derived_refresh_failed", lambda: asyncio.to_thread(refresh, client, dirty, self.rollups)
            )
            took = time.monotonic() - began
            metrics.DERIVED_REFRESH_SECONDS.observe(took)
            self.cadence.ran(began, took)
            consumer = started(self.consumer, "the sink's consumer")
            # Only the partitions still assigned: a batch in flight at a revoke is written and
            # reported after it, and a revoke can come during the recomputation. Committing a
            # revoked partition would fail the whole commit (IllegalStateError), and its position
            # row would overwrite the new owner's.
            assigned = consumer.assignment()
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if not offsets:
                return False
            await self.retry("sink_generations_failed", lambda: self.record(offsets))
            try:
                await consumer.commit(offsets)
                self.committed.update(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on (rebalance): the new owner re-reads from the last commit,
                # and the rows it writes again collapse on the sorting key.
                log.warning("sink_commit_failed", error=str(exc))
            await self.committed_hook()
            return True
