"""The apply agent of the Faust-hosted aggregator (services/aggregator/faust_app.py), in Faust's
test context: no Kafka, no ClickHouse; the sink's apply step is a function of ours."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.aggregator.faust_app import Aggregator
from werkstroom.settings import Settings


def aggregator(tmp_path: Any, submit: Any) -> Aggregator:
    built = Aggregator(Settings(data_dir=tmp_path), "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]
    built.sink.submit = submit  # type: ignore[method-assign]
    return built


async def through_the_agent(built: Aggregator, *batches: Any) -> list[asyncio.Future[None]]:
    """Each batch handed to the apply agent as the sink hands it over; their futures."""
    agent = built.app.agents["apply"]
    loop = asyncio.get_running_loop()
    dones = []
    async with agent.test_context() as context:
        for held in batches:
            done: asyncio.Future[None] = loop.create_future()
            await context.put((held, done))
            await asyncio.wait([done], timeout=5)
            dones.append(done)
    return dones


def test_a_batch_is_done_once_applied_and_queued(tmp_path: Any) -> None:
    applied: list[Any] = []

    async def submit(held: Any) -> None:
        await asyncio.sleep(0.01)
        applied.append(held)

    dones = asyncio.run(through_the_agent(aggregator(tmp_path, submit), "batch 1", "batch 2"))
    assert applied == ["batch 1", "batch 2"]  # in order, one at a time
    assert all(d.done() and d.result() is None for d in dones)


def test_a_failed_apply_is_the_sinks_to_raise_and_the_agent_takes_the_next_batch(tmp_path: Any) -> None:
    async def submit(held: Any) -> None:
        if held == "bad":
            raise TypeError("a programming error")

    bad, good = asyncio.run(through_the_agent(aggregator(tmp_path, submit), "bad", "good"))
    with pytest.raises(TypeError, match="a programming error"):
        bad.result()
    assert good.result() is None


def test_a_hand_over_cancelled_by_the_sink_cancels_the_apply(tmp_path: Any) -> None:
    """The sink's loop cancels what it handed over when it ends: so must the apply stop."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def submit(held: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> None:
        built = aggregator(tmp_path, submit)
        async with built.app.agents["apply"].test_context() as context:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await context.put(("slow", done))
            await asyncio.wait_for(started.wait(), 5)
            done.cancel()
            await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(scenario())


def test_nothing_global_keeps_an_aggregator_and_its_visitors(tmp_path: Any) -> None:
    """A receiver of an app's signal is kept by its class's signal for good: an aggregator done
    with must be collectable, sink and visitors with it (the bench runs several in a process)."""
    import gc
    import weakref

    def build() -> tuple[weakref.ref[Any], weakref.ref[Any]]:
        built = Aggregator(Settings(data_dir=tmp_path), "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]
        return weakref.ref(built.sink), weakref.ref(built.app)

    sink, app = build()
    gc.collect()
    assert sink() is None and app() is None
