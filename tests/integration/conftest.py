"""Each integration test gets its own topics, consumer group and database, and an in-process
stack on them; the session's Kafka and ClickHouse come from `infra` in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from clickhouse_connect.driver.client import Client

from tests.conftest import Infra
from tests.integration.stack import Stack, own_names
from werkstroom.clickhouse import connect


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
