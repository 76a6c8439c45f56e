"""The public contract: the enriched event written to Kafka, and the topics it travels on.

Other services consume these topics, so this is versioned (see docs/contract.md):
`event.v1.json` is the JSON Schema of one message value. Within v1, fields are only ever
added (optional, with a default); renaming, removing or retyping a field makes a v2 on a
new topic (`werkstroom.events.v2`), produced side by side until consumers have moved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import orjson

from werkstroom.settings import Settings

SCHEMA_VERSION = 1
EVENT_TYPES = ("page", "track", "identify", "alias")

#: Every field of a v1 event, in the order of the ClickHouse `events` columns.
FIELDS: tuple[str, ...] = (
    "project_id",
    "event_id",
    "type",
    "event",
    "anonymous_id",
    "user_id",
    "previous_id",
    "session_id",
    "timestamp",
    "sent_at",
    "received_at",
    "url",
    "path",
    "title",
    "referrer",
    "device_type",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "properties",
    "traits",
    "library",
    "schema_version",
)
_STRING_FIELDS = (
    frozenset(FIELDS) - {"timestamp", "sent_at", "received_at", "properties", "traits"} - {"schema_version"}
)
_REQUIRED = ("project_id", "event_id", "type", "event", "timestamp", "received_at", "schema_version")


class ContractError(ValueError):
    """A message does not match the event contract; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Topics:
    """Topic names come from settings; nobody spells them out elsewhere."""

    events: str
    dead_letter: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(events=settings.topic_events, dead_letter=settings.topic_dlq)

    def all(self) -> tuple[str, ...]:
        return (self.events, self.dead_letter)


def message_key(project_id: str, anonymous_id: str, user_id: str) -> bytes:
    """`project_id:anonymous_id` (or `project_id:u:user_id` for server-side events with no
    anonymous id), so one visitor's events stay in one partition, in order."""
    if anonymous_id:
        return f"{project_id}:{anonymous_id}".encode()
    return f"{project_id}:u:{user_id}".encode()


def encode_event(event: dict[str, Any]) -> bytes:
    """One message value: JSON with every time in UTC as RFC 3339 with a `Z`."""
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as every time in the contract is written."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def decode_event(value: bytes | None) -> dict[str, Any]:
    """Decode and check one message value; raises ContractError with the reason."""
    if value is None:
        raise ContractError("empty_value", "message has no value")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError("invalid_json", str(exc)) from None
    if not isinstance(event, dict):
        raise ContractError("not_an_object", f"message value is a JSON {type(event).__name__}")
    for name in _REQUIRED:
        if event.get(name) in (None, ""):
            raise ContractError("missing_field", f"{name} is required")
    version = event["schema_version"]
    if not isinstance(version, int) or version != SCHEMA_VERSION:
        raise ContractError("unsupported_version", f"schema_version {version!r}, this consumer reads 1")
    if event["type"] not in EVENT_TYPES:
        raise ContractError("invalid_field", f"type {event['type']!r} is not one of {EVENT_TYPES}")
    for name in _STRING_FIELDS:
        field = event.get(name)
        if field is not None and not isinstance(field, str):
            raise ContractError("invalid_field", f"{name} must be a string")
    for name in ("properties", "traits"):
        field = event.get(name)
        if field is not None and not isinstance(field, dict):
            raise ContractError("invalid_field", f"{name} must be an object")
    try:
        for name in ("timestamp", "received_at"):
            event[name] = parse_time(event[name])
        if event.get("sent_at"):
            event["sent_at"] = parse_time(event["sent_at"])
        else:
            event["sent_at"] = None
    except (TypeError, ValueError) as exc:
        raise ContractError("invalid_time", str(exc)) from None
    return event


@cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema of a v1 message value (werkstroom/contract/event.v1.json)."""
    text = (resources.files("werkstroom.contract") / "event.v1.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def dead_letter(source: str, reason: str, detail: str, raw: bytes | str, **context: Any) -> bytes:
    """One dead-letter message value (topic default werkstroom.events.dlq.v1).

    `raw` is the payload as received (a JSON item at ingest, a message value in the sink),
    kept as text so that nothing is lost and it can be replayed once the cause is fixed.
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    record = {
        "source": source,
        "reason": reason,
        "message": detail,
        "raw": text,
        "dead_lettered_at": format_time(datetime.now(UTC)),
        **context,
    }
    return orjson.dumps(record)
