"""Logs that start over (issue 18): the embedded broker restarted (it keeps its topics in
memory), a topic deleted and created again, a topic's partition count changed. Offsets start
again at 0; the aggregator's versions are positions (services.aggregator.generations), so
nothing is skipped and nothing counted twice: the tables must equal an independent SQL
recomputation over `events`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.stack import Stack, own_names
from werkstroom.contract import message_key
from werkstroom.embedded import EmbeddedKafka
from werkstroom.kafka import ensure_topics

pytestmark = pytest.mark.integration

DAY = "2026-11-20"


def page(project_id: str, visitor: str, i: int) -> bytes:
    # Every event of a visitor falls in one session: i seconds after 10:00.
    return orjson.dumps(
        {
            "schema_version": 1,
            "event_id": f"{visitor}-{i}",
            "project_id": project_id,
            "type": "page",
            "event": "$pageview",
            "anonymous_id": visitor,
            "user_id": "",
            "previous_id": "",
            "session_id": "",
            "timestamp": f"{DAY}T10:{i // 60:02d}:{i % 60:02d}.000Z",
            "sent_at": None,
            "received_at": f"{DAY}T10:{i // 60:02d}:{i % 60:02d}.500Z",
            "url": f"https://example.com/p{i}",
            "path": f"/p{i}",
            "title": "",
            "referrer": "",
            "device_type": "desktop",
            "browser": "Firefox",
            "browser_version": "120",
            "os": "Linux",
            "os_version": "",
            "properties": {},
            "traits": {},
            "library": "test",
        }
    )


class Views:
    """The page views sent so far, per visitor (each event id once)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    async def send(self, stack: Stack, visitors: dict[str, int]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            for visitor, n in visitors.items():
                start = self.sent.get(visitor, 0)
                for i in range(start, start + n):
                    key = message_key(stack.project.project_id, visitor, "")
                    await producer.send(
                        stack.topics.events, page(stack.project.project_id, visitor, i), key=key
                    )
                self.sent[visitor] = start + n
            await producer.flush()
        finally:
            await producer.stop()


def tables(stack: Stack) -> dict[str, object]:
    p = {"p": stack.project.project_id}
    return {
        "views": dict(
            stack.rows(
                "SELECT anonymous_id, sum(page_views) FROM sessions FINAL "
                "WHERE project_id = {p:String} AND is_deleted = 0 GROUP BY 1",
                **p,
            )
        ),
        "sessions": stack.scalar(
            "SELECT count() FROM sessions FINAL WHERE project_id = {p:String} AND is_deleted = 0", **p
        ),
        "events_daily": stack.rows(
            "SELECT day, sum(page_views), sum(events) FROM events_daily FINAL WHERE project_id = {p:String} "
            "GROUP BY day",
            **p,
        ),
        "daily_stats": stack.rows(
            "SELECT day, sessions, page_views, events FROM daily_stats FINAL WHERE project_id = {p:String}",
            **p,
        ),
    }


def recomputed(stack: Stack) -> dict[str, object]:
    """The same, from `events` alone (every visitor's events fall in one session)."""
    p = {"p": stack.project.project_id}
    views = dict(
        stack.rows(
            "SELECT anonymous_id, countIf(type = 'page') FROM events FINAL WHERE project_id = {p:String} GROUP BY 1",
            **p,
        )
    )
    return {
        "views": views,
        "sessions": len(views),
        "events_daily": stack.rows(
            "SELECT toDate(timestamp), countIf(type = 'page'), count() FROM events FINAL "
            "WHERE project_id = {p:String} GROUP BY 1",
            **p,
        ),
        "daily_stats": stack.rows(
            "SELECT toDate(timestamp), uniqExact(anonymous_id), countIf(type = 'page'), count() "
            "FROM events FINAL WHERE project_id = {p:String} GROUP BY 1",
            **p,
        ),
    }


async def settled(stack: Stack, views: Views) -> None:
    """Run a sink until the tables hold every view sent, then stop it."""
    stack.start_sink()
    expected = dict(views.sent)
    total = sum(expected.values())

    def done() -> bool:
        got = tables(stack)
        return (
            stack.scalar("SELECT count() FROM events FINAL") == total
            and got["views"] == expected
            and got == recomputed(stack)
        )

    try:
        await stack.until(done, timeout=30)
    except AssertionError:
        raise AssertionError(
            f"sent {expected}; tables {tables(stack)}; recomputed {recomputed(stack)}"
        ) from None
    finally:
        await stack.stop_sink()
    got = tables(stack)
    assert got["views"] == expected
    assert got == recomputed(stack)
    assert got["daily_stats"][0][1:] == (len(expected), total, total)  # type: ignore[index]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedKafka]:
    kafka = EmbeddedKafka(log_path=tmp_path / "tansu.log").start()
    try:
        yield kafka
    finally:
        kafka.stop()


def stack_on(kafka: EmbeddedKafka, infra: object, tmp_path: Path, partitions: int = 4) -> Stack:
    return Stack(
        kafka.bootstrap,
        infra.clickhouse_url,  # type: ignore[attr-defined]
        own_names(),
        data_dir=tmp_path,
        ingest=False,
        sink=False,
        topic_partitions=partitions,
    )


async def test_broker_restarts_twice_and_returning_visitors_count_in_full(
    broker: EmbeddedKafka, infra: object, tmp_path: Path
) -> None:
    views = Views()
    async with stack_on(broker, infra, tmp_path) as stack:
        await views.send(stack, {"a": 100, "b": 100, "c": 100})
        await settled(stack, views)
        for round_ in range(2):  # the broker's topics and the group's offsets are gone each time
            broker.stop()
            broker.start()
            await ensure_topics(stack.bootstrap, stack.topics.all(), stack.settings.topic_partitions)
            await views.send(stack, {"a": 100, f"new-{round_}": 10, "b": 1})
            await settled(stack, views)
        assert views.sent["a"] == 300
        generations = stack.rows("SELECT DISTINCT generation FROM sink_partitions FINAL ORDER BY 1")
        assert generations[-1][0] >= 2


async def recreate(stack: Stack, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([stack.topics.events])
        for _ in range(50):
            if stack.topics.events not in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
        await admin.create_topics([NewTopic(stack.topics.events, partitions, 1)])
    finally:
        await admin.close()


@pytest.mark.parametrize("partitions", [4, 8])
async def test_topic_recreated_with_the_same_or_more_partitions_skips_and_doubles_nothing(
    broker: EmbeddedKafka, infra: object, tmp_path: Path, partitions: int
) -> None:
    views = Views()
    visitors = {f"v{i}": 20 for i in range(12)}  # 12 keys over 4 then 8 partitions: some move
    async with stack_on(broker, infra, tmp_path) as stack:
        await views.send(stack, visitors)
        await settled(stack, views)
        await recreate(stack, partitions)
        await views.send(stack, {**{v: 5 for v in visitors}, "late": 3})
        await settled(stack, views)
        assert views.sent["v0"] == 25


async def test_a_sink_restarted_on_the_same_log_reads_nothing_again(
    broker: EmbeddedKafka, infra: object, tmp_path: Path
) -> None:
    # The group's committed offsets are the log's end. tansu's ListOffsets gives the last
    # batch's base offset + 1, below them: taken for the end, the log looked shorter than what
    # was read of it, a new log, and everything was read (and counted) again.
    views = Views()
    async with stack_on(broker, infra, tmp_path) as stack:
        for round_ in range(3):
            await views.send(stack, {"a": 50, "b": 50, f"new-{round_}": 5})
            await settled(stack, views)
        generations = stack.rows("SELECT DISTINCT generation FROM sink_partitions FINAL")
        assert generations == [(0,)]
