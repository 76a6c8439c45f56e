"""The ingest service: Segment's HTTP tracking API in front of Kafka.

POST /v1/track, /v1/page, /v1/identify, /v1/alias, /v1/batch (and /v1/import, its alias).
The write key comes in the body (`writeKey`) or as HTTP Basic auth (`writeKey:`); bodies may
be application/json or text/plain (navigator.sendBeacon). A request is answered only after
Kafka acknowledged its events.

The beacon path is deliberately lean: it reads the raw body, decodes it with orjson and
checks it by hand (services.ingest.segment) instead of going through a pydantic body model,
which costs several times more per request (see bench/ingest_bench.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from services.ingest import enrich
from services.ingest.keys import WriteKeyCache
from services.ingest.ratelimit import RateLimiter
from services.ingest.segment import Rejected, normalize, parse_client_time
from werkstroom import metrics, projects
from werkstroom.clickhouse.migrate import is_current
from werkstroom.contract import Topics, dead_letter, message_key
from werkstroom.http import ops_router
from werkstroom.kafka import publish, start_producer
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)

_JSON = "application/json"
_EXAMPLES: dict[str, dict[str, Any]] = {
    "track": {
        "writeKey": "wk_...",
        "anonymousId": "a1b2c3",
        "event": "Signed Up",
        "properties": {"plan": "trial"},
        "timestamp": "2026-11-25T10:00:00.000Z",
        "sentAt": "2026-11-25T10:00:00.100Z",
        "messageId": "0f9e4d2c-3b1a-4c5d-8e7f-1a2b3c4d5e6f",
        "context": {"userAgent": "Mozilla/5.0 ...", "page": {"url": "https://example.com/pricing"}},
    },
    "page": {"writeKey": "wk_...", "anonymousId": "a1b2c3", "properties": {"url": "https://example.com/"}},
    "identify": {
        "writeKey": "wk_...",
        "anonymousId": "a1b2c3",
        "userId": "u-42",
        "traits": {"plan": "premium"},
    },
    "alias": {"writeKey": "wk_...", "previousId": "a1b2c3", "userId": "u-42"},
    "batch": {
        "writeKey": "wk_...",
        "sentAt": "2026-11-25T10:00:00.100Z",
        "batch": [{"type": "page", "anonymousId": "a1b2c3", "properties": {"path": "/"}}],
    },
}


@dataclass
class IngestState:
    settings: Settings
    topics: Topics
    producer: AIOKafkaProducer
    keys: WriteKeyCache
    limiter: RateLimiter
    kafka_down_until: float = 0.0


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _error(status: int, message: str, *, reason: str, field: str | None = None, **headers: str) -> Response:
    return _answer(status, {"success": False, "error": message, "reason": reason, "field": field}, headers)


def _basic_write_key(header: str | None) -> str | None:
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


class Ingestor:
    """Turns one tracking request into Kafka messages; owns no I/O state besides IngestState."""

    def __init__(self, state: IngestState) -> None:
        self.s = state

    async def handle(self, request: Request, call_type: str | None) -> Response:
        started = time.perf_counter()
        endpoint = call_type or "batch"
        response = await self._handle(request, call_type)
        metrics.INGEST_REQUESTS.labels(endpoint, str(response.status_code)).inc()
        metrics.INGEST_LATENCY.observe(time.perf_counter() - started)
        return response

    async def _handle(self, request: Request, call_type: str | None) -> Response:
        settings = self.s.settings
        received_at = datetime.now(UTC)
        limit = settings.max_batch_bytes if call_type is None else settings.max_event_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _error(413, f"body is larger than {limit} bytes", reason="too_large")
        body = await request.body()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = _gunzip(body, limit)
            except ValueError as exc:
                return _error(400, str(exc), reason="invalid_encoding")
        if len(body) > limit:
            return _error(413, f"body is larger than {limit} bytes", reason="too_large")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc}", reason="invalid_json")
        if not isinstance(payload, dict):
            return _error(
                400, f"body must be a JSON object, not {_json_kind(payload)}", reason="not_an_object"
            )

        write_key = payload.get("writeKey") or _basic_write_key(request.headers.get("authorization"))
        if not isinstance(write_key, str) or not write_key:
            return _error(
                401, "no write key: send writeKey in the body or as Basic auth", reason="no_write_key"
            )
        project_id = self.s.keys.get(write_key)
        if project_id is None:
            return _error(401, "unknown write key", reason="unknown_write_key", field="writeKey")

        batch_sent_at = None
        if call_type is None:
            items = payload.get("batch")
            if not isinstance(items, list):
                return _error(400, "batch must be an array of events", reason="invalid_field", field="batch")
            if len(items) > settings.max_batch_events:
                return _error(
                    413, f"batch has more than {settings.max_batch_events} events", reason="too_many_events"
                )
            try:
                batch_sent_at = parse_client_time(payload.get("sentAt"), "sentAt")
            except Rejected as exc:
                return _error(400, exc.detail, reason=exc.reason, field=exc.field)
        else:
            items = [payload]

        wait = self.s.limiter.take(project_id, len(items))
        if wait:
            metrics.INGEST_RATE_LIMITED.inc()
            return _error(
                429,
                "rate limit exceeded for this project",
                reason="rate_limited",
                **{"Retry-After": RateLimiter.retry_after(wait)},
            )

        if time.monotonic() < self.s.kafka_down_until:
            return self._unavailable("Kafka was unreachable a moment ago")

        header_agent = enrich.analyse(request.headers.get("user-agent", ""))
        messages: list[tuple[bytes, bytes]] = []
        dead: list[tuple[bytes, bytes]] = []
        errors: list[dict[str, Any]] = []
        bots = 0
        accepted_types: dict[str, int] = {}
        max_event = settings.max_event_bytes
        for index, item in enumerate(items):
            try:
                if call_type is None and len(orjson.dumps(item)) > max_event:
                    raise Rejected("too_large", None, f"event is larger than {max_event} bytes")
                event, agent = normalize(
                    item,
                    call_type=call_type,
                    project_id=project_id,
                    received_at=received_at,
                    batch_sent_at=batch_sent_at,
                    header_agent=header_agent,
                )
            except Rejected as exc:
                raw_item = body if call_type is not None else orjson.dumps(item)
                errors.append({"index": index, **exc.as_dict(), "messageId": _message_id(item)})
                metrics.INGEST_EVENTS_REJECTED.labels(exc.reason).inc()
                dead.append(
                    (
                        project_id.encode(),
                        dead_letter(
                            "ingest",
                            exc.reason,
                            exc.detail,
                            raw_item,
                            field=exc.field,
                            project_id=project_id,
                            endpoint=endpoint_name(call_type),
                            received_at=received_at.isoformat(),
                        ),
                    )
                )
                continue
            if agent.is_bot:
                bots += 1
                continue
            messages.append(
                (message_key(project_id, event["anonymous_id"], event["user_id"]), orjson.dumps(event))
            )
            accepted_types[event["type"]] = accepted_types.get(event["type"], 0) + 1

        try:
            await asyncio.wait_for(self._send(messages, dead), settings.produce_timeout_ms / 1000)
        except (TimeoutError, KafkaError) as exc:
            self.s.kafka_down_until = time.monotonic() + 1.0
            log.warning("kafka_unavailable", error=f"{type(exc).__name__}: {exc}", events=len(messages))
            return self._unavailable("Kafka did not acknowledge the events in time")

        for kind, count in accepted_types.items():
            metrics.INGEST_EVENTS_ACCEPTED.labels(kind).inc(count)
        if bots:
            metrics.INGEST_BOT_EVENTS.inc(bots)
        if call_type is not None and errors:
            error = errors[0]
            return _answer(
                400,
                {
                    "success": False,
                    "error": error["message"],
                    "reason": error["reason"],
                    "field": error["field"],
                    "accepted": 0,
                    "rejected": 1,
                },
            )
        return _answer(
            200,
            {
                "success": True,
                "accepted": len(messages),
                "rejected": len(errors),
                "bots": bots,
                "errors": errors,
            },
        )

    async def _send(self, messages: list[tuple[bytes, bytes]], dead: list[tuple[bytes, bytes]]) -> None:
        if messages and dead:
            await asyncio.gather(
                publish(self.s.producer, self.s.topics.events, messages),
                publish(self.s.producer, self.s.topics.dead_letter, dead),
            )
        elif messages:
            await publish(self.s.producer, self.s.topics.events, messages)
        elif dead:
            await publish(self.s.producer, self.s.topics.dead_letter, dead)

    def _unavailable(self, why: str) -> Response:
        metrics.INGEST_KAFKA_UNAVAILABLE.inc()
        return _error(503, f"{why}; retry later", reason="kafka_unavailable", **{"Retry-After": "1"})


def _gunzip(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body (Segment SDKs may send one), never past `limit` + 1 bytes."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"body is not valid gzip: {exc}") from None
    return data


def endpoint_name(call_type: str | None) -> str:
    return f"/v1/{call_type or 'batch'}"


def _message_id(item: object) -> object:
    return item.get("messageId") if isinstance(item, dict) else None


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null"
    )


def create_app(settings: Settings, *, bootstrap: str, clickhouse: Callable[[], Client]) -> FastAPI:
    """The ingest ASGI app. `clickhouse` makes the client (called once, at start-up)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = clickhouse()
        enrich.warm_up()
        producer = await start_producer(
            bootstrap, linger_ms=settings.producer_linger_ms, client_id="werkstroom-ingest"
        )
        keys = WriteKeyCache(lambda: projects.write_keys(client), settings.key_refresh_seconds)
        await keys.start()
        state = IngestState(
            settings=settings,
            topics=Topics.from_settings(settings),
            producer=producer,
            keys=keys,
            limiter=RateLimiter(settings.rate_limit_eps, settings.rate_limit_burst),
        )
        app.state.ingest = Ingestor(state)
        app.state.clickhouse = client
        log.info("ingest_started", bootstrap=bootstrap, topic=state.topics.events)
        try:
            yield
        finally:
            await keys.stop()
            await producer.stop()

    app = FastAPI(
        title="Werkstroom ingest",
        version="1",
        summary="Segment-compatible tracking API",
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["*"],
        max_age=86400,
    )

    async def ready() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            checks["clickhouse"] = (
                "ok" if await asyncio.to_thread(is_current, app.state.clickhouse) else "migrations pending"
            )
        except Exception as exc:
            checks["clickhouse"] = f"error: {exc}"
        producer: AIOKafkaProducer = app.state.ingest.s.producer
        checks["kafka"] = (
            "ok"
            if time.monotonic() >= app.state.ingest.s.kafka_down_until and producer.client.cluster.brokers()
            else "unreachable"
        )
        return checks

    app.include_router(ops_router(ready))

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "Processed: counts of accepted, rejected (with reasons) and bot events"},
        400: {"description": "Body is not JSON, not an object, or (single calls) the event is invalid"},
        401: {"description": "Missing or unknown write key"},
        413: {"description": "Body or batch too large"},
        429: {"description": "Project rate limit exceeded; see Retry-After"},
        503: {"description": "Kafka did not acknowledge in time; see Retry-After"},
    }

    def add_route(path: str, call_type: str | None, example: str) -> None:
        async def route(request: Request) -> Response:
            return await request.app.state.ingest.handle(request, call_type)

        app.add_api_route(
            path,
            route,
            methods=["POST"],
            tags=["tracking"],
            name=f"ingest_{example}_{path.rsplit('/', 1)[-1]}",
            summary=f"Segment {example} call",
            responses=responses,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "object"}, "example": _EXAMPLES[example]},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                }
            },
        )

    for kind in ("track", "page", "identify", "alias"):
        add_route(f"/v1/{kind}", kind, kind)
    add_route("/v1/batch", None, "batch")
    add_route("/v1/import", None, "batch")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        metrics.INGEST_ERRORS.inc()
        log.exception("ingest_error", path=request.url.path)
        return _error(500, "internal error; it has been logged", reason="internal_error")

    return app
