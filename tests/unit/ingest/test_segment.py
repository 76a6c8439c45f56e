from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jsonschema
import orjson
import pytest

from services.ingest.enrich import UNKNOWN, analyse
from services.ingest.segment import Rejected, corrected_timestamp, normalize, parse_client_time
from werkstroom.contract import decode_event, encode_event, json_schema

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def run(call: object, call_type: str | None = "track", **kwargs: object) -> dict[str, object]:
    event, _agent = normalize(call, call_type=call_type, project_id="p_1", received_at=NOW, **kwargs)  # type: ignore[arg-type]
    return event


def rejected(call: object, call_type: str | None = "track") -> tuple[str, str | None]:
    with pytest.raises(Rejected) as info:
        run(call, call_type)
    return info.value.reason, info.value.field


def test_skew_correction_uses_sent_at_beyond_the_tolerance() -> None:
    client_now = NOW + timedelta(hours=3)  # the device clock is 3 h fast
    happened = client_now - timedelta(seconds=30)
    assert corrected_timestamp(happened, client_now, NOW) == NOW - timedelta(seconds=20)  # within 10 s
    near = NOW + timedelta(seconds=4)  # 4 s fast (or 4 s in transit): its own times are kept
    assert corrected_timestamp(near - timedelta(seconds=30), near, NOW) == near - timedelta(seconds=30)
    assert corrected_timestamp(None, client_now, NOW) == NOW
    assert corrected_timestamp(NOW + timedelta(days=1), None, NOW) == NOW  # never in the future
    late = NOW - timedelta(hours=5)  # an offline queue flushed hours later keeps its time
    assert corrected_timestamp(late, None, NOW) == late


def test_batch_sent_at_applies_to_items_without_their_own() -> None:
    event = run(
        {"anonymousId": "a", "event": "E", "timestamp": "2026-11-25T15:00:00Z"},
        batch_sent_at=datetime(2026, 11, 25, 15, 0, 10, tzinfo=UTC),
    )
    assert event["timestamp"] == NOW  # 3 h 0 min 10 s fast: corrected by 3 h (to within 10 s)
    assert event["sent_at"] == datetime(2026, 11, 25, 15, 0, 10, tzinfo=UTC)
    written = orjson.loads(encode_event(event))
    assert (written["timestamp"], written["sent_at"]) == ("2026-11-25T12:00:00Z", "2026-11-25T15:00:10Z")


def test_generated_ids_are_version_4_uuids() -> None:
    import uuid

    from services.ingest.segment import random_id

    ids = {random_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_generated_ids_stay_unique_across_threads_and_a_fork() -> None:
    """They come from a process-wide pool (segment.random_ids): no two threads get one id,
    and a forked worker does not draw the ids its parent has pooled."""
    import os
    import threading

    from services.ingest.segment import random_id

    drawn: list[list[str]] = [[] for _ in range(4)]
    threads = [
        threading.Thread(target=lambda out=out: out.extend(random_id() for _ in range(3000))) for out in drawn
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for out in drawn for i in out]
    assert len(set(ids)) == len(ids) == 12_000

    random_id()  # the pool holds ids now
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, "".join(random_id() for _ in range(5)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    theirs = os.read(read, 4096).decode()
    os.close(read)
    ours = "".join(random_id() for _ in range(5))
    assert len(theirs) == len(ours) == 5 * 36 and theirs != ours


def test_time_parsing_accepts_iso_forms_and_names_the_field() -> None:
    parsed = parse_client_time("2026-11-25T12:00:00.123+02:00", "timestamp")
    assert parsed == datetime(2026, 11, 25, 10, 0, 0, 123000, tzinfo=UTC) and parsed.tzinfo is UTC
    assert parse_client_time("2026-11-25T12:00:00z", "timestamp") == NOW
    assert parse_client_time(None, "timestamp") is None
    assert rejected({"anonymousId": "a", "event": "E", "timestamp": "25/11/2026"}) == (
        "invalid_time",
        "timestamp",
    )
    assert rejected({"anonymousId": "a", "event": "E", "sentAt": 12}) == ("invalid_time", "sentAt")
    assert rejected({"anonymousId": "a", "event": "E", "timestamp": "1970-01-01T00:00:00Z"}) == (
        "invalid_time",
        "timestamp",
    )


@pytest.mark.parametrize(
    ("call", "call_type", "expected"),
    [
        ({"event": "E"}, "track", ("missing_field", "anonymousId")),
        ({"anonymousId": "a"}, "track", ("missing_field", "event")),
        ({"anonymousId": "a", "event": "  "}, "track", ("missing_field", "event")),
        ({"anonymousId": "a", "event": "$page"}, "track", ("invalid_field", "event")),
        ({"anonymousId": "a", "event": "x" * 201}, "track", ("invalid_field", "event")),
        ({"anonymousId": {"x": 1}, "event": "E"}, "track", ("invalid_field", "anonymousId")),
        ({"anonymousId": True, "event": "E"}, "track", ("invalid_field", "anonymousId")),
        ({"anonymousId": "a" * 201, "event": "E"}, "track", ("invalid_field", "anonymousId")),
        ({"anonymousId": "a", "event": "E", "properties": [1]}, "track", ("invalid_field", "properties")),
        ({"anonymousId": "a", "event": "E", "context": "x"}, "track", ("invalid_field", "context")),
        ({"anonymousId": "a", "event": "E", "messageId": 7}, "track", ("invalid_field", "messageId")),
        ({"anonymousId": "a", "traits": "premium"}, "identify", ("invalid_field", "traits")),
        ({"userId": "u"}, "alias", ("missing_field", "previousId")),
        ({"previousId": "a", "anonymousId": "b"}, "alias", ("missing_field", "userId")),
        ({"anonymousId": "a"}, "group", ("missing_field", "groupId")),
        ({"anonymousId": "a", "groupId": ""}, "group", ("missing_field", "groupId")),
        ({"anonymousId": "a", "groupId": {"id": 1}}, "group", ("invalid_field", "groupId")),
        ({"anonymousId": "a", "groupId": "g" * 201}, "group", ("invalid_field", "groupId")),
        ({"anonymousId": "a", "groupId": "g", "traits": ["x"]}, "group", ("invalid_field", "traits")),
        ({"type": "group", "anonymousId": "a"}, None, ("missing_field", "groupId")),
        ({"event": "Viewed"}, "screen", ("missing_field", "anonymousId")),
        ({"type": "bogus", "anonymousId": "a"}, None, ("invalid_field", "type")),
        ({"anonymousId": "a"}, None, ("invalid_field", "type")),
        ([1, 2], None, ("not_an_object", None)),
    ],
)
def test_invalid_calls_are_rejected_with_field_and_reason(
    call: object, call_type: str | None, expected: tuple[str, str | None]
) -> None:
    assert rejected(call, call_type) == expected


def test_page_fields_come_from_properties_then_context_page() -> None:
    event = run(
        {
            "anonymousId": "a",
            "name": "Pricing",
            "category": "Docs",
            "properties": {"url": "https://ex.com/pricing?x=1", "title": "P"},
            "context": {"page": {"referrer": "https://google.com/"}, "userAgent": CHROME},
        },
        "page",
    )
    assert (event["type"], event["event"]) == ("page", "$page")
    assert (event["url"], event["path"], event["title"]) == ("https://ex.com/pricing?x=1", "/pricing", "P")
    assert event["referrer"] == "https://google.com/"
    assert event["properties"] == {
        "url": "https://ex.com/pricing?x=1",
        "title": "P",
        "name": "Pricing",
        "category": "Docs",
    }
    assert (event["device_type"], event["browser"], event["os"]) == ("desktop", "Chrome", "Windows")
    track = run(
        {"anonymousId": "a", "event": "Click", "context": {"page": {"path": "/cart", "title": "Cart"}}}
    )
    assert (track["path"], track["title"], track["event"]) == ("/cart", "Cart", "Click")


def test_ids_message_id_and_traits() -> None:
    event = run({"userId": 42, "traits": {"plan": "trial"}, "messageId": "m-1"}, "identify")
    assert (event["user_id"], event["anonymous_id"], event["event_id"]) == ("42", "", "m-1")
    assert event["traits"] == {"plan": "trial"}
    generated = run({"anonymousId": "a", "event": "E"})
    assert len(str(generated["event_id"])) == 36
    tracked = run({"anonymousId": "a", "event": "E", "context": {"traits": {"plan": "premium"}}})
    assert tracked["traits"] == {"plan": "premium"}
    alias = run({"previousId": "anon", "userId": "u"}, "alias")
    assert (alias["previous_id"], alias["user_id"], alias["event"]) == ("anon", "u", "$alias")


def test_identify_traits_from_the_top_level_and_from_context_traits_as_rudderstack_sends_them() -> None:
    rudder = run({"userId": "u", "context": {"traits": {"plan": "premium", "email": "a@b.c"}}}, "identify")
    assert rudder["traits"] == {"plan": "premium", "email": "a@b.c"}
    both = run(
        {"userId": "u", "traits": {"plan": "trial"}, "context": {"traits": {"plan": "x", "n": 1}}}, "identify"
    )
    assert both["traits"] == {"plan": "trial", "n": 1}  # the top level wins a key in both


def test_visitor_agent_comes_from_context_then_request_but_not_from_server_sdks() -> None:
    header = analyse(CHROME)
    beacon, agent = normalize(
        {"anonymousId": "a", "event": "E"},
        call_type="track",
        project_id="p",
        received_at=NOW,
        header_agent=header,
    )
    assert agent is header and beacon["browser"] == "Chrome"
    server_side, agent = normalize(
        {"anonymousId": "a", "event": "E", "context": {"library": {"name": "analytics-python"}}},
        call_type="track",
        project_id="p",
        received_at=NOW,
        header_agent=analyse("curl/8.0"),
    )
    assert (
        agent is UNKNOWN
        and server_side["device_type"] == "unknown"
        and server_side["library"] == "analytics-python"
    )


def test_every_normalized_event_matches_the_published_schema_and_round_trips() -> None:
    calls = [
        ({"anonymousId": "a", "event": "E", "properties": {"k": [1, {"x": None}]}}, "track"),
        ({"anonymousId": "a", "properties": {"path": "/"}}, "page"),
        ({"userId": "u", "traits": {"plan": "premium"}}, "identify"),
        ({"previousId": "a", "userId": "u"}, "alias"),
        ({"anonymousId": "a", "name": "Home", "context": {"os": {"name": "iOS"}}}, "screen"),
        ({"userId": "u", "groupId": 7, "traits": {"name": "Acme"}}, "group"),
    ]
    for call, call_type in calls:
        event = run(call, call_type)
        jsonschema.validate(orjson.loads(encode_event(event)), json_schema())
        decoded = decode_event(encode_event(event))
        assert decoded.timestamp == NOW and decoded.event == event["event"]


# -- hostile input: the time policy, nesting, every field ------------------------------------


def future_count() -> float:
    from werkstroom import metrics

    return metrics.INGEST_FUTURE_TIMESTAMPS._value.get()


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [
        ("2150-01-01T00:00:00Z", "2026-11-25T12:00:00Z"),  # once written, it stopped the aggregator
        ("2100-01-01T00:00:00Z", "2026-11-25T12:00:00Z"),  # "online" until 2100
        ("2026-11-25T12:01:01Z", "2026-11-25T12:00:00Z"),  # just past the 60 s tolerance
        ("9999-12-31T23:59:59Z", "2000-01-01T00:00:00Z"),  # the correction overflows datetime
        ("9999-12-31T23:59:59-23:59", "2000-01-01T00:00:00Z"),  # past datetime.max once in UTC
    ],
)
def test_an_event_time_ahead_of_its_arrival_becomes_the_arrival_and_is_counted(
    timestamp: str, sent_at: str
) -> None:
    before = future_count()
    event = run({"anonymousId": "a", "event": "E", "timestamp": timestamp, "sentAt": sent_at})
    assert event["timestamp"] == NOW and future_count() == before + 1
    assert decode_event(encode_event(event)).timestamp == NOW


def test_small_leads_are_kept_and_times_without_sent_at_never_pass_the_arrival() -> None:
    before = future_count()
    ahead = run(
        {
            "anonymousId": "a",
            "event": "E",
            "timestamp": "2026-11-25T12:00:59Z",
            "sentAt": "2026-11-25T12:00:00Z",
        }
    )
    assert ahead["timestamp"] == NOW + timedelta(seconds=59)  # within the tolerance: clock jitter
    for far in ("2150-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        assert run({"anonymousId": "a", "event": "E", "timestamp": far})["timestamp"] == NOW
    assert future_count() == before  # min(timestamp, arrival) is no correction: not counted


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"timestamp": "1999-12-31T23:59:59Z"}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00+23:59"}, "timestamp"),  # before datetime.min in UTC
        ({"timestamp": "1970-01-01T00:00:00Z", "sentAt": "2026-11-25T12:00:00Z"}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00Z", "sentAt": "2299-12-31T23:59:59Z"}, "timestamp"),  # overflows
        ({"timestamp": "2026-11-25T12:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}, "sentAt"),
        ({"sentAt": "9999-12-31T23:59:59Z"}, "sentAt"),  # sentAt alone: it would be stored
        ({"sentAt": "1899-12-31T23:59:59Z"}, "sentAt"),
        ({"timestamp": "2026-01-01T00:00:00+99:00"}, "timestamp"),
        ({"timestamp": 1732000000}, "timestamp"),
        ({"timestamp": "2026-13-45"}, "timestamp"),
    ],
)
def test_times_out_of_range_or_overflowing_are_rejected_never_raised(
    call: dict[str, object], field: str
) -> None:
    assert rejected({"anonymousId": "a", "event": "E", **call}) == ("invalid_time", field)


def test_a_clock_reset_to_1970_is_corrected_with_sent_at() -> None:
    event = run(
        {
            "anonymousId": "a",
            "event": "E",
            "timestamp": "1970-01-01T00:05:00Z",
            "sentAt": "1970-01-01T00:05:30Z",
        }
    )
    assert event["timestamp"] == NOW - timedelta(seconds=40)  # half a minute ago, to within 10 s
    assert decode_event(encode_event(event)).sent_at == datetime(1970, 1, 1, 0, 5, 30, tzinfo=UTC)


def test_every_accepted_time_is_in_the_storable_range() -> None:
    from werkstroom.contract import EARLIEST_TIME, FUTURE_TOLERANCE

    years = ["0001", "1899", "1970", "1999", "2000", "2026", "2099", "2100", "2150", "9999"]
    for ts in years:
        for sent in [None, *years]:
            call: dict[str, object] = {"anonymousId": "a", "event": "E", "timestamp": f"{ts}-06-01T00:00:00Z"}
            if sent:
                call["sentAt"] = f"{sent}-06-01T00:00:00Z"
            try:
                event = run(call)
            except Rejected as exc:
                assert exc.reason == "invalid_time"
                continue
            assert EARLIEST_TIME <= event["timestamp"] <= NOW + FUTURE_TOLERANCE  # type: ignore[operator]
            decode_event(encode_event(event))


def nest(depth: int) -> dict[str, object]:
    """A track call nesting `depth` levels, itself counted as one."""
    value: object = {}
    for _ in range(depth - 2):
        value = {"v": value}
    return {"anonymousId": "a", "event": "E", "properties": value}


def test_nesting_is_limited_whatever_the_depth() -> None:
    from werkstroom.contract import MAX_DEPTH

    assert run(nest(MAX_DEPTH))["properties"]
    for depth in (MAX_DEPTH + 1, 254, 255, 1023):
        assert rejected(nest(depth)) == ("too_deep", None)
    deep_list: object = []
    for _ in range(1000):
        deep_list = [deep_list]
    assert rejected({"anonymousId": "a", "event": "E", "context": {"x": deep_list}}) == ("too_deep", None)


def test_depth_bound_from_the_text_agrees_with_the_exact_walk() -> None:
    from services.ingest.segment import too_deep
    from werkstroom.contract import MAX_DEPTH

    for depth in (1, 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200):
        call = nest(depth)
        assert too_deep(call, orjson.dumps(call)) is too_deep(call) is (depth > MAX_DEPTH)
    # Brackets inside strings only loosen the bound; the walk decides.
    braces = {"anonymousId": "a", "event": "E", "properties": {"s": "{[" * 100}}
    assert not too_deep(braces, orjson.dumps(braces))
    wide = {"anonymousId": "a", "event": "E", "properties": {f"k{i}": {"x": [1]} for i in range(100)}}
    assert not too_deep(wide, orjson.dumps(wide))


def test_truncated_copies_keep_what_fits_and_mark_the_rest() -> None:
    from services.ingest.segment import TRUNCATED, too_deep, truncated

    deep: object = ["bottom"]
    for i in range(999):
        deep = {"k": deep, "i": i} if i % 2 else [deep, i]
    cut = truncated(deep, 5)
    text = orjson.dumps(cut)  # 1,000 levels would not write; 5 do
    assert text.count(TRUNCATED.encode()) == 1 and not too_deep(cut, None)
    assert truncated({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}
    assert truncated("x") == "x"


@pytest.mark.parametrize(
    "context",
    [
        {"page": {"url": "http://[::1"}},  # urlsplit raises ValueError
        {"page": {"url": "http://exa\uff0fmple.com/x"}},  # NFKC netloc check raises ValueError
        {"page": {"url": "\x00" * 2048}},
        {"userAgent": "Mozilla/5.0 " + "(" * 30_000},
        {"library": {"name": ["x"]}},
        {"sessionId": {"deep": [1]}},
        {"traits": {"a": 10**19}},
    ],
)
def test_odd_values_in_context_never_raise(context: dict[str, object]) -> None:
    event = run({"anonymousId": "a", "event": "E", "context": context})
    decode_event(encode_event(event))


def test_wrong_types_at_every_field_give_an_event_or_a_rejection() -> None:
    values: list[object] = [None, 0, -1.5, 2**64 - 1, True, "", "x", "\x00", [], [1], {}, {"a": 1}]
    fields = [
        "type",
        "anonymousId",
        "userId",
        "event",
        "messageId",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "previousId",
        "properties",
        "traits",
        "context",
        "sessionId",
        "name",
        "category",
        "groupId",
    ]
    outcomes = {"accepted": 0, "rejected": 0}
    for kind in ("track", "page", "screen", "identify", "group", "alias", None):
        base = {
            "type": kind or "track",
            "anonymousId": "w",
            "userId": "u",
            "previousId": "p",
            "event": "E",
            "groupId": "g",
        }
        for name in fields:
            for value in values:
                try:
                    event = run({**base, name: value}, kind)
                except Rejected as exc:
                    assert exc.reason and exc.detail
                    outcomes["rejected"] += 1
                    continue
                decode_event(encode_event(event))
                outcomes["accepted"] += 1
    assert outcomes["accepted"] and outcomes["rejected"]


# -- Segment / RudderStack semantics (issue 19) -----------------------------------------------


def test_screen_calls_are_stored_like_page_views_of_an_app() -> None:
    event = run(
        {
            "anonymousId": "a",
            "name": "Checkout",
            "category": "Shop",
            "properties": {"step": 2},
            "context": {
                "library": {"name": "analytics-swift"},
                "os": {"name": "iOS", "version": "17.4"},
                "device": {"type": "ios", "model": "iPhone15,2"},
            },
        },
        "screen",
    )
    assert (event["type"], event["event"], event["url"], event["path"]) == ("screen", "$screen", "", "")
    assert event["properties"] == {"step": 2, "name": "Checkout", "category": "Shop"}
    assert (event["device_type"], event["os"], event["os_version"]) == ("unknown", "iOS", "17.4")
    decoded = decode_event(encode_event(event))
    assert decoded.type == "screen"


def test_the_user_agent_wins_over_context_os() -> None:
    event = run({"anonymousId": "a", "event": "E", "context": {"userAgent": CHROME, "os": {"name": "iOS"}}})
    assert event["os"] == "Windows"
    odd = run({"anonymousId": "a", "event": "E", "context": {"os": {"name": ["x"], "version": 17}}})
    assert (odd["os"], odd["os_version"]) == ("", "")


def test_group_calls_keep_the_group_id_and_the_groups_traits_apart_from_the_users() -> None:
    event = run(
        {
            "type": "group",
            "userId": "u-1",
            "anonymousId": "a",
            "groupId": 42,
            "traits": {"name": "Acme", "plan": "enterprise"},
            "context": {"traits": {"email": "u1@acme.test", "plan": "free"}},  # RudderStack's JS SDK
        },
        None,
    )
    assert (event["type"], event["event"], event["user_id"], event["anonymous_id"]) == (
        "group",
        "$group",
        "u-1",
        "a",
    )
    assert event["properties"] == {"groupId": "42"}
    assert event["traits"] == {"name": "Acme", "plan": "enterprise"}  # the group's, not the user's
    assert run({"anonymousId": "a", "groupId": "g", "properties": {"groupId": "x"}}, "group")[
        "properties"
    ] == {"groupId": "g"}  # the call's groupId is the one that counts


def test_context_traits_of_other_calls_are_kept_with_the_event() -> None:
    for call_type in ("page", "screen", "track", "alias"):
        call = {"anonymousId": "a", "userId": "u", "previousId": "p", "event": "E"}
        event = run({**call, "context": {"traits": {"plan": "premium"}}}, call_type)
        assert event["traits"] == {"plan": "premium"}, call_type


def test_both_ids_are_kept_as_sent() -> None:
    event = run({"anonymousId": "a", "userId": "u", "event": "E"})
    assert (event["anonymous_id"], event["user_id"]) == ("a", "u")
    assert (
        run({"userId": "u", "event": "E"})["anonymous_id"],
        run({"anonymousId": "a", "event": "E"})["user_id"],
    ) == (
        "",
        "",
    )


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


FAST = timedelta(hours=2)  # every client below runs 2 h fast; each event happened 30 s ago
HAPPENED = NOW - timedelta(seconds=30)
CORRECTED = HAPPENED + timedelta(seconds=10)  # to within CLOCK_TOLERANCE of the truth


@pytest.mark.parametrize(
    ("sdk", "call", "batch_sent_at", "expected"),
    [
        # Segment's analytics-python, RudderStack's rudder-sdk-python and Segment's
        # @segment/analytics-node: `timestamp` per event, `sentAt` once per batch.
        ("segment-python", {"timestamp": iso(HAPPENED + FAST)}, NOW + FAST, CORRECTED),
        # analytics.js, the mobile SDKs: `timestamp` and `sentAt` on the event.
        ("analytics.js", {"timestamp": iso(HAPPENED + FAST), "sentAt": iso(NOW + FAST)}, None, CORRECTED),
        # RudderStack's JS, Android and iOS SDKs: `originalTimestamp` and `sentAt`.
        (
            "rudder-js",
            {"originalTimestamp": iso(HAPPENED + FAST), "sentAt": iso(NOW + FAST)},
            None,
            CORRECTED,
        ),
        ("rudder-mobile", {"originalTimestamp": iso(HAPPENED + FAST)}, NOW + FAST, CORRECTED),
        # Events a Segment-compatible server already handled (a replay, a forwarder): with a
        # sentAt the client's originalTimestamp is corrected again, the same way...
        (
            "processed, with sentAt",
            {
                "originalTimestamp": iso(HAPPENED + FAST),
                "timestamp": iso(HAPPENED),
                "sentAt": iso(NOW + FAST),
            },
            None,
            CORRECTED,
        ),
        # ...without one, that server's corrected `timestamp` is the time.
        (
            "processed, no sentAt",
            {"originalTimestamp": iso(HAPPENED + FAST), "timestamp": iso(HAPPENED)},
            None,
            HAPPENED,
        ),
        ("originalTimestamp alone", {"originalTimestamp": iso(HAPPENED)}, None, HAPPENED),
        ("no time", {}, None, NOW),
    ],
)
def test_each_sdks_time_fields_give_the_event_time(
    sdk: str, call: dict[str, object], batch_sent_at: datetime | None, expected: datetime
) -> None:
    event = run({"anonymousId": "a", "event": "E", **call}, batch_sent_at=batch_sent_at)
    assert event["timestamp"] == expected, sdk


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"originalTimestamp": "yesterday"}, "originalTimestamp"),
        ({"originalTimestamp": "2026-11-25T12:00:00Z", "timestamp": 5}, "timestamp"),  # both are checked
        ({"originalTimestamp": "1999-01-01T00:00:00Z"}, "originalTimestamp"),
        (
            {"originalTimestamp": "1970-01-01T00:00:00Z", "sentAt": "2026-11-25T12:00:00Z"},
            "originalTimestamp",
        ),
    ],
)
def test_a_bad_original_timestamp_is_rejected_by_its_name(call: dict[str, object], field: str) -> None:
    assert rejected({"anonymousId": "a", "event": "E", **call}) == ("invalid_time", field)


def test_source_and_campaign_come_from_the_referrer_and_the_campaign() -> None:
    page = run(
        {
            "anonymousId": "a",
            "properties": {
                "url": "https://shop.example/p?utm_source=news&utm_medium=email&utm_campaign=spring",
                "referrer": "https://www.google.de/",
            },
        },
        "page",
    )
    assert (page["source"], page["utm_source"], page["utm_medium"], page["utm_campaign"]) == (
        "Google",
        "news",
        "email",
        "spring",
    )
    assert (page["utm_term"], page["utm_content"]) == ("", "")
    # context.campaign (Segment's) wins over the URL; the page's own host is no source
    track = run(
        {
            "anonymousId": "a",
            "event": "Clicked",
            "context": {
                "page": {"url": "https://shop.example/?utm_source=url", "referrer": "https://shop.example/"},
                "campaign": {"source": "ctx", "name": "launch", "term": ["not", "text"]},
            },
        }
    )
    assert (track["source"], track["utm_source"], track["utm_campaign"], track["utm_term"]) == (
        "",
        "ctx",
        "launch",
        "",
    )
    # a campaign that is not an object is ignored, never a rejection
    other = run({"anonymousId": "a", "event": "E", "context": {"campaign": "x"}})
    assert other["utm_source"] == "" and other["source"] == ""
    jsonschema.validate(orjson.loads(encode_event(page)), json_schema())
