"""The events sink against the real broker and ClickHouse: batching, de-duplication of
re-delivered messages, dead letters, and offsets committed only after the insert."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.aggregator.sink import EventsSink, SinkStopped
from tests.integration.stack import Stack
from werkstroom.kafka import make_consumer

pytestmark = pytest.mark.integration


def event(project_id: str, i: int, **extra: object) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "event_id": f"e-{i}",
            "project_id": project_id,
            "type": "track",
            "event": "Tick",
            "anonymous_id": f"a-{i % 5}",
            "user_id": "",
            "previous_id": "",
            "session_id": "",
            "timestamp": "2026-11-20T10:00:00.000Z",
            "sent_at": None,
            "received_at": "2026-11-20T10:00:01.000Z",
            "url": "",
            "path": "",
            "title": "",
            "referrer": "",
            "device_type": "desktop",
            "browser": "Firefox",
            "browser_version": "120",
            "os": "Linux",
            "os_version": "",
            "properties": {"i": i},
            "traits": {},
            "library": "test",
            **extra,
        }
    )


async def produce(stack: Stack, values: list[bytes], key: bytes = b"k") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(stack.topics.events, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def committed(stack: Stack) -> int:
    """Sum of the sink group's committed offsets on the events topic (OffsetFetch, no join)."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=stack.settings.sink_group, enable_auto_commit=False
    )
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(stack.topics.events) or set()
        if not partitions:
            await reader._client.force_metadata_update()
            partitions = reader.partitions_for_topic(stack.topics.events) or set()
        total = 0
        for partition in partitions:
            total += await reader.committed(TopicPartition(stack.topics.events, partition)) or 0
        return total
    finally:
        await reader.stop()


async def committed_is(stack: Stack, expected: int) -> bool:
    return await committed(stack) == expected


@pytest.fixture
async def quiet(infra, names, tmp_path):  # type: ignore[no-untyped-def]
    """A stack with no ingest and no sink running: the test drives the sink itself."""
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, ingest=False, sink=False
    ) as s:
        yield s


async def test_redelivered_messages_do_not_duplicate_rows(quiet: Stack) -> None:
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, i) for i in range(500)])
    quiet.start_sink()
    assert await quiet.wait_count(500) == 500
    await quiet.stop_sink()
    # The same events again (a producer retry), and a second group reading from the start
    # (a sink that crashed before committing): rows stay unique.
    await produce(quiet, [event(pid, i) for i in range(500)])
    quiet.start_sink()
    await quiet.until(lambda: quiet.scalar("SELECT count() FROM events") >= 1000, timeout=20)
    await quiet.stop_sink()
    # A new group starts where the positions recorded for the topic say (sink_partitions), not
    # at 0: with those records gone too, as before they existed, it reads the topic again.
    quiet.settings.__dict__["sink_group"] = quiet.settings.sink_group + "-replay"
    quiet.client.command("TRUNCATE TABLE sink_partitions")
    quiet.start_sink()
    await quiet.until(lambda: quiet.scalar("SELECT count() FROM events") >= 1500, timeout=20)
    assert quiet.scalar("SELECT count() FROM events FINAL") == 500
    assert quiet.scalar("SELECT uniqExact(event_id) FROM events") == 500
    assert quiet.rows("SELECT min(kafka_offset), max(kafka_offset) FROM events FINAL")[0][1] >= 0


async def test_a_backlog_is_cut_into_batches_of_at_most_sink_batch_rows(quiet: Stack) -> None:
    """A backlog is written in full batches, none larger than `sink_batch_rows`. (A batch once
    took the records fetched after it was cut, before its task first ran: 201 rows, cut twice.)
    One insert stamps its rows with one `inserted_at`, so the rows per stamp are the batches."""
    pid = quiet.project.project_id
    quiet.settings.__dict__["sink_batch_rows"] = 200
    await produce(quiet, [event(pid, i) for i in range(1000)])
    quiet.start_sink()
    assert await quiet.wait_count(1000) == 1000
    sizes = [n for (n,) in quiet.rows("SELECT count() FROM events GROUP BY inserted_at ORDER BY inserted_at")]
    assert sum(sizes) == 1000
    assert max(sizes) <= 200, sizes
    assert len(sizes) <= 6, sizes  # cut when full, not every flush interval


async def test_bad_messages_are_dead_lettered_and_good_ones_written(quiet: Stack) -> None:
    pid = quiet.project.project_id
    values = [
        event(pid, 1),
        b"\xff not json",
        orjson.dumps([1]),
        event(pid, 2, schema_version=2),
        event(pid, 3, type=5),
        event(pid, 4, timestamp="noon"),
        event(pid, 5),
    ]
    await produce(quiet, values)
    quiet.start_sink()
    assert await quiet.wait_count(2) == 2
    dead = await quiet.read_topic(quiet.topics.dead_letter, 5)
    reasons = sorted(orjson.loads(m.value)["reason"] for m in dead)
    assert reasons == [
        "invalid_field",
        "invalid_json",
        "invalid_time",
        "not_an_object",
        "unsupported_version",
    ]
    record = orjson.loads(dead[0].value)
    assert record["source"] == "sink" and record["topic"] == quiet.topics.events
    assert record["offset"] == 1  # the first bad message: where it was read, from the lean record
    partitions = {orjson.loads(m.value)["partition"] for m in dead}
    assert len(partitions) == 1  # one key, one partition
    await quiet.until(lambda: committed_is(quiet, 7), timeout=10)


async def read_all(stack: Stack, group: str, count: int, *, lean: bool) -> list[tuple[int, object]]:
    consumer = make_consumer(stack.bootstrap, [stack.topics.events], group, lean_records=lean)
    await consumer.start()
    seen: list[tuple[int, object]] = []
    try:
        while len(seen) < count:
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                seen.extend((tp.partition, m) for m in messages)
    finally:
        await consumer.stop()
    return seen


async def test_a_lean_consumer_reads_what_a_full_one_does_and_leaves_other_consumers_alone(
    quiet: Stack,
) -> None:
    """The sink's consumer gets aiokafka's lean records (make_consumer(lean_records=True)):
    the same offsets, keys and values; a consumer without it, in the same process, still
    gets full ConsumerRecords."""
    pid = quiet.project.project_id
    for key in (b"k1", b"k2", b"k3"):
        await produce(quiet, [event(pid, i) for i in range(4)], key=key)
    lean = await read_all(quiet, f"{quiet.settings.sink_group}-lean", 12, lean=True)
    full = await read_all(quiet, f"{quiet.settings.sink_group}-full", 12, lean=False)

    def fields(seen: list[tuple[int, object]]) -> list[tuple[int, int, bytes, bytes]]:
        return sorted((p, m.offset, m.key, m.value) for p, m in seen)  # type: ignore[attr-defined]

    assert fields(lean) == fields(full) and len(full) == 12
    assert not hasattr(lean[0][1], "topic")
    assert all(m.topic == quiet.topics.events and m.partition == p for p, m in full)  # type: ignore[attr-defined]


async def test_too_many_bad_messages_in_a_row_stop_the_sink(infra, names, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        ingest=False,
        sink=False,
        sink_max_consecutive_bad=20,
    ) as stack:
        await produce(stack, [b"garbage"] * 25)
        stack.start_sink()
        with pytest.raises(SinkStopped, match="20 messages in a row"):
            await asyncio.wait_for(stack._tasks[-1], 20)
        stack.sink = None


async def test_offsets_are_committed_only_after_the_insert(quiet: Stack) -> None:
    """While ClickHouse refuses the insert (the table is missing), nothing is committed and the
    sink keeps retrying; once the table exists, the rows land and the offsets follow."""
    pid = quiet.project.project_id
    await produce(quiet, [event(pid, i) for i in range(50)])
    sink: EventsSink = quiet.start_sink(table="events_later")
    await quiet.until(lambda: sink.consumer is not None and sink.consumer.assignment(), timeout=20)
    await asyncio.sleep(1.5)  # several flush attempts fail
    from werkstroom.metrics import SINK_INSERT_FAILURES

    assert SINK_INSERT_FAILURES._value.get() > 0
    assert await committed(quiet) == 0
    quiet.client.command("CREATE TABLE events_later AS events")
    await quiet.until(lambda: quiet.scalar("SELECT count() FROM events_later") == 50, timeout=20)
    await quiet.until(lambda: committed(quiet), timeout=10)
    assert await quiet.until(lambda: committed(quiet), timeout=10) == 50
    assert sink.consumer is not None
    positions = [await sink.consumer.committed(tp) or 0 for tp in sink.consumer.assignment()]
    assert sum(positions) == 50


async def test_string_array_parameters_reach_clickhouse_unchanged(quiet: Stack) -> None:
    """The aggregator's fast Array(String) parameter: ClickHouse reads back exactly the ids
    (escaped all at once, and one by one when an id holds the separator)."""
    from werkstroom.clickhouse.params import StringArray

    ids = ["", "plain", "it's", "back\\slash", "tab\there", "new\nline", "`tick`", "ünï ✓", "\\'", "a'b\\c"]
    for values in (ids, [*ids, "nul\x00"]):
        got = quiet.client.query("SELECT {v:Array(String)}", parameters={"v": StringArray(values)}).first_row[
            0
        ]
        assert got == values
        matched = quiet.client.query(
            "SELECT count() FROM (SELECT arrayJoin({all:Array(String)}) AS x) WHERE x IN {v:Array(String)}",
            parameters={"all": [*values, "other"], "v": StringArray(values)},
        ).first_row[0]
        assert matched == len(values)


async def test_a_failed_live_view_insert_is_written_again_before_the_commit(quiet: Stack) -> None:
    """The live view's rows go in on their own, ahead of the batch's other writes. While that
    insert fails (the table is away), the batch is not committed; the writer's retry inserts
    the rows itself once the table is back, and only then are the offsets committed."""
    pid = quiet.project.project_id
    quiet.client.command("RENAME TABLE online_visitors TO online_visitors_away")
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")  # the live view keeps an hour (TTL)
    await produce(quiet, [event(pid, i, type="page", event="$pageview", timestamp=now) for i in range(20)])
    sink: EventsSink = quiet.start_sink()
    await quiet.until(lambda: quiet.scalar("SELECT count() FROM events") == 20, timeout=20)
    await asyncio.sleep(1.0)  # several attempts fail on the live view
    assert await committed(quiet) == 0
    quiet.client.command("RENAME TABLE online_visitors_away TO online_visitors")
    await quiet.until(lambda: committed_is(quiet, 20), timeout=20)
    sql = "SELECT anonymous_id FROM online_visitors FINAL WHERE project_id = {p:String} ORDER BY 1"
    live = quiet.rows(sql, p=pid)
    assert live == [(f"a-{i}",) for i in range(5)]
    assert sink.consumer is not None


async def test_a_days_stored_counts_that_cannot_be_read_are_read_again_and_no_row_is_lost(
    quiet: Stack,
) -> None:
    """A day first met in a batch adds its stored events_daily row after the batch is applied.
    While that read fails (the table is away), it is retried on its own: applying the batch
    again would skip its events as applied already and write none of their sessions."""
    from werkstroom.metrics import SINK_INSERT_FAILURES

    pid = quiet.project.project_id
    quiet.client.command("RENAME TABLE events_daily TO events_daily_away")
    await produce(quiet, [event(pid, i, type="page", event="$pageview") for i in range(20)])
    failures = SINK_INSERT_FAILURES._value.get()
    sink: EventsSink = quiet.start_sink()
    await quiet.until(lambda: SINK_INSERT_FAILURES._value.get() >= failures + 3, timeout=20)
    assert quiet.scalar("SELECT count() FROM sessions") == 0
    quiet.client.command("RENAME TABLE events_daily_away TO events_daily")
    await quiet.until(lambda: committed_is(quiet, 20), timeout=20)
    assert quiet.scalar("SELECT count() FROM sessions FINAL WHERE project_id = {p:String}", p=pid) == 5
    counted = "SELECT sum(page_views), sum(events) FROM events_daily FINAL WHERE project_id = {p:String}"
    assert quiet.rows(counted, p=pid) == [(20, 20)]
    assert sink.consumer is not None
