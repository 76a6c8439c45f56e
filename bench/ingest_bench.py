"""Ingest throughput on one worker process, as a ratio to the bare handler measured in the same run.

    make bench            (or: .venv/bin/python bench/ingest_bench.py --seconds 10)

Starts the embedded broker, then, one after the other on the same broker and topic layout:
  1. `werkstroom serve --target ingest` (one process, rate limit off), and
  2. bench/bare_asgi.py under the same uvicorn settings,
and drives each with wrk on loopback (Debian's `wrk`; installed with apt-get when missing and
we are root) for single-event POSTs and for 100-event batches. Prints events/s and ratios.
Targets (issue #2): singles >= 50 % of bare; batches >= 50 % of bare and >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from werkstroom.embedded import EmbeddedKafka, free_port  # noqa: E402

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)
PY = sys.executable


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed for the ingest bench: apt-get install wrk")
    return found


def event(i: int) -> dict[str, object]:
    return {
        "type": "track",
        "event": "Button Clicked",
        "anonymousId": f"visitor-{i}",
        "properties": {"button": "signup", "variant": "b", "price": 19.99},
        "context": {
            "userAgent": UA,
            "page": {
                "url": "https://shop.example/pricing",
                "path": "/pricing",
                "title": "Pricing",
                "referrer": "https://www.google.com/",
            },
        },
        "timestamp": "2026-11-25T10:00:00.000Z",
        "sentAt": "2026-11-25T10:00:00.050Z",
    }


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listened on {port}")


def run_wrk(wrk: str, url: str, body: bytes, seconds: int, connections: int, work: Path) -> tuple[float, int]:
    """Returns (requests/s, non-2xx responses)."""
    body_file = work / "body.json"
    body_file.write_bytes(body)
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
    )
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if errors:
        print(f"    wrk: {errors.group(0)}")
    return rps, int(bad.group(1)) if bad else 0


def start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-bench-"))
    single = json.dumps(event(1)).encode()
    batch = json.dumps(
        {"batch": [event(i) for i in range(100)], "sentAt": "2026-11-25T10:00:00.050Z"}
    ).encode()
    results: dict[str, float] = {}
    with EmbeddedKafka(log_path=work / "kafka.log") as kafka:
        env = {
            **os.environ,
            "WERKSTROOM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "WERKSTROOM_DATA_DIR": str(work),
            "WERKSTROOM_RATE_LIMIT_EPS": "0",
            "WERKSTROOM_DEMO": "false",
            "WERKSTROOM_LOG_LEVEL": "WARNING",
            "WERKSTROOM_TOPIC_EVENTS": "bench.events",
            "WERKSTROOM_TOPIC_DLQ": "bench.dlq",
            "BENCH_TOPIC": "bench.bare",
        }
        subprocess.run(
            [PY, "-m", "werkstroom", "migrate"], env=env, check=True, capture_output=True, cwd=ROOT
        )
        created = subprocess.run(
            [PY, "-m", "werkstroom", "projects", "create", "bench", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        write_key = json.loads(created.stdout)["write_key"]
        single_ours = json.dumps({**event(1), "writeKey": write_key}).encode()
        batch_ours = json.dumps(
            {
                "writeKey": write_key,
                "batch": [event(i) for i in range(100)],
                "sentAt": "2026-11-25T10:00:00.050Z",
            }
        ).encode()

        for name, cmd_port in (("werkstroom", "ours"), ("bare", "bare")):
            port = free_port()
            if cmd_port == "ours":
                cmd = [PY, "-m", "werkstroom", "serve", "--target", "ingest"]
                proc_env = {**env, "WERKSTROOM_INGEST_PORT": str(port)}
            else:
                cmd = [
                    PY,
                    "-m",
                    "uvicorn",
                    "bench.bare_asgi:app",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ]
                proc_env = env
                subprocess.run(
                    [
                        PY,
                        "-c",
                        "import asyncio,os;from werkstroom.kafka import ensure_topics;"
                        "asyncio.run(ensure_topics(os.environ['WERKSTROOM_KAFKA_BOOTSTRAP'],"
                        "['bench.bare'],4))",
                    ],
                    env=env,
                    check=True,
                    cwd=ROOT,
                )
            proc = start(cmd, proc_env, port, work / f"{name}.log")
            try:
                body_single = single_ours if cmd_port == "ours" else single
                body_batch = batch_ours if cmd_port == "ours" else batch
                run_wrk(
                    wrk, f"http://127.0.0.1:{port}/v1/track", body_single, 2, args.connections, work
                )  # warm up
                rps, bad = run_wrk(
                    wrk,
                    f"http://127.0.0.1:{port}/v1/track",
                    body_single,
                    args.seconds,
                    args.connections,
                    work,
                )
                results[f"{name}_single"] = rps
                print(f"  {name:10s} single events : {rps:10,.0f} events/s   (non-2xx: {bad})")
                rps, bad = run_wrk(
                    wrk,
                    f"http://127.0.0.1:{port}/v1/batch",
                    body_batch,
                    args.seconds,
                    max(8, args.connections // 4),
                    work,
                )
                results[f"{name}_batch"] = rps * 100
                print(f"  {name:10s} 100-event batch: {rps * 100:10,.0f} events/s   (non-2xx: {bad})")
            finally:
                stop(proc)

    ours_single, bare_single = results["werkstroom_single"], results["bare_single"]
    ours_batch, bare_batch = results["werkstroom_batch"], results["bare_batch"]
    single_ratio, batch_ratio = ours_single / bare_single, ours_batch / bare_batch

    def verdict(ok: bool) -> str:
        return "OK" if ok else "BELOW TARGET"

    print(f"\nmachine: {os.cpu_count()} cores; server, broker and wrk share them")
    print(
        f"single events  : werkstroom {ours_single:,.0f}/s vs bare {bare_single:,.0f}/s -> ratio "
        f"{single_ratio:.2f} (target >= 0.50) {verdict(single_ratio >= 0.5)}"
    )
    print(
        f"100-event batch: werkstroom {ours_batch:,.0f}/s vs bare {bare_batch:,.0f}/s -> ratio "
        f"{batch_ratio:.2f} (target >= 0.50) {verdict(batch_ratio >= 0.5)}"
    )
    print(
        f"100-event batch absolute: {ours_batch:,.0f} events/s (target >= 100,000) "
        f"{verdict(ours_batch >= 100_000)}"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
