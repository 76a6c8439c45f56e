"""An ASGI app on granian's embedded server (`granian.server.embed.Server`) inside a uvloop
loop in this process, as `werkstroom serve` would host it: granian's HTTP in a Rust thread, the
app's coroutines on our own loop (its CLI runs a worker process instead). For
bench/ingest_bench.py --servers granian-embed. Needs granian (`pip install granian`).

    python -m bench.granian_embed --port 8000 [--factory] module:attr
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal

import uvloop
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server


async def serve(target: str, port: int, factory: bool) -> None:
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr)
    server = Server(
        app() if factory else app,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        websockets=False,
        http=HTTPModes.http1,
        log_level=LogLevels.warning,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--factory", action="store_true")
    args = parser.parse_args()
    uvloop.run(serve(args.app, args.port, args.factory))


if __name__ == "__main__":
    main()
