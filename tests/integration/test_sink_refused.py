"""What the events sink does with each kind of ClickHouse failure (services/aggregator/errors.py),
against the real broker and ClickHouse. Every refusal here is ClickHouse's own: a table
CONSTRAINT, a connection refused by the real driver, a statement that takes seconds.

- rows ClickHouse refuses go to the dead-letter topic with its reason; the rest is written once
  and committed, and the sink goes on;
- a ClickHouse that cannot be reached is retried without committing, and a stop ends the wait;
- a programming error, or a data error in our own derived rows, stops the sink at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator import sink as sink_module
from services.aggregator.errors import DATA_CODES, TRANSIENT_CODES
from services.aggregator.processor import SessionsProcessor
from services.aggregator.sink import EventsSink, SinkStopped
from tests.integration.stack import Stack
from tests.integration.test_sink import committed, committed_is, event, produce
from werkstroom import metrics
from werkstroom.embedded import free_port
from werkstroom.serve import clickhouse_factory

pytestmark = pytest.mark.integration


@pytest.fixture
async def quiet(infra, names, tmp_path):  # type: ignore[no-untyped-def]
    """A stack with no ingest and no sink running: the test drives the sink itself."""
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, ingest=False, sink=False
    ) as s:
        yield s


def page(pid: str, i: int, path: str, **extra: object) -> bytes:
    """A page view of its own visitor (so each is its own session, entered on `path`)."""
    return event(pid, i, type="page", event="$pageview", path=path, anonymous_id=f"v-{i}", **extra)


def refused_total(table: str) -> float:
    return metrics.SINK_ROWS_REFUSED.labels(table)._value.get()  # type: ignore[no-any-return]


def run_sink(stack: Stack, sink: EventsSink) -> asyncio.Task[None]:
    """Run a sink built by the test, stopped with the stack like its own."""
    task = asyncio.create_task(sink.run())
    stack.sinks.append(sink)
    stack._tasks.append(task)
    return task


async def test_the_codes_named_in_the_classification_are_clickhouses(quiet: Stack) -> None:
    """Each code of the two lists is the error ClickHouse itself calls by that name."""
    named = {**TRANSIENT_CODES, **DATA_CODES}
    got = dict(
        quiet.rows(
            "SELECT c, errorCodeToName(c) FROM (SELECT arrayJoin({cs:Array(UInt32)}) AS c)", cs=list(named)
        )
    )
    assert got == named


async def test_rows_clickhouse_refuses_are_dead_lettered_and_the_rest_written_once(quiet: Stack) -> None:
    """One batch: 40 page views, two of which `events` refuses (a CONSTRAINT on the sink's
    table) and one whose session `sessions` refuses (a CONSTRAINT there). The three go to the
    dead-letter topic with ClickHouse's reason; every other row is written once; the offsets
    are committed once the write is done; and the visitor who comes next is processed."""
    pid = quiet.project.project_id
    quiet.client.command("CREATE TABLE events_checked AS events")
    quiet.client.command("ALTER TABLE events_checked ADD CONSTRAINT no_refuse CHECK path != '/refuse-me'")
    quiet.client.command(
        "ALTER TABLE sessions ADD CONSTRAINT no_refused_entry CHECK entry_path != '/refuse-entry'"
    )
    paths = {7: "/refuse-me", 23: "/refuse-me", 31: "/refuse-entry"}
    values = [page(pid, i, paths.get(i, f"/p{i}")) for i in range(40)]
    before = refused_total("events_checked"), refused_total("sessions")
    await produce(quiet, values)  # one key: one partition, offsets 0..39
    quiet.start_sink(table="events_checked")

    # Committed only once the batch is written: at that point every row is in.
    await quiet.until(lambda: committed_is(quiet, 40), timeout=30)
    assert quiet.scalar("SELECT count() FROM events_checked") == 38  # not FINAL: written once
    assert quiet.scalar("SELECT uniqExact(event_id) FROM events_checked") == 38
    assert quiet.scalar("SELECT countIf(path = '/refuse-me') FROM events_checked") == 0
    sessions = "SELECT count(), countIf(entry_path = '/refuse-entry') FROM sessions FINAL WHERE project_id = {p:String}"
    assert quiet.rows(sessions, p=pid) == [(39, 0)]

    letters = [orjson.loads(m.value) for m in await quiet.read_topic(quiet.topics.dead_letter, 3)]
    assert len(letters) == 3
    assert {(d["source"], d["reason"], d["clickhouse_error"]) for d in letters} == {
        ("sink", "refused_by_clickhouse", "VIOLATED_CONSTRAINT")
    }
    events = sorted((d for d in letters if d["table"] == "events_checked"), key=lambda d: d["offset"])
    assert [d["offset"] for d in events] == [7, 23]
    for letter in events:
        assert "Constraint `no_refuse`" in letter["message"] and "/refuse-me" in letter["message"]
        assert orjson.loads(letter["raw"]) == orjson.loads(values[letter["offset"]])  # the message itself
        assert letter["topic"] == quiet.topics.events
    (session,) = [d for d in letters if d["table"] == "sessions"]
    assert "Constraint `no_refused_entry`" in session["message"]
    row = orjson.loads(session["raw"])
    assert (row["project_id"], row["anonymous_id"], row["entry_path"]) == (pid, "v-31", "/refuse-entry")
    assert (refused_total("events_checked"), refused_total("sessions")) == (before[0] + 2, before[1] + 1)

    # The sink did not stop: the next visitor is written and committed.
    await produce(quiet, [page(pid, 100, "/later")])
    await quiet.until(lambda: committed_is(quiet, 41), timeout=20)
    assert quiet.scalar("SELECT count() FROM events_checked WHERE event_id = 'e-100'") == 1
    assert quiet.scalar("SELECT count() FROM sessions FINAL WHERE anonymous_id = 'v-100'") == 1


async def test_a_batch_over_more_months_than_clickhouses_default_is_written_whole(quiet: Stack) -> None:
    """Event times may span 2000 to now, and `events`, `sessions` and `sessions_daily` are
    partitioned by month: ClickHouse's default refuses an insert into more than 100 partitions,
    which made a stranger's batch of old dates stop the sink in the derived recomputation.
    Every client lifts that limit (werkstroom.clickhouse.CLIENT_SETTINGS): all of it goes in."""
    pid = quiet.project.project_id
    months = [f"{2010 + m // 12}-{m % 12 + 1:02d}-15T12:00:00.000Z" for m in range(110)]
    values = [event(pid, i, anonymous_id=f"v-{i}", timestamp=t) for i, t in enumerate(months)]
    await produce(quiet, values)
    quiet.start_sink()
    await quiet.until(lambda: committed_is(quiet, 110), timeout=30)
    assert quiet.scalar("SELECT uniqExact(toYYYYMM(timestamp)) FROM events FINAL") == 110
    assert quiet.scalar("SELECT count() FROM sessions FINAL WHERE project_id = {p:String}", p=pid) == 110
    assert (
        quiet.scalar("SELECT count() FROM sessions_daily FINAL WHERE project_id = {p:String}", p=pid) == 110
    )
    assert await quiet.read_topic(quiet.topics.dead_letter, 1, timeout=1) == []


async def test_an_event_time_past_clickhouses_dates_is_dead_lettered_and_the_rest_goes_on(
    quiet: Stack,
) -> None:
    """2150 is past ClickHouse's Date (its day counts): the contract refuses it when the sink
    decodes it (werkstroom.contract), whoever produced it, so it never reaches ClickHouse."""
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, 1, timestamp="2150-01-01T00:00:00Z"), event(pid, 2)])
    quiet.start_sink()
    assert await quiet.wait_count(1) == 1
    (letter,) = [orjson.loads(m.value) for m in await quiet.read_topic(quiet.topics.dead_letter, 1)]
    assert (letter["source"], letter["reason"], letter["offset"]) == ("sink", "invalid_time", 0)
    await quiet.until(lambda: committed_is(quiet, 2), timeout=10)


class Outage:
    """ClickHouse that cannot be reached for a while. While `down`, every statement of a
    client it made first opens a connection with the real HTTP driver to a loopback port
    nobody listens on, so it fails as it fails for a server that is away (clickhouse-connect's
    OperationalError, connection refused); then the client is the real one again."""

    def __init__(self, settings: Any) -> None:
        self._real = clickhouse_factory(settings)
        self.port = free_port()
        self.down = True
        self.refused = 0

    def factory(self, *, session: bool = False) -> Client:
        return _Unreachable(self._real(session=session), self)  # type: ignore[return-value]


class _Unreachable:
    _CALLS = frozenset({"query", "command", "insert", "raw_insert"})

    def __init__(self, real: Client, outage: Outage) -> None:
        self._real, self._outage = real, outage

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if name not in self._CALLS:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._outage.down:
                self._outage.refused += 1
                clickhouse_connect.get_client(host="127.0.0.1", port=self._outage.port, connect_timeout=1)
                raise AssertionError("a closed port answered")
            return value(*args, **kwargs)

        return call


async def test_a_clickhouse_that_cannot_be_reached_is_waited_for_without_committing(quiet: Stack) -> None:
    """While no statement reaches ClickHouse the sink retries, commits nothing, and a stop ends
    it within seconds; once ClickHouse is back every event is written once and committed."""
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, i, type="page", event="$pageview") for i in range(50)])
    outage = Outage(quiet.settings)
    failures = metrics.SINK_INSERT_FAILURES._value.get()
    first = EventsSink(quiet.settings, quiet.bootstrap, outage.factory)
    task = run_sink(quiet, first)
    await quiet.until(lambda: metrics.SINK_INSERT_FAILURES._value.get() >= failures + 3, timeout=30)
    assert outage.refused >= 3
    assert await committed(quiet) == 0
    assert quiet.scalar("SELECT count() FROM events") == 0

    # Stoppable in the middle of the outage: no waiting out the backoff.
    started = time.monotonic()
    first.stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 3.0
    assert await committed(quiet) == 0

    # A new sink of the group meets the outage, then ClickHouse comes back.
    second = EventsSink(quiet.settings, quiet.bootstrap, outage.factory)
    run_sink(quiet, second)
    refused = outage.refused
    await quiet.until(lambda: outage.refused > refused, timeout=30)
    outage.down = False
    await quiet.until(lambda: committed_is(quiet, 50), timeout=30)
    assert quiet.scalar("SELECT count() FROM events FINAL") == 50
    assert quiet.scalar("SELECT uniqExact(event_id) FROM events") == 50
    assert quiet.scalar("SELECT count() FROM sessions FINAL WHERE project_id = {p:String}", p=pid) == 5
    counted = "SELECT sum(page_views), sum(events) FROM events_daily FINAL WHERE project_id = {p:String}"
    assert quiet.rows(counted, p=pid) == [(50, 50)]  # each event counted once, retries or not


async def test_a_stop_while_inserts_fail_and_batches_wait_behind_them_returns_within_seconds(
    quiet: Stack,
) -> None:
    """ClickHouse refuses every insert into `events` for a while (TOO_MANY_PARTS, transient:
    `parts_to_throw_insert` = 1 and a part there already) while events keep coming: the writer
    retries, the next batches wait behind it (one queued, one being handed over). A stop
    returns within seconds all the same (it once waited forever for the writer to take the
    next batch), nothing is committed, and the next start writes every event once."""
    pid = quiet.project.project_id
    quiet.client.command(
        "INSERT INTO events (project_id, event_id, timestamp, received_at) "
        "VALUES ('other', 'x', '2026-11-20 09:00:00', '2026-11-20 09:00:00')"
    )
    quiet.client.command("ALTER TABLE events MODIFY SETTING parts_to_throw_insert = 1")
    failures = metrics.SINK_INSERT_FAILURES._value.get()
    sink: EventsSink = quiet.start_sink()
    await quiet.until(lambda: sink.consumer is not None and sink.consumer.assignment(), timeout=20)
    for i in range(6):  # a batch each (sink_flush_ms is 100 ms)
        await produce(quiet, [event(pid, i, type="page", event="$pageview")], key=b"k%d" % i)
        await asyncio.sleep(0.3)
    await quiet.until(lambda: metrics.SINK_INSERT_FAILURES._value.get() >= failures + 3, timeout=30)
    await quiet.until(lambda: sink._seq - sink._written_seq >= 2, timeout=10)  # waiting behind it
    # Nothing committed on any partition yet: the lag gauge counts from where this assignment
    # reads, up to the newest offset the consumer has seen (it read 0 until a first commit).
    held = sink.consumer.assignment()

    def lag_from_start() -> bool:
        gauge = sum(metrics.SINK_LAG.labels(str(tp.partition))._value.get() for tp in held)
        seen = sum((sink.consumer.highwater(tp) or 0) - sink.positions.starts[tp] for tp in held)
        return gauge == seen > 0

    await quiet.until(lag_from_start, timeout=15)
    started = time.monotonic()
    sink.stop()
    await asyncio.wait_for(quiet._tasks.pop(), 15)
    assert time.monotonic() - started < 3.0
    assert await committed(quiet) == 0

    quiet.client.command("ALTER TABLE events MODIFY SETTING parts_to_throw_insert = 3000")
    quiet.start_sink()
    await quiet.until(lambda: committed_is(quiet, 6), timeout=30)
    assert quiet.scalar("SELECT count() FROM events FINAL WHERE project_id = {p:String}", p=pid) == 6
    counted = "SELECT sum(page_views) FROM events_daily FINAL WHERE project_id = {p:String}"
    assert quiet.scalar(counted, p=pid) == 6


async def test_a_programming_error_stops_the_sink_instead_of_retrying(
    quiet: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(SessionsProcessor, "apply_events", broken)
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, i) for i in range(10)])
    failures = metrics.SINK_INSERT_FAILURES._value.get()
    quiet.start_sink()
    with pytest.raises(SinkStopped, match=r"TypeError: unsupported operand.*a programming error") as stopped:
        await asyncio.wait_for(quiet._tasks[-1], 20)
    assert isinstance(stopped.value.__cause__, TypeError)
    assert metrics.SINK_INSERT_FAILURES._value.get() == failures  # not retried once
    assert await committed(quiet) == 0
    quiet.sink = None


async def test_rows_our_derived_tables_refuse_stop_the_sink(quiet: Stack) -> None:
    """The daily statistics are computed from our own tables: ClickHouse refusing them is a
    bug of ours, not bad input. The sink stops (nothing committed) instead of dead-lettering
    or retrying."""
    quiet.client.command("ALTER TABLE daily_stats ADD CONSTRAINT never CHECK page_views > 1000000")
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, i, type="page", event="$pageview") for i in range(10)])
    quiet.start_sink()
    with pytest.raises(SinkStopped, match=r"derived_refresh_failed.*VIOLATED_CONSTRAINT.*our own rows"):
        await asyncio.wait_for(quiet._tasks[-1], 30)
    assert quiet.scalar("SELECT count() FROM events FINAL") == 10  # written, but not committed
    assert await committed(quiet) == 0
    quiet.sink = None


@pytest.fixture
def slow_inserts(quiet: Stack) -> Iterator[float]:
    """`events_slow`, whose every insert takes ClickHouse about 6 s: two materialized views
    on it sleep 3 s (ClickHouse's most per block) each."""
    quiet.client.command("CREATE TABLE events_slow AS events")
    quiet.client.command("CREATE TABLE slow_sink (x UInt8) ENGINE = Null")
    for i in range(2):
        quiet.client.command(
            f"CREATE MATERIALIZED VIEW slow_{i} TO slow_sink AS SELECT sleepEachRow(3) AS x FROM events_slow"
        )
    yield 6.0


def inserting(stack: Stack, table: str) -> int:
    """Inserts into `table` ClickHouse is running now."""
    sql = "SELECT count() FROM system.processes WHERE query_kind = 'Insert' AND query LIKE {q:String}"
    return stack.scalar(sql, q=f"INSERT INTO%{table}%")  # type: ignore[no-any-return]


async def test_a_stop_while_clickhouse_hangs_returns_within_seconds(
    quiet: Stack, slow_inserts: float
) -> None:
    """A statement that does not come back cannot be interrupted: the sink leaves it running,
    uncommitted, and stops anyway (werkstroom serve then exits without waiting for it)."""
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, 1)])
    sink: EventsSink = quiet.start_sink(table="events_slow")
    await quiet.until(lambda: inserting(quiet, "events_slow"), timeout=30)
    hanging_since = time.monotonic()
    sink.stop()
    await asyncio.wait_for(quiet._tasks.pop(), 15)
    assert time.monotonic() - hanging_since < sink_module.STOP_GRACE + 1.5
    assert inserting(quiet, "events_slow")  # still running: it was not waited for
    assert await committed(quiet) == 0
    # Let the abandoned insert finish before the database is dropped.
    await asyncio.sleep(max(0.0, slow_inserts - (time.monotonic() - hanging_since)))
    await quiet.until(lambda: not inserting(quiet, "events_slow"), timeout=30)
