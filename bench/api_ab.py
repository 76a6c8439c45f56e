"""Two revisions of the dashboard API on the same kept data, alternating: the A/B of a change.

    .venv/bin/python bench/api_bench.py --keep          (once: prints "kept the data in DIR")
    .venv/bin/python bench/api_ab.py --data DIR --against main [--rounds 2] [--only metrics]

api_bench.py generates its 10M events anew each run and times every endpoint once, and this
host's speed moves by 15-20 % between runs (endpoints no change touched, run after run): a
change of a few ms does not show through that. Here each revision serves the same kept data
in its own process (the embedded engine takes one process per data directory; the tree of
`--against` extracted with git archive, as ingest_cpu does), rounds alternate their order,
and each round times every endpoint with 3 warm-up and `--requests` timed requests, as
api_bench does. Prints each endpoint's p50 / p95 per revision (medians over the rounds) and
ours / old of the p50. The endpoints are api_bench's that change with filters (who is online,
the metrics, activity, funnel and users filtered; every breakdown) and the unfiltered users list and who is
online as controls. The API's clock is the data's newest event (a few seconds after it); the
kept project gets a read key of its own (a projects row, newer than the bench's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_bench import NARROWS, breakdown_plan, p95  # noqa: E402

from bench.ingest_bench import extract  # noqa: E402
from werkstroom.clickhouse import connect  # noqa: E402
from werkstroom.projects import hash_key  # noqa: E402

#: Run in a child with the tree under test first on sys.path: serves that tree's API on the
#: data and prints {label: [ms, ...]} as JSON.
CHILD = """
import asyncio, json, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
tree, data, plan, requests = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, tree)
import httpx
from services.api.app import create_app
from werkstroom.clickhouse import connect
from werkstroom.embedded import free_port
from werkstroom.logging import configure_logging
from werkstroom.serve import _http_server
from werkstroom.settings import Settings

configure_logging("WARNING")
settings = Settings(data_dir=data, clickhouse_database="bench", demo=False, api_port=free_port(), log_level="WARNING")
def factory():
    return connect(settings.effective_clickhouse_url, settings.clickhouse_database)
client = factory()
newest = client.query("SELECT max(timestamp) FROM events").first_row[0]
client.close()
now = newest.replace(tzinfo=UTC) + timedelta(seconds=5)

async def main():
    app = create_app(settings, clickhouse=factory, admin_token="ab", clock=lambda: now)
    server = _http_server(app, settings, settings.api_port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    out = {}
    base = f"{settings.api_url}/api/projects/{plan['project']}"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {plan['key']}"}, timeout=60) as http:
        for label, path, params in plan["endpoints"]:
            samples = []
            for i in range(3 + requests):
                started = time.perf_counter()
                answer = await http.get(f"{base}/{path}", params=params)
                if answer.status_code != 200:
                    raise SystemExit(f"{label}: {answer.status_code} {answer.text[:300]}")
                if i >= 3:
                    samples.append((time.perf_counter() - started) * 1000)
            out[label] = samples
    await app.state.live.close()
    server.should_exit = True
    await asyncio.wait_for(serving, 15)
    print(json.dumps(out))

asyncio.run(main())
"""


def endpoints(data: Path) -> tuple[dict[str, Any], str]:
    """The plan a child times (the project, a read key for it, the endpoints), and the data's day."""
    client = connect(f"chdb://{data / 'clickhouse'}", "bench")
    try:
        pid, name, write_key, zone, created, updated = client.query(
            "SELECT project_id, name, write_key, timezone, created_at, updated_at FROM projects FINAL "
            "WHERE deleted = 0 ORDER BY created_at LIMIT 1"
        ).first_row
        key = "rk_api_ab"
        client.insert(
            "projects",
            [[pid, name, write_key, hash_key(key), zone, created, updated + timedelta(seconds=1), 0]],
            column_names=[
                *("project_id", "name", "write_key", "read_key_hash", "timezone"),
                *("created_at", "updated_at", "deleted"),
            ],
        )
        funnel = client.query(
            "SELECT funnel_id FROM funnels FINAL WHERE project_id = {p:String} LIMIT 1", parameters={"p": pid}
        ).first_row[0]
        today = client.query("SELECT toDate(max(timestamp)) FROM events").first_row[0]
    finally:
        client.close()
    listed: list[tuple[str, str, dict[str, Any]]] = [("users", "users", {}), ("online", "online", {})]
    for label, narrow in NARROWS:
        listed.append((f"filtered/online {label}", "online", narrow))
    for label, narrow in NARROWS:
        listed.append((f"filtered/metrics {label}", "metrics", narrow))
        listed.append((f"filtered/activity?days=30 {label}", "activity", {"days": 30, **narrow}))
        listed.append(
            (f"filtered/funnels/{{id}}?days=30 {label}", f"funnels/{funnel}", {"days": 30, **narrow})
        )
        listed.append((f"filtered/users {label}", "users", narrow))
    for label, path in breakdown_plan(lambda path, **params: (path, params), today):  # type: ignore[arg-type,return-value]
        listed.append((label, path[0], path[1]))  # type: ignore[index]
    return {"project": pid, "key": key, "endpoints": listed}, str(today)


def measure(tree: Path, data: Path, plan: dict[str, Any], requests: int) -> dict[str, list[float]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(data), json.dumps(plan), str(requests)],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
    figures: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, required=True, help="a data directory api_bench.py --keep kept")
    parser.add_argument("--against", required=True, help="a git revision (e.g. main) or a source tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint and round")
    parser.add_argument("--only", default="", help="only the endpoints whose label contains this")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:  # in a process of its own: the engine is free again when it ends
        print(json.dumps(endpoints(args.data)))
        return 0
    prepared = subprocess.run(
        [sys.executable, __file__, "--data", str(args.data), "--against", args.against, "--prepare"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    plan, today = json.loads(prepared.strip().splitlines()[-1])
    plan["endpoints"] = [e for e in plan["endpoints"] if args.only in e[0]]
    work = Path(tempfile.mkdtemp(prefix="werkstroom-ab-"))
    trees = {"ours": ROOT, "old": extract(args.against, work)}
    rounds: dict[str, list[dict[str, list[float]]]] = {name: [] for name in trees}
    try:
        for rnd in range(args.rounds):
            order = list(trees.items()) if rnd % 2 == 0 else list(trees.items())[::-1]
            for name, tree in order:
                rounds[name].append(measure(tree, args.data, plan, args.requests))
            print(f"round {rnd + 1} of {args.rounds} done ({' then '.join(n for n, _ in order)})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.data} (today {today}), ours against {args.against}, medians of {args.rounds} rounds")
    print(f"  {'endpoint':<50} {'ours p50':>9} {'p95':>6} {'old p50':>9} {'p95':>6} {'ours/old':>9}")
    for label, _path, _params in plan["endpoints"]:
        ours = [(statistics.median(r[label]), p95(r[label])) for r in rounds["ours"]]
        old = [(statistics.median(r[label]), p95(r[label])) for r in rounds["old"]]
        o50, o95 = statistics.median(x for x, _ in ours), statistics.median(y for _, y in ours)
        b50, b95 = statistics.median(x for x, _ in old), statistics.median(y for _, y in old)
        print(f"  {label:<50} {o50:9.1f} {o95:6.1f} {b50:9.1f} {b95:6.1f} {o50 / b50:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
