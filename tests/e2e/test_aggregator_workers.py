"""Scale-out of the aggregator: a second worker in the same consumer group joins and leaves
while events stream in (two rebalances under traffic), over persons whose ids sit on
different partitions: the tables must equal those of a one-worker run over the same topic.

Two workers must share one ClickHouse. On a ClickHouse server (`infra.kind` "containers")
each worker is its own `werkstroom serve --target aggregator` process, one database per run.
The embedded ClickHouse opens a data directory in one process only, so there the two workers
run in one process (TWO_WORKERS): the first is `serve --target aggregator` itself, the second
a second EventsSink on its loop, with its own Kafka consumer, producer, ClickHouse clients and
state; they share the engine and the process (and so `werkstroom.clickhouse.versions.next_version`'s clock).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.runs import (
    COMPARED,
    PARTITIONS,
    PROGRESS_TIMEOUT,
    Commits,
    Stream,
    define_funnel,
    dump,
    run_until_caught_up,
    start,
    tail,
    to_messages,
    until_committed,
)
from werkstroom.contract import message_key
from werkstroom.demo import AGENTS, simulate
from werkstroom.kafka import ensure_topics, partition_for

pytestmark = pytest.mark.integration

PROJECT = "p_workers"
SERVER = {"library": {"name": "analytics-python", "version": "2.3.3"}}  # a server-side SDK call

#: Both workers in one process, for the embedded ClickHouse: worker 1 is `serve --target
#: aggregator` as the CLI runs it; SIGUSR1 starts worker 2 (its log lines carry
#: "worker": "second"), SIGUSR2 stops it as a stop stops a sink, SIGTERM stops the process.
TWO_WORKERS = r"""
import asyncio, signal
import structlog
from services.aggregator.sink import EventsSink
from werkstroom.logging import configure_logging
from werkstroom.serve import clickhouse_factory, loop_factory, serve
from werkstroom.settings import get_settings

settings = get_settings()
configure_logging(settings.log_level, settings.log_format)


async def second(leave: asyncio.Event) -> None:
    structlog.contextvars.bind_contextvars(worker="second")
    sink = EventsSink(settings, settings.kafka_bootstrap, clickhouse_factory(settings))
    running = asyncio.create_task(sink.run())
    await asyncio.wait([running, asyncio.create_task(leave.wait())], return_when=asyncio.FIRST_COMPLETED)
    sink.stop()
    await running
    structlog.get_logger("two_workers").info("second_worker_stopped")


async def main() -> None:
    loop = asyncio.get_running_loop()
    leave = asyncio.Event()
    seconds = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: seconds.append(asyncio.create_task(second(leave))))
    loop.add_signal_handler(signal.SIGUSR2, leave.set)
    await serve(settings, "aggregator")
    leave.set()
    for task in seconds:
        await task  # a failure of the second worker fails the process


with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main())
"""


def _at(call: dict[str, Any], seconds: int) -> str:
    moment = datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _partition(distinct_id: str) -> int:
    """The partition of the events keyed by this id: user ids only on server-side calls."""
    if distinct_id.startswith("user-"):
        return partition_for(message_key(PROJECT, "", distinct_id), PARTITIONS)
    return partition_for(message_key(PROJECT, distinct_id, ""), PARTITIONS)


def traffic(visitors: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """Simulated visitors, and for each one identified as a user id on another partition than
    its anonymous id: that user's server-side "Plan Selected" and "Order Completed" (keyed by
    the user id), and for every third a second device (its own anonymous id and partition)
    that views /pricing and is identified as the same user. The funnel /pricing -> Plan
    Selected -> Order Completed of such a person spans two or three partitions. Returns the
    messages and how many persons span partitions."""
    sim = simulate({PROJECT: "wk"}, visitors=visitors, seed=41, bots=0)
    calls: list[dict[str, Any]] = []
    spanning = 0
    for call in sim.calls["wk"]:
        calls.append(call)
        if call["type"] != "identify":
            continue
        anonymous_id, user_id, mid = call["anonymousId"], call["userId"], call["messageId"]
        if _partition(anonymous_id) == _partition(user_id):
            continue
        spanning += 1
        if spanning % 3 == 0:
            phone = f"{anonymous_id}-phone"
            ua = {"userAgent": AGENTS["mobile"]}
            calls.append(
                {
                    "type": "page",
                    "anonymousId": phone,
                    "messageId": f"{mid}-phone-page",
                    "timestamp": _at(call, 30),
                    "properties": {"path": "/pricing", "url": "https://shop.example/pricing"},
                    "context": ua,
                }
            )
            calls.append(
                {
                    "type": "identify",
                    "anonymousId": phone,
                    "userId": user_id,
                    "messageId": f"{mid}-phone-identify",
                    "timestamp": _at(call, 40),
                    "context": ua,
                }
            )
        for event, after in (("Plan Selected", 50), ("Order Completed", 90)):
            calls.append(
                {
                    "type": "track",
                    "userId": user_id,
                    "event": event,
                    "messageId": f"{mid}-{event}",
                    "timestamp": _at(call, after),
                    "properties": {"plan": "premium"},
                    "context": SERVER,
                }
            )
    return to_messages(PROJECT, calls), spanning


def assignments(log: Path, worker: str | None) -> list[list[int]]:
    """The partitions assigned to a worker at each rebalance, from its log lines (`worker`:
    the "worker" field its lines carry, None for none)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"sink_partitions_assigned"' not in line:
            continue
        try:
            entry = json.loads(line[line.index("{") :])
        except (ValueError, json.JSONDecodeError):
            continue
        if entry.get("worker") == worker:
            found.append(entry["partitions"])
    return found


async def until(check: Any, proc: subprocess.Popen[bytes], what: str, tmp: Path, name: str) -> Any:
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while not (result := check()):
        assert proc.poll() is None, tail(tmp, name)
        assert time.monotonic() < deadline, f"{what}: not within {PROGRESS_TIMEOUT:.0f} s"
        await asyncio.sleep(0.1)
    return result


async def test_a_second_worker_joining_and_leaving_mid_stream_changes_no_table(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    embedded = infra.kind == "embedded"
    suffix = os.urandom(4).hex()
    topic = f"workers.events.{suffix}"
    await ensure_topics(infra.bootstrap, [topic, f"workers.dlq.{suffix}"], PARTITIONS)
    messages, spanning = traffic(visitors=1700)
    assert len(messages) > 25_000 and spanning > 300, (len(messages), spanning)
    base_env = {
        **os.environ,
        "WERKSTROOM_KAFKA_BOOTSTRAP": infra.bootstrap,
        "WERKSTROOM_TOPIC_EVENTS": topic,
        "WERKSTROOM_TOPIC_DLQ": f"workers.dlq.{suffix}",
        "WERKSTROOM_DEMO": "false",
        "WERKSTROOM_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "WERKSTROOM_LOG_LEVEL": "INFO",  # the rebalances are read from the workers' logs
    }
    runs = {}
    for run in ("two", "one"):
        runs[run] = {
            **base_env,
            "WERKSTROOM_SINK_GROUP": f"{run}-{suffix}",
            "WERKSTROOM_DATA_DIR": str(tmp_path / run),
        }
        if embedded:
            runs[run]["WERKSTROOM_CLICKHOUSE_URL"] = f"chdb://{tmp_path / run / 'clickhouse'}"
        else:
            runs[run]["WERKSTROOM_CLICKHOUSE_URL"] = infra.clickhouse_url
            runs[run]["WERKSTROOM_CLICKHOUSE_DATABASE"] = f"workers_{run}_{suffix}"
    two, one = runs["two"], runs["one"]
    for env in (two, one):  # the same funnel in both, kept live from the first event
        define_funnel(
            env["WERKSTROOM_CLICKHOUSE_URL"], PROJECT, env.get("WERKSTROOM_CLICKHOUSE_DATABASE", "werkstroom")
        )

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    # ~4,000 events/s for a part at each step, then a trickle until the step is reached: the
    # stream never stops, so both rebalances happen with events arriving, however long a
    # worker takes to start or to rebalance on this machine.
    stream = Stream(producer, topic, messages, rate=4000, trickle=200)
    part = len(messages) // 5
    streaming = asyncio.create_task(stream.run())
    first_log = tmp_path / "first.log"
    second_name = "first" if embedded else "second"
    second_log, second_tag = (first_log, "second") if embedded else (tmp_path / "second.log", None)
    harness = [sys.executable, "-c", TWO_WORKERS] if embedded else None
    first = start(two, tmp_path, "first", harness)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with Commits(two) as commits:
            # 1. The first worker alone, until it committed something.
            stream.allowed = part
            await commits.beyond({p: 0 for p in range(PARTITIONS)}, first, "the first worker")

            # 2. A second worker joins: the partitions are split between the two.
            if embedded:
                first.send_signal(signal.SIGUSR1)
            else:
                second = start(two, tmp_path, "second")
            joined = await until(
                lambda: (a := assignments(second_log, second_tag)) and a[-1],
                second or first,
                "the second worker got no partitions",
                tmp_path,
                second_name,
            )
            theirs = set(joined)
            await until(
                lambda: (a := assignments(first_log, None)) and not set(a[-1]) & theirs and a[-1],
                first,
                "the first worker kept the second's partitions",
                tmp_path,
                "first",
            )
            stream.allowed = stream.sent + part
            # 3. The second worker makes progress on its own partitions.
            since = await commits.read()
            assert since is not None
            await commits.beyond(since, second or first, "the second worker", partitions=theirs)
            stream.allowed = stream.sent + part

            # 4. It leaves, mid-stream: the first worker takes every partition back.
            rebalances = len(assignments(first_log, None))
            if embedded:
                first.send_signal(signal.SIGUSR2)
            else:
                assert second is not None
                second.send_signal(signal.SIGTERM)
            await until(
                lambda: (
                    (a := assignments(first_log, None)[rebalances:])
                    and sorted(a[-1]) == list(range(PARTITIONS))
                ),
                first,
                "the first worker did not take the partitions back",
                tmp_path,
                "first",
            )
            if second is not None:
                assert second.wait(30) == 0, tail(tmp_path, "second")
            else:
                assert "second_worker_stopped" in first_log.read_text()
            sys.stderr.write(
                f"workers: second joined with {sorted(theirs)}, left at {stream.sent} of {len(messages)} sent\n"
            )
            stream.allowed = len(messages)
            await streaming
            await until_committed(commits, stream.ends, first, tmp_path, "first")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, tail(tmp_path, "first")
    finally:
        streaming.cancel()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await producer.stop()
    assert sum(stream.ends.values()) == len(messages)
    await run_until_caught_up(one, tmp_path, "one", stream.ends)

    since_ms = int((time.time() - 50 * 60) * 1000)
    scaled, single = (
        dump(
            env["WERKSTROOM_CLICKHOUSE_URL"],
            since_ms,
            env.get("WERKSTROOM_CLICKHOUSE_DATABASE", "werkstroom"),
        )
        for env in (two, one)
    )
    assert int(single["events"][0][0]) == len(messages)
    assert scaled["events"] == single["events"]
    # The persons span partitions: their ids' events were applied by different workers. (An
    # identified person's id is its user id; its anonymous ids map to it.)
    partitions_of: dict[str, set[int]] = {}
    for _project, distinct_id, person_id, _version in single["identities"]:
        partitions_of.setdefault(person_id, {_partition(person_id)}).add(_partition(distinct_id))
    assert sum(len(found) > 1 for found in partitions_of.values()) >= spanning
    assert any(found & theirs and found - theirs for found in partitions_of.values())
    assert single["counts"] and single["daily"] and len(single["persons"]) > 1000
    assert len(single["first_by"]) > len(single["persons"])  # a row per person and filter value
    for table in COMPARED:
        assert scaled[table] == single[table], table
