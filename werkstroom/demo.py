"""A deterministic visitor simulation: Segment calls that look like real traffic.

Used by the tests (exact expected values), the benchmarks and `werkstroom demo`. Visitors
browse in sessions separated by more than 30 minutes, some identify themselves mid-visit with
a plan (free, trial, premium), some events arrive late (an offline queue), some visitors are
bots, and several projects share the pipeline. The same seed always gives the same calls.
"""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

AGENTS = {
    "desktop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "mobile": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "tablet": "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1",
}
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PATHS = ["/", "/pricing", "/features", "/blog", "/blog/kafka", "/docs", "/signup", "/checkout"]
EVENTS = ["Button Clicked", "Signed Up", "Plan Selected", "Order Completed", "Video Played"]


@dataclass
class ExpectedSession:
    project_id: str
    anonymous_id: str
    start: datetime
    last: datetime
    page_views: int
    events: int  # every event but heartbeats, page views included
    entry_path: str


@dataclass
class Simulation:
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # write key -> calls in send order
    sessions: list[ExpectedSession] = field(default_factory=list)
    identified: dict[tuple[str, str], str] = field(default_factory=dict)  # (project, anon) -> user id
    plans: dict[tuple[str, str], str] = field(default_factory=dict)  # (project, user) -> plan
    bot_calls: int = 0

    def all_calls(self) -> int:
        return sum(len(c) for c in self.calls.values())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def simulate(
    projects: dict[str, str],
    *,
    visitors: int = 50,
    seed: int = 7,
    end: datetime | None = None,
    days: int = 3,
    bots: int = 3,
    heartbeats: bool = True,
) -> Simulation:
    """`projects` maps project id -> write key. Visits fall in the `days` before `end` (default:
    now - 1 minute), so every timestamp is in the past, as ingest requires."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC) - timedelta(minutes=1)
    sim = Simulation(calls={key: [] for key in projects.values()})
    counter = 0
    for project_id, write_key in projects.items():
        calls = sim.calls[write_key]
        late: list[dict[str, Any]] = []
        for v in range(visitors + bots):
            is_bot = v >= visitors
            anonymous_id = f"{project_id}-anon-{v}"
            device = rng.choice(list(AGENTS))
            agent = BOT if is_bot else AGENTS[device]
            moment = end - timedelta(days=days) + timedelta(seconds=rng.randrange(0, days * 86400 // 2))
            user_id = ""
            for _session in range(rng.randint(1, 4)):
                if moment > end - timedelta(minutes=30):
                    break
                start = moment
                pages = events = 0
                entry = ""
                for step in range(rng.randint(1, 6)):
                    counter += 1
                    path = rng.choice(PATHS) if step else rng.choice(PATHS[:4])
                    entry = entry or path
                    call = {
                        "type": "page",
                        "anonymousId": anonymous_id,
                        "messageId": f"m-{counter}",
                        "timestamp": _iso(moment),
                        "properties": {"path": path, "url": f"https://site{project_id}.example{path}"},
                        "context": {"userAgent": agent},
                    }
                    if user_id:
                        call["userId"] = user_id
                    calls.append(call)
                    pages += 1
                    last = moment
                    if rng.random() < 0.4:
                        counter += 1
                        moment += timedelta(seconds=rng.randint(1, 20))
                        calls.append(
                            {
                                "type": "track",
                                "anonymousId": anonymous_id,
                                "event": rng.choice(EVENTS),
                                "messageId": f"m-{counter}",
                                "timestamp": _iso(moment),
                                "context": {"userAgent": agent},
                                "properties": {"path": path},
                            }
                        )
                        events += 1
                        last = moment
                    if heartbeats and rng.random() < 0.3:
                        counter += 1
                        moment += timedelta(seconds=30)
                        calls.append(
                            {
                                "type": "track",
                                "anonymousId": anonymous_id,
                                "event": "$heartbeat",
                                "messageId": f"m-{counter}",
                                "timestamp": _iso(moment),
                                "context": {"userAgent": agent},
                            }
                        )
                        last = moment
                    if not user_id and not is_bot and rng.random() < 0.15:
                        user_id = f"user-{project_id}-{v}"
                        plan = rng.choice(["free", "trial", "premium"])
                        counter += 1
                        moment += timedelta(seconds=2)
                        calls.append(
                            {
                                "type": "identify",
                                "anonymousId": anonymous_id,
                                "userId": user_id,
                                "traits": {"plan": plan, "email": f"{user_id}@example.com"},
                                "messageId": f"m-{counter}",
                                "timestamp": _iso(moment),
                                "context": {"userAgent": agent},
                            }
                        )
                        events += 1
                        last = moment
                        sim.identified[(project_id, anonymous_id)] = user_id
                        sim.plans[(project_id, user_id)] = plan
                    moment += timedelta(seconds=rng.randint(10, 240))
                if not is_bot and rng.random() < 0.2 and last > start:
                    # Sent late (an offline queue flushed at the end), timed inside this session.
                    counter += 1
                    when = start + (last - start) / 2
                    late.append(
                        {
                            "type": "track",
                            "anonymousId": anonymous_id,
                            "event": "Offline Action",
                            "messageId": f"m-{counter}",
                            "timestamp": _iso(when),
                            "context": {"userAgent": agent},
                        }
                    )
                    events += 1
                if not is_bot:
                    sim.sessions.append(
                        ExpectedSession(project_id, anonymous_id, start, last, pages, pages + events, entry)
                    )
                moment = last + timedelta(minutes=rng.randint(35, 60 * 24))
        calls.extend(late)
        sim.bot_calls += sum(1 for c in calls if c["context"]["userAgent"] == BOT)
    return sim


def batches(calls: list[dict[str, Any]], size: int = 100) -> list[list[dict[str, Any]]]:
    return [calls[i : i + size] for i in range(0, len(calls), size)]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", "User-Agent": AGENTS["desktop"]},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = orjson.loads(response.read())
        return answer


def drive(
    settings: Any,
    visitors: int,
    days: int,
    live: int,
    seconds: float,
    out: Callable[[str], None],
    seed: int | None = None,
) -> int:
    """`werkstroom demo`: the simulated history, then `live` visitors browsing until stopped,
    sent to the running server's ingest for its demo project."""
    runtime_file, demo_file = settings.data_dir / "runtime.json", settings.data_dir / "demo.json"
    if not runtime_file.exists() or not demo_file.exists():
        out(f"no running server with a demo project in {settings.data_dir}: start `make run` first")
        return 2
    ingest = orjson.loads(runtime_file.read_text())["ingest_url"]
    demo = orjson.loads(demo_file.read_text())
    key, project_id = demo["write_key"], demo["project_id"]
    rng = random.Random(seed)
    # One simulation per day, each over that day and the one before it, with the same visitor
    # ids: traffic on every day up to now, and visitors who come back (or do not).
    now = datetime.now(UTC) - timedelta(minutes=1)
    sent = 0
    for back in range(days - 1, -1, -1):
        daily = max(1, visitors * rng.randint(6, 10) // (8 * max(1, days // 2)))
        sim = simulate(
            {project_id: key},
            visitors=daily,
            days=2,
            end=now - timedelta(days=back),
            seed=rng.randrange(1 << 30),
            bots=0,
        )
        for call in sim.calls[key]:  # message ids are only unique within one simulation
            call["messageId"] = f"demo-{back}-{call['messageId']}"
        for chunk in batches(sim.calls[key], 200):
            sent += int(_post(f"{ingest}/v1/batch", {"writeKey": key, "batch": chunk})["accepted"])
    out(f"sent {sent:,} events of {visitors} simulated visitors over {days} days to {project_id}")
    api = orjson.loads(runtime_file.read_text())["api_url"]
    funnels_url = f"{api}/api/projects/{project_id}/funnels"
    auth = {"Authorization": f"Bearer {demo['read_key']}"}
    with urllib.request.urlopen(urllib.request.Request(funnels_url, headers=auth), timeout=10) as response:
        existing = orjson.loads(response.read())["funnels"]
    if not existing:
        steps = [
            {"event": "$page", "path": "/pricing"},
            {"event": "Plan Selected"},
            {"event": "Order Completed"},
        ]
        body = orjson.dumps({"name": "Pricing to order", "steps": steps, "window_seconds": 86400})
        request = urllib.request.Request(
            funnels_url, data=body, headers={**auth, "Content-Type": "application/json"}, method="POST"
        )
        urllib.request.urlopen(request, timeout=60).close()
        out("created the funnel 'Pricing to order'")
    out(f"dashboard: {api}/  read key: {demo['read_key']}")
    if live <= 0:
        return 0
    out(f"{live} visitors browsing live (Ctrl-C to stop)")
    ids = [f"live-{rng.randrange(1 << 40):x}" for _ in range(live)]
    stuck = set(ids[: max(1, live // 6)])  # some stay on one page: "stuck" after 5 minutes
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    tick = 0
    try:
        while time.monotonic() < deadline:
            for anonymous_id in ids:
                if anonymous_id in stuck and tick:
                    call: dict[str, Any] = {"type": "track", "event": "$heartbeat"}
                elif rng.random() < 0.25:
                    call = {"type": "track", "event": rng.choice(EVENTS)}
                else:
                    path = "/checkout" if anonymous_id in stuck else rng.choice(PATHS)
                    call = {
                        "type": "page",
                        "properties": {"path": path, "url": f"https://demo.example{path}"},
                    }
                call.update(anonymousId=anonymous_id, context={"userAgent": AGENTS[rng.choice(list(AGENTS))]})
                if call["type"] == "track" and rng.random() < 0.5:
                    call["properties"] = {"path": rng.choice(PATHS)}
                _post(f"{ingest}/v1/batch", {"writeKey": key, "batch": [call]})
            tick += 1
            time.sleep(10)
    except KeyboardInterrupt:
        pass
    return 0
