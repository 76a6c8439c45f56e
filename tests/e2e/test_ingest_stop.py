"""Issue 18, `--target ingest`: a graceful stop loses nothing acknowledged. A real
`werkstroom serve --target ingest` against a broker outside it (the session's `infra`), on
topics of its own, takes batches from several threads as fast as they come; SIGTERM arrives
while requests are in flight. Every event answered 200 must be in the events topic (read back
from its beginning, by event_id = messageId); every other answer is a 503 with Retry-After or
no answer at all (the listener closed), and once one request was refused as shutting_down, no
later one is accepted."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import Infra
from tests.e2e.runs import PARTITIONS, post, start_serve, target_env
from werkstroom.contract import decode_event
from werkstroom.embedded import free_port
from werkstroom.kafka import log_ends_at

pytestmark = pytest.mark.integration

THREADS = 6
PER_BATCH = 50
#: Events acknowledged before the signal: the senders are at full speed by then.
ACKED_BEFORE_STOP = 3000
DRAIN_TIMEOUT = 30.0
#: From SIGTERM to the exit: the drain's timeout and room for a loaded machine.
EXIT_TIMEOUT = DRAIN_TIMEOUT + 30.0


@dataclass(frozen=True)
class Attempt:
    """One POST /v1/batch: when it was sent and answered (monotonic), its messageIds, and the
    answer; `status` None when none came (`error` says why: refused, reset)."""

    started: float
    ended: float
    ids: list[str]
    status: int | None
    body: dict[str, Any]
    retry_after: str | None = None
    error: str | None = None


class Senders:
    """THREADS threads, each posting batches of PER_BATCH new events back to back until `stop()`."""

    def __init__(self, url: str, write_key: str) -> None:
        self.url, self.write_key = url, write_key
        self.attempts: list[Attempt] = []  # list.append is atomic: the threads share it
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(f"t{n}",), name=f"sender-{n}", daemon=True)
            for n in range(THREADS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(30)  # a request waits 10 s at most (runs.post)
        assert not any(t.is_alive() for t in self._threads), "a sender did not end"

    def acked(self) -> int:
        return sum(len(a.ids) for a in list(self.attempts) if a.status == 200)

    def _send(self, name: str) -> None:
        n = 0
        while not self._done.is_set():
            ids = [f"{name}-{i}" for i in range(n, n + PER_BATCH)]
            n += PER_BATCH
            batch = [
                {"type": "track", "event": "Stopping", "anonymousId": f"{name}-v{i % 25}", "messageId": m}
                for i, m in enumerate(ids)
            ]
            started = time.monotonic()
            try:
                status, body, headers = post(self.url, {"writeKey": self.write_key, "batch": batch})
            except urllib.error.URLError as exc:  # connecting or sending failed: refused
                self.attempts.append(
                    Attempt(started, time.monotonic(), ids, None, {}, error=repr(exc.reason))
                )
                time.sleep(0.02)
                continue
            except (ConnectionError, http.client.HTTPException, TimeoutError, ValueError) as exc:
                # no answer (reset, closed), or one that is not JSON (ValueError): judged below
                self.attempts.append(Attempt(started, time.monotonic(), ids, None, {}, error=repr(exc)))
                time.sleep(0.02)
                continue
            self.attempts.append(
                Attempt(started, time.monotonic(), ids, status, body, headers.get("retry-after"))
            )


def start_ingest(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[str], str]:
    """`werkstroom serve --target ingest`, its log in <tmp>/serve.log, once its banner (which
    ends with the demo project's curl example) is out; and the demo project's write key."""
    proc, _banner = start_serve(env, tmp, timeout=90, target="ingest")
    demo = json.loads((Path(env["WERKSTROOM_DATA_DIR"]) / "demo.json").read_text())
    return proc, str(demo["write_key"])


async def topic_ids(bootstrap: str, topic: str) -> list[str]:
    """The event_id of every message in `topic`, from its beginning to its end (as a fetch
    reports it: the embedded broker's ListOffsets does not, see werkstroom.kafka.log_ends)."""
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    ends = await log_ends_at(bootstrap, partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    ids: list[str] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 60
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, f"read {len(ids)} messages of {sum(ends.values())}"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids.extend(decode_event(r.value).event_id for r in records)
    finally:
        await consumer.stop()
    return ids


def records(log_path: Path) -> list[dict[str, Any]]:
    found = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def serving_workers(pid: int) -> list[int]:
    """The processes `serve --workers N` (pid) started: its children."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_graceful_stop_of_ingest_loses_no_acknowledged_event(
    infra: Infra, tmp_path: Path, workers: int
) -> None:
    if workers > 1 and infra.kind == "embedded":
        pytest.skip("--workers needs a ClickHouse server: the embedded one opens in one process only")
    port = free_port()
    # Ingest reads its write keys from ClickHouse: the demo project, created at its first start.
    env, _suffix = target_env(
        infra,
        "stop",
        tmp_path / "data",
        WERKSTROOM_INGEST_PORT=str(port),
        WERKSTROOM_DRAIN_TIMEOUT_SECONDS=str(DRAIN_TIMEOUT),
        WERKSTROOM_RATE_LIMIT_EPS="0",
        # A loaded machine must not turn slow acknowledgements into 503 kafka_unavailable:
        # every 503 here is the stop's.
        WERKSTROOM_PRODUCE_TIMEOUT_MS="15000",
        WERKSTROOM_LOG_FORMAT="json",
        WERKSTROOM_LOG_LEVEL="INFO",
        WERKSTROOM_WORKERS=str(workers),
    )
    topic = env["WERKSTROOM_TOPIC_EVENTS"]
    log_path = tmp_path / "serve.log"
    proc, write_key = start_ingest(env, tmp_path)
    senders = Senders(f"http://127.0.0.1:{port}/v1/batch", write_key)
    try:
        if workers > 1:  # a supervisor and its workers, each listening on the port
            assert len(serving_workers(proc.pid)) == workers, log_path.read_text()[-3000:]
        senders.start()
        deadline = time.monotonic() + 120
        while senders.acked() < ACKED_BEFORE_STOP:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{senders.acked()} acknowledged: {senders.attempts[-3:]}"
            time.sleep(0.05)
        time.sleep(random.uniform(0.05, 0.2))
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit {EXIT_TIMEOUT:.0f} s after SIGTERM: {log_path.read_text()[-3000:]}"
            ) from None
        took = time.monotonic() - stopped_at
    finally:
        senders.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0, log_path.read_text()[-3000:]

    attempts = sorted(senders.attempts, key=lambda a: a.started)
    before = [a for a in attempts if a.ended < stopped_at]
    after = [a for a in attempts if a.ended >= stopped_at]
    straddling = [a for a in after if a.started < stopped_at]
    acked = [a for a in attempts if a.status == 200]
    shutting = [a for a in after if a.status == 503 and a.body.get("reason") == "shutting_down"]
    unanswered = [a for a in after if a.status is None]

    # Until the signal, everything is accepted; afterwards a request is answered 200 (it came
    # first), 503 shutting_down with Retry-After, or not at all (the listener has closed).
    assert all(a.status == 200 for a in before), [a for a in before if a.status != 200][:3]
    assert straddling, "no request was in flight at the signal"
    odd = [a for a in after if a.status not in (None, 200, 503)]
    odd += [a for a in after if a.status == 503 and a.body.get("reason") != "shutting_down"]
    odd += [a for a in shutting if not (a.retry_after or "").isdigit() or int(a.retry_after or 0) < 1]
    assert not odd, odd[:3]
    for a in acked:
        assert (a.body["accepted"], a.body["rejected"], a.body["bots"]) == (PER_BATCH, 0, 0), a
    # A request gets no answer only once the stop began: refused or reset, never a timeout.
    assert all(a.error and "Timeout" not in a.error for a in unanswered), unanswered[:3]
    # The stop is for good: no request sent after a shutting_down answer came back is accepted.
    if shutting:
        first_refusal = min(a.ended for a in shutting)
        late = [a for a in acked if a.started > first_refusal]
        assert not late, late[:3]

    in_topic = asyncio.run(topic_ids(infra.bootstrap, topic))
    stored = set(in_topic)
    acked_ids = {m for a in acked for m in a.ids}
    missing = acked_ids - stored
    assert not missing, f"{len(missing)} acknowledged events are not in Kafka, e.g. {sorted(missing)[:5]}"
    refused_ids = {m for a in shutting for m in a.ids}
    assert not refused_ids & stored, "an event answered 503 shutting_down was produced"
    sent_ids = {m for a in attempts for m in a.ids}
    assert stored <= sent_ids

    logged = records(log_path)
    assert [r for r in logged if r.get("event") == "shutting_down"][-1]["target"] == "ingest"
    stopped = [r for r in logged if r.get("event") == "ingest_stopped_accepting"]
    assert len(stopped) == 1 and stopped[0]["unanswered_requests"] == 0, stopped
    finished = [r for r in logged if r.get("event") == "drain_finished"]
    assert len(finished) == 1, finished
    assert (finished[0]["complete"], finished[0]["timed_out"], finished[0]["unanswered_requests"]) == (
        True,
        False,
        0,
    ), finished
    assert not [r for r in logged if r.get("level") in ("error", "critical")]

    sys.stderr.write(
        f"ingest stop: {len(acked_ids)} events acknowledged ({len(acked)} requests, "
        f"{len([a for a in after if a.status == 200])} answered 200 after the signal, of which "
        f"{len([a for a in straddling if a.status == 200])} in flight at it), "
        f"{len(shutting)} answered 503 shutting_down, {len(unanswered)} unanswered "
        f"({sorted({(a.error or '')[:40] for a in unanswered})[:3]}; "
        f"{len({m for a in unanswered for m in a.ids} & stored)} of their events in the topic); "
        f"{len(in_topic)} messages in the topic ({len(in_topic) - len(stored)} duplicates); "
        f"exit {took:.1f} s after SIGTERM, drain {finished[0]['seconds']} s\n"
    )
