"""The Segment tracking-API payloads, validated and turned into contract v1 events.

Pure functions, no I/O: `normalize()` takes one decoded call (a dict) and returns the
enriched event (times as UTC datetimes; `encode_event` writes the JSON) or raises `Rejected`
with the field and the reason. Hand-written checks on
the decoded dict, not a pydantic model, because this runs for every beacon (see bench/).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from services.ingest.enrich import UNKNOWN, Agent, analyse
from werkstroom.contract import SCHEMA_VERSION

MAX_ID = 200
MAX_NAME = 200
MAX_MESSAGE_ID = 100
MAX_URL = 2048
MAX_TITLE = 1000
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
SUPPORTED = ("page", "track", "identify", "alias")
_VARIANT = "89ab"
#: Reserved track events a tracker may send: $heartbeat keeps a visitor online while they stay
#: on a page (it counts as activity, not as an event).
RESERVED_TRACK = frozenset({"$heartbeat"})
_SPECIAL_EVENT = {"page": "$page", "identify": "$identify", "alias": "$alias"}


class Rejected(ValueError):
    """One call could not be accepted. `reason` is a short code, `field` the offending field."""

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": self.detail}


def parse_client_time(value: object, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Rejected("invalid_time", field, f"{field} must be an ISO 8601 string")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise Rejected(
            "invalid_time", field, f"{field} is not an ISO 8601 date-time: {value[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


def random_id() -> str:
    """A random (version 4) UUID string; a third of the cost of str(uuid.uuid4())."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def corrected_timestamp(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime
) -> datetime:
    """Segment's clock-skew correction: the client says when the event happened (timestamp)
    and when it sent it (sentAt), both by its own clock; the server knows when it arrived.
    timestamp = received_at + (timestamp - sent_at). Without sentAt the client time is used
    as is, but never later than the arrival; without a timestamp, the arrival time."""
    if timestamp is None:
        return received_at
    if sent_at is not None:
        return received_at + (timestamp - sent_at)
    return min(timestamp, received_at)


def _id(value: object, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise Rejected("invalid_field", field, f"{field} must be a string")
    if len(text) > MAX_ID:
        raise Rejected("invalid_field", field, f"{field} is longer than {MAX_ID} characters")
    return text


def _object(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Rejected("invalid_field", field, f"{field} must be an object")
    return value


def _text(value: object, limit: int) -> str:
    if isinstance(value, str):
        return value[:limit]
    return ""


def normalize(
    call: object,
    *,
    call_type: str | None,
    project_id: str,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    header_agent: Agent = UNKNOWN,
) -> tuple[dict[str, Any], Agent]:
    """Validate one Segment call and build the contract v1 event.

    `call_type` is the endpoint's type (`/v1/track` -> "track"); None for batch items, which
    carry their own `type`. Returns the event and the visitor's Agent (for bot filtering).
    """
    if not isinstance(call, dict):
        raise Rejected("not_an_object", None, "each event must be a JSON object")
    kind = call_type or call.get("type")
    if kind in ("screen", "group"):
        raise Rejected("unsupported_type", "type", f"type {kind!r} is not supported; use page or track")
    if kind not in SUPPORTED:
        raise Rejected("invalid_field", "type", f"type must be one of {', '.join(SUPPORTED)}")

    anonymous_id = _id(call.get("anonymousId"), "anonymousId")
    user_id = _id(call.get("userId"), "userId")
    if not anonymous_id and not user_id:
        raise Rejected("missing_field", "anonymousId", "anonymousId or userId is required")

    context = _object(call.get("context"), "context")
    properties = _object(call.get("properties"), "properties")
    traits = (
        _object(call.get("traits"), "traits")
        if kind == "identify"
        else _object(context.get("traits"), "context.traits")
    )

    previous_id = ""
    if kind == "track":
        name = call.get("event")
        if not isinstance(name, str) or not name.strip():
            raise Rejected("missing_field", "event", "track calls need an event name")
        if len(name) > MAX_NAME:
            raise Rejected("invalid_field", "event", f"event is longer than {MAX_NAME} characters")
        if name.startswith("$") and name not in RESERVED_TRACK:
            raise Rejected("invalid_field", "event", "event names starting with $ are reserved")
        event = name
    else:
        event = _SPECIAL_EVENT[kind]
        if kind == "alias":
            previous_id = _id(call.get("previousId"), "previousId")
            if not previous_id:
                raise Rejected("missing_field", "previousId", "alias calls need previousId")
            if not user_id:
                raise Rejected("missing_field", "userId", "alias calls need userId")
        if kind == "page":  # Segment's page name and category live in properties in our contract
            for key in ("name", "category"):
                if call.get(key) is not None and key not in properties:
                    properties = {**properties, key: _text(call.get(key), MAX_NAME)}

    message_id = call.get("messageId")
    if message_id is None or message_id == "":
        event_id = random_id()
    elif isinstance(message_id, str) and len(message_id) <= MAX_MESSAGE_ID:
        event_id = message_id
    else:
        raise Rejected(
            "invalid_field", "messageId", f"messageId must be a string of at most {MAX_MESSAGE_ID}"
        )

    timestamp = parse_client_time(call.get("timestamp") or call.get("originalTimestamp"), "timestamp")
    sent_at = parse_client_time(call.get("sentAt"), "sentAt") or batch_sent_at
    when = corrected_timestamp(timestamp, sent_at, received_at)
    if when < EARLIEST:
        raise Rejected("invalid_time", "timestamp", "timestamp is before the year 2000")

    page = _object(context.get("page"), "context.page")
    source = properties if kind == "page" else page
    url = _text(source.get("url") or page.get("url"), MAX_URL)
    path = _text(source.get("path") or page.get("path"), MAX_URL)
    if not path and url:
        try:
            path = urlsplit(url).path or "/"
        except ValueError:
            path = ""
    session_id = context.get("sessionId", call.get("sessionId"))
    library = _object(context.get("library"), "context.library")

    user_agent = context.get("userAgent")
    if isinstance(user_agent, str) and user_agent:
        agent = analyse(user_agent)
    elif library:
        agent = UNKNOWN  # a server-side SDK: the request's User-Agent is the library, not a visitor
    else:
        agent = header_agent

    return (
        {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id,
            "project_id": project_id,
            "type": kind,
            "event": event,
            "anonymous_id": anonymous_id,
            "user_id": user_id,
            "previous_id": previous_id,
            "session_id": _text(session_id, MAX_ID) if isinstance(session_id, str) else "",
            "timestamp": when,
            "sent_at": sent_at,
            "received_at": received_at,
            "url": url,
            "path": path,
            "title": _text(source.get("title") or page.get("title"), MAX_TITLE),
            "referrer": _text(source.get("referrer") or page.get("referrer"), MAX_URL),
            "device_type": agent.device_type,
            "browser": agent.browser,
            "browser_version": agent.browser_version,
            "os": agent.os,
            "os_version": agent.os_version,
            "properties": properties,
            "traits": traits,
            "library": _text(library.get("name"), 100),
        },
        agent,
    )
