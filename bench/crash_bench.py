"""What a kill -9 of the whole embedded process loses, against a graceful stop in the same run.

    make bench     (or: .venv/bin/python bench/crash_bench.py --seconds 15 --rate 5000 --backlog 100000)

`werkstroom serve --target all` (ingest, aggregator and API in one process, the embedded tansu
broker as its child, keeping its topics in memory, and ClickHouse in-process), each scenario on
a fresh data directory and ports of its own, fed over HTTP with 100-event batches to /v1/batch
under the demo project's write key:
  1. baseline: a steady --rate events/s for --seconds, then SIGTERM (the drain): expect 0 lost;
  2. the same steady stream, then kill -9 of the process while it still arrives;
  3. a backlog: --backlog events as fast as 4 senders go, kill -9 right after the last 200.
The broker (a child that gets SIGTERM when its parent dies) must be gone after a kill. Then the
process is started again on the same directory for --restart-seconds (its broker starts empty,
so nothing more comes) and stopped gracefully. A separate process (the embedded ClickHouse is
one process per data directory) then reads the stored event ids and the per-day event counts.
Lost = acknowledged (answered 200) but not in `events`. The derived counts (events_daily,
daily_stats) must equal the stored events: less is an event not counted, more one counted twice.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import alive, children, listening, logged, serve_env  # noqa: E402
from werkstroom.embedded import free_port  # noqa: E402

PY = sys.executable
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)
PER_BATCH = 100  # events per request of the steady stream
BACKLOG_BATCH = 500  # events per request of the backlog
SENDERS = 4
DRAIN_TIMEOUT = 45.0
STARTED: list[subprocess.Popen[bytes]] = []  # killed at the end if a scenario failed midway

COUNTS = r"""
import json, sys
from werkstroom.clickhouse import connect
client = connect(sys.argv[1], "werkstroom")
p = {"p": sys.argv[2]}
one = lambda sql: client.query(sql, parameters=p).first_row[0] or 0
sys.stdout.write(json.dumps({
    "ids": [r[0] for r in client.query(
        "SELECT DISTINCT event_id FROM events WHERE project_id = {p:String}", parameters=p
    ).result_rows],
    "rows": one("SELECT count() FROM events FINAL WHERE project_id = {p:String}"),
    "unique": one("SELECT uniqExact(event_id) FROM events FINAL WHERE project_id = {p:String}"),
    "events_daily": one("SELECT sum(events) FROM events_daily FINAL WHERE project_id = {p:String}"),
    "daily_stats": one("SELECT sum(events) FROM daily_stats FINAL WHERE project_id = {p:String}"),
}))
"""


@dataclass
class Sent:
    """What the senders got back: the ids of acknowledged events, and what was not."""

    acked: set[str] = field(default_factory=set)
    refused: int = 0  # events answered with something else than 200 (503 while draining)
    unanswered: int = 0  # events whose request got no answer (the process was gone)
    last_ack: float = 0.0  # time.monotonic() of the last 200
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Result:
    name: str
    acked: int
    refused: int
    unanswered: int
    sent_seconds: float
    stored: int = 0
    lost: int = 0
    extra: int = 0  # stored without an acknowledgement (a request cut by the kill)
    rows: int = 0
    unique: int = 0
    events_daily: int = 0
    daily_stats: int = 0
    notes: list[str] = field(default_factory=list)


class Serve:
    """One `werkstroom serve --target all` on `data`, with ports of its own."""

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.ingest_port = free_port()
        env = serve_env(data, self.ingest_port, free_port(), DRAIN_TIMEOUT)
        (data / "runtime.json").unlink(missing_ok=True)  # a killed run leaves its own behind
        self.log_path = log
        self._log = open(log, "ab")  # closed in wait()
        self.proc = subprocess.Popen(
            [PY, "-m", "werkstroom", "serve", "--target", "all"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        STARTED.append(self.proc)
        deadline = time.monotonic() + 90
        while not (data / "runtime.json").exists() or not listening(self.ingest_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"serve did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        # Load starts once the aggregator has its partitions (about 5 s after ingest listens,
        # the group's join): what is acknowledged before that waits in the broker's memory only.
        listened = time.monotonic()
        while not self.logged("sink_partitions_assigned"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"the aggregator got no partitions: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.joined_after = time.monotonic() - listened
        self.runtime = json.loads((data / "runtime.json").read_text())
        self.demo = json.loads((data / "demo.json").read_text())
        self.children = children(self.proc.pid)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(DRAIN_TIMEOUT + 45), time.monotonic() - started

    def logged(self, event: str) -> list[dict[str, Any]]:
        return logged(self.log_path, event)


def send(
    serve: Serve, tag: str, sent: Sent, stop: threading.Event, total: int | None, rate: float
) -> list[threading.Thread]:
    """SENDERS threads post batches: at `rate` events/s until `stop` (steady), or `total` events
    as fast as they go (rate 0). Each event's messageId becomes its event_id."""
    per_batch = PER_BATCH if rate else BACKLOG_BATCH
    key = serve.demo["write_key"]
    next_batch = iter(range(10**9))
    take = threading.Lock()
    started = time.monotonic()

    def sender() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", serve.ingest_port, timeout=30)
        while not stop.is_set():
            with take:
                k = next(next_batch)
            start = k * per_batch
            count = per_batch if total is None else min(per_batch, total - start)
            if count <= 0:
                break
            if rate:
                time.sleep(max(0.0, started + start / rate - time.monotonic()))
                if stop.is_set():
                    break
            ids = [f"{tag}-{i}" for i in range(start, start + count)]
            body = json.dumps(
                {
                    "writeKey": key,
                    "batch": [
                        {
                            "type": "track",
                            "event": "Crash Bench",
                            "anonymousId": f"v{i % 500}",
                            "messageId": mid,
                            "properties": {"step": i % 7},
                        }
                        for i, mid in zip(range(start, start + count), ids, strict=True)
                    ],
                }
            )
            try:
                conn.request(
                    "POST",
                    "/v1/batch",
                    body=body,
                    headers={"Content-Type": "application/json", "User-Agent": UA},
                )
                response = conn.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                with sent.lock:
                    sent.unanswered += count
                if total is not None:  # the backlog is not killed while it sends: stop there
                    stop.set()
                time.sleep(0.05)
                continue
            with sent.lock:
                if response.status == 200 and json.loads(answer).get("accepted") == count:
                    sent.acked.update(ids)
                    sent.last_ack = time.monotonic()
                else:
                    sent.refused += count
        conn.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    return threads


def count(data: Path, project_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [PY, "-c", COUNTS, f"chdb://{(data / 'clickhouse').resolve()}", project_id],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def kill(serve: Serve, result: Result, last_ack: float) -> None:
    """kill -9, then check that the broker went with it (its port closed, its process gone)."""
    killed = time.monotonic()
    serve.proc.kill()
    if last_ack:
        result.notes.append(f"killed {(killed - last_ack) * 1000:.0f} ms after the last 200")
    serve.wait(10)
    result.notes.append(f"serve reaped {(time.monotonic() - killed) * 1000:.0f} ms after the kill")
    broker_port = int(serve.runtime["kafka_bootstrap"].rsplit(":", 1)[1])
    deadline = killed + 10
    while any(alive(pid) for pid in serve.children) or listening(broker_port):
        if time.monotonic() > deadline:
            left = [pid for pid in serve.children if alive(pid)]
            for pid in left:  # ours: started by the serve this bench started
                os.kill(pid, signal.SIGKILL)
            result.notes.append(f"broker still running 10 s after the kill (pids {left}): killed")
            return
        time.sleep(0.02)
    result.notes.append(
        f"broker gone {(time.monotonic() - killed) * 1000:.0f} ms after the kill (children {serve.children})"
    )


def scenario(
    name: str, work: Path, *, graceful: bool, seconds: float, rate: float, backlog: int, restart: float
) -> Result:
    data = work / name / "data"
    data.mkdir(parents=True)
    log = work / name / "serve.log"
    serve = Serve(data, log)
    project = serve.demo["project_id"]
    sent, stop = Sent(), threading.Event()
    joined = f"aggregator had its partitions {serve.joined_after:.1f} s after ingest listened"
    started = time.monotonic()
    if backlog:
        threads = send(serve, name, sent, stop, backlog, 0)
        for thread in threads:
            thread.join()
    else:
        threads = send(serve, name, sent, stop, None, rate)
        time.sleep(seconds)
    sent_seconds = time.monotonic() - started
    result = Result(name, 0, 0, 0, sent_seconds, notes=[joined])
    if graceful:
        stopping = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # requests during the drain: answered 503 shutting_down
        stop.set()
        code = serve.wait(DRAIN_TIMEOUT + 45)
        drained = serve.logged("drain_finished")
        result.notes.append(
            f"exit {code} after {time.monotonic() - stopping:.1f} s; drain: "
            + (
                f"{drained[-1].get('events')} events in {drained[-1].get('seconds')} s, "
                f"complete={drained[-1].get('complete')}"
                if drained
                else "not logged"
            )
        )
    else:
        kill(serve, result, sent.last_ack if backlog else 0.0)
        stop.set()
    for thread in threads:
        thread.join(35)
    result.acked, result.refused, result.unanswered = len(sent.acked), sent.refused, sent.unanswered
    result.notes.append(
        f"not acknowledged: {sent.refused:,} events refused (not 200), {sent.unanswered:,} without an answer"
    )
    if not graceful:
        again = Serve(data, work / name / "serve-restart.log")
        time.sleep(restart)
        code, took = again.stop()
        result.notes.append(f"restart: {restart:.0f} s up, stopped with exit {code} in {took:.1f} s")
    counts = count(data, project)
    stored = set(counts.pop("ids"))
    result.stored = len(stored)
    result.lost = len(sent.acked - stored)
    result.extra = len(stored - sent.acked)
    result.rows, result.unique = int(counts["rows"]), int(counts["unique"])
    result.events_daily, result.daily_stats = int(counts["events_daily"]), int(counts["daily_stats"])
    return result


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "-"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15, help="length of the steady stream")
    parser.add_argument("--rate", type=float, default=5000, help="events/s of the steady stream")
    parser.add_argument("--backlog", type=int, default=100_000, help="events sent before the kill")
    parser.add_argument("--restart-seconds", type=float, default=10, help="how long the restart runs")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-crash-"))
    common = {"seconds": args.seconds, "rate": args.rate, "restart": args.restart_seconds}
    plan = [
        ("graceful", "baseline: SIGTERM, steady", {"graceful": True, "backlog": 0}),
        ("kill-steady", "kill -9, steady", {"graceful": False, "backlog": 0}),
        ("kill-backlog", f"kill -9, {args.backlog:,} backlog", {"graceful": False, "backlog": args.backlog}),
    ]
    results: list[tuple[str, Result]] = []
    try:
        for name, label, how in plan:
            print(f"  {label} ...", flush=True)
            result = scenario(name, work, **how, **common)  # type: ignore[arg-type]
            results.append((label, result))
            for note in result.notes:
                print(f"    {note}")
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if args.keep:
            print(f"data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmachine: {os.cpu_count()} cores; serve (ingest, aggregator, chDB), its broker and the "
        f"senders share them; steady stream {args.rate:,.0f} events/s for {args.seconds:.0f} s"
    )
    head = (
        f"{'scenario':26s} {'acked':>9s} {'ack/s':>7s} {'stored':>9s} {'lost':>8s} {'lost %':>8s} "
        f"{'lost s':>7s} {'unacked':>8s} {'dup rows':>8s} {'ev_daily':>9s} {'daily_st':>9s}  derived = stored"
    )
    print(head)
    print("-" * len(head))
    for label, r in results:
        steady = "steady" in label
        derived_ok = r.events_daily == r.stored and r.daily_stats == r.stored
        print(
            f"{label:26s} {r.acked:9,d} {r.acked / r.sent_seconds:7,.0f} {r.stored:9,d} {r.lost:8,d} "
            f"{pct(r.lost, r.acked):>8s} {(f'{r.lost * r.sent_seconds / r.acked:.2f}' if steady and r.acked else '-'):>7s} "
            f"{r.extra:8,d} {r.rows - r.unique:8,d} {r.events_daily:9,d} {r.daily_stats:9,d}  "
            f"{'yes' if derived_ok else 'NO'}"
        )
    print(
        "acked: answered 200; lost: acked but not in events; lost s: seconds of the stream lost (at its ack/s); "
        "unacked: stored without a 200 (cut by the stop); dup rows: events rows (FINAL) over distinct "
        "ids; ev_daily / daily_st: sum(events) of events_daily / daily_stats"
    )
    baseline = results[0][1]
    print(
        f"\nbaseline (graceful stop): lost {baseline.lost:,} of {baseline.acked:,} "
        f"({pct(baseline.lost, baseline.acked)}) {'OK' if baseline.lost == 0 else 'LOST EVENTS'}"
    )
    for label, r in results[1:]:
        print(
            f"{label:26s}: lost {r.lost:,} of {r.acked:,} ({pct(r.lost, r.acked)}), "
            f"{r.lost - baseline.lost:+,} against the baseline"
        )
    mismatched = [label for label, r in results if r.events_daily != r.stored or r.daily_stats != r.stored]
    if mismatched:
        print(f"derived counts differ from the stored events in: {', '.join(mismatched)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
