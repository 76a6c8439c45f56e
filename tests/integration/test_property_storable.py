"""Issue 17, end to end: whatever the Segment normaliser accepts, ClickHouse stores as it was
sent; whatever a stranger POSTs, ingest answers below 500. Hypothesis, over the strategies of
tests/unit/ingest/test_normalize_properties.py (which checks the same calls without a server).

- Generated calls (`calls()`, and `timed_calls()` for the time policy) are normalised and
  encoded as ingest does (`check_normalize`). Every accepted message then goes into a real
  `events` table the way the sink writes it: `raw_row`, then `EventsSink.writer.insert_raw` (its
  statement, its parse settings, its client), one batch per strategy. Each row reads back
  exactly once, every field as sent: times to the column's milliseconds (ClickHouse truncates
  the microseconds), properties and traits the same JSON (the table keeps their text).
- Generated batches and single calls go over HTTP to the real ingest and the real broker: no
  answer is a 5xx, the counts of a batch add up, and every event accepted is on the topic and
  decodes under the contract.

Each example gets its own project id, so that a messageId two calls share stays two rows. A row
ClickHouse refuses fails the test with the calls it came from, smallest first. 4,000 examples
here (10,200 in the unit file); ~20 s on a shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.aggregator.errors import Failure, classify, describe
from services.aggregator.sink import EventsSink, raw_row
from tests.conftest import Infra
from tests.integration.stack import BROWSER_UA, Stack
from tests.unit.ingest.test_normalize_properties import (
    BATCH_SENT_AT,
    CALL_TYPES,
    JSON,
    PROPERTY,
    REASONS,
    RECEIVED,
    calls,
    check_normalize,
    iso_times,
    nested,
    text_of,
    timed_calls,
)
from werkstroom.contract import FIELDS, Event, decode_event
from werkstroom.serve import clickhouse_factory

pytestmark = pytest.mark.integration

CALLS = 2000  # examples of calls(): about two in five are accepted
TIMED = 1500  # examples of timed_calls(): valid track calls with hostile times and nesting
REQUESTS = 500  # HTTP requests: batches of up to 8 items, or single calls
TIMES = ("timestamp", "sent_at", "received_at")  # DateTime64(3, 'UTC') columns
OBJECTS = ("properties", "traits")  # JSON objects, stored as their text
# A message that carries kafka_* keys of its own is re-encoded by raw_row (its other branch).
OWN_KAFKA_KEYS = {
    "type": "identify",
    "anonymousId": "a",
    "properties": {"kafka_partition": "x", "kafka_offset": [-1]},
    "traits": {"kafka_offset": 2**64 - 1},
}
_2030 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def quiet(infra: Infra, names: dict[str, str], tmp_path: object) -> AsyncIterator[Stack]:
    """The test's migrated database (and topics), with no ingest and no sink running."""
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, ingest=False, sink=False
    ) as s:
        yield s


@pytest.fixture
async def ingest(infra: Infra, names: dict[str, str], tmp_path: object) -> AsyncIterator[Stack]:
    """The real ingest over HTTP, producing to the test's topics; no rate limit in the way, and
    time for a loaded broker's first acknowledgement on each topic (0.8 s by default: under a
    full CI run the dead-letter topic's first one took longer, and a 503 kafka_unavailable is
    the broker's answer, not the input's)."""
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        sink=False,
        rate_limit_eps=0,
        produce_timeout_ms=10_000,
    ) as s:
        yield s


async def test_every_accepted_event_is_stored_as_it_was_sent(quiet: Stack) -> None:
    projects = (f"prop_{n}" for n in itertools.count())
    sent: dict[tuple[str, str], tuple[Any, bytes, Event]] = {}  # (project, event id) -> what
    batches: list[list[tuple[Any, bytes]]] = []  # per strategy: (the call, its `events` line)

    def keep(call: Any, call_type: str | None, received_at: datetime, batch_sent_at: datetime | None) -> None:
        value = check_normalize(call, call_type, received_at, batch_sent_at, project_id=next(projects))
        if value is not None:
            event = decode_event(value)
            sent[(event.project_id, event.event_id)] = (call, value, event)
            batches[-1].append((call, raw_row(value, event, 0, len(sent))))

    @settings(PROPERTY, max_examples=CALLS)
    @given(call=calls(), call_type=CALL_TYPES, received_at=RECEIVED, batch_sent_at=BATCH_SENT_AT)
    @example(call=OWN_KAFKA_KEYS, call_type=None, received_at=_2030, batch_sent_at=None)
    def any_call(
        call: dict[str, Any], call_type: str | None, received_at: datetime, batch_sent_at: datetime | None
    ) -> None:
        keep(call, call_type, received_at, batch_sent_at)

    @settings(PROPERTY, max_examples=TIMED)
    @given(timed=timed_calls(), call_type=st.sampled_from([None, "track"]))
    def timed_call(timed: tuple[dict[str, Any], datetime], call_type: str | None) -> None:
        call, received_at = timed
        keep(call, call_type, received_at, None)

    sink = EventsSink(quiet.settings, quiet.bootstrap, clickhouse_factory(quiet.settings))
    sink.writer.clients.events = quiet.other_client()  # what run() sets up: the events' own client
    for run in (any_call, timed_call):
        batches.append([])
        run()  # hypothesis: the examples, each checked by check_normalize, and kept
        lines = [line for _call, line in batches[-1]]
        try:
            await sink.writer.insert_raw(lines)
        except Exception as exc:
            if classify(exc) is not Failure.DATA:
                raise
            refused = await refused_rows(sink.writer.insert_raw, lines)
            smallest = sorted(refused, key=lambda r: len(lines[r[0]]))[:3]
            pytest.fail(
                f"ClickHouse refused {len(refused)} of {len(lines)} accepted events; the smallest:\n"
                + "\n".join(f"{batches[-1][i][0]!r}\n  -> {describe(error, 300)}" for i, error in smallest)
            )

    rows = quiet.client.query(f"SELECT {', '.join(FIELDS)} FROM events").result_rows
    seen = Counter((row[0], row[1]) for row in rows)
    assert not [key for key, n in seen.items() if n > 1], "rows stored twice"
    assert seen.keys() == sent.keys(), f"{len(sent)} events sent, {len(seen)} stored"
    wrong = []
    for row in rows:
        call, value, event = sent[(row[0], row[1])]
        for name, stored in zip(FIELDS, row, strict=True):
            if as_stored(name, stored) != expected(name, getattr(event, name)):
                wrong.append(f"{name}: stored {stored!r} for {value!r}\n  (the call: {call!r})")
    assert not wrong, f"{len(wrong)} fields differ, e.g.\n" + "\n".join(wrong[:3])
    assert len(batches[0]) > CALLS // 5 and len(batches[1]) > TIMED // 5, [len(b) for b in batches]


def expected(name: str, value: Any) -> Any:
    """A decoded event's field as ClickHouse gives it back."""
    if name in TIMES:
        return None if value is None else value.replace(microsecond=value.microsecond // 1000 * 1000)
    if name in OBJECTS:
        return orjson.loads(bytes(value))
    return value


def as_stored(name: str, value: Any) -> Any:
    if name in TIMES:
        return None if value is None else value.replace(tzinfo=UTC)
    if name in OBJECTS:
        return orjson.loads(value)
    return value


async def refused_rows(
    insert: Callable[[list[bytes]], Awaitable[None]], lines: list[bytes], start: int = 0
) -> list[tuple[int, Exception]]:
    """The lines ClickHouse refuses, (index, error), found by halving as the sink does; the
    others are written."""
    try:
        await insert(lines)
        return []
    except Exception as exc:
        if classify(exc) is not Failure.DATA:
            raise
        if len(lines) == 1:
            return [(start, exc)]
    middle = len(lines) // 2
    return [
        *await refused_rows(insert, lines[:middle], start),
        *await refused_rows(insert, lines[middle:], start + middle),
    ]


@st.composite
def items(draw: st.DrawFn) -> Any:
    """A batch item: a call (most of the time) or any JSON, deep nesting included. (Not
    `calls() | JSON`: hypothesis flattens JSON's many branches, and calls would be one in ten.)"""
    return draw(calls() if draw(st.integers(0, 3)) else JSON | nested())


async def test_generated_requests_never_get_a_5xx(ingest: Stack) -> None:
    key = ingest.project.write_key
    statuses: Counter[int] = Counter()
    accepted = 0
    headers = {"Content-Type": "application/json", "User-Agent": BROWSER_UA}

    @settings(PROPERTY, max_examples=REQUESTS)
    @given(
        items=st.lists(items(), min_size=1, max_size=8),
        sent_at=st.sampled_from([None, None, "now"]).flatmap(lambda s: iso_times() if s else st.none()),
        single=st.none() | st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]),
    )
    def post(http: httpx.Client, items: list[Any], sent_at: str | None, single: str | None) -> None:
        nonlocal accepted
        body: Any = {"writeKey": key, "batch": items, **({"sentAt": sent_at} if sent_at else {})}
        if single is not None:
            body = {**items[0], "writeKey": key} if isinstance(items[0], dict) else items[0]
        text = text_of(body)
        if text is None:
            return  # deeper than orjson writes: test_ingest_hostile_batches.py sends those as text
        response = http.post(f"/v1/{single or 'batch'}", content=text, headers=headers)
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text
        answer = response.json()
        if response.status_code != 200:
            assert answer["success"] is False and answer["reason"] in REASONS | {"too_large"}, answer
            return
        assert answer["accepted"] + answer["rejected"] + answer["bots"] == (1 if single else len(items))
        accepted += answer["accepted"]

    def send() -> None:  # in a thread: the ingest server answers on this test's event loop
        with httpx.Client(base_url=ingest.ingest_url, timeout=10) as http:
            post(http)

    await asyncio.to_thread(send)
    assert statuses[200] > REQUESTS // 3 and accepted > REQUESTS // 5, (statuses, accepted)
    produced = await ingest.read_topic(ingest.topics.events, accepted)
    assert len(produced) == accepted, f"{len(produced)} messages on the topic for {accepted} accepted"
    for message in produced:
        decode_event(message.value)  # what the sink reads: raises ContractError if it breaks
