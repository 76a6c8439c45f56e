"""The ingest service: Segment's HTTP tracking API in front of Kafka.

POST /v1/track, /v1/page, /v1/identify, /v1/alias, /v1/batch (and /v1/import, its alias).
The write key comes in the body (`writeKey`) or as HTTP Basic auth (`writeKey:`); bodies may
be application/json or text/plain (navigator.sendBeacon). A request is answered only after
Kafka acknowledged its events.

The beacon path is deliberately lean: it reads the raw body, decodes it with orjson and
checks it by hand (services.ingest.segment) instead of going through a pydantic body model,
which costs several times more per request (see bench/ingest_bench.py).

The write key is public, so every body is input from strangers: each item of a batch is
accepted or rejected alone (with its reason, to the dead-letter topic), no input answers 5xx,
and one client address may use only a share of its project's rate limit (docs/contract.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
from services.ingest.ratelimit import MAX_CLIENTS, RateLimiter
from services.ingest.salvage import split_batch
from services.ingest.segment import MAX_MESSAGE_ID, Normalizer, Rejected, parse_sent_at, truncated
from services.ingest.tracker import tracker_router
from werkstroom import metrics, projects
from werkstroom.clickhouse.migrate import is_current
from werkstroom.contract import MAX_DEPTH, Topics, dead_letter, encode_event, message_key
from werkstroom.geo import Locator
from werkstroom.http import client_address, documented_app, index_router, network_key, ops_router
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
    "screen": {"writeKey": "wk_...", "anonymousId": "a1b2c3", "name": "Checkout", "properties": {"step": 2}},
    "group": {"writeKey": "wk_...", "userId": "u-42", "groupId": "acme", "traits": {"name": "Acme"}},
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
    #: Keyed by (project, client network): one address's share of its project's budget.
    client_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0, 0))
    #: The client address's country (werkstroom.geo); without a database, always "".
    geo: Locator = field(default_factory=Locator)
    kafka_down_until: float = 0.0
    #: Set at shutdown (`Ingestor.stop_accepting`): new requests get 503 shutting_down.
    closing: bool = False
    in_flight: int = 0  # requests being handled, so a shutdown can wait for their answers
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever in_flight is 0
    #: Bot events being sent to the bots topic: no answer waits for them (`_send_bots`).
    bot_sends: set[asyncio.Task[None]] = field(default_factory=set)


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
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text (latin-1 header bytes)
        return None
    return decoded.split(":", 1)[0] or None


class Ingestor:
    """Turns one tracking request (headers + body) into Kafka messages and an Answer."""

    def __init__(self, state: IngestState) -> None:
        self.s = state

    def limit(self, call_type: str | None) -> int:
        return self.s.settings.max_batch_bytes if call_type is None else self.s.settings.max_event_bytes

    async def stop_accepting(self, timeout: float) -> int:  # noqa: ASYNC109 - one deadline for two waits
        """Answer every new request 503 shutting_down, wait (at most `timeout` seconds) for
        those already in hand to be answered, and flush the producer: once this returns, every
        event acknowledged with a 200 is in Kafka. Returns the requests still unanswered."""
        self.s.closing = True
        deadline = time.monotonic() + timeout
        if self.s.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.s.idle.wait(), timeout)
        if self.s.bot_sends:
            await asyncio.wait(set(self.s.bot_sends), timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.s.producer.flush(), max(0.0, deadline - time.monotonic()))
        return self.s.in_flight

    async def handle(
        self,
        call_type: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        client: str | None = None,
    ) -> Answer:
        """`body` is None when it was larger than the limit (the reader stopped early).
        `headers` have lower-case names (the last of repeated ones); `client` is the
        connection's address (ASGI `scope["client"][0]`), for the per-client rate limit and the
        events' country only: it is never put in an event, a dead letter or a log line."""
        started = time.perf_counter()
        if self.s.closing:
            why = "the server is shutting down; retry later"
            answer = _error(503, why, reason="shutting_down", **{"Retry-After": "5"})
        else:
            self.s.in_flight += 1
            self.s.idle.clear()
            try:
                answer = await self._handle(call_type, headers, body, client)
            except Exception:
                metrics.INGEST_ERRORS.inc()
                log.exception("ingest_error", endpoint=endpoint_name(call_type))
                answer = _error(500, "internal error; it has been logged", reason="internal_error")
            finally:
                self.s.in_flight -= 1
                if not self.s.in_flight:
                    self.s.idle.set()
        _requests_counter(call_type or "batch", answer.status).inc()
        metrics.INGEST_LATENCY.observe(time.perf_counter() - started)
        return answer

    async def _handle(
        self, call_type: str | None, headers: Mapping[str, str], body: bytes | None, client: str | None
    ) -> Answer:
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
        salvaged = False
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            # One bad value (NaN, invalid UTF-8, nesting past 1,024 levels) makes the whole body
            # invalid JSON; in a batch, cut it into its items so that only that item is lost.
            found = split_batch(body) if call_type is None else None
            if found is None:
                return _error(400, f"body is not valid JSON: {exc}", reason="invalid_json")
            envelope, raw_items = found
            payload, salvaged = {**envelope, "batch": raw_items}, True
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
                batch_sent_at = parse_sent_at(payload.get("sentAt"))
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
        # The client's address, decided once (X-Forwarded-For only when trusted): the per-client
        # limit's key and the events' country come from it; then it is dropped.
        address = client_address(client, headers.get("x-forwarded-for"), settings.trust_forwarded_for)
        # After the project's check, so that `rate_limited` means the site's whole budget is
        # spent; a refused client gives the project its tokens back, so it cannot drain it.
        if self.s.client_limiter.rate > 0:
            network = network_key(address)
            if network is not None:
                wait = self.s.client_limiter.take(hash((project_id, network)), len(items))
                if wait:
                    self.s.limiter.refund(project_id, len(items))
                    metrics.INGEST_CLIENT_RATE_LIMITED.inc()
                    return _error(
                        429,
                        "rate limit exceeded for this client address (its share of the project's limit)",
                        reason="client_rate_limited",
                        **{"Retry-After": RateLimiter.retry_after(wait)},
                    )

        if time.monotonic() < self.s.kafka_down_until:
            return self._unavailable("Kafka was unreachable a moment ago")

        header_agent = enrich.analyse(headers.get("user-agent", ""))
        location = self.s.geo.locate(address)  # one lookup: a batch's events share the address
        del address
        messages: list[tuple[bytes, bytes]] = []
        dead: list[tuple[bytes, bytes]] = []
        bot_messages: list[tuple[bytes, bytes]] = []
        errors: list[dict[str, Any]] = []
        accepted_types: dict[str, int] = {}
        max_event = settings.max_event_bytes
        normalizer = Normalizer(
            call_type=call_type,
            project_id=project_id,
            received_at=received_at,
            batch_sent_at=batch_sent_at,
            header_agent=header_agent,
            location=location,
            written_times=True,  # its events are only encoded here
        )
        for index, item in enumerate(items):
            # Each item is judged alone: whatever it holds, it is accepted or rejected with a
            # reason, and never costs the good items beside it.
            unparsed: Rejected | None = None
            if salvaged:  # the raw text of one item of a body that is not JSON as a whole
                raw_item: bytes | None = item.raw
                item, unparsed = _parse_item(item.raw)
            elif call_type is not None:
                raw_item = body
            else:
                try:
                    raw_item = orjson.dumps(item)
                except orjson.JSONEncodeError:  # it parses 1,024 levels but writes 254: too deep
                    raw_item = None
            try:
                if unparsed is not None:
                    raise unparsed
                if raw_item is not None and call_type is None and len(raw_item) > max_event:
                    raise Rejected("too_large", None, f"event is larger than {max_event} bytes")
                event, agent = normalizer.normalize(item, raw_item)
                value = encode_event(event)
            except Rejected as exc:
                rejection = exc
            except Exception as exc:
                # A bug of ours, not the sender's: logged and counted like any, but it costs
                # this item only. (Nothing from the item is logged: it may hold personal data.)
                metrics.INGEST_ERRORS.inc()
                log.exception(
                    "ingest_item_error", endpoint=endpoint_name(call_type), error=type(exc).__name__
                )
                rejection = Rejected(
                    "unprocessable", None, "this event could not be processed; it was logged"
                )
            else:
                key = message_key(project_id, event["anonymous_id"], event["user_id"])
                if agent.is_bot:
                    bot_messages.append((key, value))
                    continue
                messages.append((key, value))
                accepted_types[event["type"]] = accepted_types.get(event["type"], 0) + 1
                continue
            errors.append({"index": index, **rejection.as_dict(), "messageId": _message_id(item)})
            metrics.INGEST_EVENTS_REJECTED.labels(rejection.reason).inc()
            dead.append(
                (
                    project_id.encode(),
                    dead_letter(
                        "ingest",
                        rejection.reason,
                        rejection.detail,
                        _dead_letter_raw(item, raw_item, max_event),
                        field=rejection.field,
                        project_id=project_id,
                        endpoint=endpoint_name(call_type),
                        received_at=received_at.isoformat(),
                    ),
                )
            )

        bots = len(bot_messages)
        bot_send: asyncio.Task[None] | None = None
        try:
            # While the embedded broker swaps its topics (werkstroom.rotation, at most HOLD_WAIT s),
            # the events wait for it; the produce timeout counts from there (`within`).
            await self.s.publisher.until_open()
            if bot_messages:  # queued with the events, so handed over in the same batches
                bot_send = self._send_bots(bot_messages)
            await self.s.publisher.within(self._send(messages, dead), settings.produce_timeout_ms / 1000)
        except (TimeoutError, KafkaError) as exc:
            if bot_send is not None:  # the client sends them again with the events
                bot_send.cancel()
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

    def _send_bots(self, messages: list[tuple[bytes, bytes]]) -> asyncio.Task[None]:
        """Send bot events to the bots topic without making the answer wait: they are
        informational (counted per day in the dashboard), so a slow or failing bots topic must
        cost the visitor events nothing. Not acknowledged within the produce timeout (a hold
        of the topic swap aside): counted as unsent and dropped."""

        async def send() -> None:
            try:
                await self.s.publisher.within(
                    self.s.publisher.publish(self.s.topics.bots, messages),
                    self.s.settings.produce_timeout_ms / 1000,
                )
            except (TimeoutError, KafkaError) as exc:
                metrics.INGEST_BOT_EVENTS_UNSENT.inc(len(messages))
                log.warning("bot_events_unsent", error=f"{type(exc).__name__}: {exc}", events=len(messages))

        task = asyncio.get_running_loop().create_task(send(), name="ingest-bots")
        self.s.bot_sends.add(task)
        task.add_done_callback(self.s.bot_sends.discard)
        return task

    def _unavailable(self, why: str) -> Answer:
        metrics.INGEST_KAFKA_UNAVAILABLE.inc()
        return _error(503, f"{why}; retry later", reason="kafka_unavailable", **{"Retry-After": "1"})


def rate_limiters(
    settings: Settings, clock: Callable[[], float] | None = None
) -> tuple[RateLimiter, RateLimiter]:
    """The per-project limiter and the per-client one, a share of it (both off at rate 0)."""
    share = settings.rate_limit_client_share
    return (
        RateLimiter(settings.rate_limit_eps, settings.rate_limit_burst, clock),
        RateLimiter(
            settings.rate_limit_eps * share, settings.rate_limit_burst * share, clock, max_keys=MAX_CLIENTS
        ),
    )


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


def _parse_item(raw: bytes) -> tuple[object, Rejected | None]:
    """One item cut from a batch body that is not JSON as a whole: the item, or why not."""
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            return None, Rejected("too_deep", None, f"event is nested deeper than {MAX_DEPTH} levels")
        return None, Rejected("invalid_json", None, f"event is not valid JSON: {exc}")


def _dead_letter_raw(item: object, raw_item: bytes | None, limit: int) -> bytes:
    """The rejected item's text for the dead-letter topic: as sent, cut to `limit` bytes (an
    item rejected as too large could otherwise make a record Kafka refuses); an item too deep
    to write is kept to MAX_DEPTH levels, deeper values replaced by a marker."""
    if raw_item is None:
        try:
            raw_item = orjson.dumps(truncated(item))
        except orjson.JSONEncodeError:  # not from orjson.loads (a test, another caller): say so
            return b"<not representable as JSON>"
    return raw_item if len(raw_item) <= limit else raw_item[:limit] + b"...<truncated>"


def _message_id(item: object) -> object:
    """The item's messageId, echoed in its error: only as a scalar (a hostile one could be a
    structure too deep to write, or megabytes long)."""
    value = item.get("messageId") if isinstance(item, dict) else None
    if isinstance(value, str):
        return value[:MAX_MESSAGE_ID]
    if isinstance(value, bool | float) or (isinstance(value, int) and -(2**63) <= value < 2**64):
        return value
    return None


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null"
    )


TAGS = [
    {"name": "tracking", "description": "Segment's HTTP tracking API: send events (POST, write key)."},
    {"name": "tracker", "description": "The browser tracker script the snippet loads."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "index", "description": "This index: the documentation and the endpoints by group."},
]

_ROUTES: dict[str, str | None] = {
    "/v1/track": "track",
    "/v1/page": "page",
    "/v1/identify": "identify",
    "/v1/alias": "alias",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/batch": None,
    "/v1/import": None,
}
_CORS = (b"access-control-allow-origin", b"*")
#: A page on another origin may read Retry-After (the tracker honours it) only when exposed.
_EXPOSE = (b"access-control-expose-headers", b"Retry-After")


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
        headers = _headers(scope)
        body = await _read_body(receive, headers.get("content-length"), ingestor.limit(call_type))
        answer = await ingestor.handle(call_type, headers, body, _client(scope))
        raw_headers = [(b"content-type", b"application/json"), _CORS, _EXPOSE]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer.body)})


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name; of a repeated header the last one, so that
    X-Forwarded-For ends with what the nearest proxy appended."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` (gzip aside: a
    compressed body is limited again once inflated)."""
    # isascii: "²".isdigit() is True, and int() of thousands of digits raises.
    if (
        declared
        and declared.isascii()
        and declared.isdigit()
        and (len(declared) > 18 or int(declared) > limit)
    ):
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
        geo = Locator.open(settings.geo_database)  # a missing database: one warning, here
        producer = await start_producer(
            bootstrap, linger_ms=settings.producer_linger_ms, client_id="werkstroom-ingest"
        )
        publisher = Publisher(producer)
        publisher.start()
        keys = WriteKeyCache(lambda: projects.write_keys(client), settings.key_refresh_seconds)
        await keys.start()
        limiter, client_limiter = rate_limiters(settings)
        state = IngestState(
            settings=settings,
            topics=Topics.from_settings(settings),
            producer=producer,
            publisher=publisher,
            keys=keys,
            limiter=limiter,
            client_limiter=client_limiter,
            geo=geo,
        )
        app.state.ingest = Ingestor(state)
        app.state.clickhouse = client
        log.info(
            "ingest_started",
            bootstrap=bootstrap,
            topic=state.topics.events,
            geo_database=str(settings.geo_database) if geo.reader is not None else None,
        )
        try:
            yield
        finally:
            await keys.stop()
            await publisher.stop()
            await producer.stop()
            geo.close()

    app = documented_app(
        title="Werkstroom ingest",
        version="1",
        summary="Segment-compatible tracking API",
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
        max_age=86400,
    )

    async def ready() -> dict[str, str]:
        checks: dict[str, str] = {}
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

    app.include_router(index_router("/"))
    app.include_router(ops_router(ready))
    app.include_router(tracker_router())

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "Processed: counts of accepted, rejected (with reasons) and bot events"},
        400: {"description": "Body is not JSON, not an object, or (single calls) the event is invalid"},
        401: {"description": "Missing or unknown write key"},
        413: {"description": "Body or batch too large"},
        429: {"description": "Project or client-address rate limit exceeded; see Retry-After"},
        503: {"description": "Kafka did not acknowledge in time, or shutting down; see Retry-After"},
    }

    def add_route(path: str, call_type: str | None, example: str) -> None:
        async def route(request: Request) -> Response:
            ingestor: Ingestor = request.app.state.ingest
            headers = _headers(request.scope)
            body = await _read_body(request.receive, headers.get("content-length"), ingestor.limit(call_type))
            answer = await ingestor.handle(call_type, headers, body, _client(request.scope))
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

    for kind in ("track", "page", "screen", "identify", "group", "alias"):
        add_route(f"/v1/{kind}", kind, kind)
    add_route("/v1/batch", None, "batch")
    add_route("/v1/import", None, "batch")

    return BeaconFastPath(app)
