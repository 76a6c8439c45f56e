"""Crash safety and scale-out of the aggregator, with real processes.

kill -9 at random points while >= 50,000 events stream in, three times, then let it finish:
the tables must equal those of an uninterrupted run over the same topic. The embedded
ClickHouse is one process per data directory, so each run owns its own directory and the
tables are read afterwards by a separate process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.ingest.segment import Rejected, normalize
from werkstroom.contract import encode_event, message_key
from werkstroom.demo import simulate
from werkstroom.kafka import ensure_topics

pytestmark = pytest.mark.integration

DUMP = r"""
import json, sys
from werkstroom.clickhouse import connect
client = connect(sys.argv[1], "werkstroom")
queries = {
    "events": "SELECT count(), uniqExact(event_id), sum(kafka_offset) FROM events FINAL",
    "sessions": "SELECT * EXCEPT (updated_at) FROM sessions FINAL ORDER BY project_id, anonymous_id, session_id",
    "identities": "SELECT project_id, distinct_id, person_id, version FROM person_distinct_ids FINAL ORDER BY 1, 2",
    "by_person": "SELECT * FROM person_distinct_ids_by_person FINAL ORDER BY 1, 2, 3",
    "persons": "SELECT * EXCEPT (version, updated_at) FROM persons FINAL ORDER BY project_id, person_id",
    "traits": "SELECT * EXCEPT (updated_at) FROM person_traits FINAL ORDER BY project_id, distinct_id, key",
    "daily": "SELECT * EXCEPT (version, updated_at) FROM daily_stats FINAL ORDER BY project_id, day",
    "events_daily": "SELECT * EXCEPT (updated_at) FROM events_daily FINAL ORDER BY 1, 2, 3",
    "sessions_daily": "SELECT * FROM sessions_daily FINAL WHERE is_deleted = 0 ORDER BY project_id, day, anonymous_id, session_id",
    "activity": "SELECT project_id, day, person_id FROM person_activity FINAL WHERE is_deleted = 0 ORDER BY 1, 2, 3",
    "first_day": "SELECT project_id, day, person_id FROM persons_first_day FINAL WHERE is_deleted = 0 ORDER BY 1, 2, 3",
    "churn": "SELECT project_id, day, base, churned FROM churn_daily FINAL ORDER BY 1, 2",
    # one funnel in each database, under its own random id: compared without it
    "progress": "SELECT day, person_id, level FROM funnel_progress FINAL WHERE is_deleted = 0 ORDER BY 1, 2",
    "levels": "SELECT level, last_day, person_id FROM funnel_levels FINAL WHERE is_deleted = 0 ORDER BY 1, 2, 3",
    "counts": "SELECT level, day, persons FROM funnel_counts FINAL WHERE persons > 0 ORDER BY 1, 2",
    "online": "SELECT * EXCEPT (updated_at) FROM online_visitors FINAL "
              "WHERE last_event_at > fromUnixTimestamp64Milli({since:Int64}) ORDER BY project_id, anonymous_id",
}
params = {"since": int(sys.argv[2])}  # one cutoff for both dumps: rows live an hour (TTL)
out = {
    name: [[str(v) for v in row] for row in client.query(sql, parameters=params).result_rows]
    for name, sql in queries.items()
}
sys.stdout.write(json.dumps(out))
"""


def contract_events(count: int) -> list[tuple[bytes, bytes]]:
    sim = simulate({"p_crash": "wk"}, visitors=max(1, count // 15), seed=23, bots=0)
    received = datetime.now(UTC)
    messages = []
    for call in sim.calls["wk"]:
        try:
            event, _ = normalize(call, call_type=None, project_id="p_crash", received_at=received)
        except Rejected as exc:  # the generator only makes valid calls
            raise AssertionError(exc) from exc
        messages.append(
            (message_key("p_crash", event["anonymous_id"], event["user_id"]), encode_event(event))
        )
    assert len(messages) >= count, len(messages)
    return messages


def start(env: dict[str, str], tmp: Path, name: str) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{name}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "werkstroom", "serve", "--target", "aggregator"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )


async def lag(bootstrap: str, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        ends = await consumer.end_offsets(parts)
        behind = 0
        for tp in parts:
            behind += max(0, ends[tp] - (await consumer.committed(tp) or 0))
        return behind
    finally:
        await consumer.stop()


async def lag_or_unknown(env: dict[str, str]) -> int:
    """The group's lag; a broker hiccup (the group is rebalancing) counts as "not there yet"."""
    try:
        return await lag(
            env["WERKSTROOM_KAFKA_BOOTSTRAP"], env["WERKSTROOM_TOPIC_EVENTS"], env["WERKSTROOM_SINK_GROUP"]
        )
    except KafkaError:
        return 1


async def run_until_caught_up(env: dict[str, str], tmp: Path, name: str, total: int) -> None:
    runtime = Path(env["WERKSTROOM_DATA_DIR"]) / "runtime.json"
    runtime.unlink(missing_ok=True)  # a killed run leaves its own behind
    proc = start(env, tmp, name)
    try:
        deadline = time.monotonic() + 180
        while not runtime.exists():  # written once every component has started
            assert proc.poll() is None, (tmp / f"{name}.log").read_text()[-3000:]
            await asyncio.sleep(0.1)
        while (
            await lag(
                env["WERKSTROOM_KAFKA_BOOTSTRAP"],
                env["WERKSTROOM_TOPIC_EVENTS"],
                env["WERKSTROOM_SINK_GROUP"],
            )
            > 0
        ):
            assert proc.poll() is None, (tmp / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the aggregator did not catch up"
            await asyncio.sleep(0.5)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (tmp / f"{name}.log").read_text()[-3000:]


FUNNEL = r"""
import sys
from werkstroom.clickhouse import connect
from werkstroom.clickhouse.migrate import migrate
from werkstroom.funnels import create_funnel
client = connect(sys.argv[1], "werkstroom", create_database=True)
migrate(client)
steps = [{"event": "$page", "path": "/pricing"}, {"event": "Plan Selected"}, {"event": "Order Completed"}]
create_funnel(client, "p_crash", "Pricing to order", steps, 7200)
"""


def define_funnel(url: str) -> None:
    subprocess.run([sys.executable, "-c", FUNNEL, url], check=True, timeout=120)


def dump(url: str, since_ms: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", DUMP, url, str(since_ms)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


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
        define_funnel(env["WERKSTROOM_CLICKHOUSE_URL"])

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all", linger_ms=5)
    await producer.start()

    async def stream() -> None:  # ~5,000 events/s, so the kills land mid-stream
        for i in range(0, len(messages), 500):
            for key, value in messages[i : i + 500]:
                await producer.send(topic, value, key=key)
            await asyncio.sleep(0.1)
        await producer.flush()

    streaming = asyncio.create_task(stream())
    rng = random.Random(5)
    for kill in range(3):
        proc = start(crashed, tmp_path, f"crashy-{kill}")
        await asyncio.sleep(rng.uniform(3.5, 6.0))
        assert proc.poll() is None, (tmp_path / f"crashy-{kill}.log").read_text()[-3000:]
        proc.kill()
        proc.wait(10)
    await streaming
    await producer.stop()
    await run_until_caught_up(crashed, tmp_path, "crashy-final", len(messages))
    await run_until_caught_up(steady, tmp_path, "steady", len(messages))

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
    for table in (
        *("sessions", "sessions_daily", "identities", "online", "persons", "traits", "daily"),
        *("activity", "churn", "progress", "levels", "counts"),
    ):
        assert after_crashes[table] == uninterrupted[table], table
