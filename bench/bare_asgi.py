"""The physical limit for the ingest bench: a bare ASGI app that reads the body, parses it with
orjson and hands it to Kafka unvalidated, through the same werkstroom.kafka.Publisher the real
ingest uses (send_batch, one batch per partition). No auth, no validation, no enrichment, no
FastAPI.

    WERKSTROOM_KAFKA_BOOTSTRAP=... BENCH_TOPIC=... python -m uvicorn bench.bare_asgi:app
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from werkstroom.kafka import Publisher, start_producer

_state: dict[str, Any] = {}
_OK = b'{"success":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _state["producer"] = await start_producer(os.environ["WERKSTROOM_KAFKA_BOOTSTRAP"])
                _state["publisher"] = Publisher(_state["producer"])
                _state["publisher"].start()
                _state["topic"] = os.environ["BENCH_TOPIC"]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _state["publisher"].stop()
                await _state["producer"].stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    payload = orjson.loads(body)
    items = payload["batch"] if "batch" in payload else [payload]
    messages = [(str(item.get("anonymousId", "")).encode(), orjson.dumps(item)) for item in items]
    await _state["publisher"].publish(_state["topic"], messages)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": _OK})
