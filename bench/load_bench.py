"""The aggregator's visitor load as history grows: a month of sessions, then a year, measured in
the same run.

    make bench     (or: .venv/bin/python bench/load_bench.py --sessions-per-day 33000)

A visitor the aggregator does not hold in memory (new, back after a quiet spell, or after a
restart) is loaded from its newest `sessions` rows (`SessionsProcessor.load`) before its
events are applied; the batch's rows wait for it. Its cost must follow the visitors loaded,
not how many months of sessions the project has.

1. A fresh embedded ClickHouse, migrated. One project gets 31 days of sessions (INSERT ...
   SELECT FROM numbers(), inside the engine), merged: half of them from a pool of returning
   visitors (l<k>), half from visitors seen once (o<day>-<n>).
2. Baseline: `SessionsProcessor.load` for batches of missing visitors, timed --runs times each
   (median): "returning", 90 visitors of the pool; "mixed", 300 visitors of which 70 % are
   new, 20 % from the pool and 10 % seen once in the last day (what a live batch looks like).
3. The project then gets the 334 days before (a year in all), merged, and the same loads are
   timed again. Ratio = year / month. Target: <= 1.5.

The pool is small enough that a returning visitor has more than HISTORY (20) sessions within
the month already, so both loads return the same sessions: what grows is only what the load
reads to find them.
"""

from __future__ import annotations

import argparse
import atexit
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickhouse_connect.driver.client import Client  # noqa: E402

from services.aggregator.processor import SessionsProcessor  # noqa: E402
from werkstroom.logging import configure_logging  # noqa: E402
from werkstroom.serve import prepare_clickhouse  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402

PROJECT = "p_load"
TARGET = 1.5

# Days [first, last) before today: `n` sessions a day, 10 minutes each, spread over the day;
# even numbers from the returning pool, odd ones from visitors seen only that day.
SESSIONS = """
INSERT INTO sessions (project_id, anonymous_id, session_id, start_at, last_event_at, entry_at,
                      page_entered_at, page_views, events, kafka_partition, version)
SELECT {p:String},
       if(number % 2 = 0, concat('l', toString(cityHash64(number) % {pool:UInt64})),
          concat('o', toString(day), '-', toString(number))),
       concat('s', toString(number)), start, start + INTERVAL 10 MINUTE, start, start, 2, 5,
       number % 4, number
FROM (SELECT number, intDiv(number, {n:UInt64}) AS day,
             toDateTime64({today:Date}, 3, 'UTC') - toIntervalDay(day + 1)
             + toIntervalMillisecond(intDiv((number % {n:UInt64}) * 86000000, {n:UInt64})) AS start
      FROM numbers({from:UInt64}, {count:UInt64}))
"""


def fill(client: Client, first: int, last: int, per_day: int, pool: int) -> None:
    today = datetime.now(UTC).date()
    client.command(
        SESSIONS,
        parameters={
            "p": PROJECT,
            "pool": pool,
            "n": per_day,
            "today": today,
            "from": first * per_day,
            "count": (last - first) * per_day,
        },
    )
    client.command("OPTIMIZE TABLE sessions FINAL")  # a settled table: merges are not what is measured


def batches(per_day: int, pool: int, runs: int, seed: int) -> dict[str, list[list[str]]]:
    rnd = random.Random(seed)

    def seen_yesterday() -> str:
        return f"o0-{2 * rnd.randrange(per_day // 2) + 1}"

    def mixed() -> list[str]:
        ids = []
        for _ in range(300):
            r = rnd.random()
            ids.append(
                f"new-{rnd.random()}"
                if r < 0.7
                else f"l{rnd.randrange(pool)}"
                if r < 0.9
                else seen_yesterday()
            )
        return ids

    return {
        "returning (90)": [[f"l{rnd.randrange(pool)}" for _ in range(90)] for _ in range(runs)],
        "mixed (300)": [mixed() for _ in range(runs)],
    }


def time_loads(client: Client, sets: dict[str, list[list[str]]]) -> dict[str, tuple[float, int]]:
    """Median seconds and the sessions loaded per batch, for each kind of batch."""
    out = {}
    for name, runs in sets.items():
        times, loaded = [], []
        SessionsProcessor().load(client, {(PROJECT, v) for v in runs[0]})  # warm the caches
        for ids in runs:
            processor = SessionsProcessor()
            started = time.perf_counter()
            processor.load(client, {(PROJECT, v) for v in ids})
            times.append(time.perf_counter() - started)
            loaded.append(sum(len(v.sessions) for v in processor.visitors.values()))
        out[name] = (statistics.median(times), int(statistics.median(loaded)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions-per-day", type=int, default=33_000)
    parser.add_argument("--pool", type=int, default=20_000, help="returning visitors")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # a year of sessions
    client = prepare_clickhouse(Settings(data_dir=work))
    sets = batches(args.sessions_per_day, args.pool, args.runs, seed=7)

    checkpoints = sorted({31, args.days // 2, args.days})
    timings: dict[int, dict[str, tuple[float, int]]] = {}
    started, filled_to = time.perf_counter(), 0
    for days in checkpoints:
        fill(client, filled_to, days, args.sessions_per_day, args.pool)
        filled_to = days
        timings[days] = time_loads(client, sets)
    filled = time.perf_counter() - started

    sessions = client.query("SELECT count() FROM sessions").first_row[0]
    print(f"filled, merged and timed {sessions:,} sessions over {args.days} days in {filled:.1f}s")
    print(
        f"visitor load (median of {args.runs}) with {', '.join(f'{d} days' for d in checkpoints)} of sessions:"
    )
    base, half, last = checkpoints[0], checkpoints[-2], checkpoints[-1]
    for name in sets:
        cells = "   ".join(
            f"{d:3d} d {timings[d][name][0] * 1000:6.1f} ms ({timings[d][name][1]})" for d in checkpoints
        )
        print(f"  {name:15s} {cells}")
    ratios = {d: max(timings[d][n][0] / timings[base][n][0] for n in sets) for d in checkpoints[1:]}
    print("  worst ratio to " + f"{base} days: " + ", ".join(f"{d} days {r:.2f}" for d, r in ratios.items()))
    growth = max(timings[last][n][0] / timings[half][n][0] for n in sets)
    verdict = "OK" if growth <= TARGET else "ABOVE TARGET"
    print(f"  worst ratio {last} days / {half} days: {growth:.2f} (target <= {TARGET}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
