"""The Segment tracking-API payloads, validated and turned into contract v1 events.

Pure functions, no I/O: `normalize()` takes one decoded call (a dict) and returns the
enriched event (times as UTC datetimes; `encode_event` writes the JSON) or raises `Rejected`
with the field and the reason. Hand-written checks on
the decoded dict, not a pydantic model, because this runs for every beacon (see bench/).

The write key is public, so a call is input from strangers: for anything orjson can parse,
normalize returns an event that encodes and that ClickHouse stores, or raises Rejected;
nothing else (tests/unit/ingest/test_normalize_properties.py checks it with hypothesis).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from services.ingest.enrich import UNKNOWN, Agent, analyse
from werkstroom import metrics
from werkstroom.contract import (
    EARLIEST_TIME,
    HEARTBEAT,
    KNOWN_TYPES,
    MAX_DEPTH,
    SCHEMA_VERSION,
    SENT_AT_EARLIEST,
    SENT_AT_LATEST,
    TYPE_EVENTS,
    event_time,
    written_time,
)
from werkstroom.geo import NOWHERE, Location
from werkstroom.sources import campaign_of, source_of

MAX_ID = 200
MAX_NAME = 200
MAX_MESSAGE_ID = 100
MAX_URL = 2048
MAX_TITLE = 1000
SUPPORTED = KNOWN_TYPES
#: Reserved track events a tracker may send: $heartbeat keeps a visitor online while they stay
#: on a page (it counts as activity, not as an event).
RESERVED_TRACK = frozenset({HEARTBEAT})
#: A mobile SDK's operating system (context.os.name), e.g. iOS or Android, as ua-parser names them.
MAX_OS = 100


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
    if parsed.tzinfo is UTC:
        return parsed
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+01:00 or 9999-12-31T23:00-02:00: past the ends of datetime in UTC.
        # Kept in its own zone: comparing and subtracting still work, and a time this far out
        # is moved to the arrival or rejected by the time policy, never stored.
        return parsed


def parse_sent_at(value: object) -> datetime | None:
    """`sentAt` (of a call or of a batch): stored as sent_at, so within DateTime64's range."""
    sent_at = parse_client_time(value, "sentAt")
    if sent_at is not None and not SENT_AT_EARLIEST <= sent_at < SENT_AT_LATEST:
        raise _sent_at_out_of_range()
    return sent_at


def _sent_at_out_of_range() -> Rejected:
    low, high = SENT_AT_EARLIEST.year, SENT_AT_LATEST.year - 1
    return Rejected("invalid_time", "sentAt", f"sentAt must lie between {low} and {high}")


_CONTAINERS = (dict, list)  # a tuple: isinstance with `dict | list` is slower


def too_deep(value: object, raw: bytes | None = None) -> bool:
    """Whether `value` nests deeper than MAX_DEPTH (itself counted as level 1).

    `raw`, its JSON text when at hand, makes this nearly free on the hot path: every level
    opens with `{` or `[`, so their count bounds the depth. Only past that bound is the
    structure walked, with a stack of its own (no recursion: 1,000 levels parse).
    """
    if raw is not None:
        # count() reads ~1 ns a byte; find() is a memchr, several times faster, and most
        # events hold no array. (`b"[" in raw` is slower than either.)
        opens = raw.count(b"{") + (raw.count(b"[") if raw.find(b"[") >= 0 else 0)
        if opens <= MAX_DEPTH:
            return False
    if not isinstance(value, _CONTAINERS):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _CONTAINERS):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


TRUNCATED = "<truncated>"


def truncated(value: object, limit: int = MAX_DEPTH) -> object:
    """A copy of `value` with every container below `limit` levels replaced by TRUNCATED, so
    that an item too deep to re-serialise can still be dead-lettered (iterative, like too_deep)."""
    if not isinstance(value, _CONTAINERS):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        source, copy, depth = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in pairs:
            if isinstance(child, _CONTAINERS):
                if depth >= limit:
                    child = TRUNCATED
                else:
                    inner: Any = {} if isinstance(child, dict) else []
                    stack.append((child, inner, depth + 1))
                    child = inner
            if isinstance(copy, dict):
                copy[key] = child
            else:
                copy.append(child)
    return root


def random_id() -> str:
    """A random (version 4) UUID string, from a pool filled `_IDS_AT_ONCE` at a time
    (`random_ids`): a tenth of the cost of str(uuid.uuid4())."""
    try:
        return _pool.pop()
    except IndexError:  # empty: this caller's id comes from the new ones, so no other can take it
        ids = random_ids(_IDS_AT_ONCE)
        taken = ids.pop()
        _pool.extend(ids)
        return taken


_IDS_AT_ONCE = 128
_pool: list[str] = []
os.register_at_fork(after_in_child=_pool.clear)  # a forked worker draws ids of its own
#: Where each of a UUID's 32 hex digits goes among its 36 characters (after 8, 12, 16, 20: a dash).
_PLACES = [(digit, digit + sum(digit >= dash for dash in (8, 12, 16, 20))) for digit in range(32)]
#: The variant digit (RFC 4122: 10xx in binary) from a random hex digit: its two low bits kept.
_VARIANT_DIGIT = bytes.maketrans(b"0123456789abcdef", b"89ab" * 4)
_ID_LINE = b"00000000-0000-4000-0000-000000000000\n"


def random_ids(count: int) -> list[str]:
    """`count` random version 4 UUID strings. Written column by column into lines of one
    buffer (a strided slice for each hex digit, in C for all ids at once): a third of the cost
    of formatting each id from its own 16 random bytes."""
    digits = os.urandom(16 * count).hex().encode()
    lines = bytearray((_ID_LINE * count)[:-1])
    width = len(_ID_LINE)
    for digit, place in _PLACES:
        if digit == 12:  # the version, "4", is in the line already
            continue
        column = digits[digit::32]
        lines[place::width] = column.translate(_VARIANT_DIGIT) if digit == 16 else column
    return lines.decode().split("\n")


def corrected_timestamp(
    timestamp: datetime | None,
    sent_at: datetime | None,
    received_at: datetime,
    field: str = "timestamp",
) -> datetime:
    """The clock-skew correction: the client says when the event happened (timestamp) and when
    it sent it (sentAt), both by its own clock; the server knows when it arrived. A clock within
    CLOCK_TOLERANCE of ours is trusted as is, one further off is corrected by the excess; then
    the time policy: never more than a minute ahead of the arrival, never before 2000
    (Rejected, naming `field`). All of it is werkstroom.contract.event_time."""
    when, moved = event_time(timestamp, sent_at, received_at)
    if when is None:
        raise _too_early(sent_at, field)
    if moved:
        metrics.INGEST_FUTURE_TIMESTAMPS.inc()  # not I/O: an in-process counter
    return when


def _too_early(sent_at: datetime | None, field: str) -> Rejected:
    corrected = " once corrected for the client's clock (with sentAt)" if sent_at is not None else ""
    return Rejected("invalid_time", field, f"{field} is before {EARLIEST_TIME.year}{corrected}")


def client_time(call: dict[str, Any], has_sent_at: bool) -> tuple[datetime | None, str]:
    """The call's time of the event, to be corrected with sentAt, and the field it came from.

    Segment's spec: `originalTimestamp` is the client's time of the event (RudderStack's SDKs
    send it); `timestamp` beside it is what a Segment-compatible server made of it, corrected.
    So originalTimestamp goes first, except that without a sentAt (the call's or its batch's)
    to correct it the server's `timestamp` is the better time. Alone, `timestamp` is the
    client's (Segment's SDKs).
    """
    original = parse_client_time(call.get("originalTimestamp"), "originalTimestamp")
    stamped = parse_client_time(call.get("timestamp"), "timestamp")
    if original is None or (stamped is not None and not has_sent_at):
        return stamped, "timestamp"
    return original, "originalTimestamp"


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
    location: Location = NOWHERE,
    raw: bytes | None = None,
) -> tuple[dict[str, Any], Agent]:
    """Validate one Segment call and build the contract v1 event.

    `call_type` is the endpoint's type (`/v1/track` -> "track"); None for batch items, which
    carry their own `type`. `location` is the client address's (the address itself never
    reaches this function: it is not part of the event). `raw` is the call's JSON text when
    the caller has it (a cheap bound for the depth check). Returns the event and the visitor's
    Agent (for bot filtering).
    """
    if not isinstance(call, dict):
        raise Rejected("not_an_object", None, "each event must be a JSON object")
    if too_deep(call, raw):
        raise Rejected("too_deep", None, f"event nests deeper than {MAX_DEPTH} levels")
    kind = call_type or call.get("type")
    if kind not in SUPPORTED:
        raise Rejected("invalid_field", "type", f"type must be one of {', '.join(SUPPORTED)}")

    anonymous_id = _id(call.get("anonymousId"), "anonymousId")
    user_id = _id(call.get("userId"), "userId")
    if not anonymous_id and not user_id:
        raise Rejected("missing_field", "anonymousId", "anonymousId or userId is required")

    context = _object(call.get("context"), "context")
    properties = _object(call.get("properties"), "properties")
    # The current user's traits (Segment's spec) on every call. Only identify's set the
    # person's traits (the aggregator's trait_rows); the others are kept with the event.
    traits = _object(context.get("traits"), "context.traits")
    if kind == "identify":
        # Segment's SDKs send identify traits at the top level, RudderStack's under
        # context.traits (issue 19): both count, the top level winning a key in both.
        traits = {**traits, **_object(call.get("traits"), "traits")}
    elif kind == "group":
        # The group's traits, not the user's: kept apart from context.traits, never merged.
        traits = _object(call.get("traits"), "traits")

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
        event = TYPE_EVENTS[kind]
        if kind == "alias":
            previous_id = _id(call.get("previousId"), "previousId")
            if not previous_id:
                raise Rejected("missing_field", "previousId", "alias calls need previousId")
            if not user_id:
                raise Rejected("missing_field", "userId", "alias calls need userId")
        if kind == "group":
            group_id = _id(call.get("groupId"), "groupId")
            if not group_id:
                raise Rejected("missing_field", "groupId", "group calls need groupId")
            properties = {**properties, "groupId": group_id}
        if kind in ("page", "screen"):  # Segment's name and category live in properties here
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

    own_sent_at = parse_sent_at(call.get("sentAt"))
    sent_at = own_sent_at if own_sent_at is not None else batch_sent_at
    timestamp, time_field = client_time(call, sent_at is not None)
    when = corrected_timestamp(timestamp, sent_at, received_at, time_field)

    page = _object(context.get("page"), "context.page")
    url, path, title, referrer = _locate(properties if kind == "page" else page, page)
    session_id = context.get("sessionId", call.get("sessionId"))
    library = _object(context.get("library"), "context.library")

    agent, os_name, os_version = _device(context, library, header_agent)
    # Where the visit came from: the referrer grouped, and the campaign (context.campaign, else
    # the URL's utm_* parameters). Never rejects: werkstroom/sources.py clips and ignores.
    campaign = campaign_of(context.get("campaign"), url)

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
            "title": title,
            "referrer": referrer,
            "device_type": agent.device_type,
            "browser": agent.browser,
            "browser_version": agent.browser_version,
            "os": os_name,
            "os_version": os_version,
            "properties": properties,
            "traits": traits,
            "library": _text(library.get("name"), 100),
            "country": location.country,
            "region": location.region,
            **campaign,
            "source": source_of(referrer, url),
        },
        agent,
    )


_TRACK = "track"
#: An event's time, its sent_at and whether the time policy moved it (see event_time).
_Times = tuple[datetime | str, datetime | str | None, bool]
_PAGE = "page"
_PAGE_EVENT = TYPE_EVENTS[_PAGE]


class Normalizer:
    """`normalize` for the calls of one request, with what they share worked out once.

    The common call (a track or page with string ids, objects where objects belong, string
    times) takes a short path that gives the very event `normalize` gives: its times are parsed
    and corrected once per distinct (originalTimestamp, timestamp, sentAt) of the request, and
    what comes from `context` (User-Agent, page, library, campaign, source) once per distinct
    context (an SDK's batch repeats it). Anything else, and every rejection, goes through
    `normalize` itself. tests/unit/ingest/test_normalize_properties.py holds the two paths to
    the same answers.

    `written_times`: the short path's events hold their times as encode_event writes them
    (`written_time`, text) instead of datetimes, for a caller that only encodes them: the same
    bytes, and writing a datetime was half of encode_event's time. Computed once per distinct
    time of the request, like the times themselves.
    """

    __slots__ = (
        "_context",
        "_derived",
        "_times",
        "batch_sent_at",
        "call_type",
        "header_agent",
        "location",
        "project_id",
        "received_at",
        "written_times",
    )

    def __init__(
        self,
        *,
        call_type: str | None,
        project_id: str,
        received_at: datetime,
        batch_sent_at: datetime | None = None,
        header_agent: Agent = UNKNOWN,
        location: Location = NOWHERE,
        written_times: bool = False,
    ) -> None:
        self.call_type = call_type
        self.project_id = project_id
        self.received_at = received_at
        self.batch_sent_at = batch_sent_at
        self.header_agent = header_agent
        self.location = location
        self.written_times = written_times
        self._times: dict[tuple[str | None, str | None, str | None], _Times] = {}
        self._context: dict[str, Any] | None = None
        self._derived: _Derived | None = None

    def normalize(self, call: object, raw: bytes | None) -> tuple[dict[str, Any], Agent]:
        """As `normalize(call, ..., raw=raw)` with this request's arguments."""
        found = self._short(call, raw)
        if found is not None:
            return found
        return normalize(
            call,
            call_type=self.call_type,
            project_id=self.project_id,
            received_at=self.received_at,
            batch_sent_at=self.batch_sent_at,
            header_agent=self.header_agent,
            location=self.location,
            raw=raw,
        )

    def _short(self, call: object, raw: bytes | None) -> tuple[dict[str, Any], Agent] | None:
        """The event of a common call, or None: then `normalize` decides (and rejects)."""
        if type(call) is not dict or raw is None:
            return None
        if raw.count(b"{") + (raw.count(b"[") if raw.find(b"[") >= 0 else 0) > MAX_DEPTH:
            return None  # too_deep's bound: past it, the walk decides
        get = call.get
        kind = self.call_type or get("type")
        if kind == _TRACK:
            name = get("event")
            if (
                type(name) is not str
                or len(name) > MAX_NAME
                or not name.strip()
                or (name[:1] == "$" and name not in RESERVED_TRACK)
            ):
                return None
        elif kind == _PAGE:
            if get("name") is not None or get("category") is not None:
                return None
            name = _PAGE_EVENT
        else:
            return None

        anonymous_id = get("anonymousId")
        if anonymous_id is None:
            anonymous_id = ""
        elif type(anonymous_id) is not str or len(anonymous_id) > MAX_ID:
            return None
        user_id = get("userId")
        if user_id is None:
            user_id = ""
        elif type(user_id) is not str or len(user_id) > MAX_ID:
            return None
        if not anonymous_id and not user_id:
            return None

        context = _object_or_none(get("context"))
        if context is None:
            return None
        properties = _object_or_none(get("properties"))
        if properties is None:
            return None
        traits = _object_or_none(context.get("traits"))
        if traits is None:
            return None

        message_id = get("messageId")
        if message_id is None or message_id == "":
            event_id = random_id()
        elif type(message_id) is str and len(message_id) <= MAX_MESSAGE_ID:
            event_id = message_id
        else:
            return None

        original, stamped, sent = get("originalTimestamp"), get("timestamp"), get("sentAt")
        if not (
            (original is None or type(original) is str)
            and (stamped is None or type(stamped) is str)
            and (sent is None or type(sent) is str)
        ):
            return None
        times = self._times.get((original, stamped, sent))
        if times is None:
            times = self._time(call, original, stamped, sent)
            if times is None:
                return None
        when, sent_at, moved = times
        if moved:
            metrics.INGEST_FUTURE_TIMESTAMPS.inc()

        if context is self._context or (self._context is not None and context == self._context):
            derived = self._derived
        else:
            derived = self._derive(context)
            if derived is None:
                return None
            self._context, self._derived = context, derived
        assert derived is not None
        # The context's event with this call's fields set: a copy keeps the keys' order.
        event = derived.event.copy()
        event["event_id"] = event_id
        event["type"] = kind
        event["event"] = name
        event["anonymous_id"] = anonymous_id
        event["user_id"] = user_id
        if not derived.has_session:
            session = get("sessionId")
            event["session_id"] = session[:MAX_ID] if type(session) is str else ""
        event["timestamp"] = when
        event["sent_at"] = sent_at
        event["properties"] = properties
        event["traits"] = traits
        if kind == _PAGE:  # its page fields come from its properties first
            url, path, title, referrer = _locate(properties, derived.page)
            event["url"], event["path"], event["title"], event["referrer"] = url, path, title, referrer
            event.update(campaign_of(context.get("campaign"), url))
            event["source"] = source_of(referrer, url)
        return event, derived.agent

    def _derive(self, context: dict[str, Any]) -> _Derived | None:
        """The fields `normalize` takes from `context` (with the request's, in an event for
        each call to copy and complete), or None when it would reject the context. Equal
        contexts give equal fields: every value is read as a string or an object, or for its
        truth."""
        page = _object_or_none(context.get("page"))
        if page is None:
            return None
        library = _object_or_none(context.get("library"))
        if library is None:
            return None
        agent, os_name, os_version = _device(context, library, self.header_agent)
        session = context.get("sessionId")
        url, path, title, referrer = _locate(page, page)
        location = self.location
        received_at = written_time(self.received_at) if self.written_times else self.received_at
        event = {
            "schema_version": SCHEMA_VERSION,
            "event_id": "",
            "project_id": self.project_id,
            "type": "",
            "event": "",
            "anonymous_id": "",
            "user_id": "",
            "previous_id": "",
            "session_id": session[:MAX_ID] if isinstance(session, str) else "",
            "timestamp": received_at,
            "sent_at": None,
            "received_at": received_at,
            "url": url,
            "path": path,
            "title": title,
            "referrer": referrer,
            "device_type": agent.device_type,
            "browser": agent.browser,
            "browser_version": agent.browser_version,
            "os": os_name,
            "os_version": os_version,
            "properties": {},
            "traits": {},
            "library": _text(library.get("name"), 100),
            "country": location.country,
            "region": location.region,
            **campaign_of(context.get("campaign"), url),
            "source": source_of(referrer, url),
        }
        return _Derived(page=page, agent=agent, has_session="sessionId" in context, event=event)

    def _time(
        self, call: dict[str, Any], original: str | None, stamped: str | None, sent: str | None
    ) -> _Times | None:
        """(time, sent_at, moved) for these texts, as `normalize` works them out; None when it
        would reject them. Kept for the request's other calls."""
        try:
            own_sent_at = parse_sent_at(sent)
            sent_at = own_sent_at if own_sent_at is not None else self.batch_sent_at
            timestamp, _field = client_time(call, sent_at is not None)
        except Rejected:
            return None
        when, moved = event_time(timestamp, sent_at, self.received_at)
        if when is None:
            return None
        times: _Times = (when, sent_at, moved)
        if self.written_times:
            times = (written_time(when), None if sent_at is None else written_time(sent_at), moved)
        self._times[(original, stamped, sent)] = times
        return times


class _Derived(NamedTuple):
    """What an event takes from its call's `context` (see `_derive`)."""

    page: dict[str, Any]
    agent: Agent
    has_session: bool  # context.sessionId is there (else the call's own sessionId counts)
    #: An event with the request's fields and the context's (a track call's page fields,
    #: campaign and source among them), for each call to copy and complete.
    event: dict[str, Any]


def _object_or_none(value: object) -> dict[str, Any] | None:
    """The short path's `_object`: {} for an absent object, None (leave the call to `normalize`)
    for anything but a JSON object."""
    if value is None:
        return {}
    if type(value) is dict:
        return value
    return None


def _device(context: dict[str, Any], library: dict[str, Any], header_agent: Agent) -> tuple[Agent, str, str]:
    """The agent, OS and OS version of a call: its context's User-Agent, else none for a
    server-side SDK (the request's User-Agent is the library, not a visitor), else the
    request's; the OS from context.os when the agent names none (a mobile SDK)."""
    user_agent = context.get("userAgent")
    if isinstance(user_agent, str) and user_agent:
        agent = analyse(user_agent)
    elif library:
        agent = UNKNOWN
    else:
        agent = header_agent
    os_name, os_version = agent.os, agent.os_version
    if not os_name:
        system = context.get("os")
        if isinstance(system, dict):
            os_name, os_version = _text(system.get("name"), MAX_OS), _text(system.get("version"), MAX_OS)
    return agent, os_name, os_version


def _locate(source: dict[str, Any], page: dict[str, Any]) -> tuple[str, str, str, str]:
    """url, path, title and referrer as `normalize` takes them: from `source`, else the page."""
    url = _text(source.get("url") or page.get("url"), MAX_URL)
    path = _text(source.get("path") or page.get("path"), MAX_URL)
    if not path and url:
        try:
            path = urlsplit(url).path or "/"
        except ValueError:
            path = ""
    title = _text(source.get("title") or page.get("title"), MAX_TITLE)
    referrer = _text(source.get("referrer") or page.get("referrer"), MAX_URL)
    return url, path, title, referrer
