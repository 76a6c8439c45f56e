"""Ingest's CPU per event, in-process: the request handler alone, two revisions side by side.

    .venv/bin/python bench/ingest_cpu.py --against main            (defaults: 9 rounds of 200 requests)
    .venv/bin/python bench/ingest_cpu.py --against main --single   (one-event /v1/track calls)

ingest_bench.py measures throughput over HTTP with the broker and wrk on the same cores, so
its rounds scatter by 30 % and more on a shared host. This times only `Ingestor.handle` (parse,
validate, enrich, encode, key) for ingest_bench's 100-event batch, with the broker and the key
cache faked, in CPU time of its own process: the figure to follow while changing the handler,
not a throughput. Each revision runs in its own process (the tree of `--against` extracted with
git archive, as ingest_bench does); rounds alternate their order. Prints microseconds of CPU an
event per round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import extract  # noqa: E402

#: Run in a child with the tree under test first on sys.path: prints CPU us an event.
CHILD = """
import asyncio, gc, json, sys, time
tree, requests, single = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
sys.path.insert(0, tree)
import orjson
from bench.ingest_bench import BATCH, SENT_AT, event
from services.ingest import enrich
from services.ingest.app import Ingestor, IngestState, rate_limiters
from werkstroom.contract import Topics
from werkstroom.settings import Settings

class Publisher:
    async def publish(self, topic, messages): pass
    async def until_open(self): pass
    async def within(self, work, timeout): return await work

class Keys:
    def get(self, write_key): return "p_bench"

settings = Settings(rate_limit_eps=0)
limiter, client_limiter = rate_limiters(settings)
ingestor = Ingestor(IngestState(settings=settings, topics=Topics.from_settings(settings), producer=None,
    publisher=Publisher(), keys=Keys(), limiter=limiter, client_limiter=client_limiter))
if single:
    call_type, events, body = "track", 1, orjson.dumps({**event(1), "writeKey": "wk"})
else:
    call_type, events = None, BATCH
    body = orjson.dumps({"writeKey": "wk", "batch": [event(i) for i in range(BATCH)], "sentAt": SENT_AT})
headers = {"content-type": "application/json", "user-agent": "wrk"}

async def run(n):
    for _ in range(n):
        answer = await ingestor.handle(call_type, headers, body, "127.0.0.1")
        assert answer.status == 200 and answer.body["accepted"] == events, answer.body

enrich.warm_up()
asyncio.run(run(20))
gc.collect(); gc.freeze(); gc.set_threshold(settings.gc_young_threshold, 20, 100)  # as serve does
started = time.process_time()
asyncio.run(run(requests))
print(json.dumps((time.process_time() - started) / requests / events * 1e6))
"""


def measure(tree: Path, requests: int, single: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(requests), "1" if single else "0"],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", help="a git revision (e.g. main) or a source tree")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=200, help="requests a round (batches or singles)")
    parser.add_argument("--single", action="store_true", help="one-event /v1/track calls instead of batches")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-cpu-"))
    trees = {"ours": ROOT}
    if args.against:
        trees[f"old ({args.against})"] = extract(args.against, work)
    figures: dict[str, list[float]] = {name: [] for name in trees}
    try:
        for rnd in range(args.rounds):
            order = list(trees.items()) if rnd % 2 == 0 else list(trees.items())[::-1]
            line = []
            for name, tree in order:
                figures[name].append(measure(tree, args.requests, args.single))
                line.append(f"{name} {figures[name][-1]:6.2f}")
            print(f"round {rnd + 1}: " + "   ".join(line) + "  us CPU an event")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    kind = "single calls" if args.single else "100-event batches"
    for name, value in medians.items():
        print(f"{name:24s} {value:6.2f} us CPU an event (median of {args.rounds}; {kind})")
    if args.against:
        old = medians[f"old ({args.against})"]
        print(f"ours / old: {medians['ours'] / old:.2f} of the CPU an event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
