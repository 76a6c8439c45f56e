"""The aggregator's funnel tables: the pure parts of their maintenance, and the back-fill loop's
choice of who back-fills (ClickHouse is tests/integration/test_funnels.py's)."""

from __future__ import annotations

import asyncio
from datetime import date

from services.aggregator.funnels import Backfills, latest_days, person_ids


def test_latest_days_per_level() -> None:
    rows = {date(2026, 11, 1): 3, date(2026, 11, 3): 1, date(2026, 11, 2): 2}
    assert latest_days(rows, 4) == [date(2026, 11, 3), date(2026, 11, 2), date(2026, 11, 1), None]
    assert latest_days({}, 2) == [None, None]


def test_a_persons_funnel_ids_are_its_member_ids_and_its_own_id() -> None:
    # An identified person: its member ids (here the anonymous ids it browsed with), and the
    # user id a server sends.
    assert person_ids("user-1", ["anon-b", "anon-a"]) == ["anon-a", "anon-b", "user-1"]
    # An anonymous person is its own browsing id: no duplicate.
    assert person_ids("anon-a", ["anon-a"]) == ["anon-a"]


async def test_a_worker_without_partition_0_never_looks_for_funnels_to_back_fill() -> None:
    opened: list[str] = []

    def factory(**_: object) -> object:
        opened.append("client")
        raise AssertionError("a worker that does not own partition 0 opened a ClickHouse client")

    stopping = asyncio.Event()
    backfills = Backfills(factory, lambda: False, stopping)  # type: ignore[arg-type]
    loop = asyncio.create_task(backfills.loop())
    await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(loop, 2)
    assert opened == [] and backfills.done == 0


async def test_the_owner_looks_again_after_clickhouse_failed_and_ends_at_a_stop() -> None:
    tries: list[int] = []
    stopping = asyncio.Event()

    def factory(**_: object) -> object:
        tries.append(1)
        if len(tries) == 2:
            stopping.set()
        raise ConnectionError("ClickHouse away")

    backfills = Backfills(factory, lambda: True, stopping)  # type: ignore[arg-type]
    await asyncio.wait_for(backfills.loop(), 5)  # BACKFILL_EVERY apart: two looks, then the stop
    assert len(tries) == 2 and backfills.done == 0
