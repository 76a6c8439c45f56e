"""Each integration test gets its own topics, consumer group and database, and an in-process
stack on them; the session's Kafka and ClickHouse come from `infra` in tests/conftest.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from tests.conftest import Infra
from tests.integration.stack import Stack, own_names
from werkstroom import timezones
from werkstroom.clickhouse import connect

#: How long before a UTC midnight no integration test starts (below).
MIDNIGHT_MARGIN = timedelta(seconds=90)


@pytest.fixture(autouse=True)
def _not_across_midnight() -> None:
    """No test starts in the last MIDNIGHT_MARGIN of a UTC day: it waits until just after
    midnight. These tests take "today" from the wall clock when they build their events and
    again when they read the views, which the pipeline computes at its own moments; one that
    runs across midnight (a few seconds to a minute) can find them on two different days. Days
    and midnights themselves are tested with fixed clocks (test_timezones, test_day_counts); the
    first minutes after a midnight are still run through."""
    now = datetime.now(UTC)
    left = timezones.start_of(now.date() + timedelta(days=1), timezones.DEFAULT) - now
    if left < MIDNIGHT_MARGIN:
        time.sleep(left.total_seconds() + 2)


@pytest.fixture
def names() -> dict[str, str]:
    """Topic, group and database names of this test alone."""
    return own_names()


@pytest.fixture
async def stack(infra: Infra, names: dict[str, str], tmp_path: object) -> AsyncIterator[Stack]:
    """Ingest (real HTTP on a free port) and the events sink, on this test's topics and database."""
    async with Stack(infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path) as running:
        yield running


@pytest.fixture
def database(infra: Infra, names: dict[str, str]) -> Iterator[Client]:
    """A client on this test's own, empty database (no migration applied), dropped after."""
    name = names["clickhouse_database"]
    client = connect(infra.clickhouse_url, name, create_database=True)
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{name}`")
