"""The write stage alone (services/aggregator/writer.py): a batch's events are in before any
insert of what counts them starts, the live view's rows go in ahead and the batch counts as
written only once they are in too, a transient failure is retried with nothing counted as
written meanwhile, rows ClickHouse refuses in `events` or in an aggregate table are
dead-lettered with what locates them, and only a written batch reaches the committer. (How the
refused rows are found by splitting, and the retry policy itself: test_sink_errors.py and
test_sink_retry.py.) No ClickHouse and no Kafka: the clients are fakes of clickhouse-connect's
insert()/raw_insert(), the dead letters' publisher one of our Publisher.publish()."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.aggregator.generations import base
from services.aggregator.processor import Decoded, Dirty, Rows
from services.aggregator.retry import Abandoned, Retry, SinkStopped
from services.aggregator.sink import EventsSink, raw_row
from services.aggregator.writer import LIVE_TABLE, REFUSED, Batch, Writer
from tests.unit.aggregator.test_raw_row import MESSAGE
from tests.unit.aggregator.test_sink_errors import chdb_error, refused_connection
from werkstroom.clickhouse.tables import EVENTS_COLUMNS
from werkstroom.contract import Topics, decode_event
from werkstroom.settings import Settings

TOPICS = Topics(
    events="werkstroom.events.v1", dead_letter="werkstroom.events.dlq.v1", bots="werkstroom.bots.v1"
)
P0 = TopicPartition(TOPICS.events, 0)
REFUSE = "refuse-me"  # a row or line holding this, ClickHouse refuses (with the rest of its block)
Step = tuple[str, str, str]  # (start or end, client, table)


def refused_by_clickhouse() -> Exception:
    return chdb_error(
        f"Code: 469. DB::Exception: Constraint `c` is violated: {REFUSE}. (VIOLATED_CONSTRAINT)"
    )


class Client:
    """clickhouse-connect's client as far as the writer uses it: insert(), column-oriented (as
    werkstroom.clickhouse.params.insert_rows calls it), and raw_insert() of the events' lines.
    Writes down in `steps` when each insert starts and ends; an insert can be held (it waits in
    its worker thread until released), fail, or refuse the block holding a row with REFUSE."""

    def __init__(self, name: str, steps: list[Step]) -> None:
        self.name = name
        self.steps = steps
        self.failures: list[Exception] = []  # raised by the next inserts, in turn
        self.on_failure: Callable[[], None] | None = None
        self.held = threading.Event()
        self.held.set()  # not held
        self.started = threading.Event()
        self.written: list[tuple[str, list[Any]]] = []

    def hold(self) -> None:
        self.held.clear()

    def release(self) -> None:
        self.held.set()

    def insert(
        self, table: str, data: list[list[Any]], column_names: list[str], column_oriented: bool
    ) -> None:
        assert column_oriented and len(data) == len(column_names)
        self._insert(table, [list(row) for row in zip(*data, strict=True)])

    def raw_insert(
        self, table: str, column_names: list[str], insert_block: bytes, settings: dict[str, Any], fmt: str
    ) -> None:
        assert (column_names, fmt) == (EVENTS_COLUMNS, "JSONEachRow")
        self._insert(table, insert_block.split(b"\n"))

    def _insert(self, table: str, rows: list[Any]) -> None:
        self.steps.append(("start", self.name, table))
        self.started.set()
        assert self.held.wait(5), "never released"
        if self.failures:
            if self.on_failure is not None:
                self.on_failure()
            raise self.failures.pop(0)
        if any(REFUSE in str(row) for row in rows):
            raise refused_by_clickhouse()
        self.written.append((table, rows))
        self.steps.append(("end", self.name, table))

    def tables(self) -> list[str]:
        return [table for table, _rows in self.written]


class Publisher:
    """werkstroom.kafka.Publisher as far as the writer uses it."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.published: list[tuple[str, list[tuple[bytes, bytes]]]] = []

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        self.steps.append(("publish", "publisher", topic))
        self.published.append((topic, list(messages)))


@dataclass
class Stage:
    """A writer wired to the fakes, which write each insert and publish down in `steps`."""

    writer: Writer
    stopping: asyncio.Event
    events: Client
    aggregates: Client
    live: Client
    publisher: Publisher
    steps: list[Step] = field(default_factory=list)

    def order(self) -> list[tuple[str, str]]:
        """Each insert's end, and each publish, in order: (client, table or topic)."""
        return [(who, what) for step, who, what in self.steps if step != "start"]


def new_stage(writer: Writer, stopping: asyncio.Event) -> Stage:
    steps: list[Step] = []
    stage = Stage(
        writer,
        stopping,
        Client("events", steps),
        Client("aggregates", steps),
        Client("live", steps),
        Publisher(steps),
        steps,
    )
    clients = writer.clients
    clients.events, clients.aggregates, clients.live = stage.events, stage.aggregates, stage.live  # type: ignore[assignment]
    clients.publisher = stage.publisher  # type: ignore[assignment]
    return stage


@pytest.fixture
def stage() -> Stage:
    stopping = asyncio.Event()
    return new_stage(Writer(TOPICS, "events", 1000, Retry(stopping), stopping), stopping)


def message(n: int, **fields: Any) -> bytes:
    return orjson.dumps({**MESSAGE, "event_id": f"e{n}", "anonymous_id": f"a{n}", **fields})


def batch(
    seq: int = 1,
    *,
    messages: list[bytes] | None = None,
    partition: int = 0,
    generation: int = 0,
    aggregates: Rows | None = None,
    dead: list[tuple[bytes, bytes]] | None = None,
    newest: dict[int, int] | None = None,
) -> Batch:
    """A batch applied: its events at offsets 0.. of `partition` under `generation`, their rows."""
    values = messages if messages is not None else [message(0), message(1)]
    events: list[Decoded] = []
    raw: list[bytes] = []
    for offset, value in enumerate(values):
        event = decode_event(value)
        events.append((event, partition, base(generation) + offset))
        raw.append(raw_row(value, event, partition, offset))
    return Batch(
        seq,
        dead if dead is not None else [],
        events,
        raw,
        {TopicPartition(TOPICS.events, partition): len(values)},
        aggregates if aggregates is not None else tables(),
        Dirty({("p1", date(2026, 11, 25))}, {("p1", "a0")}),
        newest if newest is not None else {partition: 1_700_000_000_000},
    )


def tables(sessions: list[list[Any]] | None = None) -> Rows:
    """The aggregate tables' rows, in the order the processor gives them (the live view first)."""
    return {
        LIVE_TABLE: (["project_id", "anonymous_id", "version"], [["p1", "a0", 1]]),
        "sessions": (
            ["project_id", "session_id", "version"],
            sessions if sessions is not None else [["p1", "s0", 1], ["p1", "s1", 1]],
        ),
        "person_traits": (["project_id", "distinct_id", "version"], []),  # nothing: not inserted
        "events_daily": (["project_id", "day", "events"], [["p1", date(2026, 11, 25), 2]]),
    }


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("not within a second")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the order of the inserts ----------------------------------------------------------------------


async def test_no_insert_of_what_counts_the_events_starts_before_the_events_are_in(stage: Stage) -> None:
    """The crash-safety guarantee: a kill between the two inserts must leave events stored and
    not yet counted (replayed at the next start), never counts above the stored events."""
    stage.events.hold()
    writing = asyncio.create_task(stage.writer.write(batch()))
    await until(stage.events.started.is_set)
    await asyncio.sleep(0.05)  # time enough for an insert beside it to start
    assert [who for _step, who, _table in stage.steps] == ["events"]
    stage.events.release()
    await writing
    assert stage.order() == [
        ("events", "events"),
        ("aggregates", LIVE_TABLE),  # no live insert was started: it goes with the others
        ("aggregates", "sessions"),
        ("aggregates", "events_daily"),
    ]
    assert stage.steps.index(("end", "events", "events")) < stage.steps.index(
        ("start", "aggregates", LIVE_TABLE)
    )
    assert stage.events.written == [("events", batch().raw)]
    assert stage.aggregates.written[1] == ("sessions", [["p1", "s0", 1], ["p1", "s1", 1]])


async def test_the_live_rows_go_in_at_once_on_their_own_client_and_not_again(stage: Stage) -> None:
    """start_live does not wait for the previous batch's writes (still held here)."""
    stage.events.hold()
    previous = asyncio.create_task(stage.writer.write(batch(1)))
    await until(stage.events.started.is_set)
    applied = batch(2)
    stage.writer.start_live(applied)
    assert applied.live is not None
    await applied.live
    assert stage.live.written == [(LIVE_TABLE, [["p1", "a0", 1]])]
    assert not previous.done()
    stage.events.release()
    await previous
    await stage.writer.write(applied)
    # Batch 1 had no live insert of its own: its live rows went in with its other aggregates;
    # batch 2's are in already.
    assert stage.aggregates.tables() == [LIVE_TABLE, "sessions", "events_daily", "sessions", "events_daily"]
    assert applied.live is None


async def test_a_batch_with_no_live_rows_starts_no_live_insert(stage: Stage) -> None:
    stage.writer.clients.live = None  # not needed
    applied = batch(aggregates=tables() | {LIVE_TABLE: (["project_id"], [])})
    stage.writer.start_live(applied)
    assert applied.live is None
    await stage.writer.write(applied)
    assert stage.aggregates.tables() == ["sessions", "events_daily"]


async def test_a_batch_is_written_only_once_its_live_rows_are_in(stage: Stage) -> None:
    stage.live.hold()
    applied = batch()
    stage.writer.start_live(applied)
    writing = asyncio.create_task(stage.writer.write(applied))
    await until(lambda: ("end", "events", "events") in stage.steps)
    await asyncio.sleep(0.05)
    assert not writing.done() and stage.writer.last_write is None
    assert stage.aggregates.written == []  # the other aggregates wait for the live rows too
    stage.live.release()
    await writing
    assert stage.order() == [
        ("events", "events"),
        ("live", LIVE_TABLE),
        ("aggregates", "sessions"),
        ("aggregates", "events_daily"),
    ]
    assert stage.writer.last_write is not None


async def test_live_rows_whose_insert_failed_transiently_go_in_with_the_other_aggregates(
    stage: Stage,
) -> None:
    stage.live.failures = [refused_connection()]
    applied = batch()
    stage.writer.start_live(applied)
    failures = sample("werkstroom_sink_insert_failures_total")
    await stage.writer.write(applied)
    assert stage.live.written == []
    assert stage.aggregates.tables() == [LIVE_TABLE, "sessions", "events_daily"]
    assert sample("werkstroom_sink_insert_failures_total") == failures  # no retry of the batch
    assert stage.events.tables() == ["events"]  # written once


async def test_a_live_insert_that_failed_on_a_bug_of_ours_stops_the_sink(stage: Stage) -> None:
    stage.live.failures = [TypeError("a row of ours is wrong")]
    applied = batch()
    stage.writer.start_live(applied)
    with pytest.raises(SinkStopped, match=r"sink_write_failed.*a programming error"):
        await stage.writer.write(applied)
    assert stage.aggregates.written == []
    assert stage.writer.last_write is None


# -- transient failures and stops --------------------------------------------------------------


@pytest.mark.parametrize("failing", ["events", "aggregates", "publisher"])
async def test_a_transient_failure_is_retried_whole_and_the_decode_dead_letters_go_out_once(
    stage: Stage, failing: str
) -> None:
    """A retry writes the batch's rows again (they collapse on their keys); the dead letters of
    the messages that did not decode were published before, and are not published again."""
    dead = [(b"k", b'{"reason": "not an event"}')]
    applied = batch(messages=[message(0), message(1, path=REFUSE)], dead=dead)
    if failing == "publisher":  # publishing the refused rows' letters
        published = stage.publisher.publish
        calls = 0

        async def publish(topic: str, messages: list[tuple[bytes, bytes]]) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise refused_connection()
            await published(topic, messages)

        stage.publisher.publish = publish  # type: ignore[method-assign]
    else:
        getattr(stage, failing).failures = [refused_connection()]
    failures = sample("werkstroom_sink_insert_failures_total")
    await stage.writer.write(applied)
    assert sample("werkstroom_sink_insert_failures_total") == failures + 1
    assert stage.publisher.published[0] == (TOPICS.dead_letter, dead)
    assert [len(messages) for _topic, messages in stage.publisher.published] == [1, 1]  # + the refused row
    assert stage.aggregates.tables()[-3:] == [LIVE_TABLE, "sessions", "events_daily"]
    assert stage.writer.last_write is not None


async def test_nothing_counts_as_written_while_a_failure_is_retried(stage: Stage) -> None:
    seen: list[tuple[float | None, dict[int, int]]] = []
    stage.aggregates.failures = [refused_connection()]
    stage.aggregates.on_failure = lambda: seen.append((stage.writer.last_write, dict(stage.writer.newest)))
    before = time.time()
    await stage.writer.write(batch(newest={0: 1_700_000_000_500}))
    assert seen == [(None, {})]
    assert stage.writer.last_write is not None and stage.writer.last_write >= before
    assert stage.writer.newest == {0: 1_700_000_000_500}


async def test_a_stop_during_a_retry_abandons_the_batch_unwritten(stage: Stage) -> None:
    stage.events.failures = [refused_connection()] * 100
    stage.writer.refused_run = {"events": 2}
    asyncio.get_running_loop().call_later(0.02, stage.stopping.set)
    with pytest.raises(Abandoned):
        await stage.writer.write(batch())
    assert len(stage.events.failures) == 99  # one attempt: the stop ended the first backoff
    assert stage.aggregates.written == [] and stage.events.written == []
    assert stage.writer.last_write is None and stage.writer.newest == {}
    assert stage.writer.refused_run == {"events": 2}  # as the last batch written left it


# -- rows ClickHouse refuses --------------------------------------------------------------------------


async def test_events_clickhouse_refuses_are_dead_lettered_as_the_messages_they_were(stage: Stage) -> None:
    values = [message(0), message(1), message(2), message(3, path=f"/{REFUSE}", user_id="u3")]
    applied = batch(messages=values, partition=5, generation=2)
    refused = sample("werkstroom_sink_rows_refused_total", table="events")
    lettered = sample("werkstroom_sink_dead_lettered_total", reason=REFUSED)
    await stage.writer.write(applied)
    assert sorted(line for _table, rows in stage.events.written for line in rows) == applied.raw[:3]
    ((topic, [(key, letter)]),) = stage.publisher.published
    assert topic == TOPICS.dead_letter
    assert key == b"p1:a3"  # the visitor's key, as the message was produced under
    fields = orjson.loads(letter)
    assert (fields["source"], fields["reason"], fields["clickhouse_error"]) == (
        "sink",
        REFUSED,
        "VIOLATED_CONSTRAINT",
    )
    assert "Constraint `c` is violated" in fields["message"]
    assert fields["raw"].encode() == values[3]  # the message as produced: replayable
    assert (fields["topic"], fields["table"], fields["partition"], fields["offset"]) == (
        TOPICS.events,
        "events",
        5,
        3,  # the Kafka offset, not the position under generation 2
    )
    # The letters go out after every insert, before the batch counts as written.
    assert stage.order()[-1] == ("publisher", TOPICS.dead_letter)
    assert stage.aggregates.tables() == [LIVE_TABLE, "sessions", "events_daily"]
    assert sample("werkstroom_sink_rows_refused_total", table="events") == refused + 1
    assert sample("werkstroom_sink_dead_lettered_total", reason=REFUSED) == lettered + 1
    assert stage.writer.refused_run == {"events": 1}  # the batch ended on a refused row
    await stage.writer.write(batch(2))
    assert stage.writer.refused_run == {}  # ... and the next one on rows written


async def test_aggregate_rows_clickhouse_refuses_are_dead_lettered_and_every_other_table_written_once(
    stage: Stage,
) -> None:
    sessions = [["p1", "s0", 1], ["p2", REFUSE, 1], ["p1", "s2", 1]]
    await stage.writer.write(batch(aggregates=tables(sessions)))
    written = stage.aggregates.written
    assert [table for table, _rows in written].count(LIVE_TABLE) == 1  # in before the refusal
    assert sorted(row for table, rows in written if table == "sessions" for row in rows) == [
        ["p1", "s0", 1],
        ["p1", "s2", 1],
    ]
    assert written[-1][0] == "events_daily"  # the tables after the refused one, after it
    ((topic, [(key, letter)]),) = stage.publisher.published
    assert (topic, key) == (TOPICS.dead_letter, b"p2")  # the row's project
    fields = orjson.loads(letter)
    assert (fields["reason"], fields["table"], fields["topic"]) == (REFUSED, "sessions", TOPICS.events)
    assert orjson.loads(fields["raw"]) == {"project_id": "p2", "session_id": REFUSE, "version": 1}
    assert stage.writer.refused_run == {"sessions": 0}  # the table's last rows went in


async def test_a_batch_with_nothing_to_dead_letter_publishes_nothing(stage: Stage) -> None:
    stage.writer.clients.publisher = None  # would raise NotStarted if used
    await stage.writer.write(batch())
    assert stage.writer.last_write is not None


async def test_a_batch_with_no_rows_inserts_nothing(stage: Stage) -> None:
    """A replayed tail: its events are in `events` already (no raw lines), and it may change no
    aggregate."""
    stage.writer.clients.events = stage.writer.clients.aggregates = None  # would raise if used
    empty = batch(aggregates={table: (columns, []) for table, (columns, _rows) in tables().items()})
    empty.raw = []
    await stage.writer.write(empty)
    assert stage.steps == [] and stage.writer.last_write is not None


# -- bookkeeping -------------------------------------------------------------------------------------


async def test_newest_keeps_each_partitions_newest_event_time_written_and_last_write_the_time(
    stage: Stage,
) -> None:
    before = time.time()
    await stage.writer.write(batch(1, newest={0: 5_000, 1: 7_000}))
    first = stage.writer.last_write
    assert first is not None and before <= first <= time.time()
    assert sample("werkstroom_sink_last_write_timestamp_seconds") == first
    await stage.writer.write(batch(2, newest={0: 4_000, 2: 1_000}))  # late events on partition 0
    assert stage.writer.newest == {0: 5_000, 1: 7_000, 2: 1_000}
    assert stage.writer.last_write is not None and stage.writer.last_write >= first


# -- what reaches the committer ------------------------------------------------------------------


def sink_with_fakes(tmp_path: Any) -> tuple[EventsSink, Stage]:
    sink = EventsSink(Settings(data_dir=tmp_path), "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]
    return sink, new_stage(sink.writer, sink._stopping)


async def test_the_committer_is_told_of_a_batch_only_once_all_its_inserts_are_in(tmp_path: Any) -> None:
    sink, stage = sink_with_fakes(tmp_path)
    stage.aggregates.hold()
    applied = batch(3)
    sink._seq = 3
    writing = asyncio.create_task(sink._write_loop())
    try:
        await sink._queue.put(applied)
        await until(stage.aggregates.started.is_set)
        assert ("end", "events", "events") in stage.steps
        assert sink.committer.pending_offsets == {} and sink._written_seq == 0
        stage.aggregates.release()
        await asyncio.wait_for(sink._queue.join(), 1)
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
    assert sink.committer.pending_offsets == {P0: 2}
    assert sink.committer.pending_dirty == applied.dirty
    assert sink._written_seq == 3


async def test_a_batch_abandoned_at_a_stop_never_reaches_the_committer(tmp_path: Any) -> None:
    sink, stage = sink_with_fakes(tmp_path)
    stage.aggregates.failures = [refused_connection()] * 100
    loop = asyncio.get_running_loop()
    stage.aggregates.on_failure = lambda: loop.call_soon_threadsafe(sink.stop)
    writing = asyncio.create_task(sink._write_loop())
    await sink._queue.put(batch(1))
    await asyncio.wait_for(asyncio.gather(writing, return_exceptions=True), 1)
    assert isinstance(writing.exception(), Abandoned)
    assert sink.committer.pending_offsets == {} and sink.committer.pending_dirty == Dirty()
    assert sink._written_seq == 0
