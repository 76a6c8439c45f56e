"""Crash safety of the aggregator, with real processes.

kill -9 at random points while >= 50,000 events stream in, three times, then let it finish:
the tables must equal those of an uninterrupted run over the same topic, and each killed run
must have made progress (committed offsets) before its kill. The embedded ClickHouse is one
process per data directory, so each run owns its own directory and the tables are read
afterwards by a separate process (tests/e2e/runs.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.runs import (
    COMPARED,
    Commits,
    Stream,
    contract_events,
    define_funnel,
    dump,
    run_until_caught_up,
    start,
    tail,
)
from werkstroom.kafka import ensure_topics

pytestmark = pytest.mark.integration

KILLS = 3


async def test_kill_9_three_times_gives_the_same_tables_as_an_uninterrupted_run(
    infra, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    if infra.kind != "embedded":
        pytest.skip("compares embedded ClickHouse directories; the container run covers this with databases")
    suffix = os.urandom(4).hex()
    topic = f"crash.events.{suffix}"
    await ensure_topics(infra.bootstrap, [topic, f"crash.dlq.{suffix}"], 4)
    messages = contract_events(50_000)
    base_env = {
        **os.environ,
        "WERKSTROOM_KAFKA_BOOTSTRAP": infra.bootstrap,
        "WERKSTROOM_TOPIC_EVENTS": topic,
        "WERKSTROOM_TOPIC_DLQ": f"crash.dlq.{suffix}",
        "WERKSTROOM_DEMO": "false",
        "WERKSTROOM_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "WERKSTROOM_LOG_LEVEL": "WARNING",
    }
    crashed = {
        **base_env,
        "WERKSTROOM_SINK_GROUP": f"crashy-{suffix}",
        "WERKSTROOM_DATA_DIR": str(tmp_path / "a"),
        "WERKSTROOM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'a' / 'clickhouse'}",
    }
    steady = {
        **base_env,
        "WERKSTROOM_SINK_GROUP": f"steady-{suffix}",
        "WERKSTROOM_DATA_DIR": str(tmp_path / "b"),
        "WERKSTROOM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'b' / 'clickhouse'}",
    }

    for env in (crashed, steady):  # the same funnel in both, kept live from the first event
        define_funnel(env["WERKSTROOM_CLICKHOUSE_URL"], "p_crash")

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    # ~5,000 events/s, released part by part with the runs: a run starts with half a part of
    # new events to read (so it always has something to commit, whatever its start-up took), and
    # the rest of its part streams in from its first commit on, around its kill (the last run:
    # everything left, the tail after its kill).
    stream = Stream(producer, topic, messages)
    streaming = asyncio.create_task(stream.run())
    part = len(messages) // (KILLS + 1)
    rng = random.Random(5)
    progress = []
    try:
        async with Commits(crashed) as commits:
            for kill in range(KILLS):
                name = f"crashy-{kill}"
                before = await commits.read()
                assert before is not None
                proc = start(crashed, tmp_path, name)
                started = time.monotonic()
                stream.allowed = part * kill + part // 2
                try:
                    # Killed once it committed something (a run that cannot in PROGRESS_TIMEOUT
                    # fails), at a random moment shortly after, while events stream in.
                    await commits.beyond(before, proc, name)
                    first_commit = time.monotonic() - started
                    stream.allowed = part * (kill + 1) if kill < KILLS - 1 else len(messages)
                    await asyncio.sleep(rng.uniform(0.0, 1.5))
                    assert proc.poll() is None, tail(tmp_path, name)
                finally:
                    proc.kill()
                    proc.wait(10)
                after = await commits.read()
                assert after is not None
                assert all(after[p] >= before[p] for p in before), (before, after)  # commits never go back
                progress.append(sum(after.values()) - sum(before.values()))
                sys.stderr.write(
                    f"{name}: first commit after {first_commit:.1f} s, killed after "
                    f"{time.monotonic() - started:.1f} s, {progress[-1]} messages committed\n"
                )
            await streaming
    finally:
        streaming.cancel()
        await producer.stop()
    assert all(moved > 0 for moved in progress), progress  # each killed run made progress
    assert sum(stream.ends.values()) == len(messages)
    await run_until_caught_up(crashed, tmp_path, "crashy-final", stream.ends)
    await run_until_caught_up(steady, tmp_path, "steady", stream.ends)

    since_ms = int((time.time() - 50 * 60) * 1000)
    after_crashes, uninterrupted = (
        dump(crashed["WERKSTROOM_CLICKHOUSE_URL"], since_ms),
        dump(steady["WERKSTROOM_CLICKHOUSE_URL"], since_ms),
    )
    assert int(uninterrupted["events"][0][0]) == len(messages)
    assert after_crashes["events"] == uninterrupted["events"]
    assert len(uninterrupted["sessions"]) > 2000
    assert len(uninterrupted["persons"]) > 1000 and uninterrupted["daily"]
    assert uninterrupted["counts"] and uninterrupted["churn"] and uninterrupted["activity"]
    assert len(uninterrupted["sessions_daily"]) == len(uninterrupted["sessions"])  # each live session once
    for table in COMPARED:
        assert after_crashes[table] == uninterrupted[table], table
