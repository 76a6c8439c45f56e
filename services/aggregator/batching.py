"""The batch stage: what the consumer took, held until the batch is due, and when that is.

Policy (Arroyo's Reduce, explicit): a batch is cut when it holds `sink_batch_rows` events, or a
flush interval after the previous cut, unless the rest of a full batch is already waiting in
the topic (a backlog): then it fills up first, for at most BACKLOG_HOLD more intervals. Fewer,
larger batches while behind mean fewer inserts, parts to merge and session rows written again.
`RefreshCadence` says when the derived tables are recomputed (services.aggregator.commit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from services.aggregator.processor import Decoded

BACKLOG_HOLD = 3  # flush intervals a batch may wait to fill up while there is a backlog


@dataclass
class Held:
    """The records of one batch, as cut from what the loop took."""

    dead: list[tuple[bytes, bytes]]
    events: list[Decoded]
    raw: list[bytes]  # the events as JSONEachRow lines of `events`, beside them
    offsets: dict[TopicPartition, int]


@dataclass
class Buffer:
    """What was taken since the last cut: events, their raw rows, dead letters, and the next
    offset of each partition taken from."""

    events: list[Decoded] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    dead: list[tuple[bytes, bytes]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def cut(self) -> Held | None:
        """Take the records held, at once: what is taken from now on is the next batch's.
        None if nothing was taken since the last cut."""
        if not self.offsets:
            return None
        held = Held(self.dead, self.events, self.raw, dict(self.offsets))
        self.dead, self.events, self.raw, self.offsets = [], [], [], {}
        return held

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop what is held of these partitions (another worker takes them over)."""
        numbers = {tp.partition for tp in partitions}
        kept = [(e, r) for e, r in zip(self.events, self.raw, strict=True) if e[1] not in numbers]
        self.events = [e for e, _r in kept]
        self.raw = [r for _e, r in kept]
        for tp in partitions:
            self.offsets.pop(tp, None)


def batch_due(
    held: int, batch_rows: int, now: float, deadline: float, flush_every: float, waiting: Callable[[], int]
) -> bool:
    """Whether to cut the batch now (module docstring). `held` events are held, `deadline` is a
    flush interval after the previous cut, and `waiting()` the records already in the topic
    past what was taken (asked only when it matters)."""
    room = batch_rows - held
    if room <= 0:
        return True
    if now < deadline:
        return False
    return now >= deadline + BACKLOG_HOLD * flush_every or waiting() < room


def fetch_until(now: float, deadline: float, flush_every: float) -> float:
    """Until when the next fetch may wait: the cut's deadline, or past it the backlog's hold."""
    return deadline if now < deadline else deadline + BACKLOG_HOLD * flush_every


@dataclass
class RefreshCadence:
    """When the derived tables are recomputed. A recomputation starts at most every `interval`
    seconds, counted from the start of the previous one (so the last one after a backlog is
    not held back by the length of the one before it). While a backlog is being read, a
    recomputation starts at most every 5 x its last duration: at most a fifth of the time
    goes to it, and more of the backlog is folded into each one."""

    interval: float
    floor: float = 0.0  # the earliest next start once caught up
    backlog_next: float = 0.0  # ... and while there is a backlog

    def due(self, now: float, caught_up: bool) -> bool:
        return now >= self.backlog_next or (caught_up and now >= self.floor)

    def ran(self, started: float, took: float) -> None:
        self.floor = started + self.interval
        self.backlog_next = started + max(self.interval, 5 * took)
