"""The aggregator as Faust runs it: `faust -A services.aggregator.faust_app worker` against the
embedded broker and its own ClickHouse, over a topic streamed in at ~5,000 events/s; Faust's
web server answers /ready; SIGTERM stops it cleanly; its tables equal those of a
`werkstroom serve --target aggregator` run over the same topic. Each run owns its ClickHouse
directory, read afterwards by another process (tests/e2e/runs.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.error
import urllib.request
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
    until_committed,
)
from werkstroom.embedded import free_port
from werkstroom.kafka import ensure_topics

pytestmark = pytest.mark.integration

WORKER = [sys.executable, "-m", "faust", "-A", "services.aggregator.faust_app", "worker", "-l", "info"]


def ready(port: int) -> int | None:
    """/ready's status on the worker's web server, None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


async def test_a_faust_worker_gives_the_tables_of_serve_target_aggregator(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if infra.kind != "embedded":
        pytest.skip("compares embedded ClickHouse directories")
    suffix = os.urandom(4).hex()
    topic = f"faust.events.{suffix}"
    await ensure_topics(infra.bootstrap, [topic, f"faust.dlq.{suffix}"], 4)
    messages = contract_events(20_000, project_id="p_faust")
    base_env = {
        **os.environ,
        "WERKSTROOM_KAFKA_BOOTSTRAP": infra.bootstrap,
        "WERKSTROOM_TOPIC_EVENTS": topic,
        "WERKSTROOM_TOPIC_DLQ": f"faust.dlq.{suffix}",
        "WERKSTROOM_DEMO": "false",
        "WERKSTROOM_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "WERKSTROOM_LOG_LEVEL": "WARNING",
    }
    port = free_port()
    worker = {
        **base_env,
        "WERKSTROOM_SINK_GROUP": f"faust-{suffix}",
        "WERKSTROOM_DATA_DIR": str(tmp_path / "a"),
        "WERKSTROOM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'a' / 'clickhouse'}",
        "WERKSTROOM_AGGREGATOR_PORT": str(port),
        "WERKSTROOM_LOG_LEVEL": "INFO",  # its stop is read from the log
    }
    served = {
        **base_env,
        "WERKSTROOM_SINK_GROUP": f"served-{suffix}",
        "WERKSTROOM_DATA_DIR": str(tmp_path / "b"),
        "WERKSTROOM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'b' / 'clickhouse'}",
    }
    for env in (worker, served):  # the same funnel in both, kept live from the first event
        define_funnel(env["WERKSTROOM_CLICKHOUSE_URL"], "p_faust")

    proc = start(worker, tmp_path, "faust", argv=WORKER)
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        deadline = time.monotonic() + 90
        while ready(port) != 200:  # Faust's web server serves the aggregator's /ready
            assert proc.poll() is None, tail(tmp_path, "faust")
            assert time.monotonic() < deadline, f"/ready: {ready(port)}; {tail(tmp_path, 'faust')}"
            await asyncio.sleep(0.2)
        stream = Stream(producer, topic, messages)
        stream.allowed = len(messages)
        await stream.run()  # streamed in while the worker consumes
        assert sum(stream.ends.values()) == len(messages)
        async with Commits(worker) as commits:
            await until_committed(commits, stream.ends, proc, tmp_path, "faust")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    finally:
        await producer.stop()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, tail(tmp_path, "faust")
    log = (tmp_path / "faust.log").read_text(errors="replace")
    assert "sink_stopped" in log and "Traceback" not in log, log[-3000:]

    await run_until_caught_up(served, tmp_path, "served", stream.ends)
    since_ms = int((time.time() - 50 * 60) * 1000)
    by_faust = dump(worker["WERKSTROOM_CLICKHOUSE_URL"], since_ms)
    by_serve = dump(served["WERKSTROOM_CLICKHOUSE_URL"], since_ms)
    assert int(by_serve["events"][0][0]) == len(messages)
    assert by_faust["events"] == by_serve["events"]
    assert len(by_serve["sessions"]) > 500 and by_serve["persons"] and by_serve["counts"]
    for table in COMPARED:
        assert by_faust[table] == by_serve[table], table
