"""The apply stage alone (services/aggregator/apply.py): the visitors missing from memory are
loaded once per batch, the events applied in chunks with the event loop given back in between, a
partition revoked meanwhile forgotten only once the batch is applied, idle visitors looked for at
most every EVICT_EVERY seconds, and the days' counts first met resolved under a retry of their
own. No ClickHouse: the processor is a fake of ours that writes each step down, or the real one
over a fake of clickhouse-connect's query()."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest
from aiokafka import TopicPartition

from services.aggregator import apply as apply_module
from services.aggregator.apply import EVICT_EVERY, Applier
from services.aggregator.batching import Held
from services.aggregator.processor import Decoded, Dirty, Rows
from services.aggregator.retry import Retry
from services.aggregator.sessions import Changes, Visitor
from services.aggregator.sink import EventsSink
from tests.unit.aggregator.test_sessions import T0, ev
from werkstroom.settings import Settings

T = TypeVar("T")
ROWS: Rows = {"sessions": (["session_id"], [["s1"]])}


class Processor:
    """SessionsProcessor as far as the Applier uses it; each call written down in `steps`, with
    whether the Applier said it was applying at that moment."""

    def __init__(self, applier: Applier, missing: set[tuple[str, str]] | None = None) -> None:
        self.applier = applier
        self.steps: list[tuple[str, Any]] = []
        self.applying_seen: list[bool] = []
        self.to_load = missing if missing is not None else set()
        self.unresolved: set[tuple[str, date, int]] = set()  # what apply_events leaves unresolved
        self.fail_at: str | None = None  # the step that raises (a transient failure)
        self.resolve_failures = 0  # resolve_days fails this many times first
        self.during_apply: list[Callable[[], None]] = []  # one per chunk, run as it is applied
        self.changes_seen: list[Changes] = []

    def _step(self, name: str, what: Any = None) -> None:
        self.steps.append((name, what))
        self.applying_seen.append(self.applier.applying)
        if self.fail_at == name:
            raise ConnectionRefusedError(111, "Connection refused")

    def names(self) -> list[str]:
        return [name for name, _what in self.steps]

    def missing(self, _events: list[Decoded]) -> set[tuple[str, str]]:
        self._step("missing")
        return set(self.to_load)

    def load(self, client: object, keys: set[tuple[str, str]]) -> None:
        self._step("load", (client, set(keys)))

    def apply_events(self, batch: list[Decoded], changes: Changes, dirty: Dirty, seq: int = 0) -> None:
        self._step("apply", (len(batch), seq))
        self.changes_seen.append(changes)
        changes.unresolved |= self.unresolved
        if self.during_apply:
            self.during_apply.pop(0)()

    def resolve_days(self, client: object, changes: Changes, _batch: list[Decoded]) -> None:
        self._step("resolve", (client, changes))
        if self.resolve_failures:
            self.resolve_failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")

    def rows(self, changes: Changes, dirty: Dirty) -> tuple[Rows, Dirty]:
        self._step("rows")
        return ROWS, dirty

    def revoke(self, partitions: set[int]) -> None:
        self._step("revoke", set(partitions))

    def evict_idle(self, written_seq: int) -> int:
        self._step("evict", written_seq)
        return 0


def applier_with_fake() -> tuple[Applier, Processor]:
    applier = Applier()
    processor = Processor(applier)
    applier.processor = processor  # type: ignore[assignment]
    return applier, processor


class Clients:
    """The visitors' load client factory: each client it opens is a new object, counted."""

    def __init__(self) -> None:
        self.opened: list[object] = []

    def __call__(self) -> Any:
        client = object()
        self.opened.append(client)
        return client


class Retries:
    """A retry as the sink's: runs the attempt again while it fails transiently (no backoff)."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.calls: list[str] = []

    async def __call__(self, failure: str, attempt: Callable[[], Awaitable[T]]) -> T:
        self.calls.append(failure)
        while True:
            try:
                return await attempt()
            except ConnectionRefusedError:
                self.failures.append(failure)


def decoded(n: int) -> list[Decoded]:
    """`n` events for the fake processor, which does not look at them."""
    return cast(list[Decoded], [(None, 0, i) for i in range(n)])


# -- loading the visitors ------------------------------------------------------------------------


class Result:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.result_rows = rows

    def named_results(self) -> list[dict[str, Any]]:
        return []  # no stored session: each visitor loaded is a new one


class Client:
    """clickhouse-connect's client as far as the processor's loads use it: query(); the `sessions`
    loads and the `events_daily` reads written down, the latter failing `daily_failures` times."""

    def __init__(self, daily: list[tuple[Any, ...]] | None = None, daily_failures: int = 0) -> None:
        self.daily = daily if daily is not None else []
        self.daily_failures = daily_failures
        self.sessions_loads: list[tuple[str, str]] = []  # (project, the ids' array parameter)
        self.daily_reads = 0

    def query(self, sql: str, parameters: dict[str, Any]) -> Result:
        if "FROM sessions" in sql:
            self.sessions_loads.append((parameters["p"], str(parameters["ids"])))
            return Result([])
        assert "FROM events_daily" in sql
        self.daily_reads += 1
        if self.daily_failures:
            self.daily_failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return Result(self.daily)


async def test_only_the_visitors_missing_from_memory_are_loaded_in_one_load_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applier = Applier()
    processor = applier.processor
    held = processor.visitors[("p", "a")] = Visitor()
    loads: list[set[tuple[str, str]]] = []
    real_load = processor.load

    def load(client: Any, keys: set[tuple[str, str]]) -> None:
        loads.append(set(keys))
        real_load(client, keys)

    monkeypatch.setattr(processor, "load", load)
    client = Client()
    events: list[Decoded] = [
        (ev(0, n=1, anonymous_id="a"), 0, 1),
        (ev(1, n=2, anonymous_id="b"), 0, 2),
        (ev(2, n=3, anonymous_id="b"), 0, 3),  # the same visitor again: loaded once
        (ev(3, n=4, project_id="q", anonymous_id="c"), 1, 4),
        (ev(4, "track", n=5, anonymous_id="", user_id="u1"), 1, 5),  # server-side: no visitor
    ]
    await applier.aggregate(events, 1, lambda: client, Retries())  # type: ignore[arg-type,return-value]
    assert loads == [{("p", "b"), ("q", "c")}]
    assert sorted(client.sessions_loads) == [("p", "['b']"), ("q", "['c']")]  # one query per project
    assert processor.visitors[("p", "a")] is held  # the visitor in memory is not replaced by a load
    # The next batch of the same visitors: all in memory, nothing loaded.
    await applier.aggregate(
        [(ev(5, n=6, anonymous_id="b"), 0, 6)],
        2,
        lambda: client,  # type: ignore[arg-type,return-value]
        Retries(),  # type: ignore[arg-type]
    )
    assert loads == [{("p", "b"), ("q", "c")}]
    assert len(client.sessions_loads) == 2


async def test_with_nothing_missing_no_load_client_is_opened_nor_anything_loaded() -> None:
    applier, processor = applier_with_fake()
    clients = Clients()
    await applier.aggregate(decoded(3), 1, clients, Retries())
    assert "load" not in processor.names()
    assert clients.opened == []


async def test_the_missing_visitors_are_loaded_on_the_load_client_before_any_event_is_applied() -> None:
    applier, processor = applier_with_fake()
    processor.to_load = {("p", "a"), ("p", "b")}
    clients = Clients()
    await applier.aggregate(decoded(3), 1, clients, Retries())
    assert processor.names() == ["missing", "load", "apply", "rows"]
    assert processor.steps[1] == ("load", (clients.opened[0], {("p", "a"), ("p", "b")}))


# -- applying in chunks ----------------------------------------------------------------------------


async def test_events_are_applied_in_chunks_of_apply_chunk_with_the_loop_given_back_between_them() -> None:
    applier, processor = applier_with_fake()
    turns = 0  # how often another task ran on the event loop

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    turns_at_chunk: list[int] = []
    processor.during_apply = [lambda: turns_at_chunk.append(turns) for _ in range(3)]
    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    try:
        chunk = apply_module.APPLY_CHUNK
        rows, _dirty, newest = await applier.aggregate(decoded(2 * chunk + 1), 7, Clients(), Retries())
    finally:
        other.cancel()
    assert [what for name, what in processor.steps if name == "apply"] == [(chunk, 7), (chunk, 7), (1, 7)]
    assert turns_at_chunk[0] < turns_at_chunk[1] < turns_at_chunk[2]  # the fetcher ran in between
    # One batch's changes across its chunks: the rows are those of the whole batch.
    assert all(changes is processor.changes_seen[0] for changes in processor.changes_seen)
    assert rows == ROWS and newest is processor.changes_seen[0].newest


async def test_each_chunk_is_the_next_slice_of_the_batch_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apply_module, "APPLY_CHUNK", 2)
    applier = Applier()
    chunks: list[list[int]] = []

    def apply_events(batch: list[Decoded], _changes: Changes, _dirty: Dirty, _seq: int = 0) -> None:
        chunks.append([offset for _e, _p, offset in batch])

    monkeypatch.setattr(applier.processor, "missing", lambda _events: set())
    monkeypatch.setattr(applier.processor, "apply_events", apply_events)
    await applier.aggregate(decoded(5), 1, Clients(), Retries())
    assert chunks == [[0, 1], [2, 3], [4]]


# -- revoked partitions --------------------------------------------------------------------------


async def test_partitions_revoked_during_a_batch_are_forgotten_once_together_after_it() -> None:
    applier, processor = applier_with_fake()
    processor.during_apply = [lambda: applier.forget({1}), lambda: applier.forget({2, 3})]
    await applier.aggregate(decoded(2 * apply_module.APPLY_CHUNK), 1, Clients(), Retries())
    # Nothing forgotten while the batch is applied; every partition revoked meanwhile, after it.
    assert processor.names() == ["missing", "apply", "apply", "rows", "revoke"]
    assert processor.steps[-1] == ("revoke", {1, 2, 3})
    # Forgotten once: the next batch forgets nothing more.
    await applier.aggregate(decoded(1), 2, Clients(), Retries())
    assert processor.names().count("revoke") == 1


async def test_a_revoke_while_no_batch_is_applied_forgets_at_once() -> None:
    applier, processor = applier_with_fake()
    applier.forget({4})
    assert processor.steps == [("revoke", {4})]
    assert applier.applying is False


async def test_a_revoke_after_a_batch_was_cut_waits_for_it_to_be_applied() -> None:
    """The sink marks the batch as being applied when it cuts it (EventsSink._cut), before the
    hand-over runs aggregate."""
    applier, processor = applier_with_fake()
    applier.applying = True
    applier.forget({4})
    assert processor.steps == []
    await applier.aggregate(decoded(1), 1, Clients(), Retries())
    assert processor.steps[-1] == ("revoke", {4})


# -- `applying` ----------------------------------------------------------------------------------


async def test_applying_is_true_from_the_first_step_of_a_batch_to_the_last() -> None:
    applier, processor = applier_with_fake()
    processor.to_load = {("p", "a")}
    processor.unresolved = {("p", date(2026, 11, 20), 0)}
    assert applier.applying is False
    await applier.aggregate(decoded(1), 1, Clients(), Retries())
    assert processor.names() == ["missing", "load", "apply", "resolve", "rows"]
    assert processor.applying_seen == [True] * 5
    assert applier.applying is False


@pytest.mark.parametrize("failing", ["load", "apply", "rows"])
async def test_a_failed_batch_stays_applying_until_done_then_forgets_what_was_revoked_meanwhile(
    failing: str,
) -> None:
    """The sink retries the same batch after a failure: a partition revoked during the backoff
    keeps its visitors until the batch is applied or given up (`done`)."""
    applier, processor = applier_with_fake()
    processor.to_load = {("p", "a")}
    processor.fail_at = failing
    real_missing = processor.missing

    def missing(events: list[Decoded]) -> set[tuple[str, str]]:
        applier.forget({5})  # a rebalance while the batch is applied
        return real_missing(events)

    processor.missing = missing  # type: ignore[method-assign]
    with pytest.raises(ConnectionRefusedError):
        await applier.aggregate(decoded(1), 1, Clients(), Retries())
    assert applier.applying is True
    assert ("revoke", {5}) not in processor.steps
    applier.done()
    assert applier.applying is False
    assert processor.steps[-1] == ("revoke", {5})
    applier.forget({6})  # nothing applied now: at once
    assert processor.steps[-1] == ("revoke", {6})


# -- evicting idle visitors ----------------------------------------------------------------------


def test_idle_visitors_are_looked_for_at_most_every_evict_every_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(apply_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    applier, processor = applier_with_fake()
    evicted: list[tuple[float, int]] = []
    for seq, after in enumerate([0.0, 0.5, 0.99, 1.0, 1.8, 2.1]):  # in EVICT_EVERY since the start
        at = 1000.0 + EVICT_EVERY * after
        now[0] = at
        before = len(processor.steps)
        applier.evict_idle(seq)
        if len(processor.steps) > before:
            evicted.append((at, processor.steps[-1][1]))
    # The first call, the one EVICT_EVERY after it, and the one EVICT_EVERY after that (counted
    # from the last eviction, not from the last call); each with the written sequence it was given.
    assert evicted == [(1000.0, 0), (1000.0 + EVICT_EVERY, 3), (1000.0 + EVICT_EVERY * 2.1, 5)]


# -- the days' counts first met ------------------------------------------------------------------


async def test_days_first_met_are_resolved_under_their_own_retry_and_the_batch_is_applied_once() -> None:
    applier, processor = applier_with_fake()
    processor.to_load = {("p", "a")}
    processor.unresolved = {("p", date(2026, 11, 20), 0)}
    processor.resolve_failures = 2
    clients, retries = Clients(), Retries()
    rows, _dirty, _newest = await applier.aggregate(decoded(1), 1, clients, retries)
    assert retries.calls == ["sink_load_failed"] and retries.failures == ["sink_load_failed"] * 2
    assert processor.names() == ["missing", "load", "apply", "resolve", "resolve", "resolve", "rows"]
    # Every attempt resolves the changes the batch was applied to, on the load client.
    resolves = [what for name, what in processor.steps if name == "resolve"]
    assert all(any(client is opened for opened in clients.opened) for client, _changes in resolves)
    assert all(changes is processor.changes_seen[0] for _client, changes in resolves)
    assert rows == ROWS


async def test_a_batch_with_no_day_first_met_resolves_nothing_and_opens_no_client_for_it() -> None:
    applier, processor = applier_with_fake()
    clients, retries = Clients(), Retries()
    await applier.aggregate(decoded(2), 1, clients, retries)
    assert "resolve" not in processor.names()
    assert retries.calls == [] and clients.opened == []


async def test_a_days_read_that_fails_once_is_retried_alone_and_the_batch_still_counts() -> None:
    """Through the sink's own Retry, as EventsSink.submit calls it (an outer retry of the whole
    aggregate): applying the batch again would skip its events as already applied."""
    day = T0.date()
    # The day's stored row, at a version below this batch's first offset (10): added to.
    client = Client(daily=[("p", day, 0, 5, 7, 3)], daily_failures=1)
    applier = Applier()
    retry = Retry(asyncio.Event())
    events: list[Decoded] = [(ev(0, n=1), 0, 10), (ev(1, n=2), 0, 11)]
    rows, dirty, _newest = await retry(
        "sink_load_failed",
        lambda: applier.aggregate(events, 1, lambda: client, retry),  # type: ignore[arg-type,return-value]
    )
    assert client.daily_reads == 2
    assert rows["events_daily"][1] == [["p", day, 0, 5 + 2, 7 + 2, 11]]
    (session,) = rows["sessions"][1]
    assert session[rows["sessions"][0].index("page_views")] == 2
    assert ("p", day) in dirty.days


# -- a bug: a revoke during the backoff of a failed load -------------------------------------------


class FlakyLoad:
    """The visitors' load client: its first `sessions` load fails (transiently)."""

    def __init__(self) -> None:
        self.loads = 0

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Result:
        if "FROM sessions" in sql:
            self.loads += 1
            if self.loads == 1:
                raise ConnectionRefusedError(111, "Connection refused")
        return Result([])

    def insert(self, *_args: Any, **_kwargs: Any) -> None:  # the live view's rows
        return None


async def test_a_partition_revoked_while_a_failed_load_is_retried_is_forgotten_once_the_batch_is_applied(
    tmp_path: Any,
) -> None:
    sink = EventsSink(Settings(data_dir=tmp_path), "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]
    load = FlakyLoad()
    sink._load_client = load  # type: ignore[assignment]
    sink.writer.clients.live = load  # type: ignore[assignment]
    kept, revoked = TopicPartition(sink.topics.events, 0), TopicPartition(sink.topics.events, 1)
    events: list[Decoded] = [(ev(0, n=1, anonymous_id="a"), 0, 10), (ev(0, n=2, anonymous_id="b"), 1, 20)]
    sink.applier.applying = True  # cut (EventsSink._cut)

    async def rebalance() -> None:
        for _ in range(1000):
            if load.loads and not sink.applier.applying:  # the first load failed: in the backoff
                break
            await asyncio.sleep(0.001)
        sink.forget({revoked})

    rebalancing = asyncio.create_task(rebalance())
    await sink.submit(Held([], events, [b"{}", b"{}"], {kept: 11, revoked: 21}))
    await rebalancing
    batch = sink._queue.get_nowait()
    if batch.live is not None:
        await batch.live  # the live view's insert start_live began
    assert load.loads == 2
    assert ("p", "a") in sink.processor.visitors
    assert ("p", "b") not in sink.processor.visitors  # partition 1 is another worker's now
