"""The sink applies a batch in chunks, giving the event loop back in between; a rebalance that
revokes partitions meanwhile must not drop visitors the rest of the batch still needs."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from services.aggregator import apply as apply_module
from services.aggregator.processor import SessionsProcessor
from services.aggregator.sessions import DayCount, Visitor
from services.aggregator.sink import EventsSink
from tests.unit.aggregator.test_sessions import ev
from werkstroom.contract import epoch_ms
from werkstroom.settings import Settings


def _sink(tmp_path: Any) -> EventsSink:
    sink = EventsSink(Settings(data_dir=tmp_path), "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]
    return sink


def _loaded(sink: EventsSink, events: list[Any]) -> None:
    """As if the events' visitors, days' counts and projects' zones were loaded: no ClickHouse here."""
    sink.processor.set_zones({event.project_id: "UTC" for event, _p, _o in events})
    for event, partition, _ in events:
        sink.processor.visitors.setdefault((event.project_id, event.anonymous_id), Visitor())
        sink.processor._partition_of[(event.project_id, event.anonymous_id)] = partition
        sink.processor.day_counts.setdefault(
            (event.project_id, event.timestamp.date(), partition), DayCount()
        )


def test_chunked_apply_gives_the_rows_of_one_pass(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(apply_module, "APPLY_CHUNK", 3)
    events = [(ev(i, n=i, anonymous_id=f"a{i % 4}"), i % 2, i) for i in range(10)]
    sink = _sink(tmp_path)
    _loaded(sink, events)
    rows, dirty, newest = asyncio.run(sink._aggregate(events, 1))
    expected_rows, expected_dirty = SessionsProcessor().process(events)
    assert rows == expected_rows
    assert (dirty.days, dirty.ids) == (expected_dirty.days, expected_dirty.ids)
    assert newest == {p: max(epoch_ms(e.timestamp) for e, q, _ in events if q == p) for p in (0, 1)}
    assert {v.batch for v in sink.processor.visitors.values()} == {1}
    assert next(iter(rows)) == "online_visitors"  # the live view is written first


def test_partitions_revoked_while_a_batch_is_applied_keep_their_visitors_until_it_is_done(
    tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(apply_module, "APPLY_CHUNK", 1)
    sink = _sink(tmp_path)
    events = [(ev(0, n=1), 1, 10), (ev(1, n=2), 1, 11), (ev(2, n=3), 1, 12)]
    _loaded(sink, events)
    revoked = TopicPartition(sink.topics.events, 1)

    async def scenario() -> Any:
        task = asyncio.create_task(sink._aggregate(events, 1))
        await asyncio.sleep(0)  # the first chunk is applied; the rebalance comes in between
        sink.forget({revoked})
        assert ("p", "a") in sink.processor.visitors
        return await task

    rows, _dirty, _newest = asyncio.run(scenario())
    sessions = rows["sessions"][1]
    assert len(sessions) == 1  # one session of three page views, not a restarted visitor
    assert ("p", "a") not in sink.processor.visitors  # revoked once the batch was applied
