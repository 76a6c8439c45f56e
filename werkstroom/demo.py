"""A deterministic visitor simulation: Segment calls that look like real traffic.

Used by the tests (exact expected values), the benchmarks and `werkstroom demo`. Visitors
browse in sessions separated by more than 30 minutes, some identify themselves mid-visit with
a plan (free, trial, premium), some events arrive late (an offline queue), some visitors are
bots, and several projects share the pipeline. The same seed always gives the same calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
