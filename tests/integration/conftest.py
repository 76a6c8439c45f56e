"""Real Kafka and ClickHouse for integration tests.

With a reachable Docker engine (or WERKSTROOM_TEST_INFRA=containers) the session starts an
Apache Kafka (KRaft) and a ClickHouse server with testcontainers; otherwise it uses the
embedded parts: the tansu broker and the in-process ClickHouse engine (chdb). The same tests
run on both. Each test gets its own topics, consumer group and database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from tests.integration.stack import Stack
from werkstroom.embedded import EmbeddedKafka


@dataclass(frozen=True)
class Infra:
    kind: str
    bootstrap: str
    clickhouse_url: str


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _containers() -> Iterator[Infra]:
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.community.kafka import KafkaContainer

    with (
        KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as kafka,
        ClickHouseContainer(
            "clickhouse/clickhouse-server:24.8", username="werkstroom", password="werkstroom"
        ) as ch,
    ):
        host = ch.get_container_host_ip()
        url = f"http://werkstroom:werkstroom@{host}:{ch.get_exposed_port(8123)}"
        yield Infra("containers", kafka.get_bootstrap_server(), url)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    choice = os.environ.get("WERKSTROOM_TEST_INFRA", "auto")
    if choice == "containers" or (choice == "auto" and _docker_reachable()):
        yield from _containers()
        return
    chdb_dir = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EmbeddedKafka(log_path=tmp_path_factory.mktemp("kafka") / "tansu.log") as kafka:
        yield Infra("embedded", kafka.bootstrap, f"chdb://{chdb_dir}")


@pytest.fixture
def names() -> dict[str, str]:
    """Topic, group and database names of this test alone."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "topic_events": f"test.events.{suffix}",
        "topic_dlq": f"test.dlq.{suffix}",
        "sink_group": f"test-sink-{suffix}",
        "clickhouse_database": f"test_{suffix}",
    }


@pytest.fixture
async def stack(infra: Infra, names: dict[str, str], tmp_path: object) -> AsyncIterator[Stack]:
    """Ingest (real HTTP on a free port) and the events sink, on this test's topics and database."""
    async with Stack(infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path) as running:
        yield running
