"""Test-wide rules: only tests marked `integration` may open network connections or ClickHouse.

Unit tests run with socket connections and the ClickHouse client factory blocked, so a unit
test that silently starts depending on a server fails loudly instead of getting slow.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# With a reachable Docker engine (or WERKSTROOM_TEST_INFRA=containers) the session starts the
# Kafka (apache/kafka, KRaft) and ClickHouse images docker-compose.yml pins, with testcontainers;
# otherwise it uses the embedded parts: the tansu broker and the in-process ClickHouse engine
# (chdb). The same tests run on both. One instance per session: a process can open only one chdb
# directory. WERKSTROOM_TEST_INFRA=containers where no engine answers skips, saying why.


@dataclass(frozen=True)
class Infra:
    kind: str
    bootstrap: str
    clickhouse_url: str


COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"

#: The port clients reach the container Kafka on (mapped to a free host port); BROKER and
#: CONTROLLER stay inside the container.
KAFKA_PORT = 9092
#: What the compose Kafka's environment becomes here: its listeners are on the compose network
#: (here a mapped host port, advertised by KAFKA_START), its 1 GiB heap is for production (here a
#: broker per xdist worker), and a new group's 3 s wait for more members would be waited out by
#: every test's group. Everything else is the compose file's.
KAFKA_TEST_ENV = {
    "KAFKA_LISTENERS": f"PLAINTEXT://:{KAFKA_PORT},BROKER://:9093,CONTROLLER://:9094",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
    "KAFKA_HEAP_OPTS": "-Xms512m -Xmx512m",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}
#: The container waits for this script, written once the mapped port is known, which starts the
#: image's own launcher with the advertised listeners set.
KAFKA_START = "/tmp/werkstroom-kafka-start.sh"
KAFKA_STARTED = r"Kafka Server started|Transitioning from RECOVERY to RUNNING"


@functools.cache
def compose_services() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def compose_image(service: str) -> str:
    """The image docker-compose.yml pins for `service`: the container path runs the same."""
    return str(compose_services()[service]["image"])


def kafka_env() -> dict[str, str]:
    """The compose Kafka's environment (`${VAR:-default}` at its default), KAFKA_TEST_ENV over it;
    KAFKA_ADVERTISED_LISTENERS comes from KAFKA_START."""
    env = {
        name: re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))
        for name, value in compose_services()["kafka"]["environment"].items()
        if name != "KAFKA_ADVERTISED_LISTENERS"
    }
    return env | KAFKA_TEST_ENV


def _docker_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _docker_reachable() -> bool:
    return _docker_problem() is None


def _containers() -> Iterator[Infra]:
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    kafka = DockerContainer(compose_image("kafka")).with_exposed_ports(KAFKA_PORT)
    kafka.with_command(
        ["sh", "-c", f"while [ ! -f {KAFKA_START} ]; do sleep 0.1; done; exec bash {KAFKA_START}"]
    )
    for name, value in kafka_env().items():
        kafka.with_env(name, value)
    clickhouse = ClickHouseContainer(
        compose_image("clickhouse"), username="werkstroom", password="werkstroom"
    )
    clickhouse.with_env("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", "1")  # as in the compose file

    with kafka, clickhouse:
        bootstrap = f"{kafka.get_container_host_ip()}:{kafka.get_exposed_port(KAFKA_PORT)}"
        start = f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{bootstrap},BROKER://localhost:9093\n"
        kafka.copy_into_container(f"{start}exec /etc/kafka/docker/run\n".encode(), KAFKA_START)
        LogMessageWaitStrategy(KAFKA_STARTED).with_startup_timeout(120).wait_until_ready(kafka)
        host = clickhouse.get_container_host_ip()
        url = f"http://werkstroom:werkstroom@{host}:{clickhouse.get_exposed_port(8123)}"
        yield Infra("containers", bootstrap, url)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    choice = os.environ.get("WERKSTROOM_TEST_INFRA", "auto")
    if choice in ("auto", "containers"):
        problem = _docker_problem()
        if problem is None:
            yield from _containers()
            return
        if choice == "containers":
            pytest.skip(
                f"WERKSTROOM_TEST_INFRA=containers, but no Docker engine is reachable ({problem}): the "
                f"container path runs {compose_image('kafka')} and {compose_image('clickhouse')}"
            )
    chdb_dir = tmp_path_factory.mktemp("chdb") / "clickhouse"
    with EmbeddedKafka(log_path=tmp_path_factory.mktemp("kafka") / "tansu.log") as kafka:
        yield Infra("embedded", kafka.bootstrap, f"chdb://{chdb_dir}")
