"""Ingest throughput, as ratios to a bare handler and to an older version measured in the same run.

    make bench            (or: .venv/bin/python bench/ingest_bench.py --seconds 10 --rounds 3)
    .venv/bin/python bench/ingest_bench.py --against main --servers uvicorn,granian --workers 1,2

Starts the embedded broker, then, in each round, one after the other (the order alternates
between rounds) on the same broker and topic layout:
  - "ours": `werkstroom serve --target ingest` (rate limit off), per --workers count (more than
    one needs a ClickHouse server in WERKSTROOM_CLICKHOUSE_URL; skipped otherwise), and with
    --servers the same app under each server's own command line (bench/ingest_asgi.py), or,
    for `granian-embed`, on granian's embedded server in our own uvloop loop, as `serve` would
    host it (bench/granian_embed.py);
  - "bare": bench/bare_asgi.py under uvicorn (and each of --servers), which parses the same
    body and produces the same records (computed once here, looked up per item) with the same
    producer settings: no validation, enrichment or encoding;
  - "old" (with --against REV): `werkstroom serve --target ingest` of that git revision,
    extracted with `git archive` into a temporary directory.
Each is driven with wrk on loopback (Debian's `wrk`; installed with apt-get when missing and we
are root) for single-event POSTs and for 100-event batches. Prints events/s per round, the CPU
time the server's processes used per request (singles) and per event (batches) while wrk ran,
and the medians of the per-round ratios. On a shared machine the CPU figures scatter far less
than the rates: they say which variant costs less, the rates what one reached.
Targets (issue 24): batches >= 100,000 events/s on one worker and >= 0.70 of bare; singles
>= 1.5x the version before issue 24 (`--against` a revision before it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import cpu_seconds  # noqa: E402
from services.ingest.segment import normalize, parse_sent_at  # noqa: E402
from werkstroom.contract import encode_event, message_key  # noqa: E402
from werkstroom.embedded import EmbeddedKafka, free_port  # noqa: E402

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36"
)
PY = sys.executable
SENT_AT = "2026-11-25T10:00:00.050Z"
BATCH = 100


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
        "sentAt": SENT_AT,
    }


def records(project_id: str) -> dict[str, list[str]]:
    """The records ingest writes for the bench's events (anonymousId -> [key, value]): what
    the bare handler hands to Kafka. Their times differ from a live request's by a few bytes."""
    out = {}
    received_at = datetime.now(UTC)
    for i in range(BATCH):
        ev, _ = normalize(
            event(i),
            call_type=None,
            project_id=project_id,
            received_at=received_at,
            batch_sent_at=parse_sent_at(SENT_AT),
        )
        key = message_key(project_id, ev["anonymous_id"], ev["user_id"])
        out[ev["anonymous_id"]] = [key.decode(), encode_event(ev).decode()]
    return out


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


@dataclass
class Variant:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    bare: bool = False
    single: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    #: CPU microseconds the server's processes used per request (singles) and per event (batches).
    single_cpu: list[float] = field(default_factory=list)
    batch_cpu: list[float] = field(default_factory=list)


def start(variant: Variant, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [c.replace("{port}", str(port)) for c in variant.cmd]
    env = {**variant.env, "WERKSTROOM_INGEST_PORT": str(port)}
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=variant.cwd)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def bare_cmd(server: str) -> list[str]:
    if server == "granian-embed":
        return [PY, "-m", "bench.granian_embed", "--port", "{port}"]
    if server == "granian":
        return [PY, "-m", "granian", "--interface", "asgi", "--port", "{port}", "--no-ws"]
    cmd = [PY, "-m", "uvicorn", "--port", "{port}", "--no-access-log", "--log-level", "warning"]
    return [*cmd, "--loop", "uvloop", "--http", "httptools"]


def extract(rev: str, work: Path) -> Path:
    """The source tree of `rev`: a git revision (extracted), or a directory holding one."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    tree = work / f"tree-{re.sub(r'[^A-Za-z0-9]', '_', rev)}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--against", help="a git revision (e.g. main) or a source tree to measure side by side"
    )
    parser.add_argument(
        "--servers",
        default="",
        help="also host the app under these (uvicorn,granian,granian-embed), bare as well",
    )
    parser.add_argument("--workers", default="1", help="comma-separated worker counts for ours")
    args = parser.parse_args()
    servers = [s for s in args.servers.split(",") if s]
    if any(s.startswith("granian") for s in servers) and importlib.util.find_spec("granian") is None:
        raise SystemExit("--servers granian needs granian, which is not a dependency: pip install granian")
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-bench-"))
    workers = [int(w) for w in args.workers.split(",")]
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
            "BENCH_RECORDS": str(work / "records.json"),
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
        project = json.loads(created.stdout)
        (work / "records.json").write_text(json.dumps(records(project["project_id"])))
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
        write_key = project["write_key"]
        single = json.dumps(event(1)).encode()
        batch = json.dumps({"batch": [event(i) for i in range(BATCH)], "sentAt": SENT_AT}).encode()
        single_ours = json.dumps({**event(1), "writeKey": write_key}).encode()
        batch_ours = json.dumps(
            {"writeKey": write_key, "batch": [event(i) for i in range(BATCH)], "sentAt": SENT_AT}
        ).encode()

        serve = [PY, "-m", "werkstroom", "serve", "--target", "ingest"]
        variants: list[Variant] = []
        for n in workers:
            if n > 1 and not env.get("WERKSTROOM_CLICKHOUSE_URL", "").startswith("http"):
                print(f"ours x{n}: skipped, --workers needs a ClickHouse server (WERKSTROOM_CLICKHOUSE_URL)")
                continue
            cmd = serve + (["--workers", str(n)] if n > 1 else [])
            variants.append(Variant("ours" + (f" x{n}" if n > 1 else ""), cmd, env, ROOT))
        for server in servers:  # the same app under each server's own command line
            cmd = [*bare_cmd(server), "--factory", "bench.ingest_asgi:app"]
            variants.append(Variant(f"ours {server}", cmd, env, ROOT))
        for server in servers or ["uvicorn"]:
            cmd = [*bare_cmd(server), "bench.bare_asgi:app"]
            variants.append(Variant(f"bare {server}", cmd, env, ROOT, bare=True))
        if args.against:
            tree = extract(args.against, work)
            variants.append(Variant(f"old ({Path(args.against).name})", serve, env, tree))

        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            print(f"round {rnd + 1}")
            for variant in order:
                port = free_port()
                proc = start(variant, port, work / f"{re.sub(r'[^A-Za-z0-9]+', '_', variant.name)}.log")
                try:
                    body_single = single if variant.bare else single_ours
                    body_batch = batch if variant.bare else batch_ours
                    url = f"http://127.0.0.1:{port}"
                    run_wrk(wrk, f"{url}/v1/track", body_single, 2, args.connections, work)  # warm up
                    before = cpu_seconds(proc.pid)
                    rps, bad = run_wrk(
                        wrk, f"{url}/v1/track", body_single, args.seconds, args.connections, work
                    )
                    after = cpu_seconds(proc.pid)
                    variant.single.append(rps)
                    variant.single_cpu.append((after - before) / (rps * args.seconds) * 1e6)
                    rps_b, bad_b = run_wrk(
                        wrk, f"{url}/v1/batch", body_batch, args.seconds, max(8, args.connections // 4), work
                    )
                    variant.batch.append(rps_b * BATCH)
                    variant.batch_cpu.append(
                        (cpu_seconds(proc.pid) - after) / (rps_b * BATCH * args.seconds) * 1e6
                    )
                    print(
                        f"  {variant.name:22s} single {rps:9,.0f}/s {variant.single_cpu[-1]:5.0f} µs CPU"
                        f"  batch {rps_b * BATCH:9,.0f} events/s {variant.batch_cpu[-1]:5.1f} µs CPU"
                        f"   (non-2xx: {bad} / {bad_b})"
                    )
                finally:
                    stop(proc)

    print(f"\nmachine: {os.cpu_count()} cores; server, broker and wrk share them; {args.rounds} rounds")
    print(
        f"{'':22s} {'single (median)':>16s} {'batch (median)':>16s} {'CPU µs/request':>15s} {'CPU µs/event':>13s}"
    )
    for v in variants:
        print(
            f"{v.name:22s} {median(v.single):16,.0f} {median(v.batch):16,.0f}"
            f" {median(v.single_cpu):15.0f} {median(v.batch_cpu):13.1f}"
        )

    def ratio(a: Variant, b: Variant, kind: str) -> float:
        return median([x / y for x, y in zip(getattr(a, kind), getattr(b, kind), strict=True)])

    bares = {v.name.split(" ", 1)[1]: v for v in variants if v.bare}
    ours = [v for v in variants if not v.bare and not v.name.startswith("old")]
    old = next((v for v in variants if v.name.startswith("old")), None)
    for v in ours:
        server = (
            v.name.split()[1] if len(v.name.split()) > 1 and not v.name.split()[1].startswith("x") else ""
        )
        base = bares.get(server) or next(iter(bares.values()))
        batch_ratio = ratio(v, base, "batch")
        line = f"{v.name}: batch {median(v.batch):,.0f} events/s, {batch_ratio:.2f} of {base.name}"
        if " x" not in v.name:
            line += (
                f" (targets >= 100,000 {'OK' if median(v.batch) >= 100_000 else 'BELOW'}"
                f", >= 0.70 {'OK' if batch_ratio >= 0.7 else 'BELOW'})"
            )
        if old is not None:
            line += f"; vs old: single {ratio(v, old, 'single'):.2f}x, batch {ratio(v, old, 'batch'):.2f}x"
            line += f" (CPU per request {ratio(v, old, 'single_cpu'):.2f}x, per event {ratio(v, old, 'batch_cpu'):.2f}x)"
        print(line)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
