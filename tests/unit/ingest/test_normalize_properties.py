"""Property-based tests (hypothesis) of what a stranger holding the public write key can send.

Calls are generated the way orjson hands them to ingest: any JSON value at every field (ints
within 64 bits, finite floats, text without lone surrogates: orjson refuses the rest as a
body), deep nesting, times from year 1 to 9999 in any zone, big numbers. Whatever comes in,
`normalize` gives an event that encodes, decodes under the contract and lies in ClickHouse's
range, or raises Rejected with a known reason; the handler answers below 500 and keeps every
good item. Example counts add up to 11,200, ~45 s on a shared 2-core machine (hypothesis'
own cost per example dominates; strategies are kept flat for it). A failure prints the
example and a blob to reproduce it (@reproduce_failure).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.enrich import analyse
from services.ingest.segment import Normalizer, Rejected, normalize, too_deep
from werkstroom.contract import (
    EARLIEST_TIME,
    FUTURE_TOLERANCE,
    LATEST_TIME,
    MAX_DEPTH,
    SENT_AT_EARLIEST,
    SENT_AT_LATEST,
    decode_event,
    encode_event,
    event_time,
)
from werkstroom.geo import Location

REASONS = {"not_an_object", "missing_field", "invalid_field", "invalid_time", "too_deep"}
PROPERTY = settings(
    deadline=None,  # a shared CI machine: time is not the property
    database=None,  # no .hypothesis/ folder in the work tree
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- JSON as orjson parses it -----------------------------------------------------------------
# Kept small: hypothesis costs ~0.7 ms an example on a shared CI core, and a few leaves per
# value already reach every type check; size and depth have strategies of their own.
TEXT = st.sampled_from(["", " ", "x", "\x00", "é€😀", "{[", "$page", "Z", "\u2028", "a" * 201]) | st.text(
    max_size=6
)
LONG_TEXT = st.text(min_size=195, max_size=260)  # around the 200-character limits
INTS = st.sampled_from([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]) | st.integers(-(2**63), 2**64 - 1)
FLOATS = st.sampled_from([0.0, -0.0, 1e-300, 1.7e308, -1.7e308]) | st.floats(
    allow_nan=False, allow_infinity=False
)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
# Up to two levels (deep values come from `nested`): not st.recursive, which costs several ms
# an example here.
FLAT = st.lists(SCALARS, max_size=3) | st.dictionaries(TEXT, SCALARS, max_size=3)
JSON = SCALARS | FLAT | st.dictionaries(TEXT, FLAT, max_size=2) | st.lists(FLAT, max_size=2)


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """A value wrapped in many levels, around every limit: MAX_DEPTH, 254 (what orjson writes)."""
    depth = draw(
        st.sampled_from([MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 253, 254, 255])
        | st.integers(0, 400)
    )
    kind = draw(st.sampled_from(["list", "dict", "mixed"]))
    value = draw(SCALARS)
    for level in range(depth):
        value = [value] if kind == "list" or (kind == "mixed" and level % 2) else {"k": value}
    return value


# -- times ------------------------------------------------------------------------------------
ZONES = st.sampled_from(["Z", "z", "+00:00", "-23:59", "+23:59", "+05:30", "-08:00", ""])
YEARS = st.integers(1, 9999) | st.sampled_from(
    [1, 1899, 1970, 1999, 2000, 2099, 2100, 2150, 2299, 2300, 9999]
)


@st.composite
def iso_times(draw: st.DrawFn) -> str:
    moment = datetime(draw(YEARS), 1, 1) + timedelta(seconds=draw(st.integers(0, 365 * 86400 - 1)))
    text = moment.replace(microsecond=draw(st.sampled_from([0, 1, 999_999]))).isoformat()
    return text + draw(ZONES)


_2001 = datetime(2001, 1, 1, tzinfo=UTC)
# Built from integers: st.datetimes() costs a few times more per example.
RECEIVED = st.integers(0, 97 * 365 * 86400 * 10**6).map(lambda us: _2001 + timedelta(microseconds=us))


@st.composite
def near(draw: st.DrawFn, around: datetime) -> str:
    """A time close to the arrival, for the tolerance's edges."""
    offset = timedelta(seconds=draw(st.integers(-(10**6), 10**6) | st.integers(55, 65)))
    return (around + offset).isoformat().replace("+00:00", draw(ZONES) or "Z")


TIMES = iso_times() | st.sampled_from(["yesterday", "", "2026-13-01", "2026-01-01T00:00:00+99:00"]) | SCALARS

# -- calls: a valid one, then a few fields set to anything -------------------------------------
URLS = st.sampled_from(["http://[::1", "https://ex.com/a?b#c", "//x", "http://exa\uff0fmple.com", "", "/"])
PAGE = st.fixed_dictionaries({}, optional={"url": URLS | TEXT, "path": TEXT | JSON, "title": TEXT | JSON})
USER_AGENTS = st.sampled_from(["", "Mozilla/5.0 (iPhone)", "Googlebot/2.1", "x" * 2000])
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["track", "page", "identify", "alias", "screen", "group", "x"]) | JSON,
    "anonymousId": TEXT | LONG_TEXT | JSON,
    "userId": TEXT | LONG_TEXT | JSON,
    "previousId": TEXT | JSON,
    "groupId": TEXT | LONG_TEXT | JSON,
    "event": st.sampled_from(["Signed Up", "$heartbeat", "$page", " "]) | TEXT | LONG_TEXT | JSON,
    "messageId": TEXT | LONG_TEXT | JSON | nested(),
    "timestamp": TIMES,
    "originalTimestamp": TIMES,
    "sentAt": TIMES,
    "properties": st.dictionaries(TEXT, JSON, max_size=3) | JSON | nested(),
    "traits": JSON | nested(),
    "context": JSON | nested(),
    "context.page": PAGE | JSON,
    "context.userAgent": USER_AGENTS | JSON,
    "context.library": st.fixed_dictionaries({"name": TEXT | JSON}) | JSON,
    "context.traits": JSON | nested(),
    "context.sessionId": TEXT | JSON,
    "context.os": st.fixed_dictionaries({"name": TEXT | JSON, "version": TEXT | JSON}) | JSON,
    "sessionId": TEXT | JSON,
    "name": TEXT | JSON,
    "category": TEXT | JSON,
}


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]))
    call: dict[str, Any] = {
        "type": kind,
        "anonymousId": "a",
        "userId": "u",
        "previousId": "p",
        "groupId": "g",
        "event": "E",
    }
    call["context"] = {"page": {"url": "https://ex.com/x"}}
    for name in draw(st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=3, unique=True)):
        value = draw(VALUES[name])
        if name.startswith("context.") and isinstance(call.get("context"), dict):
            call["context"][name.split(".", 1)[1]] = value
        elif not name.startswith("context."):
            call[name] = value
    for name in draw(st.sampled_from(DROPS)):  # and without ids: the checks for a missing one
        call.pop(name, None)
    return call


DROPS = [
    (),
    (),
    (),
    ("anonymousId",),
    ("userId",),
    ("event",),
    ("anonymousId", "userId"),
    ("previousId",),
    ("groupId",),
]


CALL_TYPES = st.sampled_from([None, "track", "page", "screen", "identify", "group", "alias"])
_SENT_SPAN = (SENT_AT_LATEST - SENT_AT_EARLIEST) // timedelta(microseconds=1) - 1
BATCH_SENT_AT = st.none() | st.integers(0, _SENT_SPAN).map(
    lambda us: SENT_AT_EARLIEST + timedelta(microseconds=us)
)  # parse_sent_at has checked the batch's sentAt before normalize sees it


def text_of(value: object) -> bytes | None:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # deeper than orjson writes, as in the handler
        return None


def check_normalize(
    call: Any,
    call_type: str | None,
    received_at: datetime,
    batch_sent_at: datetime | None,
    project_id: str = "p_1",
) -> bytes | None:
    """The property itself; the encoded message when the call was accepted, else None
    (tests/integration/test_property_storable.py stores the messages in ClickHouse)."""
    raw = text_of(call)
    try:
        event, _agent = normalize(
            call,
            call_type=call_type,
            project_id=project_id,
            received_at=received_at,
            batch_sent_at=batch_sent_at,
            raw=raw,
        )
    except Rejected as exc:
        assert exc.reason in REASONS, exc.reason
        assert exc.detail
        return None
    value = encode_event(event)
    decoded = decode_event(value)  # the aggregator's check: raises ContractError when it breaks
    assert EARLIEST_TIME <= decoded.timestamp <= received_at + FUTURE_TOLERANCE
    assert decoded.timestamp < LATEST_TIME and decoded.received_at == received_at
    assert decoded.sent_at is None or SENT_AT_EARLIEST <= decoded.sent_at < SENT_AT_LATEST
    assert orjson.loads(bytes(decoded.properties)) == event["properties"]
    assert not too_deep(orjson.loads(value))  # the message itself stays within MAX_DEPTH
    return value


@settings(PROPERTY, max_examples=2500)
@given(call=calls(), call_type=CALL_TYPES, received_at=RECEIVED, batch_sent_at=BATCH_SENT_AT)
def test_any_call_gives_a_storable_event_or_a_rejection(
    call: dict[str, Any], call_type: str | None, received_at: datetime, batch_sent_at: datetime | None
) -> None:
    check_normalize(call, call_type, received_at, batch_sent_at)


@st.composite
def timed_calls(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """A valid track call with hostile times (and maybe nesting), so that most examples get
    past the id checks to the time policy."""
    received_at = draw(RECEIVED)
    call: dict[str, Any] = {"type": "track", "anonymousId": "a", "event": "E"}
    for name in ("timestamp", "originalTimestamp", "sentAt"):
        kind = draw(st.sampled_from(["near", "near", "iso", "iso", "none", "none", "other"]))
        if kind != "none":
            call[name] = draw({"near": near(received_at), "iso": iso_times(), "other": TIMES}[kind])
    if draw(st.booleans()):
        call["properties"] = draw(st.dictionaries(TEXT, JSON, max_size=3) | nested().map(lambda v: {"v": v}))
    return call, received_at


@settings(PROPERTY, max_examples=2000)
@given(timed=timed_calls(), call_type=st.sampled_from([None, "track"]))
def test_valid_calls_with_hostile_times_and_nesting(
    timed: tuple[dict[str, Any], datetime], call_type: str | None
) -> None:
    call, received_at = timed
    check_normalize(call, call_type, received_at, None)


@settings(PROPERTY, max_examples=2000)
@given(value=nested() | JSON)
def test_the_text_bound_and_the_walk_agree_on_depth(value: Any) -> None:
    raw = text_of(value)
    exact = too_deep(value)
    if raw is not None:
        assert too_deep(value, raw) is exact
    else:
        assert exact  # what orjson cannot write is always too deep


def _moment(microseconds: int, offset_minutes: int) -> datetime:
    zone = timezone(timedelta(minutes=offset_minutes))
    return (datetime.min + timedelta(microseconds=microseconds)).replace(tzinfo=zone)


_SPAN = (datetime.max - datetime.min) // timedelta(microseconds=1)
ANY_TIME = st.none() | st.builds(
    _moment,
    st.sampled_from([0, _SPAN]) | st.integers(0, _SPAN),  # year 1 to 9999, the very ends too
    st.sampled_from([0, -1439, 1439]) | st.integers(-1439, 1439),  # every zone datetime allows
)


@settings(PROPERTY, max_examples=3500)
@given(timestamp=ANY_TIME, sent_at=ANY_TIME, received_at=RECEIVED)
def test_event_time_never_raises_and_stays_in_range(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime
) -> None:
    when, moved = event_time(timestamp, sent_at, received_at)
    if when is None:
        assert timestamp is not None and not moved
        return
    assert when.tzinfo is UTC and EARLIEST_TIME <= when <= received_at + FUTURE_TOLERANCE
    if moved:
        assert when == received_at and sent_at is not None


# -- the whole handler ------------------------------------------------------------------------

_loop = asyncio.new_event_loop()


@settings(PROPERTY, max_examples=200)
@given(items=st.lists(calls() | JSON | nested(), min_size=1, max_size=8), sent_at=st.none() | iso_times())
def test_a_batch_answers_below_500_and_keeps_every_good_item(items: list[Any], sent_at: str | None) -> None:
    from tests.unit.ingest.test_app import KEY, make

    ingestor, publisher, _ = make()
    body: dict[str, Any] = {"writeKey": KEY, "batch": items}
    if sent_at is not None:
        body["sentAt"] = sent_at
    text = text_of(body)
    if text is None:
        return  # an item deeper than orjson writes: test_app.py splices those in as text
    answer = _loop.run_until_complete(ingestor.handle(None, {"user-agent": "Mozilla/5.0"}, text, "192.0.2.1"))
    assert answer.status < 500, answer.body
    orjson.dumps(answer.body)
    if answer.status != 200:
        assert answer.body["reason"] in ("invalid_time", "too_large"), answer.body  # the batch's sentAt
        return
    counts = answer.body
    assert counts["accepted"] + counts["rejected"] + counts["bots"] == len(items)
    assert [e["index"] for e in counts["errors"]] == sorted({e["index"] for e in counts["errors"]})
    events = publisher.sent.get("werkstroom.events.v1", [])
    assert len(events) == counts["accepted"]
    for _key, value in events:
        decode_event(value)
    for _key, value in publisher.sent.get("werkstroom.events.dlq.v1", []):
        assert orjson.loads(value)["reason"] in REASONS | {"too_large"}


# -- the request's short path (Normalizer) against normalize ----------------------------------
@st.composite
def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """`valid` four times in five (st.one_of does not weigh its branches)."""
    return draw(other if draw(st.integers(0, 4)) == 4 else valid)


# Values that compare equal across types (1 == 1.0 == True): two contexts equal to each other
# but not alike must still give each its own event.
ALIKE = st.sampled_from([1, 1.0, True, 0, 0.0, False, "", "1", "x", None, {}, [], {"name": 1}, {"name": "n"}])
URLS_OR_ALIKE = mostly(
    URLS | st.sampled_from(["https://www.google.com/", "https://ex.com/?utm_source=n", "T"]), ALIKE
)
PAGE_KEYS = st.sampled_from(["url", "path", "title", "referrer", "k"])
CONTEXT = st.fixed_dictionaries(
    {},
    optional={
        "page": mostly(st.dictionaries(PAGE_KEYS, URLS_OR_ALIKE, max_size=4), ALIKE),
        "userAgent": mostly(USER_AGENTS, ALIKE),
        "library": mostly(st.fixed_dictionaries({"name": TEXT | ALIKE}), ALIKE),
        "os": mostly(st.fixed_dictionaries({"name": ALIKE, "version": ALIKE}), ALIKE),
        "campaign": mostly(st.fixed_dictionaries({"source": ALIKE, "name": TEXT}), ALIKE),
        "sessionId": ALIKE,
        "traits": mostly(st.dictionaries(TEXT, ALIKE, max_size=2), ALIKE),
    },
)


@st.composite
def common_calls(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly what SDKs send (track and page calls with string ids), so the short path runs."""
    received = datetime(2026, 11, 25, tzinfo=UTC)
    call: dict[str, Any] = {
        "type": draw(mostly(st.sampled_from(["track", "page"]), JSON)),
        "anonymousId": draw(mostly(st.sampled_from(["a", "b"]), st.sampled_from(["a" * 201]) | ALIKE)),
    }
    for name, values in (
        ("userId", mostly(st.sampled_from(["u", ""]), ALIKE)),
        (
            "event",
            mostly(st.just("Signed Up"), st.sampled_from(["$heartbeat", "$x", " ", "e" * 201]) | ALIKE),
        ),
        ("messageId", mostly(st.just("m-1"), st.sampled_from(["m" * 101, ""]) | ALIKE)),
        ("timestamp", mostly(near(received), TIMES)),
        ("originalTimestamp", mostly(near(received), TIMES)),
        ("sentAt", mostly(near(received), TIMES)),
        ("properties", mostly(st.dictionaries(PAGE_KEYS, URLS_OR_ALIKE, max_size=3), ALIKE)),
        ("sessionId", ALIKE),
        ("name", mostly(st.none(), ALIKE)),
    ):
        if draw(st.booleans()):
            call[name] = draw(values)
    if draw(st.integers(0, 9)):
        call["context"] = draw(CONTEXT)
    return call


@st.composite
def requests(draw: st.DrawFn) -> list[Any]:
    """A request's calls: mostly common ones with contexts from a small alphabet (equal ones
    recur), some as `calls()` makes them, some repeating an earlier call's times."""
    out: list[Any] = []
    for _ in range(draw(st.integers(1, 6))):
        call: Any = draw(mostly(common_calls(), calls() | JSON))
        if isinstance(call, dict) and out and isinstance(out[0], dict) and draw(st.booleans()):
            for name in ("timestamp", "originalTimestamp", "sentAt", "context"):
                if name in out[0]:
                    call[name] = copy.deepcopy(out[0][name])  # equal, not the same object
        out.append(call)
    return out


def _outcome(work: Any) -> tuple[Any, ...]:
    try:
        event, agent = work()
    except Rejected as exc:
        return ("rejected", exc.reason, exc.field, exc.detail)
    return ("event", event, agent)


@settings(PROPERTY, max_examples=1000)
@given(
    calls=requests(),
    call_type=CALL_TYPES,
    received_at=RECEIVED,
    batch_sent_at=BATCH_SENT_AT,
    written_times=st.booleans(),
)
def test_the_short_path_gives_normalize_s_answers(
    calls: list[Any],
    call_type: str | None,
    received_at: datetime,
    batch_sent_at: datetime | None,
    written_times: bool,
) -> None:
    """Same event (same bytes once encoded), same agent, same rejection, call by call; with
    `written_times`, the times as text that encodes to the same bytes."""
    arguments: dict[str, Any] = dict(
        call_type=call_type,
        project_id="p_1",
        received_at=received_at,
        batch_sent_at=batch_sent_at,
        header_agent=analyse("Mozilla/5.0 (iPhone)"),
        location=Location("NL", "NH"),
    )
    normalizer = Normalizer(**arguments, written_times=written_times)
    for call in calls:
        raw = text_of(call)
        expected = _outcome(lambda call=call, raw=raw: normalize(call, raw=raw, **arguments))
        got = _outcome(lambda call=call, raw=raw: normalizer.normalize(call, raw))
        if expected[0] == "event" and got[0] == "event":
            mine, theirs = got[1], expected[1]
            if mine["event_id"] != theirs["event_id"]:  # both generated: random, of one form
                assert uuid.UUID(mine["event_id"]).version == 4
                assert len(mine["event_id"]) == len(theirs["event_id"]) == 36
                mine = {**mine, "event_id": theirs["event_id"]}
            assert encode_event(mine) == encode_event(theirs)
            if written_times:  # the short path's times are text, the full path's datetimes
                times = ("timestamp", "sent_at", "received_at")
                mine = {
                    k: theirs[k] if k in times and isinstance(mine[k], str) else v for k, v in mine.items()
                }
            assert mine == theirs and got[2] == expected[2]
        else:
            assert got == expected
