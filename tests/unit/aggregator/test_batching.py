"""The batch stage alone (services/aggregator/batching.py): when a batch is cut, and what a cut
and a revocation take from the buffer. No Kafka: records and clocks are plain values."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from services.aggregator.batching import BACKLOG_HOLD, Buffer, batch_due, fetch_until


def never() -> int:
    raise AssertionError("the backlog need not be asked")


def test_a_full_batch_is_due_at_once() -> None:
    assert batch_due(100, 100, now=0.0, deadline=5.0, flush_every=0.2, waiting=never)
    assert batch_due(120, 100, now=0.0, deadline=5.0, flush_every=0.2, waiting=never)


def test_a_partial_batch_waits_for_its_flush_interval() -> None:
    assert not batch_due(10, 100, now=4.9, deadline=5.0, flush_every=0.2, waiting=never)


def test_past_the_interval_a_partial_batch_is_due_unless_a_full_one_is_waiting() -> None:
    assert batch_due(10, 100, now=5.0, deadline=5.0, flush_every=0.2, waiting=lambda: 89)
    # The rest of a full batch is already in the topic: it fills up first ...
    assert not batch_due(10, 100, now=5.0, deadline=5.0, flush_every=0.2, waiting=lambda: 90)
    # ... for at most BACKLOG_HOLD more intervals.
    held_until = 5.0 + BACKLOG_HOLD * 0.2
    assert batch_due(10, 100, now=held_until, deadline=5.0, flush_every=0.2, waiting=lambda: 10_000)


def test_the_fetch_waits_until_the_deadline_then_the_backlog_hold() -> None:
    assert fetch_until(4.0, 5.0, 0.2) == 5.0
    assert fetch_until(5.0, 5.0, 0.2) == 5.0 + BACKLOG_HOLD * 0.2


def buffer_with(events: list[tuple[int, int]]) -> Buffer:
    """A buffer holding (partition, offset) events, their raw rows beside them."""
    buffer = Buffer()
    for partition, offset in events:
        event: Any = object()
        buffer.events.append((event, partition, offset))
        buffer.raw.append(b"%d:%d" % (partition, offset))
        buffer.offsets[TopicPartition("t", partition)] = offset + 1
    return buffer


def test_a_cut_takes_everything_held_and_leaves_an_empty_buffer() -> None:
    buffer = buffer_with([(0, 1), (1, 7)])
    buffer.dead.append((b"k", b"letter"))
    held = buffer.cut()
    assert held is not None
    assert [p for _e, p, _o in held.events] == [0, 1] and held.raw == [b"0:1", b"1:7"]
    assert held.dead == [(b"k", b"letter")]
    assert held.offsets == {TopicPartition("t", 0): 2, TopicPartition("t", 1): 8}
    assert (buffer.events, buffer.raw, buffer.dead, buffer.offsets) == ([], [], [], {})
    assert buffer.cut() is None  # nothing taken since: nothing to cut


def test_only_dead_letters_still_make_a_batch() -> None:
    """A fetch of bad messages only: their offsets are committed once the letters are out."""
    buffer = Buffer()
    buffer.dead.append((b"k", b"letter"))
    buffer.offsets[TopicPartition("t", 0)] = 3
    held = buffer.cut()
    assert held is not None and held.events == [] and held.dead == [(b"k", b"letter")]


def test_forgetting_a_partition_drops_its_events_rows_and_offset_only() -> None:
    buffer = buffer_with([(0, 1), (1, 2), (0, 3), (2, 4)])
    buffer.forget({TopicPartition("t", 0)})
    assert [(p, o) for _e, p, o in buffer.events] == [(1, 2), (2, 4)]
    assert buffer.raw == [b"1:2", b"2:4"]  # the rows stay beside their events
    assert set(buffer.offsets) == {TopicPartition("t", 1), TopicPartition("t", 2)}
