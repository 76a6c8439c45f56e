"""The aggregator's recomputation (persons, sessions_daily, daily stats, churn) as history grows,
against the same recomputation over one day of data, measured in the same run.

    make bench     (or: .venv/bin/python bench/refresh_bench.py --sessions-per-day 60000)

A recomputation runs about once a second while events arrive, for the visitors and days the
written batches touched. Its cost must follow what it recomputes (today's visitors), not how
much history the project has: otherwise a site's aggregator slows down as the month fills up.

1. A fresh embedded ClickHouse, migrated. One project gets one day (today) of sessions and
   events (INSERT ... SELECT FROM numbers(), inside the engine); the read models the
   aggregator keeps as it goes are filled by the migrations' own back-fill statements. Baseline:
   `derived.refresh` for 100 of today's visitors and today, timed --runs times after a first
   one (median).
2. The same project then gets 30 earlier days of the same traffic, persons and active days for
   its visitors, and 1M identified ids of the past (identify/alias mappings). The same
   recomputation is timed again. Ratio = month / one day.
   Target: <= 1.5 (the recomputation does not scan the month).

The slowest statements of the month's recomputation are printed with their median times.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickhouse_connect.driver.client import Client  # noqa: E402

from services.aggregator import derived  # noqa: E402
from services.aggregator.processor import Dirty  # noqa: E402
from werkstroom.clickhouse.migrate import load_migrations  # noqa: E402
from werkstroom.logging import configure_logging  # noqa: E402
from werkstroom.serve import clickhouse_factory, prepare_clickhouse  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402

PROJECT = "p_refresh"
TARGET = 1.5
DAY_MS = 86_400_000

# A day of traffic: `n` sessions of visitors a<k> (k < visitors), 10 minutes each, spread over
# the day, with 5 events each (2 page views), at day offset {d} from today.
SESSIONS = """
INSERT INTO sessions (project_id, anonymous_id, session_id, start_at, last_event_at, entry_at,
                      page_entered_at, page_views, events, kafka_partition, version)
SELECT {p:String}, concat('a', toString(number % {visitors:UInt64})), concat('s', toString({d:Int64}), '-', toString(number)),
       start, start + INTERVAL 10 MINUTE, start, start, 2, 5, number % 4, number
FROM (SELECT number, toDateTime64({day:Date}, 3, 'UTC') + toIntervalMillisecond(intDiv(number * 86000000, {n:UInt64})) AS start
      FROM numbers({n:UInt64}))
"""
EVENTS = """
INSERT INTO events (project_id, event_id, type, event, anonymous_id, timestamp, received_at, path,
                    kafka_partition, kafka_offset)
SELECT {p:String}, concat(toString({d:Int64}), '-', toString(number)), if(number % 5 < 2, 'page', 'track'),
       if(number % 5 < 2, '$page', 'click'), concat('a', toString(intDiv(number, 5) % {visitors:UInt64})),
       toDateTime64({day:Date}, 3, 'UTC') + toIntervalMillisecond(intDiv(number * 86000000, {n:UInt64} * 5)),
       now64(3), '/x', number % 4, number
FROM numbers({n:UInt64} * 5)
"""
PERSONS = """
INSERT INTO persons (project_id, person_id, first_seen, last_seen, sessions, page_views, version)
SELECT {p:String}, concat('a', toString(number)), toDateTime64({first:Date} + number % {days:UInt64}, 3, 'UTC'),
       now64(3), 1, 2, 1
FROM numbers({visitors:UInt64})
"""
# Identified visitors of the past: ids x<n>, two per user.
MAPPINGS = """
INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, version)
SELECT {p:String}, concat('x', toString(number)), concat('u', toString(intDiv(number, 2))), 1
FROM numbers({mappings:UInt64})
"""
ACTIVITY = """
INSERT INTO person_activity (project_id, day, person_id, is_deleted, version)
SELECT {p:String}, {first:Date} + number % {days:UInt64}, concat('a', toString(number % {visitors:UInt64})), 0, 1
FROM numbers({visitors:UInt64} * 4)
"""


def fill_day(client: Client, offset: int, sessions: int, visitors: int) -> None:
    day = (datetime.now(UTC) - timedelta(days=offset)).date()
    params = {"p": PROJECT, "d": offset, "day": day, "n": sessions, "visitors": visitors}
    client.command(SESSIONS, parameters=params)
    client.command(EVENTS, parameters=params)


def backfill(client: Client) -> None:
    """The read models the aggregator writes as it goes (sessions_daily, events_daily,
    persons_first_day, person_distinct_ids_by_person), from the filled tables, with the
    migrations' own back-fill statements."""
    for name in (
        "0010_sessions_daily.sql",
        "0012_events_daily.sql",
        "0013_persons_first_day.sql",
        "0015_person_distinct_ids_by_person.sql",
    ):
        (migration,) = [m for m in load_migrations() if m.name == name]
        client.command(migration.statements()[-1])


class Timed:
    """Every statement the recomputation's client runs, with its time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.times: dict[str, list[float]] = defaultdict(list)
        for name in ("command", "query", "insert", "raw_insert"):
            setattr(self, name, self._wrap(getattr(client, name), name))

    def _wrap(self, call: Any, name: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                text = " ".join(str(args[0]).split())[:70] if args else name
                self.times[f"{name}: {text}"].append(time.perf_counter() - started)

        return timed


def recompute(client: Client, visitors: list[str], runs: int) -> tuple[float, Timed]:
    """The median time of a recomputation, after a first one (which also rewrites what the
    filled data left inconsistent, e.g. the visitors' active days), and its statements' times."""
    today = datetime.now(UTC).date()
    timed = Timed(client)
    took = []
    for run in range(runs + 1):
        dirty = Dirty(days={(PROJECT, today)}, ids={(PROJECT, v) for v in visitors})
        started = time.perf_counter()
        derived.refresh(timed, dirty)  # type: ignore[arg-type]
        if run == 0:
            timed.times.clear()
        else:
            took.append(time.perf_counter() - started)
    return statistics.median(took), timed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions-per-day", type=int, default=60_000)
    parser.add_argument("--visitors", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--mappings", type=int, default=1_000_000, help="identified ids of the past")
    parser.add_argument("--dirty", type=int, default=100, help="visitors recomputed")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    configure_logging("WARNING")

    work = Path(tempfile.mkdtemp(prefix="refresh-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # ~0.8 GB of data
    settings = Settings(data_dir=work)
    client = prepare_clickhouse(settings)
    session = clickhouse_factory(settings)(session=True)  # the recomputation stages in its session
    today_visitors = [f"a{k}" for k in range(0, args.sessions_per_day, args.sessions_per_day // args.dirty)]
    today_visitors = today_visitors[: args.dirty]

    started = time.perf_counter()
    fill_day(client, 0, args.sessions_per_day, args.visitors)
    backfill(client)
    day_only, _ = recompute(session, today_visitors, args.runs)

    for offset in range(1, args.days + 1):
        fill_day(client, offset, args.sessions_per_day, args.visitors)
    first = (datetime.now(UTC) - timedelta(days=args.days)).date()
    history = {"p": PROJECT, "first": first, "visitors": args.visitors, "days": args.days}
    client.command(PERSONS, parameters=history)
    client.command(ACTIVITY, parameters=history)
    client.command(MAPPINGS, parameters={"p": PROJECT, "mappings": args.mappings})
    backfill(client)
    filled = time.perf_counter() - started
    month, timed = recompute(session, today_visitors, args.runs)

    sessions = client.query("SELECT count() FROM sessions").first_row[0]
    events = client.query("SELECT count() FROM events").first_row[0]
    ratio = month / day_only
    verdict = "OK" if ratio <= TARGET else "ABOVE TARGET"
    print(
        f"filled {events:,} events, {sessions:,} sessions over {args.days + 1} days and "
        f"{args.mappings:,} identified ids in {filled:.1f}s"
    )
    print(f"recomputation of {len(today_visitors)} of today's visitors (median of {args.runs}):")
    print(f"  one day of data:     {day_only * 1000:7.1f} ms")
    print(
        f"  {args.days + 1} days of data:    {month * 1000:7.1f} ms  -> ratio {ratio:.2f} (target <= {TARGET}) {verdict}"
    )
    print("  slowest statements with the month:")
    slowest = sorted(timed.times.items(), key=lambda kv: -statistics.median(kv[1]))[:8]
    for text, times in slowest:
        print(f"    {statistics.median(times) * 1000:6.1f} ms  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
