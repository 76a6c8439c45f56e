"""Shared e2e helpers: `werkstroom serve --target all` started as `make run` starts it (its
environment, the process and its start-up banner) and a JSON POST to it; aggregator runs as real
processes over one topic, and their tables side by side (the crash and the scale-out tests).

The embedded ClickHouse is one process per data directory: a run owns its own directory (or,
on a ClickHouse server, its own database) and its tables are read afterwards by a separate
process. Progress is read from Kafka, never from a directory a running process holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.ingest.segment import Rejected, normalize
from werkstroom.contract import encode_event, message_key
from werkstroom.demo import simulate
from werkstroom.embedded import free_port

CLI = [sys.executable, "-m", "werkstroom"]
#: A desktop browser's User-Agent for the requests sent to ingest (a script's own is a bot's).
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
PARTITIONS = 4
#: How long a run may take to commit anything at all (start-up, joining the group after a
#: killed member's session expired, the first batch) before that counts as a failure.
PROGRESS_TIMEOUT = 120.0

DUMP = r"""
import json, sys
from werkstroom.clickhouse import connect
client = connect(sys.argv[1], sys.argv[3])
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
    "activity_by": "SELECT project_id, day, filter, filter_value, person_id FROM person_activity_by FINAL "
                   "WHERE is_deleted = 0 ORDER BY ALL",
    "first_by": "SELECT * EXCEPT (version) FROM person_first_by FINAL WHERE is_deleted = 0 ORDER BY ALL",
    "plan_sessions": "SELECT * EXCEPT (version) FROM plan_sessions FINAL WHERE is_deleted = 0 ORDER BY ALL",
    "plan_pages": "SELECT * EXCEPT (version) FROM plan_pages FINAL WHERE is_deleted = 0 ORDER BY ALL",
    "visitors": "SELECT * EXCEPT (version) FROM visitor_persons FINAL WHERE is_deleted = 0 ORDER BY ALL",
    "recent": "SELECT * EXCEPT (version, updated_at) FROM persons_recent FINAL WHERE is_deleted = 0 ORDER BY ALL",
    "churn": "SELECT project_id, day, base, churned FROM churn_daily FINAL ORDER BY 1, 2",
    # one funnel in each database, under its own random id: compared without it
    "progress": "SELECT day, person_id, level FROM funnel_progress FINAL WHERE is_deleted = 0 ORDER BY 1, 2",
    "levels": "SELECT level, last_day, person_id FROM funnel_levels FINAL WHERE is_deleted = 0 ORDER BY 1, 2, 3",
    "counts": "SELECT level, day, persons FROM funnel_counts FINAL WHERE persons > 0 ORDER BY 1, 2",
    "levels_by": "SELECT * EXCEPT (funnel_id, version) FROM funnel_levels_by FINAL WHERE is_deleted = 0 "
                 "ORDER BY ALL",
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

#: The tables two runs over the same topic must agree on (besides `events`, compared first).
COMPARED = (
    *("sessions", "sessions_daily", "identities", "online", "persons", "traits", "daily"),
    *("activity", "churn", "progress", "levels", "counts", "activity_by", "first_by"),
    *("plan_sessions", "plan_pages", "levels_by", "visitors", "recent"),
)

FUNNEL = r"""
import sys
from werkstroom.clickhouse import connect
from werkstroom.clickhouse.migrate import migrate
from werkstroom.funnels import create_funnel
client = connect(sys.argv[1], sys.argv[3], create_database=True)
migrate(client)
steps = [{"event": "$page", "path": "/pricing"}, {"event": "Plan Selected"}, {"event": "Order Completed"}]
create_funnel(client, sys.argv[2], "Pricing to order", steps, 7200)
"""


def serve_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `werkstroom serve --target all` of its own: its data in `data_dir`,
    ingest and the API on free ports, `extra` on top, and the embedded broker and ClickHouse
    (not those the caller's environment may point at)."""
    env = {
        **os.environ,
        "WERKSTROOM_DATA_DIR": str(data_dir),
        "WERKSTROOM_INGEST_PORT": str(free_port()),
        "WERKSTROOM_API_PORT": str(free_port()),
        **extra,
    }
    for name in ("WERKSTROOM_KAFKA_BOOTSTRAP", "WERKSTROOM_CLICKHOUSE_URL"):
        env.pop(name, None)
    return env


def target_env(infra: Any, prefix: str, data_dir: Path, **extra: str) -> tuple[dict[str, str], str]:
    """The environment of one `werkstroom serve --target …` on the session's broker, with
    topics, groups and (on a ClickHouse server) a database of its own named after `prefix` and
    a random suffix; on the embedded engine, ClickHouse in <data_dir>/clickhouse (one process per
    directory). `extra` on top. Returns it and the suffix."""
    suffix = os.urandom(4).hex()
    env = {
        **os.environ,
        "WERKSTROOM_KAFKA_BOOTSTRAP": infra.bootstrap,
        "WERKSTROOM_TOPIC_EVENTS": f"{prefix}.events.{suffix}",
        "WERKSTROOM_TOPIC_DLQ": f"{prefix}.dlq.{suffix}",
        "WERKSTROOM_TOPIC_BOTS": f"{prefix}.bots.{suffix}",
        "WERKSTROOM_TOPIC_PARTITIONS": str(PARTITIONS),
        "WERKSTROOM_SINK_GROUP": f"{prefix}-{suffix}",
        "WERKSTROOM_BOTS_GROUP": f"{prefix}-bots-{suffix}",
        "WERKSTROOM_DATA_DIR": str(data_dir),
        **extra,
    }
    if infra.kind == "embedded":
        env["WERKSTROOM_CLICKHOUSE_URL"] = f"chdb://{data_dir / 'clickhouse'}"
    else:
        env["WERKSTROOM_CLICKHOUSE_URL"] = infra.clickhouse_url
        env["WERKSTROOM_CLICKHOUSE_DATABASE"] = f"{prefix}_{suffix}"
    return env, suffix


def start_serve(
    env: dict[str, str],
    cwd: Path,
    *,
    timeout: float = 60.0,
    start_new_session: bool = False,
    target: str = "all",
) -> tuple[subprocess.Popen[str], str]:
    """`werkstroom serve --target <target>` with `env` in `cwd`, its stderr in <cwd>/serve.log, and
    its stdout read up to the start-up banner's curl example (for `timeout` seconds at most).
    The process and the banner read; a process that exits before is an AssertionError that
    ends with its log. `start_new_session`: a process group of its own, as a terminal's
    foreground job."""
    log_path = cwd / "serve.log"
    with open(log_path, "w") as log:  # the process has its own copy of the file
        proc = subprocess.Popen(
            [*CLI, "serve", "--target", target],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=cwd,
            start_new_session=start_new_session,
        )
    try:
        banner = ""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while "curl" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"serve exited: {log_path.read_text()[-3000:]}")
            banner += line
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        raise
    return proc, banner


def post(url: str, body: dict[str, Any], user_agent: str = UA) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A JSON POST: the status, the JSON answer and its headers (lower-case names), an HTTP
    error's as well."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": user_agent},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (
                response.status,
                json.loads(response.read()),
                {k.lower(): v for k, v in response.headers.items()},
            )
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), {k.lower(): v for k, v in exc.headers.items()}


def to_messages(project_id: str, calls: Iterable[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """Tracking calls as ingest would produce them: (key, value) on the contract."""
    received = datetime.now(UTC)
    messages = []
    for call in calls:
        try:
            event, _ = normalize(call, call_type=None, project_id=project_id, received_at=received)
        except Rejected as exc:  # the callers only make valid calls
            raise AssertionError(exc) from exc
        messages.append(
            (message_key(project_id, event["anonymous_id"], event["user_id"]), encode_event(event))
        )
    return messages


def contract_events(count: int, project_id: str = "p_crash", seed: int = 23) -> list[tuple[bytes, bytes]]:
    sim = simulate({project_id: "wk"}, visitors=max(1, count // 15), seed=seed, bots=0)
    messages = to_messages(project_id, sim.calls["wk"])
    assert len(messages) >= count, len(messages)
    return messages


def start(
    env: dict[str, str], tmp: Path, name: str, argv: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """`werkstroom serve --target aggregator` (or `argv`), its output in <tmp>/<name>.log; its
    operations port (WERKSTROOM_AGGREGATOR_PORT) a free one unless `env` names it."""
    log = open(tmp / f"{name}.log", "ab")
    return subprocess.Popen(
        argv or [*CLI, "serve", "--target", "aggregator"],
        env={"WERKSTROOM_AGGREGATOR_PORT": str(free_port()), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )


def tail(tmp: Path, name: str) -> str:
    return (tmp / f"{name}.log").read_text(errors="replace")[-3000:]


class Commits:
    """A group's committed offsets, read by a consumer in the group that never joins it (as
    `werkstroom serve` reads them for its drain): the runs' progress, without opening their
    ClickHouse."""

    def __init__(self, env: dict[str, str]) -> None:
        self.topic = env["WERKSTROOM_TOPIC_EVENTS"]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=env["WERKSTROOM_KAFKA_BOOTSTRAP"],
            group_id=env["WERKSTROOM_SINK_GROUP"],
            enable_auto_commit=False,
        )
        self.parts = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]

    async def __aenter__(self) -> Commits:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def read(self) -> dict[int, int] | None:
        """Committed offset per partition (0 for none yet); None while the broker cannot say."""
        try:
            return {tp.partition: await self.consumer.committed(tp) or 0 for tp in self.parts}
        except KafkaError:
            return None

    async def beyond(
        self,
        before: dict[int, int],
        proc: subprocess.Popen[bytes],
        what: str,
        partitions: Iterable[int] | None = None,
        timeout: float = PROGRESS_TIMEOUT,
    ) -> dict[int, int]:
        """Wait until the committed offsets of `partitions` (all by default) passed `before`,
        while `proc` runs; fail if it exits or `timeout` seconds go by without it."""
        wanted = set(range(PARTITIONS) if partitions is None else partitions)
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{what} exited ({proc.returncode}) before it made progress"
            now = await self.read()
            if now is not None and sum(now[p] for p in wanted) > sum(before[p] for p in wanted):
                return now
            assert time.monotonic() < deadline, f"{what} committed nothing in {timeout:.0f} s"
            await asyncio.sleep(0.2)


class Stream:
    """Sends `messages` to one topic in order, about `rate` a second while fewer than `allowed`
    are sent, then `trickle` a second (0: none) until `allowed` is raised. Knows each
    partition's end offset from the broker's acknowledgements (the embedded broker's
    ListOffsets answers the last batch's first offset + 1, not the end)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        messages: list[tuple[bytes, bytes]],
        *,
        rate: int = 5000,
        trickle: int = 0,
    ) -> None:
        self.producer, self.topic, self.messages = producer, topic, messages
        self.rate, self.trickle = rate, trickle
        self.allowed = 0
        self.sent = 0
        self.ends: dict[int, int] = {}
        self._acks: list[asyncio.Future[Any]] = []

    async def run(self) -> None:
        while self.sent < len(self.messages):
            if self.sent < self.allowed:
                chunk = min(self.rate // 10, self.allowed - self.sent)
            else:
                chunk = self.trickle // 10
            for key, value in self.messages[self.sent : self.sent + chunk]:
                self._acks.append(await self.producer.send(self.topic, value, key=key))
            self.sent += chunk
            await asyncio.sleep(0.1)
        for ack in await asyncio.gather(*self._acks):
            self.ends[ack.partition] = max(self.ends.get(ack.partition, 0), ack.offset + 1)


async def until_committed(
    commits: Commits, ends: dict[int, int], proc: subprocess.Popen[bytes], tmp: Path, name: str
) -> None:
    """Wait until the group committed every partition's end offset, while `proc` runs."""
    deadline = time.monotonic() + 180
    while True:
        now = await commits.read()
        if now is not None and all(now[p] >= end for p, end in ends.items()):
            return
        assert proc.poll() is None, tail(tmp, name)
        assert time.monotonic() < deadline, f"{name} did not catch up: {now} of {ends}"
        await asyncio.sleep(0.3)


async def run_until_caught_up(env: dict[str, str], tmp: Path, name: str, ends: dict[int, int]) -> None:
    """One aggregator from the group's last commit to `ends`, then a graceful stop."""
    runtime = Path(env["WERKSTROOM_DATA_DIR"]) / "runtime.json"
    runtime.unlink(missing_ok=True)  # a killed run leaves its own behind
    proc = start(env, tmp, name)
    try:
        while not runtime.exists():  # written once every component has started
            assert proc.poll() is None, tail(tmp, name)
            await asyncio.sleep(0.1)
        async with Commits(env) as commits:
            await until_committed(commits, ends, proc, tmp, name)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, tail(tmp, name)


def define_funnel(url: str, project_id: str, database: str = "werkstroom") -> None:
    subprocess.run([sys.executable, "-c", FUNNEL, url, project_id, database], check=True, timeout=120)


def dump(url: str, since_ms: int, database: str = "werkstroom") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", DUMP, url, str(since_ms), database],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result
