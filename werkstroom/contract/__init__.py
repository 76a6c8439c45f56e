"""The public contract: the enriched event written to Kafka, and the topics it travels on.

Other services consume these topics, so this is versioned (see docs/contract.md):
`event.v1.json` is the JSON Schema of one message value. Within v1, fields are only ever
added (optional, with a default); renaming, removing or retyping a field makes a v2 on a
new topic (`werkstroom.events.v2`), produced side by side until consumers have moved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Any

import msgspec
import orjson

from werkstroom.settings import Settings

SCHEMA_VERSION = 1

# -- time policy (docs/contract.md, "Time policy") -----------------------------------------
#: No event is dated before this: earlier times come from unset device clocks, not visitors.
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
#: `timestamp` and `received_at` on the topic lie before this. ClickHouse stores `toDate()` of
#: the event time (Date ends 2149-06-06) and minutes as DateTime (ends 2106-02-07).
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)
#: `sent_at` is the client's clock, stored as DateTime64 (1900-2299): a device whose clock
#: was reset to 1970 is real, and the skew correction fixes its events.
SENT_AT_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
SENT_AT_LATEST = datetime(2300, 1, 1, tzinfo=UTC)
#: A client whose clock (sentAt against our arrival time, transit included) is within this of
#: ours keeps its own timestamps exactly; one further off is corrected by the part beyond it.
#: Correcting every request by its own transit reorders events a client sent milliseconds
#: apart in concurrent requests (the Node SDK's page, identify, track). 10 s is above the
#: transit time of a working mobile connection and small against the 5-minute "online" window.
CLOCK_TOLERANCE = timedelta(seconds=10)
#: An event time further ahead of its arrival than this is set to the arrival time. After the
#: skew correction an honest event is at most CLOCK_TOLERANCE plus a little jitter ahead (events
#: stamped after sentAt), so this can be small; larger leads are hostile.
FUTURE_TOLERANCE = timedelta(seconds=60)
_ZERO = timedelta(0)
#: The deepest nesting one event may have, the event object itself counted as level 1 (so
#: properties and traits nest up to 62 levels below their own object). Well inside what
#: orjson writes (254), msgspec reads (~1000) and ClickHouse's JSON functions carry (1000).
MAX_DEPTH = 64
#: The `type` values ingest writes today (Segment's calls). More may be added within v1, so a
#: consumer reads any `type` (`decode_event` does) and treats one it does not know as plain
#: activity, never as an error: an aggregator older than its ingest keeps working.
KNOWN_TYPES: tuple[str, ...] = ("page", "screen", "track", "identify", "group", "alias")
#: The longest `type` a consumer accepts from any producer (it is a LowCardinality column).
MAX_TYPE = 50
#: The `event` of a call that is not a track: its type's name after a `$`.
TYPE_EVENTS: dict[str, str] = {t: f"${t}" for t in ("page", "screen", "identify", "group", "alias")}
PAGE = TYPE_EVENTS["page"]
#: The tracker's liveness beacon (a track event): it keeps a visitor online and counts as
#: activity, but it is not an event (not counted, not stored in visitor_events, no funnel step).
HEARTBEAT = "$heartbeat"
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
    "country",
    "region",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "source",
    "schema_version",
)


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
    #: Events filtered as bots: the events topic's schema; a reader of `events` never sees them.
    bots: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(events=settings.topic_events, dead_letter=settings.topic_dlq, bots=settings.topic_bots)

    def all(self) -> tuple[str, ...]:
        return (self.events, self.dead_letter, self.bots)


def message_key(project_id: str, anonymous_id: str, user_id: str) -> bytes:
    """`project_id:anonymous_id` (or `project_id:u:user_id` for server-side events with no
    anonymous id), so one visitor's events stay in one partition, in order."""
    if anonymous_id:
        return f"{project_id}:{anonymous_id}".encode()
    return f"{project_id}:u:{user_id}".encode()


def event_time(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime
) -> tuple[datetime | None, bool]:
    """The contract's time of one event, from the client's `timestamp` and `sentAt` (both by its
    own clock) and the server's arrival time, as `(time, moved)`.

    The clock-skew correction first, with a soft tolerance: the client's lead is
    `offset = sent_at - received_at` (transit included), and the time is `timestamp` minus the
    part of the offset beyond CLOCK_TOLERANCE. A client within the tolerance keeps its own
    times, so their order is its order whatever the network does; one further off is brought to
    within the tolerance, and the correction is continuous in the offset. Without sentAt, the
    client time but never later than the arrival; without a timestamp, the arrival. Then the
    range: a time more than FUTURE_TOLERANCE ahead of the arrival becomes the arrival (`moved`
    is True); one before EARLIEST_TIME gives None (reject the event). Never raises: a time past
    the ends of datetime is as far out as can be, so it is treated as future (the arrival) or
    past (None) by its sign.
    """
    if timestamp is None:
        return received_at, False
    if sent_at is None:
        if timestamp >= received_at:
            return received_at, False
        if timestamp < EARLIEST_TIME:
            return None, False
        return (timestamp if timestamp.tzinfo is UTC else timestamp.astimezone(UTC)), False
    offset = sent_at - received_at  # two datetimes always subtract; adding may overflow
    if offset > CLOCK_TOLERANCE:
        correction = offset - CLOCK_TOLERANCE
    elif offset < -CLOCK_TOLERANCE:
        correction = offset + CLOCK_TOLERANCE
    else:
        correction = _ZERO
    # As a distance from the arrival, so the result is in received_at's zone (UTC) and only the
    # final addition can overflow (timedeltas reach 999,999,999 days; datetimes 3.7 million).
    skew = (timestamp - received_at) - correction
    try:
        when = received_at + skew
    except OverflowError:
        return (received_at, True) if skew > _ZERO else (None, False)
    # Comparisons of datetimes cannot overflow; `received_at + tolerance` could.
    if when > received_at and when - received_at > FUTURE_TOLERANCE:
        return received_at, True
    if when < EARLIEST_TIME:
        return None, False
    return when, False


def encode_event(event: dict[str, Any]) -> bytes:
    """One message value: JSON with every time in UTC as RFC 3339 with a `Z`."""
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)


def written_time(value: datetime) -> str:
    """`value` as encode_event writes it (the JSON string's text): an event holding this
    instead of the datetime encodes to the same bytes."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1].decode()


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as every time in the contract is written."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: datetime) -> int:
    """Exact milliseconds since the epoch (float timestamp() * 1000 can be off by one)."""
    return (value - _EPOCH) // _MS


NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
#: RFC 3339 requires an offset; a time without one would be read as local time by some and
#: as UTC by others (and cannot be compared with aware times at all).
Time = Annotated[datetime, msgspec.Meta(tz=True)]


class Event(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One decoded v1 message. Consumers get times as UTC datetimes and properties/traits as
    the raw JSON text (`msgspec.Raw`), which is what ClickHouse stores anyway. It holds only
    strings, numbers, datetimes and raw JSON, so it can never be part of a reference cycle:
    `gc=False` keeps the garbage collector from tracking the aggregator's many events."""

    schema_version: int
    event_id: NonEmpty
    project_id: NonEmpty
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE)]  # KNOWN_TYPES, or newer
    event: NonEmpty
    timestamp: Time
    received_at: Time
    sent_at: Time | None = None
    anonymous_id: str = ""
    user_id: str = ""
    previous_id: str = ""
    session_id: str = ""
    url: str = ""
    path: str = ""
    title: str = ""
    referrer: str = ""
    device_type: str = ""
    browser: str = ""
    browser_version: str = ""
    os: str = ""
    os_version: str = ""
    properties: msgspec.Raw = msgspec.Raw(b"{}")
    traits: msgspec.Raw = msgspec.Raw(b"{}")
    library: str = ""
    #: Added within v1: a message written before them (or by another producer) decodes with "".
    country: str = ""
    region: str = ""
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    utm_term: str = ""
    utm_content: str = ""
    source: str = ""


_decoder = msgspec.json.Decoder(Event)
_OPEN_BRACE = ord("{")


def decode_event(value: bytes | None) -> Event:
    """Decode and check one message value (in C, with msgspec); raises ContractError."""
    if value is None:
        raise ContractError("empty_value", "message has no value")
    try:
        event = _decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise ContractError(_reason(str(exc)), str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ContractError("invalid_json", str(exc)) from None
    if event.schema_version != SCHEMA_VERSION:
        raise ContractError("unsupported_version", f"schema_version {event.schema_version}; this reads 1")
    # A Raw value starts at its first byte, never at whitespace; a view reads it without a copy.
    if memoryview(event.properties)[0] != _OPEN_BRACE:
        raise ContractError("invalid_field", "properties must be an object")
    if memoryview(event.traits)[0] != _OPEN_BRACE:
        raise ContractError("invalid_field", "traits must be an object")
    # Other producers write this topic too: a time ClickHouse cannot store would stop the sink
    # (or be stored as garbage), so it is dead-lettered here. Five comparisons: cheap next to
    # the decode.
    sent_at = event.sent_at
    if not (
        EARLIEST_TIME <= event.timestamp < LATEST_TIME
        and EARLIEST_TIME <= event.received_at < LATEST_TIME
        and (sent_at is None or SENT_AT_EARLIEST <= sent_at < SENT_AT_LATEST)
    ):
        raise ContractError("invalid_time", _out_of_range(event))
    return event


def _out_of_range(event: Event) -> str:
    for name, value, low, high in (
        ("timestamp", event.timestamp, EARLIEST_TIME, LATEST_TIME),
        ("received_at", event.received_at, EARLIEST_TIME, LATEST_TIME),
        ("sent_at", event.sent_at, SENT_AT_EARLIEST, SENT_AT_LATEST),
    ):
        if value is not None and not low <= value < high:
            return f"{name} {value.isoformat()} is outside [{low.date()}, {high.date()})"
    return "a time is out of range"


def _reason(message: str) -> str:
    if message.startswith("Expected `object`") and " - at `" not in message:
        return "not_an_object"
    if "missing required field" in message or "of length >= 1" in message:
        return "missing_field"
    if "datetime" in message or "RFC3339" in message:
        return "invalid_time"
    return "invalid_field"


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
    Never raises: text that JSON cannot carry (lone surrogates) is replaced, not refused.
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
    try:
        return orjson.dumps(record)
    except (orjson.JSONEncodeError, TypeError):
        safe = {k: _valid_text(v) if isinstance(v, str) else v for k, v in record.items()}
        return orjson.dumps(safe, default=repr)


def _valid_text(text: str) -> str:
    """`text` with what UTF-8 cannot carry (lone surrogates) replaced."""
    return text.encode("utf-8", errors="replace").decode("utf-8")
