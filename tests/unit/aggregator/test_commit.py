"""The recompute-and-commit stage alone (services/aggregator/commit.py): what is written is
recomputed, recorded and committed in that order, and only what is written; a revoked partition's
pending offsets are dropped; offsets may go backwards (a log that started over). No Kafka and no
ClickHouse: the consumer is a fake of aiokafka's commit(), the recomputation a function of ours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from services.aggregator import commit as commit_module
from services.aggregator.batching import RefreshCadence
from services.aggregator.commit import Committer
from services.aggregator.processor import Dirty
from services.aggregator.retry import Retry, SinkStopped

TOPIC = "werkstroom.events.v1"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def dirty(*ids: str) -> Dirty:
    return Dirty({("p", date(2024, 5, 1))}, {("p", i) for i in ids})


class Consumer:
    """aiokafka's consumer as far as the committer uses it. Like aiokafka's, commit() refuses the
    whole commit (IllegalStateError) when one of its partitions is not assigned."""

    def __init__(self, steps: list[tuple[str, Any]], *assigned: TopicPartition) -> None:
        self.steps = steps
        self.assigned = set(assigned)
        self.refuse: Exception | None = None  # the group moved on: every commit fails

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse is not None:
            raise self.refuse
        for tp in offsets:
            if tp not in self.assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.steps.append(("commit", dict(offsets)))


@dataclass
class Stage:
    """A committer wired to fakes that write each step down, in order, in `steps`."""

    committer: Committer
    consumer: Consumer
    steps: list[tuple[str, Any]]
    during_refresh: list[Callable[[], None]] = field(default_factory=list)
    warnings: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def commits(self) -> list[dict[TopicPartition, int]]:
        return [what for step, what in self.steps if step == "commit"]

    def step_names(self) -> list[str]:
        return [step for step, _what in self.steps]


class Log:
    def __init__(self, warnings: list[tuple[str, dict[str, Any]]]) -> None:
        self.warnings = warnings

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append((event, fields))


@pytest.fixture
def stage(monkeypatch: pytest.MonkeyPatch) -> Stage:
    steps: list[tuple[str, Any]] = []

    async def record(offsets: dict[TopicPartition, int]) -> None:
        steps.append(("record", dict(offsets)))

    async def status() -> None:
        steps.append(("status", None))

    committer = Committer(RefreshCadence(interval=1.0), Retry(asyncio.Event()), record, status)
    consumer = Consumer(steps, P0, P1)
    committer.consumer = consumer  # type: ignore[assignment]
    committer.client = object()  # type: ignore[assignment]  # only handed to refresh, a fake
    built = Stage(committer, consumer, steps)

    def refresh(_client: object, keys: Dirty, *_rollups: object) -> None:  # runs in a thread, as the real one
        steps.append(("refresh", Dirty(set(keys.days), set(keys.ids))))
        for meanwhile in built.during_refresh:
            meanwhile()

    monkeypatch.setattr(commit_module, "refresh", refresh)
    monkeypatch.setattr(commit_module, "log", Log(built.warnings))
    return built


async def test_nothing_written_is_nothing_to_recompute_or_commit(stage: Stage) -> None:
    assert await stage.committer.refresh_and_commit() is False
    assert stage.steps == []


async def test_a_written_batch_is_recomputed_recorded_committed_then_reported(stage: Stage) -> None:
    stage.committer.written(dirty("u1"), {P0: 10, P1: 7})
    assert await stage.committer.refresh_and_commit() is True
    assert stage.steps == [
        ("refresh", dirty("u1")),
        ("record", {P0: 10, P1: 7}),  # the positions, before their offsets are committed
        ("commit", {P0: 10, P1: 7}),
        ("status", None),
    ]
    assert stage.committer.committed == {P0: 10, P1: 7}
    assert await stage.committer.refresh_and_commit() is False  # committed once only
    assert len(stage.steps) == 4


async def test_each_partition_commits_the_offset_of_its_last_written_batch(stage: Stage) -> None:
    stage.committer.written(dirty("u1"), {P0: 10})
    stage.committer.written(dirty("u2"), {P0: 25, P1: 3})
    await stage.committer.refresh_and_commit()
    assert stage.steps[0] == ("refresh", dirty("u1", "u2"))  # both batches' keys, once
    assert stage.commits() == [{P0: 25, P1: 3}]


async def test_a_batch_written_during_a_recomputation_is_committed_by_the_next_one(stage: Stage) -> None:
    """The writer goes on while the derived tables are recomputed: what it writes meanwhile was
    not recomputed, so it must not ride along with this commit, nor be lost."""
    stage.committer.written(dirty("u1"), {P0: 10})
    stage.during_refresh.append(lambda: stage.committer.written(dirty("u2"), {P0: 20, P1: 4}))
    await stage.committer.refresh_and_commit()
    assert stage.commits() == [{P0: 10}]
    stage.during_refresh.clear()
    assert await stage.committer.refresh_and_commit() is True
    assert stage.steps[-4][0] == "refresh" and stage.steps[-4][1].ids == {("p", "u2")}
    assert stage.commits() == [{P0: 10}, {P0: 20, P1: 4}]
    assert stage.committer.committed == {P0: 20, P1: 4}


async def test_offsets_that_go_backwards_are_committed_as_written(stage: Stage) -> None:
    """The broker keeps its topics in memory: after a restart or a topic created again, the
    next offsets written are below the ones committed before. The newest written wins, not the
    highest."""
    stage.committer.written(dirty("u1"), {P0: 500})
    await stage.committer.refresh_and_commit()
    stage.committer.written(dirty("u2"), {P0: 3})
    await stage.committer.refresh_and_commit()
    assert stage.commits() == [{P0: 500}, {P0: 3}]
    assert stage.committer.committed == {P0: 3}
    # ... also when both are still pending at the commit.
    stage.committer.written(dirty("u3"), {P1: 900})
    stage.committer.written(dirty("u4"), {P1: 2})
    await stage.committer.refresh_and_commit()
    assert stage.commits()[-1] == {P1: 2}
    assert [what for step, what in stage.steps if step == "record"][-1] == {P1: 2}


async def test_a_revoked_partitions_pending_offsets_are_neither_recorded_nor_committed(
    stage: Stage,
) -> None:
    stage.committer.written(dirty("u1"), {P0: 10, P1: 7})
    stage.consumer.assigned.discard(P1)
    stage.committer.forget({P1})
    assert await stage.committer.refresh_and_commit() is True
    assert stage.steps[1:3] == [("record", {P0: 10}), ("commit", {P0: 10})]
    assert stage.committer.committed == {P0: 10}
    # Its keys are still recomputed: its rows were written.
    assert stage.steps[0] == ("refresh", dirty("u1"))


async def test_forgetting_the_only_partition_leaves_its_keys_to_recompute_and_nothing_to_commit(
    stage: Stage,
) -> None:
    stage.committer.written(dirty("u1"), {P1: 7})
    stage.committer.forget({P1})
    assert await stage.committer.refresh_and_commit() is False
    assert stage.step_names() == ["refresh"]


async def test_keys_dirtied_with_no_offsets_are_recomputed_and_nothing_is_committed(stage: Stage) -> None:
    """A tail replayed from `events` dirties keys but has no offsets of its own."""
    before = time.monotonic()
    stage.committer.written(dirty("u1"), {})
    assert await stage.committer.refresh_and_commit() is False
    assert stage.step_names() == ["refresh"]
    assert stage.committer.committed == {}
    # The cadence still learns that a recomputation ran.
    assert stage.committer.cadence.floor >= before + 1.0


async def test_the_cadence_counts_from_the_start_of_the_recomputation(stage: Stage) -> None:
    before = time.monotonic()
    stage.committer.written(dirty("u1"), {P0: 1})
    await stage.committer.refresh_and_commit()
    after = time.monotonic()
    cadence = stage.committer.cadence
    assert before + 1.0 <= cadence.floor <= after + 1.0
    assert not cadence.due(after, caught_up=True)  # the next one waits out the interval


async def test_a_commit_the_group_refuses_is_logged_and_not_counted_as_committed(stage: Stage) -> None:
    """A rebalance moved the partitions on: the new owner re-reads from the last commit."""
    stage.committer.written(dirty("u1"), {P0: 10})
    await stage.committer.refresh_and_commit()
    stage.consumer.refuse = CommitFailedError("the group rebalanced")
    stage.committer.written(dirty("u2"), {P0: 30})
    assert await stage.committer.refresh_and_commit() is True
    assert stage.committer.committed == {P0: 10}
    assert [event for event, _fields in stage.warnings] == ["sink_commit_failed"]
    assert stage.committer.pending_offsets == {}  # not retried: the new owner reads them
    assert stage.step_names()[-1] == "status"


@pytest.mark.parametrize("failing", ["refresh", "record"])
async def test_nothing_is_committed_when_the_recomputation_or_the_record_fails(
    stage: Stage, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def broken(*_args: object) -> None:
        raise TypeError("a bug of ours")

    async def broken_record(_offsets: dict[TopicPartition, int]) -> None:
        broken()

    if failing == "refresh":
        monkeypatch.setattr(commit_module, "refresh", broken)
    else:
        stage.committer.record = broken_record
    stage.committer.written(dirty("u1"), {P0: 10})
    with pytest.raises(SinkStopped, match="a programming error"):
        await stage.committer.refresh_and_commit()
    assert stage.commits() == [] and stage.committer.committed == {}
    assert "status" not in stage.step_names()


def revoke_p1(stage: Stage) -> None:
    """What a rebalance does: the consumer no longer owns P1, the sink forgets it."""
    stage.consumer.assigned.discard(P1)
    stage.committer.forget({P1})


@pytest.mark.parametrize("when", ["written_after_the_revoke", "revoked_during_the_recomputation"])
async def test_a_partition_revoked_while_its_batch_is_in_flight_is_not_committed(
    stage: Stage, when: str
) -> None:
    if when == "written_after_the_revoke":
        # The rebalance listener lets what is in flight be written: it is reported after the revoke.
        revoke_p1(stage)
        stage.committer.written(dirty("u1"), {P0: 12, P1: 9})
    else:
        stage.committer.written(dirty("u1"), {P0: 12, P1: 9})
        stage.during_refresh.append(lambda: revoke_p1(stage))
    await stage.committer.refresh_and_commit()
    assert [what for step, what in stage.steps if step == "record"] == [{P0: 12}]
    assert stage.commits() == [{P0: 12}]
    assert stage.committer.committed == {P0: 12}
