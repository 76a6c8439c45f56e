"""The physical limit for the ingest bench: a bare ASGI app that reads the body, parses it with
orjson and hands Kafka the very records ingest writes for it, through the same
werkstroom.kafka.Publisher and producer settings the real ingest uses. No auth, no validation,
no enrichment, no encoding, no FastAPI: the records are computed once by the bench
(`BENCH_RECORDS`, a JSON file of anonymousId -> [key, value]) and looked up per item.

    WERKSTROOM_KAFKA_BOOTSTRAP=... BENCH_TOPIC=... BENCH_RECORDS=... python -m uvicorn bench.bare_asgi:app
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from werkstroom.kafka import Publisher, start_producer
from werkstroom.settings import Settings

_state: dict[str, Any] = {}
_OK = b'{"success":true}'


def _records(path: Path) -> dict[str, tuple[bytes, bytes]]:
    records = orjson.loads(path.read_bytes())
    return {k: (key.encode(), value.encode()) for k, (key, value) in records.items()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                settings = Settings()
                _state["producer"] = await start_producer(
                    os.environ["WERKSTROOM_KAFKA_BOOTSTRAP"],
                    linger_ms=settings.producer_linger_ms,
                    client_id="werkstroom-ingest",
                )
                _state["publisher"] = Publisher(_state["producer"])
                _state["publisher"].start()
                _state["topic"] = os.environ["BENCH_TOPIC"]
                _state["records"] = _records(Path(os.environ["BENCH_RECORDS"]))
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
    records = _state["records"]
    messages = [records[item["anonymousId"]] for item in items]
    await _state["publisher"].publish(_state["topic"], messages)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": _OK})
