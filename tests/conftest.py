"""Test-wide rules: only tests marked `integration` may open network connections or ClickHouse.

Unit tests run with socket connections and the ClickHouse client factory blocked, so a unit
test that silently starts depending on a server fails loudly instead of getting slow.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


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
