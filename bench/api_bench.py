"""Dashboard API latency over 10 million events and 1 million persons, against baselines measured
in the same run.

    make bench     (or: .venv/bin/python bench/api_bench.py --events 1000000 --persons 100000)

1. A fresh embedded ClickHouse in a temp dir, migrated (werkstroom.clickhouse.migrate), filled
   by bench/api_data.py inside the engine (INSERT ... SELECT FROM numbers(), no HTTP): events,
   and every table the aggregator derives from them, with a live tail timed from now. The
   generation time is printed; `--check` also verifies the data's consistency.
2. The real API app (services.api.app.create_app) served by uvicorn on a free loopback port, in
   this process (the embedded engine is one process per data directory), as
   `werkstroom serve --target api` serves it.
3. Sequential requests (3 warm-up, then --requests timed) per dashboard endpoint, over one
   keep-alive HTTP connection (httpx). Baselines: `SELECT 1` through the app's own ClickHouse
   client path (a pooled client, in a thread, as every route runs its queries), and `/health`
   through the same HTTP client. Ratios are p50 / p50 of /health.
   Target (issue #4): p95 < 50 ms for online, metrics, activity, funnel and the first users page.
4. Which query costs what: the app's ClickHouse clients are wrapped to time every call, so
   each endpoint's slowest statement is printed with its median time; `--explain` adds
   ClickHouse's EXPLAIN (indexes) of the slowest statement of any endpoint over target.

Results are saved as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import typing
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from api_data import Clock, Generated, check, describe, generate, live_day  # noqa: E402
from clickhouse_connect.driver.client import Client  # noqa: E402

from services.api.app import create_app  # noqa: E402
from services.api.breakdowns import Dimension  # noqa: E402
from werkstroom.clickhouse import connect  # noqa: E402
from werkstroom.embedded import free_port  # noqa: E402
from werkstroom.logging import configure_logging  # noqa: E402
from werkstroom.serve import _http_server, prepare_clickhouse  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402

TARGET_MS = 50.0
#: The breakdown dimensions (GET .../breakdowns/{dimension}), each measured by breakdown_plan.
BREAKDOWN_DIMENSIONS = list(typing.get_args(Dimension))
#: The views the filters narrow besides the breakdowns (issue 23), timed with one session filter
#: and one person filter: online, metrics, activity, funnel and users, the gated views.
NARROWS = [
    *((f"{k}={v}", {k: v}) for k, v in (("country", "NL"), ("segment", "premium"))),
    ("country=NL&segment=premium", {"country": "NL", "segment": "premium"}),  # the example
]
GATED = ("online", "metrics", "activity?days=30", "funnels/{id}?days=30", "users")
RESULTS = ROOT / "bench" / "results"


# -- timing every ClickHouse call the app makes ------------------------------------------------


@dataclass
class Call:
    label: str
    sql: str
    parameters: Any
    ms: float


@dataclass
class QueryLog:
    """Every ClickHouse call of the app's clients, tagged with the endpoint being measured."""

    label: str = ""
    calls: list[Call] = field(default_factory=list)

    def wrap(self, client: Client) -> Client:
        for name in ("query", "command", "query_row_block_stream", "raw_query", "query_arrow", "query_df"):
            method = getattr(client, name, None)
            if method is not None:
                setattr(client, name, self._timed(method))
        return client

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            sql = args[0] if args else kwargs.get("query", kwargs.get("cmd", ""))
            params = kwargs.get("parameters", args[1] if len(args) > 1 else None)
            label = self.label
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.calls.append(Call(label, str(sql), params, (time.perf_counter() - started) * 1000))

        return timed

    def slowest(self, label: str) -> tuple[str, Any, float, int] | None:
        """(sql, parameters of one call, median ms, calls) of the label's costliest statement."""
        by_sql: dict[str, list[Call]] = defaultdict(list)
        for call in self.calls:
            if call.label == label:
                by_sql[call.sql].append(call)
        if not by_sql:
            return None
        sql, calls = max(by_sql.items(), key=lambda kv: statistics.median(c.ms for c in kv[1]))
        return sql, calls[-1].parameters, statistics.median(c.ms for c in calls), len(calls)

    def per_request(self, label: str, requests: int) -> tuple[float, float]:
        """(ClickHouse calls, milliseconds spent in them) per request."""
        mine = [c.ms for c in self.calls if c.label == label]
        return len(mine) / max(requests, 1), sum(mine) / max(requests, 1)


# -- measuring -------------------------------------------------------------------------------------


def p95(samples: list[float]) -> float:
    """The 95th percentile as every API bench states it: the sample ranked round(0.95 n) in
    ascending order (the 48th of 50)."""
    ordered = sorted(samples)
    return ordered[max(0, round(len(ordered) * 0.95) - 1)]


@dataclass
class Figure:
    name: str
    samples_ms: list[float]
    errors: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        return p95(self.samples_ms)


async def start_api(app: Any, settings: Settings) -> tuple[Any, asyncio.Task[Any]]:
    """Serve `app` on settings.api_port (uvicorn, as `serve` runs it) until it listens."""
    server = _http_server(app, settings, settings.api_port)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    return server, serving


async def stop_api(app: Any, server: Any, serving: asyncio.Task[Any]) -> None:
    """Stop what start_api started, its live hub first."""
    live = getattr(app.state, "live", None)
    if live is not None:
        with contextlib.suppress(Exception):
            await live.close()
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(serving, 15)


async def measure(
    name: str, call: Callable[[int], Any], requests: int, log: QueryLog, warmup: int = 3
) -> Figure:
    """`call(i)` awaited `warmup` times untimed, then `requests` times timed, one at a time."""
    figure = Figure(name, [])
    log.label = f"warmup:{name}"
    for i in range(warmup):
        await call(i)
    log.label = name
    for i in range(requests):
        started = time.perf_counter()
        result = await call(i)
        figure.samples_ms.append((time.perf_counter() - started) * 1000)
        if isinstance(result, httpx.Response) and result.status_code != 200:
            figure.errors.append(f"{result.request.url.path} -> {result.status_code}: {result.text[:200]}")
    log.label = ""
    return figure


async def run(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="werkstroom-apibench-"))
    settings = Settings(
        data_dir=work,
        clickhouse_database="bench",
        demo=False,
        api_port=free_port(),
        log_level="WARNING",
    )
    log = QueryLog()
    server = None
    serving: asyncio.Task[Any] | None = None
    try:
        client = await asyncio.to_thread(prepare_clickhouse, settings)
        print(f"generating {args.events:,} events and {args.persons:,} persons in ClickHouse ({work}) ...")
        data: Generated = await asyncio.to_thread(
            generate,
            client,
            settings,
            events=args.events,
            persons=args.persons,
            log=print if args.verbose else lambda _: None,
            clock=at_clock(args.at),
        )
        print(f"generation: {data.seconds:.1f} s ({data.events / data.seconds:,.0f} events/s)")
        print(f"  data: {await asyncio.to_thread(describe, client, data)}")
        data.live = live = await asyncio.to_thread(live_day, client, data)
        print(
            f"  today (read live by the breakdowns): {live['utc_time']} UTC, {live['day_share']:.0%} of the "
            f"day gone, {live['today_sessions']:,} sessions ({live['sessions_share']:.0%} of a settled day's)"
        )
        if args.check:
            problems = await asyncio.to_thread(check, client, data)
            print("  check: " + ("OK" if not problems else "; ".join(problems)))
            if problems:
                return 1

        def factory() -> Client:
            return log.wrap(connect(settings.effective_clickhouse_url, settings.clickhouse_database))

        app = create_app(settings, clickhouse=factory, admin_token="bench-admin", clock=data.clock)
        server, serving = await start_api(app, settings)

        base = f"{settings.api_url}/api/projects/{data.project_id}"
        headers = {"Authorization": f"Bearer {data.read_key}"}
        sample = [
            r[0]
            for r in client.query(
                "SELECT person_id FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
                "ORDER BY cityHash64(person_id) LIMIT {n:UInt32}",
                parameters={"p": data.project_id, "n": args.requests + 3},
            ).result_rows
        ]
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            first = await http.get(f"{base}/users")
            cursor = first.json().get("next_cursor") if first.status_code == 200 else None

            def get(path: str, **params: Any) -> Callable[[int], Any]:
                return lambda _i: http.get(f"{base}/{path}", params=params)

            def person(path: str) -> Callable[[int], Any]:
                quoted = [quote(p, safe="") for p in sample]
                return lambda i: http.get(f"{base}/users/{quoted[i % len(quoted)]}{path}")

            pool = getattr(app.state, "pool", None)

            async def select_one(_i: int) -> Any:
                if pool is not None:
                    return await pool.run(lambda c: c.query("SELECT 1").result_rows)
                return await asyncio.to_thread(lambda: app.state.clickhouse.query("SELECT 1").result_rows)

            plan: list[tuple[str, Callable[[int], Any]]] = [
                ("baseline: SELECT 1 (app's client)", select_one),
                ("baseline: /health (HTTP)", lambda _i: http.get(f"{settings.api_url}/health")),
                ("online", get("online")),
                # the filters on the live list (issue 23), timed next to it: the tail's visitors
                # are online for minutes only, and timed after the breakdowns some runs found
                # none left (an empty answer, two statements of four)
                *((f"filtered/online {label}", get("online", **narrow)) for label, narrow in NARROWS),
                ("metrics", get("metrics")),
                ("activity?days=30", get("activity", days=30)),
                ("funnels/{id}?days=30", get(f"funnels/{data.funnel_id}", days=30)),
                ("users", get("users")),
                ("users?segment=premium", get("users", segment="premium")),
                ("users/{id}", person("")),
                ("users/{id}/sessions", person("/sessions")),
            ]
            if cursor:
                plan.append(("users (2nd page, cursor)", get("users", cursor=cursor)))
            plan.extend(breakdown_plan(get, data.clock().date()))
            # the other gated views narrowed by them
            for label, narrow in NARROWS:
                plan.append((f"filtered/metrics {label}", get("metrics", **narrow)))
                plan.append((f"filtered/activity?days=30 {label}", get("activity", days=30, **narrow)))
                funnel = f"funnels/{data.funnel_id}"
                plan.append((f"filtered/funnels/{{id}}?days=30 {label}", get(funnel, days=30, **narrow)))
                plan.append((f"filtered/users {label}", get("users", **narrow)))
            figures = [await measure(name, call, args.requests, log) for name, call in plan]

        health = figures[1].p50
        print()
        print(
            f"API latency, {args.requests} sequential requests each after 3 warm-up "
            f"({data.events:,} events, {data.persons:,} persons; target p95 < {TARGET_MS:.0f} ms)"
        )
        print(
            f"  {'endpoint':<34} {'p50 ms':>8} {'p95 ms':>8} {'x /health':>10} {'queries':>8} {'in CH ms':>9}  verdict"
        )
        verdicts: dict[str, bool] = {}
        for f in figures:
            verdict = ""
            if f.name in GATED or f.name.startswith(("bd/", "filtered/")):
                ok = f.p95 < TARGET_MS and not f.errors
                verdicts[f.name] = ok
                verdict = "PASS" if ok else "FAIL"
            if f.errors:
                verdict = (verdict + f" ({len(f.errors)} errors)").strip()
            calls, in_ch = log.per_request(f.name, args.requests)
            queries, ch = ("", "") if f.name.startswith("baseline") else (f"{calls:.0f}", f"{in_ch:.1f}")
            print(
                f"  {f.name:<34} {f.p50:8.1f} {f.p95:8.1f} {f.p50 / health:10.1f} {queries:>8} {ch:>9}  {verdict}"
            )
        for f in figures:
            for error in f.errors[:2]:
                print(f"  error: {f.name}: {error}")

        print()
        print("slowest ClickHouse statement per endpoint (median over the timed requests):")
        slow: dict[str, dict[str, Any]] = {}
        raw: dict[str, Any] = {}
        for f in figures[2:]:
            found = log.slowest(f.name)
            if found is None:
                continue
            sql, params, ms, calls = found
            slow[f.name] = {"sql": sql, "parameters": _jsonable(params), "median_ms": ms, "calls": calls}
            raw[f.name] = params
            print(f"  {f.name:<28} {ms:7.1f} ms  {_one_line(sql)[:150]}")
        if args.explain:
            for name, ok in verdicts.items():
                if not ok and name in slow:
                    print(f"\nEXPLAIN indexes = 1 for {name}:\n  {_one_line(slow[name]['sql'])}")
                    for line in await asyncio.to_thread(_explain, client, slow[name]["sql"], raw[name]):
                        print("    " + line)

        passed = all(verdicts.values())
        print()
        print(
            f"api: {sum(verdicts.values())}/{len(verdicts)} gated endpoints under p95 {TARGET_MS:.0f} ms "
            f"-> {'PASS' if passed else 'FAIL'}; generation {data.seconds:.0f} s"
        )
        _save(args, data, figures, verdicts, slow, log)
        # Like the other benches, a figure over target is reported, not an exit status; an
        # endpoint that answered an error is.
        return 1 if any(f.errors for f in figures) else 0
    finally:
        if server is not None and serving is not None:
            await stop_api(app, server, serving)
        if args.keep:
            print(f"kept the data in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def breakdown_plan(
    get: Callable[..., Callable[[int], Any]], today: date
) -> list[tuple[str, Callable[[int], Any]]]:
    """Every breakdown dimension over the last 7 and 30 UTC days, without and with a filter
    (country=NL; for countries, source=Google); sources over 30 days by the person filters
    (segment=premium; plan=trial with country=NL); and the top pages by them (the issue's
    "which pages brought this week's Dutch premium users": 7 days under country=NL&segment=premium;
    30 days under segment=premium)."""
    plan = []
    for dimension in BREAKDOWN_DIMENSIONS:
        narrow = {"source": "Google"} if dimension == "countries" else {"country": "NL"}
        for days in (7, 30):
            span = {"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat()}
            plan.append((f"bd/{dimension} {days}d", get(f"breakdowns/{dimension}", **span)))
            label = ",".join(f"{k}={v}" for k, v in narrow.items())
            plan.append((f"bd/{dimension} {days}d {label}", get(f"breakdowns/{dimension}", **span, **narrow)))
    # the person filters (the visitor's person now: persons' anonymous_ids), on one dimension
    span = {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat()}
    for narrow in ({"segment": "premium"}, {"plan": "trial", "country": "NL"}):
        label = ",".join(f"{k}={v}" for k, v in narrow.items())
        plan.append((f"bd/sources 30d {label}", get("breakdowns/sources", **span, **narrow)))
    week = {"from": (today - timedelta(days=6)).isoformat(), "to": today.isoformat()}
    for length, days, narrow in (
        ("7d", week, {"country": "NL", "segment": "premium"}),
        ("30d", span, {"segment": "premium"}),
    ):
        label = ",".join(f"{k}={v}" for k, v in narrow.items())
        plan.append((f"bd/pages {length} {label}", get("breakdowns/pages", **days, **narrow)))
    return plan


def _explain(client: Client, sql: str, params: Any) -> list[str]:
    rows = client.query("EXPLAIN indexes = 1 " + sql, parameters=params).result_rows
    return [str(r[0]) for r in rows]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _one_line(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def _save(
    args: argparse.Namespace,
    data: Generated,
    figures: list[Figure],
    verdicts: dict[str, bool],
    slow: dict[str, dict[str, Any]],
    log: QueryLog,
) -> None:
    health = figures[1].p50
    save_results(
        "api",
        {
            "events": data.events,
            "persons": data.persons,
            "generation_seconds": round(data.seconds, 1),
            "generation_steps": {k: round(v, 2) for k, v in data.steps.items()},
            "today": data.live,
            "requests": args.requests,
            "target_p95_ms": TARGET_MS,
            "endpoints": {
                f.name: {
                    "p50_ms": round(f.p50, 2),
                    "p95_ms": round(f.p95, 2),
                    "p50_vs_health": round(f.p50 / health, 2),
                    "clickhouse_ms_per_request": round(log.per_request(f.name, args.requests)[1], 2),
                    "errors": len(f.errors),
                    "pass": verdicts.get(f.name),
                }
                for f in figures
            },
            "slowest_statement": slow,
        },
    )


def save_results(bench: str, body: dict[str, Any]) -> None:
    """Write a run's figures to bench/results/<bench>_bench-<UTC time>.json, with the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{bench}_bench-{stamp}.json"
    head = {
        "bench": bench,
        "at": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    path.write_text(json.dumps({**head, **body}, indent=2, default=str) + "\n")
    print(f"saved {path.relative_to(ROOT)}")


def at_clock(at: str | None) -> Clock:
    """The bench's clock: the wall clock, or with --at HH:MM that time (UTC) moving on from the
    start of the generation: today's, or tomorrow's when today's is more than 30 minutes past
    (ClickHouse drops online_visitors rows an hour old by its own clock, its TTL)."""
    if at is None:
        return Clock()
    now = datetime.now(UTC)
    start = datetime.combine(now.date(), datetime.strptime(at, "%H:%M").time(), tzinfo=UTC)
    if start < now - timedelta(minutes=30):
        start += timedelta(days=1)
    return Clock(start)


#: --scale: events, persons
SCALES = {"10M": (10_000_000, 1_000_000), "100M": (100_000_000, 10_000_000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None, help="default: the scale's")
    parser.add_argument("--persons", type=int, default=None, help="default: the scale's")
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="10M",
        help="events / persons: 10M / 1M (make bench), 100M / 10M (opt-in, issue 24's ten times "
        "the data: about 50 minutes here, 12 GB of memory and 12 GB or more of disk)",
    )
    parser.add_argument("--requests", type=int, default=50, help="timed requests per endpoint")
    parser.add_argument("--check", action="store_true", help="verify the generated data's consistency")
    parser.add_argument(
        "--explain", action="store_true", help="EXPLAIN the slowest query of a failing endpoint"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--verbose", action="store_true", help="time each generation step")
    parser.add_argument(
        "--at",
        metavar="HH:MM",
        help="run as if it were HH:MM UTC (today's, or tomorrow's once past; the clock moves on from "
        "there): today is read live by the breakdowns and fills up through the day, so runs compare "
        "at like hours (23:00: nearly a whole day, the worst case; a run takes about 20 minutes of "
        "it). Default: the wall clock",
    )
    args = parser.parse_args()
    events, persons = SCALES[args.scale]
    args.events = events if args.events is None else args.events
    args.persons = persons if args.persons is None else args.persons
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
