"""The status stage alone (services/aggregator/status.py): the aggregator_status rows it writes
(one per partition this worker owns: freshness, newest event time, lag), when it writes them,
the lag gauge, and that a failure to write them is best effort. No Kafka and no ClickHouse: the
consumer is a fake of aiokafka's assignment()/highwater(), the client one of insert()/command()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.aggregator import retry as retry_module
from services.aggregator import status as status_module
from services.aggregator.batching import RefreshCadence
from services.aggregator.commit import Committer
from services.aggregator.retry import Retry, SinkStopped
from services.aggregator.status import RECORD_ONLINE, RECORD_ONLINE_BY, Status
from werkstroom.clickhouse.tables import AGGREGATOR_STATUS_COLUMNS

TOPIC = "werkstroom.events.v1"


def tp(partition: int, topic: str = TOPIC) -> TopicPartition:
    return TopicPartition(topic, partition)


class Consumer:
    """aiokafka's consumer as far as the status reads it: what it owns and each partition's high
    watermark as of the last fetch (None before the first)."""

    def __init__(self, ends: dict[TopicPartition, int | None]) -> None:
        self.ends = ends

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.ends[partition]


class Client:
    """clickhouse-connect's client as far as the status uses it."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.inserts: list[tuple[str, list[list[Any]], list[str]]] = []
        self.commands: list[str] = []

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        if self.fail is not None:
            raise self.fail
        self.inserts.append((table, rows, column_names))

    def command(self, statement: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.commands.append(statement)


def new_status(
    ends: dict[TopicPartition, int | None],
    *,
    committed: dict[TopicPartition, int] | None = None,
    newest: dict[int, int] | None = None,
    starts: dict[TopicPartition, int] | None = None,
    caught_up: Callable[[], bool] = lambda: False,
    last_write: float | None = None,
    client: Client | None = None,
) -> Status:
    status = Status(
        TOPIC,
        "host:1",
        caught_up,
        committed if committed is not None else {},
        newest if newest is not None else {},
        lambda: last_write,
        starts,
    )
    status.consumer = Consumer(ends)  # type: ignore[assignment]
    status.client = client if client is not None else Client()  # type: ignore[assignment]
    return status


def rows_of(status: Status) -> list[dict[str, Any]]:
    """The rows of every insert so far, by column name."""
    client: Any = status.client
    return [dict(zip(columns, row, strict=True)) for _t, rows, columns in client.inserts for row in rows]


def lag_gauge(partition: int) -> float | None:
    return REGISTRY.get_sample_value("werkstroom_sink_lag_messages", {"partition": str(partition)})


class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, event: str, **_fields: Any) -> None:
        self.warnings.append(event)


async def test_one_row_per_owned_partition_of_the_events_topic_with_its_lag_and_newest_event() -> None:
    status = new_status(
        {tp(2): 40, tp(0): 100, tp(1, "werkstroom.other"): 5},
        committed={tp(0): 90, tp(2): 40},
        newest={0: 1_700_000_000_111, 2: 1_700_000_000_222},
    )
    await status.write()
    client: Any = status.client
    ((table, _rows, columns),) = client.inserts
    assert table == "aggregator_status" and columns == AGGREGATOR_STATUS_COLUMNS
    rows = rows_of(status)
    assert [(r["topic"], r["partition"], r["worker"]) for r in rows] == [
        (TOPIC, 0, "host:1"),
        (TOPIC, 2, "host:1"),
    ]
    assert [r["lag"] for r in rows] == [10, 0]
    assert [r["last_event_at"] for r in rows] == [1_700_000_000_111, 1_700_000_000_222]
    await status.write()
    versions = [r["version"] for r in rows_of(status)]
    assert versions[2] > versions[0]  # the newer row wins in the ReplacingMergeTree


async def test_before_its_first_commit_a_partition_lags_from_where_it_is_read() -> None:
    status = new_status(
        {tp(0): 100, tp(1): 100, tp(2): None, tp(3): 50},
        committed={tp(3): 45},
        starts={tp(0): 30, tp(2): 0, tp(3): 10},
    )
    await status.write()
    # 0: from its start; 1: no start known (nothing to measure from); 2: nothing fetched yet;
    # 3: a commit outranks the start.
    assert [r["lag"] for r in rows_of(status)] == [70, 0, 0, 5]
    assert rows_of(status)[0]["last_event_at"] is None  # nothing written of it yet


async def test_a_lag_is_never_negative() -> None:
    """A commit past the high watermark the consumer last saw (that watermark dates from the last
    fetch; a log that started over is shorter than what was committed of the old one)."""
    status = new_status({tp(0): 20}, committed={tp(0): 500})
    await status.write()
    assert rows_of(status)[0]["lag"] == 0


async def test_caught_up_the_status_is_fresh_now() -> None:
    status = new_status({tp(0): 10}, committed={tp(0): 10}, caught_up=lambda: True, last_write=5.0)
    before = time.time()
    await status.write()
    after = time.time()
    assert int(before * 1000) <= rows_of(status)[0]["last_write_at"] <= int(after * 1000)
    assert before <= status.fresh_at <= after


async def test_behind_the_status_shows_the_last_write_so_a_stuck_writer_looks_stalled() -> None:
    status = new_status({tp(0): 900}, committed={tp(0): 10}, last_write=1_700_000_060.0)
    status.fresh_at = 1_700_000_000.0  # the last time it was caught up (or its start)
    await status.write()
    assert rows_of(status)[0]["last_write_at"] == 1_700_000_060_000
    assert status.fresh_at == 1_700_000_000.0  # not caught up: left as it was


async def test_behind_and_never_written_the_status_dates_from_the_start_not_1970() -> None:
    status = new_status({tp(0): 900}, last_write=None)
    status.fresh_at = 1_700_000_000.0  # run() sets it at the start
    await status.write()
    assert rows_of(status)[0]["last_write_at"] == 1_700_000_000_000


async def test_a_worker_that_owns_no_partition_writes_no_row() -> None:
    status = new_status({})
    await status.write()
    status.consumer = Consumer({tp(0, "werkstroom.other"): 3})  # type: ignore[assignment]
    await status.write()
    client: Any = status.client
    assert client.inserts == []


async def test_the_lag_gauge_keeps_only_the_partitions_this_worker_owns() -> None:
    ends: dict[TopicPartition, int | None] = {tp(40): 100, tp(41): 50}
    status = new_status(ends, committed={tp(40): 60, tp(41): 50})
    await status.write()
    assert (lag_gauge(40), lag_gauge(41)) == (40.0, 0.0)
    del ends[tp(41)]  # revoked: another worker's gauge says
    ends[tp(40)] = 160
    await status.write()
    assert (lag_gauge(40), lag_gauge(41)) == (100.0, None)
    del ends[tp(40)]
    await status.write()  # no row, but the gauge still goes
    assert lag_gauge(40) is None


async def test_a_transient_failure_to_write_the_status_is_only_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log()
    monkeypatch.setattr(retry_module, "log", log)
    status = new_status({tp(0): 10}, client=Client(fail=ConnectionRefusedError(111, "Connection refused")))
    await status.write()
    assert log.warnings == ["aggregator_status_failed"]


async def test_a_status_row_clickhouse_will_always_refuse_stops_the_sink() -> None:
    status = new_status({tp(0): 10}, client=Client(fail=TypeError("a row of ours is wrong")))
    with pytest.raises(SinkStopped, match="aggregator_status_failed"):
        await status.write()


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not within a second")


async def test_the_loop_writes_at_once_then_every_status_every_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_module, "TICK", 0.001)
    # A new Status last wrote at monotonic 0: its first tick is due (any uptime past 5 s).
    monkeypatch.setattr(status_module, "STATUS_EVERY", 5.0)
    status = new_status({tp(0): 10})
    client: Any = status.client
    loop = asyncio.create_task(status.loop())
    try:
        await wait_for(lambda: len(client.inserts) == 1)  # idle or not, the first at once
        await asyncio.sleep(0.03)  # many ticks, none STATUS_EVERY after the first
        assert len(client.inserts) == 1
        monkeypatch.setattr(status_module, "STATUS_EVERY", 0.0)
        await wait_for(lambda: len(client.inserts) >= 3)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_the_online_count_is_recorded_on_the_derived_client_best_effort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log()
    monkeypatch.setattr(retry_module, "log", log)
    status = new_status({})
    derived = Client()
    status.derived_client = derived  # type: ignore[assignment]
    before = time.monotonic()
    await status.record_online()
    assert derived.commands == [RECORD_ONLINE, RECORD_ONLINE_BY]
    assert status.history_at >= before
    derived.fail = ConnectionRefusedError(111, "Connection refused")
    await status.record_online()
    # each record on its own: the second is tried after the first failed
    assert log.warnings == ["online_history_failed", "online_history_by_failed"]


async def test_after_a_rebalance_onto_a_log_that_started_over_the_lag_counts_from_the_new_start() -> None:
    async def nothing(*_args: object) -> None:
        return None

    committer = Committer(RefreshCadence(1.0), Retry(asyncio.Event()), nothing, nothing)
    starts: dict[TopicPartition, int] = {}
    status = new_status({tp(0): 500}, committed=committer.committed, starts=starts)
    committer.committed[tp(0)] = 1000  # as a commit on the old log left it
    # The broker restarted with its topics in memory: the group rebalances; the sink forgets
    # the partition (EventsSink.forget), and the new assignment reads the new log from 0.
    committer.forget({tp(0)})
    starts[tp(0)] = 0
    await status.write()
    assert rows_of(status)[0]["lag"] == 500
