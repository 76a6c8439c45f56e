"""A kill between a batch's inserts and its commit, on the embedded broker (issue 18, the crash
bench's lasting shortfall): `events` holds the batch, the aggregations do not, and the broker
comes back empty, so the batch is never read again. The aggregator replays it from `events`
when it finds that the log started over (services.aggregator.sink `_replay_tails`): the tables
must equal an independent SQL recomputation over `events`.

The kill is made real on both sides: ClickHouse takes the batch's `events` rows and sessions
but cannot take its later aggregates (`person_traits` is detached, as during a migration, so
the writer retries; `events_daily` comes after it), then the broker is killed and the sink's
task cancelled: it never drains, recomputes or commits."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.stack import Stack
from tests.integration.test_log_restart import DAY, Views, broker, page, recomputed, stack_on, tables
from werkstroom.contract import message_key
from werkstroom.embedded import EmbeddedKafka
from werkstroom.kafka import ensure_topics

pytestmark = pytest.mark.integration

__all__ = ["broker"]  # the embedded broker fixture, shared with test_log_restart

NEVER_MS = 3_600_000  # a derived refresh interval that never comes round within a test
DAY_DATE = date.fromisoformat(DAY)


def identify(project_id: str, visitor: str, i: int) -> bytes:
    event = orjson.loads(page(project_id, visitor, i))
    event.update(
        event_id=f"{visitor}-identify-{i}",
        type="identify",
        event="identify",
        user_id=f"user-{visitor}",
        traits={"plan": "pro", "i": i},
    )
    return orjson.dumps(event)


async def send_identify(stack: Stack, visitor: str, i: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        key = message_key(stack.project.project_id, visitor, "")
        await producer.send_and_wait(
            stack.topics.events, identify(stack.project.project_id, visitor, i), key=key
        )
    finally:
        await producer.stop()


def never_refreshing(stack: Stack) -> None:
    """The next sink started writes its batches but never recomputes nor commits them (after
    its first turn, which comes at once)."""
    stack.settings = stack.settings.model_copy(update={"derived_refresh_ms": NEVER_MS})


def count(stack: Stack) -> int:
    return int(stack.scalar("SELECT count() FROM events FINAL"))


async def crash(stack: Stack, kafka: EmbeddedKafka) -> None:
    """kill -9 of `werkstroom serve --target all`: the broker goes with its memory, the sink
    stops where it stands (its task cancelled: no drain, no recomputation, no commit)."""
    task = stack._tasks.pop()
    kafka.kill()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stack.sink = None


async def restart(stack: Stack, kafka: EmbeddedKafka) -> None:
    """The next start on the same database: an empty broker, a sink with the usual cadence."""
    stack.client.command("ATTACH TABLE person_traits")
    kafka.start()
    await ensure_topics(stack.bootstrap, stack.topics.all(), stack.settings.topic_partitions)
    stack.settings = stack.settings.model_copy(update={"derived_refresh_ms": 100})
    stack.start_sink()


async def settled(stack: Stack, total: int) -> None:
    def done() -> bool:
        return count(stack) == total and tables(stack) == recomputed(stack)

    try:
        await stack.until(done, timeout=30)
    except AssertionError:
        raise AssertionError(
            f"events {count(stack)} of {total}; tables {tables(stack)}; recomputed {recomputed(stack)}"
        ) from None
    finally:
        await stack.stop_sink()
    got = tables(stack)
    assert got == recomputed(stack)
    assert got["daily_stats"] == [(DAY_DATE, 3, total - 1, total)]  # one identify, the rest page views


async def written_not_counted(stack: Stack, total: int) -> None:
    """Wait until `events` holds `total` events and the writer is stuck on person_traits (so
    events_daily, inserted after it, lacks the batch); check the shortfall is there."""
    await stack.until(lambda: count(stack) == total, timeout=30)
    await asyncio.sleep(1.0)  # the writer is retrying person_traits meanwhile
    counted = stack.scalar(
        "SELECT sum(events) FROM events_daily FINAL WHERE project_id = {p:String}",
        p=stack.project.project_id,
    )
    assert counted < total, "the batch was counted: nothing to replay"


async def test_a_batch_written_but_not_counted_before_a_kill_is_counted_after_the_restart(
    broker: EmbeddedKafka, infra: object, tmp_path: Path
) -> None:
    views = Views()
    async with stack_on(broker, infra, tmp_path) as stack:
        never_refreshing(stack)
        stack.start_sink()
        # A first batch written and committed (the cadence's first turn comes at once).
        await views.send(stack, {"a": 30, "b": 30})
        await stack.until(
            lambda: (
                count(stack) == 60
                and (stack.scalar("SELECT sum(next_offset) FROM sink_partitions FINAL") or 0) > 0
            ),
            timeout=30,
        )
        # The next one reaches `events` and sessions, not person_traits nor events_daily.
        stack.client.command("DETACH TABLE person_traits")
        await views.send(stack, {"a": 20, "b": 20})
        await send_identify(stack, "a", 1000)
        await written_not_counted(stack, 101)
        await crash(stack, broker)
        await restart(stack, broker)
        await views.send(stack, {"a": 5, "c": 5})
        await settled(stack, 111)


async def test_a_kill_before_the_first_commit_of_a_generation_replays_and_reads_the_new_log_above_it(
    broker: EmbeddedKafka, infra: object, tmp_path: Path
) -> None:
    # Nothing committed in the generation: its record says next_offset 0, which an empty log
    # matches. The rows in `events` tell that it was read past 0: a new log, whose offsets must
    # not be read under the positions the lost one took (its events would be skipped).
    views = Views()
    async with stack_on(broker, infra, tmp_path) as stack:
        never_refreshing(stack)
        stack.client.command("DETACH TABLE person_traits")
        stack.start_sink()
        await views.send(stack, {"a": 30, "b": 30})
        await send_identify(stack, "a", 1000)
        await written_not_counted(stack, 61)
        assert stack.scalar("SELECT sum(next_offset) FROM sink_partitions FINAL") == 0
        await crash(stack, broker)
        await restart(stack, broker)
        await views.send(stack, {"a": 40, "b": 5, "c": 5})
        await settled(stack, 111)
