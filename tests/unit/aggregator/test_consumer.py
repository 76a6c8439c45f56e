"""The consumer stage alone (services/aggregator/consumer.py): the rebalance listener, and the
bookkeeping of each partition's position: the generation it is read under after an assignment,
where it is read from (also when its offsets went backwards: the broker keeps its topics in
memory), the tails held back until replayed, and what a commit records. No Kafka and no
ClickHouse: the consumer is a fake of aiokafka's, and what generations.py reads and writes in
ClickHouse or asks Kafka is a dict here (generations.decide itself is the real one)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from services.aggregator import consumer as consumer_module
from services.aggregator import generations
from services.aggregator.batching import Buffer
from services.aggregator.consumer import Positions, Rebalance, Replay
from services.aggregator.decode import Decoder
from services.aggregator.generations import Record, Tail, anchor_of, base
from services.aggregator.retry import Retry
from tests.unit.aggregator.test_decode import good

TOPIC = "werkstroom.events.v1"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
OTHER = TopicPartition("werkstroom.other", 0)
NOW = 1_700_000_000_000  # ClickHouse's clock when the assignment decides (ms)
BEGAN = 1_690_000_000_000  # when the recorded generation began


# -- the rebalance listener -------------------------------------------------------------------


class Sink:
    """What the listener asks of EventsSink."""

    def __init__(self) -> None:
        self.topics = SimpleNamespace(events=TOPIC)
        self.joined = True
        self.forgotten: list[set[TopicPartition]] = []
        self.assigned: list[list[TopicPartition]] = []
        self.joined_while_deciding: bool | None = None

    def forget(self, partitions: set[TopicPartition]) -> None:
        self.forgotten.append(partitions)

    async def assign_generations(self, assigned: list[TopicPartition]) -> None:
        self.joined_while_deciding = self.joined
        self.assigned.append(list(assigned))


async def test_a_revoke_forgets_the_events_topics_partitions_and_leaves_the_group_unjoined() -> None:
    sink = Sink()
    await Rebalance(sink).on_partitions_revoked([P0, OTHER, P1])
    assert sink.forgotten == [{P0, P1}]
    assert sink.joined is False  # readiness: a rebalance is under way


async def test_the_group_is_joined_only_once_the_assigned_partitions_have_their_generations() -> None:
    sink = Sink()
    await Rebalance(sink).on_partitions_revoked([P0])
    await Rebalance(sink).on_partitions_assigned([P1, P0])
    assert sink.assigned == [[P1, P0]]
    assert sink.joined_while_deciding is False
    assert sink.joined is True


# -- the positions: fakes of what generations.py reads and writes ------------------------------


class Consumer:
    """aiokafka's consumer as far as the positions use it."""

    def __init__(self, committed: dict[TopicPartition, int], partitions: int = 2) -> None:
        self.offsets = committed  # the group's committed offsets
        self.partitions = partitions
        self.beginnings: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.partitions)) if topic == TOPIC else None

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.offsets.get(partition)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.beginnings.get(tp, 0) for tp in partitions}


@dataclass
class World:
    """What is recorded in ClickHouse (sink_partitions, the tails in `events`) and what Kafka
    says (the logs' ends, the messages at given offsets)."""

    records: dict[int, Record] = field(default_factory=dict)
    saved: list[tuple[int, int, int, int, int, int | None]] = field(default_factory=list)
    tails: dict[int, Tail] = field(default_factory=dict)
    tail_reads: list[tuple[str, int, int, int]] = field(default_factory=list)
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    anchors: dict[tuple[TopicPartition, int], int] = field(default_factory=dict)
    anchors_asked: dict[TopicPartition, int] = field(default_factory=dict)
    fail: Exception | None = None  # what reading the records raises


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()

    def load(_client: object, topic: str) -> tuple[dict[int, Record], generations.Topic]:
        assert topic == TOPIC
        if w.fail is not None:
            raise w.fail
        if not w.records:
            return {}, generations.Topic()
        newest = max(w.records.values(), key=lambda r: (r.generation, r.partitions))
        return dict(w.records), generations.Topic(newest.generation, newest.partitions)

    def save(_client: object, topic: str, rows: Any, _worker: str) -> None:
        assert topic == TOPIC
        for row in rows:
            w.saved.append(row)
            p, g, n, a, c, b = row
            w.records[p] = Record(g, n, a, c, b)

    def tails(_client: object, _table: str, known: dict[int, tuple[int, int]]) -> dict[int, Tail]:
        return {p: t for p, t in w.tails.items() if p in known}

    def tail_events(_client: object, table: str, partition: int, start: int, began: int) -> list[Any]:
        w.tail_reads.append((table, partition, start, began))
        return [("event", start), ("event", start + 1)]

    async def log_ends_at(_bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: w.ends[tp] for tp in tps}

    async def anchors_at(_bootstrap: str, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        w.anchors_asked.update(wanted)
        return {tp: w.anchors[(tp, at)] for tp, at in wanted.items() if (tp, at) in w.anchors}

    async def event_ids_at(_bootstrap: str, _wanted: dict[TopicPartition, int]) -> dict[TopicPartition, str]:
        return {}

    monkeypatch.setattr(generations, "clock_ms", lambda _client: NOW)
    monkeypatch.setattr(generations, "load", load)
    monkeypatch.setattr(generations, "counted_partitions", lambda _client: set())
    monkeypatch.setattr(generations, "save", save)
    monkeypatch.setattr(generations, "tails", tails)
    monkeypatch.setattr(generations, "tail_events", tail_events)
    monkeypatch.setattr(generations, "anchors_at", anchors_at)
    monkeypatch.setattr(generations, "event_ids_at", event_ids_at)
    monkeypatch.setattr(consumer_module, "log_ends_at", log_ends_at)
    return w


def positions(consumer: Consumer | None, stopping: asyncio.Event | None = None) -> Positions:
    stopping = stopping if stopping is not None else asyncio.Event()
    built = Positions(TOPIC, "events", "localhost:1", "host:1", Retry(stopping), stopping)
    built.consumer = consumer  # type: ignore[assignment]
    built.client = object()  # type: ignore[assignment]  # only handed to the fakes above
    return built


async def test_a_first_start_reads_generation_0_from_the_committed_offsets_and_records_it(
    world: World,
) -> None:
    consumer = Consumer({P0: 40})  # P1: nothing committed yet
    consumer.beginnings[P1] = 5
    world.ends = {P0: 60, P1: 9}
    at = positions(consumer)
    await at.assign([P1, P0, OTHER])
    assert at.bases == {P0: base(0), P1: base(0)}
    assert consumer.seeks == []  # the committed offset, or the log's first one
    assert at.starts == {P0: 40, P1: 5}
    assert world.saved == [(0, 0, 0, 0, 2, NOW), (1, 0, 0, 0, 2, NOW)]
    assert at.began == {P0: NOW, P1: NOW}
    assert at.partition_count == 2 and not at.failed


async def test_the_same_log_is_read_on_from_its_commit_under_its_generation(world: World) -> None:
    world.records = {0: Record(3, 100, 77, 2, BEGAN)}
    world.ends = {P0: 150}
    consumer = Consumer({P0: 120})
    at = positions(consumer)
    await at.assign([P0])
    assert at.bases == {P0: base(3)}
    assert consumer.seeks == [(P0, 120)]
    assert at.starts == {P0: 120}
    assert at.began == {P0: BEGAN}  # carried forward
    assert world.saved == []  # nothing new to record


@pytest.mark.parametrize(
    ("committed", "end"),
    [
        pytest.param(None, 20, id="broker_restarted_group_offsets_gone"),
        pytest.param(500, 20, id="topic_recreated_commit_past_the_end"),
    ],
)
async def test_a_log_that_started_over_is_read_from_0_under_a_generation_above_the_old_one(
    world: World, committed: int | None, end: int
) -> None:
    world.records = {0: Record(3, 100, 77, 2)}  # read up to offset 100 in generation 3
    world.ends = {P0: end}
    consumer = Consumer({P0: committed} if committed is not None else {})
    at = positions(consumer)
    await at.assign([P0])
    assert consumer.seeks == [(P0, 0)]
    assert at.starts == {P0: 0}
    assert at.bases == {P0: base(4)}
    assert world.saved == [(0, 4, 0, 0, 2, NOW)]  # recorded before anything of it is read
    # Every position of the new log is above every position of the old one.
    assert at.bases[P0] + 0 > base(3) + 100


async def test_messages_of_a_new_log_take_positions_above_every_one_the_old_log_gave(world: World) -> None:
    world.records = {0: Record(3, 100, 77, 2)}
    world.ends = {P0: 20}
    at = positions(Consumer({}))
    await at.assign([P0])
    buffer = Buffer()
    Decoder(10).take(P0, [good(0), good(1)], base=at.bases[P0], buffer=buffer)
    old = [base(3) + offset for offset in range(100)]
    assert all(position > max(old) for _event, _p, position in buffer.events)


async def test_without_a_commit_the_log_is_recognised_by_the_message_before_its_record(world: World) -> None:
    """The group's offsets are gone (expired) but the log is the same: its message at the
    recorded next_offset - 1 still has the recorded anchor, and it is read on from there."""
    world.records = {0: Record(3, 100, 77, 2, BEGAN), 1: Record(3, 50, 88, 2, BEGAN)}
    world.ends = {P0: 150, P1: 70}
    world.anchors = {(P0, 99): 77, (P1, 49): 12345}  # P1's log holds another message there
    consumer = Consumer({})
    at = positions(consumer)
    await at.assign([P0, P1])
    assert world.anchors_asked == {P0: 99, P1: 49}
    assert consumer.seeks == [(P0, 100), (P1, 0)]
    assert at.bases == {P0: base(3), P1: base(4)}


async def test_a_new_log_with_a_tail_never_committed_is_held_back_until_the_tail_is_replayed(
    world: World,
) -> None:
    world.records = {0: Record(3, 100, 77, 2, BEGAN)}
    world.tails = {0: Tail(last=130, event_id="e130", rows=31)}  # written past the record, never committed
    world.ends = {P0: 20}
    consumer = Consumer({})
    at = positions(consumer)
    await at.assign([P0])
    replay = at.replays[P0]
    assert (replay.generation, replay.start, replay.began, replay.seek) == (3, 100, BEGAN, 0)
    # Nothing of the new log is read, nor its generation recorded, before the tail is replayed.
    assert consumer.paused == {P0} and consumer.seeks == []
    assert P0 not in at.bases and world.saved == []
    assert at.starts == {P0: 0}
    # The tail: the previous generation's events past its record.
    assert await at.tail_events(P0, replay) == [("event", 100), ("event", 101)]
    assert world.tail_reads == [("events", 0, 100, BEGAN)]
    # Replayed: the new generation is recorded, and the new log read from its start.
    assert await at.replayed({P0: replay}) == {P0: replay}
    assert world.saved == [(0, 4, 0, 0, 2, NOW)]
    assert at.bases == {P0: base(4)} and at.began == {P0: NOW}
    assert consumer.seeks == [(P0, 0)] and consumer.paused == set()
    assert at.replays == {}


async def test_a_replay_revoked_or_decided_again_meanwhile_is_neither_recorded_nor_resumed(
    world: World,
) -> None:
    world.records = {0: Record(3, 100, 77, 2, BEGAN)}
    world.tails = {0: Tail(last=130, event_id="e130", rows=31)}
    world.ends = {P0: 20}
    consumer = Consumer({})
    at = positions(consumer)
    await at.assign([P0])
    first = at.replays[P0]
    await at.assign([P0])  # decided again (a second rebalance): a new replay
    assert await at.replayed({P0: first}) == {}
    at.forget({P0})  # revoked: the new owner decides and replays it again
    assert at.replays == {} and at.starts == {}
    assert await at.replayed({P0: Replay(3, 100, BEGAN, (0, 4, 0, 0, 2, NOW), 0)}) == {}
    assert world.saved == [] and consumer.seeks == [] and consumer.paused == {P0}
    assert P0 not in at.bases


async def test_partitions_of_other_topics_are_not_decided() -> None:
    at = positions(None)  # neither a consumer nor a client is needed
    at.client = None
    at.bases[OTHER] = base(2)
    await at.assign([OTHER])
    assert at.bases == {OTHER: base(2)} and not at.failed


async def test_an_assignment_that_cannot_decide_leaves_no_stale_generation_and_fails(world: World) -> None:
    """Read under the generation of a previous assignment, the new log's offsets could land below
    positions already taken: no base at all makes the sink stop at its first message instead."""
    world.fail = TypeError("a bug of ours")
    world.ends = {P0: 10}
    at = positions(Consumer({}))
    at.bases[P0] = base(3)
    await at.assign([P0])
    assert at.failed
    assert P0 not in at.bases


async def test_an_assignment_given_up_because_the_sink_stops_is_no_failure(world: World) -> None:
    world.fail = ConnectionRefusedError(111, "Connection refused")  # transient: retried, until the stop
    world.ends = {P0: 10}
    stopping = asyncio.Event()
    stopping.set()
    at = positions(Consumer({}), stopping)
    await at.assign([P0])
    assert not at.failed
    assert at.bases == {}


async def test_a_commit_records_each_partitions_generation_next_offset_and_anchor(world: World) -> None:
    at = positions(Consumer({}))
    at.partition_count = 2
    at.bases = {P0: base(3), P1: base(0)}
    at.began = {P0: BEGAN, P1: None}
    at.lasts = {
        (P0, 10): (b"k", b"v10"),
        (P0, 15): (b"k", b"v15"),  # taken past the commit: kept for the next one
        (P1, 7): (None, b"v7"),
    }
    await at.record({P0: 10, P1: 7, OTHER: 3})
    assert world.saved == [
        (0, 3, 10, anchor_of(b"k", b"v10"), 2, BEGAN),
        (1, 0, 7, anchor_of(None, b"v7"), 2, None),
    ]
    assert at.lasts == {(P0, 15): (b"k", b"v15")}


async def test_a_commit_records_no_row_for_a_partition_with_no_generation_and_anchor_0_if_unknown(
    world: World,
) -> None:
    at = positions(Consumer({}))
    at.partition_count = 2
    at.bases = {P0: base(1)}  # P1: its assignment could not decide
    await at.record({P0: 4, P1: 9})
    assert world.saved == [(0, 1, 4, 0, 2, None)]


async def test_a_commit_after_the_log_started_over_records_the_new_logs_anchor(world: World) -> None:
    """Offsets go backwards: the record of offset 5 of the new log takes the new log's message."""
    at = positions(Consumer({}))
    at.partition_count = 2
    at.bases = {P0: base(4)}
    at.lasts = {(P0, 900): (b"k", b"old"), (P0, 5): (b"k", b"new")}
    await at.record({P0: 5})
    assert world.saved == [(0, 4, 5, anchor_of(b"k", b"new"), 2, None)]
    assert (P0, 5) not in at.lasts
