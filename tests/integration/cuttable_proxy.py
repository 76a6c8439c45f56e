"""A TCP proxy in front of a real server (ClickHouse's HTTP port) that a test cuts and restores,
to make the server unavailable for real without stopping it.

- `cut()`: the proxy stops listening, so a new connection is refused, and every connection it
  carries is reset (SO_LINGER 0), as when the server's host goes away mid-statement;
- `restore()`: it listens again on the same port; the clients reconnect by themselves.

Bytes are copied as they are, both ways; nothing is read into or changed.

The proxy runs its own asyncio loop in a thread of its own: parts of the code under test call
ClickHouse synchronously from the test's event loop (opening a client, a helper's query), and a
proxy on that same loop could not forward those calls while they block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 64 * 1024


class CuttableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0  # chosen at the first start, kept across cuts
        self.connections = 0  # accepted since the start
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cuttable-proxy", daemon=True)

    # -- called from the test (any thread, any loop) ------------------------------------------

    @property
    def up(self) -> bool:
        return self._server is not None

    async def start(self) -> CuttableProxy:
        self._thread.start()
        await self._run(self._listen())
        return self

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        await self._run(self._cut())

    async def restore(self) -> None:
        """Listen again, on the same port."""
        await self._run(self._listen())

    async def close(self) -> None:
        if not self._thread.is_alive():
            return
        await self._run(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 5)
        self._loop.close()

    async def __aenter__(self) -> CuttableProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # -- on the proxy's own loop -------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # listens no more (the connections it accepted are ours to end)
        for client, upstream in list(self._pairs):
            _reset(client)
            _reset(upstream)
        self._pairs.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted in the instant of a cut
            _reset(writer)
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        if self._server is None:  # cut while connecting upstream
            _reset(writer)
            _reset(up_writer)
            return
        pair = (writer, up_writer)
        task = asyncio.current_task()
        assert task is not None
        self._pairs.add(pair)
        self._tasks.add(task)
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            self._tasks.discard(task)
            for w in pair:
                w.close()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:  # reset, or the other side went away: the pair ends
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST, not a FIN: the peer sees 'connection reset', as from a host gone."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
