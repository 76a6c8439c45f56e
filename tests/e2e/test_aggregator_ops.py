"""`werkstroom serve --target aggregator` serves /health, /ready and /metrics on its own port
(WERKSTROOM_AGGREGATOR_PORT): alive at once, ready once its sink consumes, the sink's lag per
partition and its rows written in the metrics, and a SIGTERM still ends it with 0."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.runs import PARTITIONS, contract_events, start, tail, target_env
from werkstroom.embedded import free_port

pytestmark = pytest.mark.integration

EVENTS = 300


def _get(url: str) -> tuple[int, str]:
    """The status and body of a GET (an HTTP error's too); (0, reason) while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError) as exc:
        return 0, str(exc)


def _metrics(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each sample of /metrics: name -> {sorted labels: value}."""
    status, body = _get(url)
    assert status == 200, body
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_the_aggregator_serves_health_ready_and_metrics(infra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env, suffix = target_env(
        infra,
        "ops",
        tmp_path / "data",
        WERKSTROOM_DEMO="false",
        WERKSTROOM_KAFKA_SESSION_TIMEOUT_MS="3000",
        WERKSTROOM_AGGREGATOR_PORT=str(port),
    )
    topic = env["WERKSTROOM_TOPIC_EVENTS"]
    base = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    proc = start(env, tmp_path, "aggregator")
    try:

        def until(what: str, check: object, timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            while not check():  # type: ignore[operator]
                assert proc.poll() is None, f"exited {proc.returncode}: {tail(tmp_path, 'aggregator')}"
                assert time.monotonic() < deadline, f"{what}: {tail(tmp_path, 'aggregator')}"
                time.sleep(0.1)

        until("/health never answered", lambda: _get(f"{base}/health")[0] == 200)
        assert json.loads(_get(f"{base}/health")[1]) == {"status": "ok"}
        until("/ready never 200", lambda: _get(f"{base}/ready")[0] == 200)
        ready = json.loads(_get(f"{base}/ready")[1])
        assert ready == {
            "ready": True,
            "checks": {"events_sink": "ok", "bots_sink": "ok", "clickhouse": "ok"},
        }

        producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            for key, value in contract_events(EVENTS, project_id=f"p_ops_{suffix}")[:EVENTS]:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

        lag = "werkstroom_sink_lag_messages"
        written = "werkstroom_sink_rows_written_total"
        partitions = {(("partition", str(p)),) for p in range(PARTITIONS)}

        def counted() -> bool:
            samples = _metrics(f"{base}/metrics")
            return samples.get(written, {}).get((), 0) >= EVENTS and set(samples.get(lag, {})) == partitions

        until("no lag per partition or rows written in /metrics", counted)
        assert all(value >= 0 for value in _metrics(f"{base}/metrics")[lag].values())

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, tail(tmp_path, "aggregator")
        assert time.monotonic() - began < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
