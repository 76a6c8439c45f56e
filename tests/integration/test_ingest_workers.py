"""`serve --workers N`: the workers' sockets share one port and the kernel gives each
connections (loopback only; the whole stop under traffic is tests/e2e/test_ingest_stop.py)."""

from __future__ import annotations

import socket

import pytest

from werkstroom.serve import reuse_port_socket

pytestmark = pytest.mark.integration


def test_workers_bind_one_port_and_each_accepts() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)  # without SO_REUSEPORT: EADDRINUSE
    try:
        for sock in (first, second):
            sock.listen(64)
            sock.setblocking(False)
        accepted = set()
        for _ in range(64):  # the kernel spreads connections over both by a hash of the peer
            client = socket.create_connection(("127.0.0.1", port), 1)
            for index, sock in enumerate((first, second)):
                try:
                    sock.accept()[0].close()
                    accepted.add(index)
                except BlockingIOError:
                    pass
            client.close()
            if accepted == {0, 1}:
                break
        assert accepted == {0, 1}
    finally:
        first.close()
        second.close()
