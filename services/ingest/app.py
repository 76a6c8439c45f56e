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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import Counter
from starlette.types import Receive, Scope, Send

from services.ingest import enrich
from services.ingest.keys import WriteKeyCache
from services.ingest.ratelimit import RateLimiter
from services.ingest.segment import Rejected, normalize, parse_client_time
from services.ingest.tracker import tracker_router
from werkstroom import metrics, projects
from werkstroom.clickhouse.migrate import is_current
from werkstroom.contract import Topics, dead_letter, encode_event, message_key
from werkstroom.http import ops_router
from werkstroom.kafka import Publisher, start_producer
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
    publisher: Publisher
    keys: WriteKeyCache
    limiter: RateLimiter
    kafka_down_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.body), status_code=self.status, media_type=_JSON, headers=dict(self.headers)
        )


def _error(status: int, message: str, *, reason: str, field: str | None = None, **headers: str) -> Answer:
    body = {"success": False, "error": message, "reason": reason, "field": field}
    return Answer(status, body, tuple(headers.items()))


def _basic_write_key(header: str | None) -> str | None:
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


class Ingestor:
    """Turns one tracking request (headers + body) into Kafka messages and an Answer."""

    def __init__(self, state: IngestState) -> None:
        self.s = state

    def limit(self, call_type: str | None) -> int:
        return self.s.settings.max_batch_bytes if call_type is None else self.s.settings.max_event_bytes

    async def handle(self, call_type: str | None, headers: Mapping[str, str], body: bytes | None) -> Answer:
        """`body` is None when it was larger than the limit (the reader stopped early)."""
        started = time.perf_counter()
        try:
            answer = await self._handle(call_type, headers, body)
        except Exception:
            metrics.INGEST_ERRORS.inc()
            log.exception("ingest_error", endpoint=endpoint_name(call_type))
            answer = _error(500, "internal error; it has been logged", reason="internal_error")
        _requests_counter(call_type or "batch", answer.status).inc()
        metrics.INGEST_LATENCY.observe(time.perf_counter() - started)
        return answer

    async def _handle(self, call_type: str | None, headers: Mapping[str, str], body: bytes | None) -> Answer:
        settings = self.s.settings
        received_at = datetime.now(UTC)
        limit = self.limit(call_type)
        if body is None:
            return _error(413, f"body is larger than {limit} bytes", reason="too_large")
        if headers.get("content-encoding", "").lower() == "gzip":
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

        write_key = payload.get("writeKey") or _basic_write_key(headers.get("authorization"))
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

        header_agent = enrich.analyse(headers.get("user-agent", ""))
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
                (message_key(project_id, event["anonymous_id"], event["user_id"]), encode_event(event))
            )
            accepted_types[event["type"]] = accepted_types.get(event["type"], 0) + 1

        try:
            await asyncio.wait_for(self._send(messages, dead), settings.produce_timeout_ms / 1000)
        except (TimeoutError, KafkaError) as exc:
            self.s.kafka_down_until = time.monotonic() + 1.0
            log.warning("kafka_unavailable", error=f"{type(exc).__name__}: {exc}", events=len(messages))
            return self._unavailable("Kafka did not acknowledge the events in time")

        for kind, count in accepted_types.items():
            _accepted_counter(kind).inc(count)
        if bots:
            metrics.INGEST_BOT_EVENTS.inc(bots)
        if call_type is not None and errors:
            error = errors[0]
            return Answer(
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
        return Answer(
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
        publish = self.s.publisher.publish
        if dead:
            await asyncio.gather(
                publish(self.s.topics.events, messages), publish(self.s.topics.dead_letter, dead)
            )
        else:
            await publish(self.s.topics.events, messages)

    def _unavailable(self, why: str) -> Answer:
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


@cache
def _requests_counter(endpoint: str, status: int) -> Counter:
    return metrics.INGEST_REQUESTS.labels(endpoint, str(status))


@cache
def _accepted_counter(kind: str) -> Counter:
    return metrics.INGEST_EVENTS_ACCEPTED.labels(kind)


def endpoint_name(call_type: str | None) -> str:
    return f"/v1/{call_type or 'batch'}"


def _message_id(item: object) -> object:
    return item.get("messageId") if isinstance(item, dict) else None


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null"
    )


_ROUTES: dict[str, str | None] = {
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/identify": "identify",
    "/v1/alias": "alias",
    "/v1/batch": None,
    "/v1/import": None,
}
_CORS = (b"access-control-allow-origin", b"*")


class BeaconFastPath:
    """The outermost ASGI layer: `POST /v1/*` beacons are answered here, straight from the raw
    ASGI messages, without FastAPI's middleware and routing stack (which costs more per request
    than everything the beacon needs; see bench/). Everything else, CORS preflights and the
    OpenAPI docs included, goes on to the FastAPI app, whose /v1 routes run the same Ingestor."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _ROUTES:
            await self.app(scope, receive, send)
            return
        ingestor: Ingestor = self.app.state.ingest
        call_type = _ROUTES[scope["path"]]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await _read_body(receive, headers.get("content-length"), ingestor.limit(call_type))
        answer = await ingestor.handle(call_type, headers, body)
        raw_headers = [(b"content-type", b"application/json"), _CORS]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer.body)})


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` (gzip aside: a
    compressed body is limited again once inflated)."""
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(settings: Settings, *, bootstrap: str, clickhouse: Callable[[], Client]) -> BeaconFastPath:
    """The ingest ASGI app. `clickhouse` makes the client (called once, at start-up)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = clickhouse()
        enrich.warm_up()
        producer = await start_producer(
            bootstrap, linger_ms=settings.producer_linger_ms, client_id="werkstroom-ingest"
        )
        publisher = Publisher(producer)
        publisher.start()
        keys = WriteKeyCache(lambda: projects.write_keys(client), settings.key_refresh_seconds)
        await keys.start()
        state = IngestState(
            settings=settings,
            topics=Topics.from_settings(settings),
            producer=producer,
            publisher=publisher,
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
            await publisher.stop()
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
    app.include_router(tracker_router())

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
            ingestor: Ingestor = request.app.state.ingest
            body = await _read_body(
                request.receive, request.headers.get("content-length"), ingestor.limit(call_type)
            )
            answer = await ingestor.handle(call_type, request.headers, body)
            return answer.response()

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

    return BeaconFastPath(app)
