"""Loopback endpoints that fail the way a ClickHouse address can, for the real HTTP driver to
meet: a port nobody listens on, and a server that takes the connection and then closes it,
answers bytes that are not HTTP, never answers, or answers an HTTP error of its own the way a
proxy in front of an absent ClickHouse does. Nothing here pretends to be ClickHouse: no query
is ever answered.

Threads, not asyncio: the driver is synchronous, and these serve a plain unit test as well as
an API running in the test's event loop (whose ClickHouse calls run in worker threads).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Literal

from werkstroom.embedded import free_port

Mode = Literal["close", "garbage", "hang", "status_502", "status_500"]

#: What each mode sends once it has read the request (None: nothing).
_REPLIES: dict[Mode, bytes | None] = {
    "close": None,
    "garbage": b"\x00\xff\x13 this is not HTTP \x00\r\n\r\n",
    "hang": None,
    "status_502": b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Gateway",
    "status_500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!",
}


def closed_port() -> int:
    """A loopback port nobody listens on (a connection there is refused)."""
    return free_port()


class FaultyServer:
    """A loopback TCP server failing in one `mode` for every connection; `accepted` counts them."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._guard = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name=f"faulty-{mode}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._guard:
                self.accepted += 1
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                _read_request(conn)
            reply = _REPLIES[self.mode]
            if self.mode == "hang":
                self._stop.wait()
            elif reply is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(reply)
        finally:
            with self._guard:
                self._open.discard(conn)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        self._listener.close()
        with self._guard:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


def _read_request(conn: socket.socket) -> None:
    """Read the whole request, head and body, before any answer or close: a socket closed with
    unread bytes sends a reset instead of an orderly close, and the client then says
    "Connection reset by peer" instead of "RemoteDisconnected" (whichever the timing gave)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length:")), None)
    chunked = any(line.startswith("transfer-encoding:") and "chunked" in line for line in lines)
    while (length is not None and len(body) < length) or (chunked and not body.endswith(b"0\r\n\r\n")):
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


@contextlib.contextmanager
def faulty_server(mode: Mode) -> Iterator[FaultyServer]:
    server = FaultyServer(mode)
    try:
        yield server
    finally:
        server.close()
