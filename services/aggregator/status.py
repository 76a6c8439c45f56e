"""What the aggregator says about itself: its aggregator_status rows (freshness and lag per
partition) and the online history. Best effort: a failure here never holds back a commit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from services.aggregator.errors import started
from services.aggregator.retry import best_effort
from werkstroom import metrics
from werkstroom.breakdowns import filter_pairs
from werkstroom.clickhouse.tables import (
    AGGREGATOR_STATUS_COLUMNS,
    ONLINE_HISTORY_BY_COLUMNS,
    ONLINE_HISTORY_COLUMNS,
)
from werkstroom.clickhouse.versions import next_version

#: The freshness contract, stated once here: a live aggregator writes its aggregator_status
#: rows at least every STATUS_EVERY seconds, idle or not (`Status.loop`), with last_write_at =
#: now while it is caught up; readers call the pipeline stalled once last_write_at is older than
#: STALLED_AFTER (the dashboard's STALE_AFTER_S in services/api/static/app.js, which re-reads it
#: every 5 s). So an idle site is never "stalled", and a stopped aggregator is within ~10 s.
STATUS_EVERY = 2.0
STALLED_AFTER = 10.0
TICK = 0.05  # seconds between two checks whether the status is due
RECORD_ONLINE = f"""
INSERT INTO online_history ({", ".join(ONLINE_HISTORY_COLUMNS)})
SELECT project_id, toStartOfMinute(now('UTC')), count(), toUInt64(toUnixTimestamp64Milli(now64(3)))
FROM online_visitors FINAL
WHERE last_event_at >= now64(3) - INTERVAL 5 MINUTE
GROUP BY project_id
"""
#: The same minute's counts under each rolled filter value (online_history_by, migration 0040):
#: the online visitors whose current session has a breakdown_sessions row with the value, as the
#: API's "online now" counts them under one filter (services.api.filters.Filters.online: the
#: session looked for by its id among the rows of the project's today and yesterday; here among
#: those of the last three UTC days, which hold both in every zone). A visitor has one current
#: session, so its sessions are counted, each once under a value (DISTINCT). The online sessions
#: are tested in PREWHERE, on breakdown_sessions' key, so FINAL merges theirs alone: on the
#: bench's kept data (3,585 online), 59 ms (90 of CPU) as a join after FINAL -> 36 (44) (stop 49).
RECORD_ONLINE_BY = f"""
INSERT INTO online_history_by ({", ".join(ONLINE_HISTORY_BY_COLUMNS)})
SELECT project_id, pair.1, pair.2, toStartOfMinute(now('UTC')), count(),
       toUInt64(toUnixTimestamp64Milli(now64(3)))
FROM (
    SELECT DISTINCT project_id, session_id, arrayJoin([{filter_pairs()}]) AS pair
    FROM breakdown_sessions FINAL
    PREWHERE day >= toDate(now('UTC')) - 2
      AND (project_id, session_id) IN (SELECT project_id, session_id FROM online_visitors FINAL
                                       WHERE last_event_at >= now64(3) - INTERVAL 5 MINUTE)
    WHERE is_deleted = 0
)
GROUP BY project_id, pair
"""


class Status:
    def __init__(
        self,
        topic: str,
        worker: str,
        caught_up: Callable[[], bool],
        committed: dict[TopicPartition, int],
        newest: dict[int, int],
        last_write: Callable[[], float | None],
        starts: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.topic = topic
        self.worker = worker
        self.caught_up = caught_up
        self.committed = committed  # the committer's: the next offset committed, per partition
        self.newest = newest  # the writer's: the newest event time written (ms), per partition
        self.last_write = last_write
        # Where each partition is read from (the consumer stage's): lag before its first commit.
        self.starts = starts if starts is not None else {}
        self.consumer: AIOKafkaConsumer | None = None
        self.client: Client | None = None  # its own clock and client: a slow insert must not
        self.derived_client: Client | None = None  # make a live aggregator look stalled
        self.at = 0.0
        # Until its first write or catch-up, a worker's status dates from its start: fresh for
        # STALLED_AFTER, then stalled if it still has neither written nor caught up (never 1970).
        self.fresh_at = 0.0  # when the last status found the sink caught up (wall clock)
        self.history_at = 0.0
        self._lag_labels: set[str] = set()  # the partitions of SINK_LAG this worker set
        self._lock = asyncio.Lock()

    async def loop(self) -> None:
        """The status rows every STATUS_EVERY seconds, idle, backlogged or recomputing."""
        while True:
            await asyncio.sleep(TICK)
            if time.monotonic() - self.at >= STATUS_EVERY:
                await self.write()

    async def write(self) -> None:
        """One aggregator_status row per partition this worker owns: its last write, newest
        event time and lag."""
        async with self._lock:
            await self._write_rows()

    async def _write_rows(self) -> None:
        consumer = started(self.consumer, "the sink's consumer")
        client = started(self.client, "the status client")
        self.at = time.monotonic()
        now = time.time()
        if self.caught_up():
            self.fresh_at = now
        rows: list[list[Any]] = []
        for tp in sorted(consumer.assignment(), key=lambda t: t.partition):
            if tp.topic != self.topic:
                continue
            end = consumer.highwater(tp)
            done = self.committed.get(tp, self.starts.get(tp))
            lag = max(0, end - done) if end is not None and done is not None else 0
            newest = self.newest.get(tp.partition)
            # Caught up, there is nothing to write: the sink is as fresh as it gets. Behind, its
            # last batch written says whether it moves (a stuck writer shows an old one).
            written = max(self.last_write() or 0.0, self.fresh_at)
            rows.append(
                [tp.topic, tp.partition, self.worker, int(written * 1000), newest, lag, next_version()]
            )
            metrics.SINK_LAG.labels(str(tp.partition)).set(lag)
        held = {str(row[1]) for row in rows}
        for partition in self._lag_labels - held:  # another worker's now: its own gauge says
            with contextlib.suppress(KeyError):
                metrics.SINK_LAG.remove(partition)
        self._lag_labels = held
        if not rows:
            return
        try:
            await asyncio.to_thread(
                client.insert, "aggregator_status", rows, column_names=AGGREGATOR_STATUS_COLUMNS
            )
        except Exception as exc:
            best_effort("aggregator_status_failed", exc)

    async def record_online(self) -> None:
        """Record each project's online count for this minute (for "online a week ago"), and
        its counts under each rolled filter value (for the same under a filter). Every worker
        may record them; they count the same tables, and the last write wins. Each is on its
        own: the API reads a minute under a filter only where that filter has rows of it."""
        self.history_at = time.monotonic()
        for statement, failed in (
            (RECORD_ONLINE, "online_history_failed"),
            (RECORD_ONLINE_BY, "online_history_by_failed"),
        ):
            try:
                client = started(self.derived_client, "the derived tables' client")
                await asyncio.to_thread(client.command, statement)
            except Exception as exc:
                best_effort(failed, exc)
