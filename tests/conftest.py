"""Test-wide rules: only tests marked `integration` may open network connections or ClickHouse.

Unit tests run with socket connections and the ClickHouse client factory blocked, so a unit
test that silently starts depending on a server fails loudly instead of getting slow.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from werkstroom.embedded import EmbeddedKafka


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _block_io_outside_integration(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    if request.node.get_closest_marker("integration") is not None:
        yield
        return

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise NetworkBlocked("unit tests may not use the network; mark the test `integration`")

    def refuse_connect(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_UNIX:
            return _real_connect(self, address)
        refuse()

    _real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("werkstroom.clickhouse.connect", refuse)
    yield


# -- real Kafka and ClickHouse for integration tests ----------------------------------------
# With a reachable Docker engine (or WERKSTROOM_TEST_INFRA=containers) the session starts an
# Apache Kafka (KRaft) and a ClickHouse server with testcontainers; otherwise it uses the
# embedded parts: the tansu broker and the in-process ClickHouse engine (chdb). The same tests
# run on both. One instance per session: a process can open only one chdb directory.


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
