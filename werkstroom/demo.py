"""Deterministic visitor simulations: Segment calls that look like real traffic.

`simulate()` is the tests' and benchmarks' (exact expected values): visitors browse in sessions
separated by more than 30 minutes, some identify themselves mid-visit with a plan (free, trial,
premium), some events arrive late (an offline queue), some visitors are bots, and several
projects share the pipeline. `build_history()` is `werkstroom demo`'s (further down): 60 days
in which every dashboard view has something to show. The same seed always gives the same calls.
"""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from werkstroom.contract import HEARTBEAT, PAGE
from werkstroom.funnels import Step, progress
from werkstroom.logging import get_logger

log = get_logger(__name__)

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
                                "event": HEARTBEAT,
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


# -- `werkstroom demo`: a history in which every dashboard view has something to show ---------
#
# build_history() is pure (a seed and "now" give the same calls); expected_figures() reads the
# dashboard's figures off those calls by docs/definitions.md; drive() sends them, creates the
# funnel, and reads the same figures back from the API (DemoApi.figures), which it prints.

#: Browser User-Agents (desktop, then mobile and tablet); ingest files the CRAWLERS as bots.
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Mobile/15E148 Safari/604.1",
)
CRAWLERS = (
    BOT,
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "python-requests/2.32.3",
)
SITE = "https://demo.werkstroom.example"
BROWSE_PATHS = ("/", "/features", "/blog", "/blog/kafka-in-practice", "/docs", "/docs/install", "/about")
BROWSE_EVENTS = ("Button Clicked", "Video Played", "Newsletter Subscribed", "Docs Searched")
NAMES = ("Anna", "Bram", "Chloé", "Daan", "Emma", "Finn", "Julia", "Lars", "Mila", "Noah", "Sara", "Teun")

FUNNEL_NAME = "Pricing to order"
FUNNEL_STEPS = (Step(PAGE, "/pricing"), Step("Plan Selected"), Step("Order Completed"))
FUNNEL_WINDOW = 86400
#: The dashboard's funnel report covers the last 30 UTC days (services/api/static/app.js).
FUNNEL_DAYS = 30

# The definitions (docs/definitions.md) the expected figures follow; the API has its own copy
# (services/api/queries.py), which the core may not import.
SESSION_GAP = timedelta(minutes=30)
ONLINE_WINDOW = timedelta(minutes=5)
STUCK_AFTER = timedelta(minutes=5)
ACTIVE_FOR = timedelta(days=7)
INACTIVE_FOR = timedelta(days=30)
RETURNING_SESSIONS = 20  # "returning visitors": more sessions than this
SEGMENTS = ("active", "inactive", "churned", "premium", "trial")

MIN_VISITORS = 20
MIN_DAYS = 35  # churned means last seen more than 30 days ago
MIN_LIVE = 2  # at least two of them stuck


@dataclass(frozen=True)
class DemoVisitor:
    anonymous_id: str
    kind: str  # regular (> 20 sessions), active, inactive or churned: when they were last seen
    agent: str
    user_id: str | None  # set when they identify (in their first session)
    plan: str | None
    live: bool  # browsing now
    stuck: bool  # browsing now, on one page for over five minutes


@dataclass
class DemoHistory:
    now: datetime
    calls: list[dict[str, Any]]  # in time order, bots included
    visitors: list[DemoVisitor]

    @property
    def bot_calls(self) -> int:
        return sum(1 for c in self.calls if _is_bot(c))


@dataclass(frozen=True)
class DemoFigures:
    """What the dashboard shows: persons, per segment, returning visitors, the funnel's step
    counts (last 30 days), online now and stuck, the metric cards and today's filtered bots."""

    persons: int
    segments: dict[str, int]
    returning: int  # persons with more than RETURNING_SESSIONS sessions
    most_sessions: int
    funnel: tuple[int, ...]
    online: int
    stuck: int
    total_users: int
    new_this_week: int
    churn_rate: float | None
    bots_today: int

    def drop_offs(self) -> list[float | None]:
        """Per step, (previous - count) / previous * 100 as the API rounds it; None for step 1."""
        out: list[float | None] = [None]
        for previous, count in zip(self.funnel, self.funnel[1:], strict=False):
            out.append(round((previous - count) / previous * 100, 1) if previous else None)
        return out

    def lines(self) -> list[str]:
        seg = self.segments
        steps = " -> ".join(f"{s.event}{'@' + s.path if s.path else ''}" for s in FUNNEL_STEPS)
        funnel = []
        for step, (count, drop) in enumerate(zip(self.funnel, self.drop_offs(), strict=True), 1):
            note = "" if drop is None else f" (drop-off {drop:.1f} %{', over 50 %' if drop > 50 else ''})"
            funnel.append(f"step {step}: {count}{note}")
        churn = "n/a" if self.churn_rate is None else f"{self.churn_rate:.1f} %"
        return [
            f"persons      {self.persons}  (total users card {self.total_users}, new this week "
            f"{self.new_this_week}, churn rate {churn})",
            f"segments     active {seg['active']}, inactive {seg['inactive']}, churned {seg['churned']}; "
            f"premium {seg['premium']}, trial {seg['trial']}",
            f"returning    {self.returning} persons with more than {RETURNING_SESSIONS} sessions "
            f"(most: {self.most_sessions})",
            f"funnel       '{FUNNEL_NAME}' ({steps}), last {FUNNEL_DAYS} days: " + ", ".join(funnel),
            f"online now   {self.online}, stuck {self.stuck} (on one page for over 5 minutes)",
            f"bots         {self.bots_today} bot events filtered today",
        ]


def _is_bot(call: dict[str, Any]) -> bool:
    return call["context"]["userAgent"] in CRAWLERS


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _slots(rng: random.Random, first: datetime, last: datetime, count: int) -> list[datetime]:
    """`count` session starts from `first` to `last` (both included), one per equal slot of at
    least two hours, each in the first quarter of its slot: at least 1.5 hours apart, so no two
    sessions (at most 35 minutes each) merge."""
    if count <= 1 or last - first < timedelta(hours=4):
        return [last] if count <= 1 or last - first < timedelta(hours=2) else [first, last]
    count = min(count, int((last - first) / timedelta(hours=2)))
    slot = (last - first) / (count - 1)
    starts = [first + slot * i + slot * rng.uniform(0, 0.25) for i in range(count - 1)]
    return [first, *starts[1:], last]


def build_history(
    now: datetime,
    *,
    visitors: int = 150,
    days: int = 60,
    live: int = 12,
    seed: int = 7,
    cohort: str = "",
) -> DemoHistory:
    """The demo's visitors over `days` days up to `now` (UTC), each with a browser User-Agent:
    a few regulars (21 to 30 sessions), visitors last seen in the last 5 days (active), 9 to 26
    days ago (inactive) and more than 33 days ago (churned); a third identify in their first
    session, with a plan (premium, trial or free); some reach the funnel's pricing page in the
    last 25 days, under half of those select a plan and most of those order; `live` of the
    active ones browse now (the first max(2, live // 4) stuck on one page, kept online by
    heartbeats), and a few crawlers come by (today, among others). Deterministic for a seed
    and a `now`; message ids are unique per `now`. `cohort` goes into every visitor and user
    id: a second demo on the same project with another cohort adds new visitors (with the same
    ids, their older sessions would arrive after newer ones, past the aggregator's window of
    late events: services/aggregator/sessions.py HISTORY)."""
    if visitors < MIN_VISITORS or days < MIN_DAYS or live < MIN_LIVE or live > visitors // 4:
        raise ValueError(
            f"the demo needs at least {MIN_VISITORS} visitors, {MIN_DAYS} days and {MIN_LIVE} live "
            "visitors (at most a quarter of the visitors)"
        )
    now = now.astimezone(UTC)
    rng = random.Random(seed)
    run = f"{int(now.timestamp() * 1000):x}"
    regulars = max(2, visitors * 8 // 100)
    churned = visitors * 22 // 100
    inactive = visitors * 22 // 100
    kinds = ["regular"] * regulars + ["churned"] * churned + ["inactive"] * inactive
    kinds += ["active"] * (visitors - len(kinds))
    plans = ["premium"] * (visitors * 12 // 100) + ["trial"] * (visitors * 12 // 100)
    plans += ["free"] * (visitors // 10)
    plans += [None] * (visitors - len(plans))
    rng.shuffle(plans)
    live_candidates = [i for i, k in enumerate(kinds) if k in ("regular", "active")]
    live_ids = set(rng.sample(live_candidates, live))
    stuck_ids = set(sorted(live_ids)[: max(MIN_LIVE, live // 4)])

    calls: list[dict[str, Any]] = []
    counter = 0

    def call(kind: str, visitor: DemoVisitor, at: datetime, **fields: Any) -> None:
        nonlocal counter
        counter += 1
        body: dict[str, Any] = {
            "type": kind,
            "anonymousId": visitor.anonymous_id,
            "messageId": f"demo-{run}-{counter}",
            "timestamp": _iso(at),
            "context": {"userAgent": visitor.agent},
            **fields,
        }
        calls.append(body)

    def page(visitor: DemoVisitor, at: datetime, path: str, user: str | None) -> None:
        extra = {"userId": user} if user else {}
        title = path.strip("/").split("/")[-1].replace("-", " ").title() or "Home"
        call("page", visitor, at, properties={"path": path, "url": SITE + path, "title": title}, **extra)

    def track(visitor: DemoVisitor, at: datetime, event: str, path: str, user: str | None) -> None:
        extra = {"userId": user} if user else {}
        call("track", visitor, at, event=event, properties={"path": path}, **extra)

    history_end = now - timedelta(hours=2)  # the history's sessions end before the live ones
    funnel_from = now - timedelta(days=25)
    demo_visitors: list[DemoVisitor] = []
    funnel_sessions: list[tuple[DemoVisitor, datetime, str | None]] = []
    for index, kind in enumerate(kinds):
        plan = plans[index]
        user_id = f"user{cohort}-{index:03d}" if plan else None
        is_live = index in live_ids
        visitor = DemoVisitor(
            anonymous_id=f"anon-{seed}{cohort}-{index:03d}",
            kind=kind,
            agent=rng.choice(BROWSERS),
            user_id=user_id,
            plan=plan,
            live=is_live,
            stuck=index in stuck_ids,
        )
        demo_visitors.append(visitor)
        if kind == "regular":
            first = now - timedelta(days=rng.uniform(days - 20, days - 1))
            last = history_end - timedelta(hours=rng.uniform(0, 36))
            count = rng.randint(RETURNING_SESSIONS + 1, RETURNING_SESSIONS + 10)
        else:
            back = {"active": (0.2, 5), "inactive": (9, 26), "churned": (33, days - 1)}[kind]
            last = history_end - timedelta(days=rng.uniform(*back))
            first = last - timedelta(days=rng.uniform(0, min(20, days - 1 - (now - last).days)))
            count = rng.randint(1, 6)
        starts = _slots(rng, first, last, count)
        known: str | None = None  # the user id once they identified
        for number, start in enumerate(starts):
            moment = start
            path = rng.choice(BROWSE_PATHS[:5])
            for step in range(rng.randint(1, 5)):
                if step:
                    path = rng.choice(BROWSE_PATHS)
                page(visitor, moment, path, known)
                if rng.random() < 0.35:
                    moment += timedelta(seconds=rng.randint(3, 40))
                    track(visitor, moment, rng.choice(BROWSE_EVENTS), path, known)
                if number == 0 and step == 0 and user_id:
                    moment += timedelta(seconds=rng.randint(5, 30))
                    name = rng.choice(NAMES)
                    call(
                        "identify",
                        visitor,
                        moment,
                        userId=user_id,
                        traits={"plan": plan, "name": name, "email": f"{name.lower()}.{index}@example.com"},
                    )
                    known = user_id
                moment += timedelta(seconds=rng.randint(15, 240))
            if start >= funnel_from and rng.random() < 0.5:
                funnel_sessions.append((visitor, moment, known))
        if is_live:
            _live_session(rng, visitor, now, page, track, known)
    # The funnel: one attempt per visitor who had a session in the last 25 days, at the end of
    # their newest such session: pricing, then under half select a plan, most of those order.
    # The first 40 % select a plan (a drop-off of at least 60 %), three quarters of those order.
    attempts: dict[str, tuple[DemoVisitor, datetime, str | None]] = {}
    for visitor, moment, known in funnel_sessions:
        attempts[visitor.anonymous_id] = (visitor, moment, known)
    selecting = len(attempts) * 4 // 10
    ordering = selecting * 3 // 4
    for number, (visitor, moment, known) in enumerate(attempts.values()):
        page(visitor, moment, "/pricing", known)
        if number < selecting:
            moment += timedelta(seconds=rng.randint(20, 120))
            track(visitor, moment, "Plan Selected", "/pricing", known)
        if number < ordering:
            page(visitor, moment + timedelta(seconds=5), "/checkout", known)
            moment += timedelta(seconds=rng.randint(30, 200))
            track(visitor, moment, "Order Completed", "/checkout", known)
    for number, agent in enumerate(CRAWLERS):
        crawler = DemoVisitor(f"crawler-{seed}{cohort}-{number}", "bot", agent, None, None, False, False)
        for at in _crawl_times(rng, now, days):
            page(crawler, at, rng.choice(BROWSE_PATHS), None)
    calls.sort(key=lambda c: (c["timestamp"], int(c["messageId"].rsplit("-", 1)[1])))
    return DemoHistory(now=now, calls=calls, visitors=demo_visitors)


def _live_session(
    rng: random.Random,
    visitor: DemoVisitor,
    now: datetime,
    page: Callable[[DemoVisitor, datetime, str, str | None], None],
    track: Callable[[DemoVisitor, datetime, str, str, str | None], None],
    known: str | None,
) -> None:
    """A session going on now: the last event a few seconds ago. A stuck visitor entered their
    page (pricing or checkout) 5.5 to 6.5 minutes ago and has sent only heartbeats since; the
    others entered theirs less than 3 minutes ago (so not stuck for 2 minutes more)."""
    if visitor.stuck:
        entered = now - timedelta(seconds=rng.uniform(330, 390))
        page(visitor, entered - timedelta(seconds=rng.randint(20, 200)), rng.choice(BROWSE_PATHS[:5]), known)
        path = rng.choice(("/pricing", "/checkout"))
        page(visitor, entered, path, known)
        beat = entered + timedelta(seconds=30)
        last = now - timedelta(seconds=rng.uniform(2, 15))
        while beat < last:
            track(visitor, beat, HEARTBEAT, path, known)
            beat += timedelta(seconds=30)
        track(visitor, last, HEARTBEAT, path, known)
        return
    moment = now - timedelta(seconds=rng.uniform(60, 480))
    path = rng.choice(BROWSE_PATHS[:5])
    page(visitor, moment, path, known)
    entered = moment
    while moment + timedelta(seconds=90) < now:
        moment += timedelta(seconds=rng.uniform(20, 85))
        if rng.random() < 0.3 and now - entered < timedelta(minutes=3):
            track(visitor, moment, rng.choice(BROWSE_EVENTS), path, known)
        else:
            path = rng.choice(BROWSE_PATHS)
            page(visitor, moment, path, known)
            entered = moment
    track(visitor, now - timedelta(seconds=rng.uniform(2, 15)), HEARTBEAT, path, known)


def _crawl_times(rng: random.Random, now: datetime, days: int) -> list[datetime]:
    """A crawler's page views: a few visits over the history and one today (UTC), when today
    has begun long enough ago."""
    visits = [now - timedelta(days=rng.uniform(1, days - 1)) for _ in range(2)]
    today = max(datetime(now.year, now.month, now.day, tzinfo=UTC), now - timedelta(hours=3))
    if now - today > timedelta(minutes=5):
        visits.append(today + (now - timedelta(minutes=2) - today) * rng.random())
    return [start + timedelta(seconds=2 * i) for start in visits for i in range(rng.randint(3, 6))]


# -- the figures: expected from the calls (the definitions), or read back from the API --------


def expected_figures(calls: list[dict[str, Any]], now: datetime) -> DemoFigures:
    """The dashboard's figures at `now` for a project that holds just these calls, by
    docs/definitions.md: sessions split where more than 30 minutes pass without an event; a
    person is the user id an identify mapped the anonymous id to, else the anonymous id;
    segments by last seen (active < 7 days, inactive < 30, else churned) and the plan trait;
    online: last event less than 5 minutes ago, stuck: online and on one page for more than 5;
    the funnel counts persons by their attempts that started in the last 30 UTC days; weeks
    and churn in UTC days. Bot calls count only as today's bot events."""
    now = now.astimezone(UTC)
    today = now.date()
    browsing = sorted((c for c in calls if not _is_bot(c)), key=lambda c: c["timestamp"])
    person_of: dict[str, str] = {}
    plan_of: dict[str, str] = {}
    for c in browsing:
        if c["type"] == "identify":
            person_of[c["anonymousId"]] = c["userId"]
            if "plan" in c.get("traits", {}):
                plan_of[c["userId"]] = c["traits"]["plan"]
    by_visitor: dict[str, list[dict[str, Any]]] = {}
    for c in browsing:
        by_visitor.setdefault(c["anonymousId"], []).append(c)

    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    sessions: dict[str, int] = {}
    active_days: dict[str, set[date]] = {}
    steps: dict[str, list[tuple[int, str, str]]] = {}
    online = stuck = 0
    for anonymous_id, visits in by_visitor.items():
        person = person_of.get(anonymous_id, anonymous_id)
        times = [_parse(c["timestamp"]) for c in visits]
        first[person] = min(first.get(person, times[0]), times[0])
        last[person] = max(last.get(person, times[-1]), times[-1])
        start = times[0]
        entered = None
        for i, (c, at) in enumerate(zip(visits, times, strict=True)):
            if i and at - times[i - 1] > SESSION_GAP:
                sessions[person] = sessions.get(person, 0) + 1
                active_days.setdefault(person, set()).update(_days(start, times[i - 1]))
                start, entered = at, None
            if c["type"] == "page":
                entered = at
            if c["type"] in ("page", "track") and c.get("event") != HEARTBEAT:
                name = PAGE if c["type"] == "page" else c["event"]
                path = c.get("properties", {}).get("path", "")
                steps.setdefault(person, []).append((int(at.timestamp() * 1000), name, path))
        sessions[person] = sessions.get(person, 0) + 1
        active_days.setdefault(person, set()).update(_days(start, times[-1]))
        if times[-1] >= now - ONLINE_WINDOW:
            online += 1
            stuck += entered is not None and now - entered > STUCK_AFTER

    persons = list(last)
    segments = {
        "active": sum(1 for p in persons if last[p] >= now - ACTIVE_FOR),
        "inactive": sum(1 for p in persons if now - INACTIVE_FOR <= last[p] < now - ACTIVE_FOR),
        "churned": sum(1 for p in persons if last[p] < now - INACTIVE_FOR),
        "premium": sum(1 for p in persons if plan_of.get(p) == "premium"),
        "trial": sum(1 for p in persons if plan_of.get(p) == "trial"),
    }
    since = today - timedelta(days=FUNNEL_DAYS - 1)
    funnel = [0] * len(FUNNEL_STEPS)
    for person_steps in steps.values():
        rows = progress(FUNNEL_STEPS, FUNNEL_WINDOW * 1000, person_steps)
        reached = max((level for day, level in rows.items() if day >= since), default=0)
        for k in range(reached):
            funnel[k] += 1
    base = [
        p for p in persons if any(today - timedelta(13) <= d <= today - timedelta(7) for d in active_days[p])
    ]
    gone = [p for p in base if not any(today - timedelta(6) <= d <= today for d in active_days[p])]
    return DemoFigures(
        persons=len(persons),
        segments=segments,
        returning=sum(1 for p in persons if sessions[p] > RETURNING_SESSIONS),
        most_sessions=max(sessions.values(), default=0),
        funnel=tuple(funnel),
        online=online,
        stuck=stuck,
        total_users=sum(1 for p in persons if first[p].date() <= today),
        new_this_week=sum(1 for p in persons if today - timedelta(6) <= first[p].date() <= today),
        churn_rate=round(len(gone) / len(base) * 100, 1) if base else None,
        bots_today=sum(1 for c in calls if _is_bot(c) and _parse(c["timestamp"]).date() == today),
    )


def _days(start: datetime, end: datetime) -> list[date]:
    """The UTC days a session spans, from its start to its last event."""
    return [start.date() + timedelta(days=n) for n in range((end.date() - start.date()).days + 1)]


class DemoApi:
    """The few reads and writes of the dashboard's API the demo makes, with the project's read key."""

    def __init__(self, api_url: str, project_id: str, read_key: str) -> None:
        self.base = f"{api_url}/api/projects/{project_id}"
        self.headers = {"Authorization": f"Bearer {read_key}", "Content-Type": "application/json"}

    def request(self, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return orjson.loads(response.read())

    def users(self, segment: str) -> list[dict[str, Any]]:
        """Every person the Users table lists for `segment`, page after page."""
        found: list[dict[str, Any]] = []
        cursor = ""
        while True:
            page = self.request(
                f"/users?segment={segment}&limit=500" + (f"&cursor={cursor}" if cursor else "")
            )
            found += page["users"]
            if not page["next_cursor"]:
                return found
            cursor = page["next_cursor"]

    def ensure_funnel(self) -> tuple[str, bool]:
        """The demo's funnel: the one already defined (same name and steps), else a new one,
        which the aggregator back-fills from the events stored so far. Returns (id, created)."""
        steps = [s.as_dict() for s in FUNNEL_STEPS]
        for funnel in self.request("/funnels")["funnels"]:
            if funnel["name"] == FUNNEL_NAME and funnel["steps"] == steps:
                return str(funnel["funnel_id"]), False
        body = {"name": FUNNEL_NAME, "steps": steps, "window_seconds": FUNNEL_WINDOW}
        return str(self.request("/funnels", body, timeout=120)["funnel_id"]), True

    def figures(self, funnel_id: str) -> tuple[DemoFigures, datetime, dict[str, Any]]:
        """The figures as the dashboard shows them; with the metrics' as_of and the pipeline's
        freshness (lag, last write; `funnel_backfilled`: the aggregator has back-filled the funnel)."""
        lists = {segment: self.users(segment) for segment in ("all", *SEGMENTS)}
        metrics = self.request("/metrics")
        online = self.request("/online?limit=1000")
        report = self.request(f"/funnels/{funnel_id}?days={FUNNEL_DAYS}")
        cards = metrics["metrics"]
        everyone = lists["all"]
        figures = DemoFigures(
            persons=len(everyone),
            segments={segment: len(lists[segment]) for segment in SEGMENTS},
            returning=sum(1 for u in everyone if u["sessions"] > RETURNING_SESSIONS),
            most_sessions=max((u["sessions"] for u in everyone), default=0),
            funnel=tuple(step["count"] for step in report["steps"]),
            online=online["online"],
            stuck=sum(1 for u in online["users"] if u["stuck"]),
            total_users=cards["total_users"]["value"],
            new_this_week=cards["new_this_week"]["value"],
            churn_rate=cards["churn_rate"]["value"],
            bots_today=metrics["pipeline"]["bots_today"],
        )
        pipeline = {**metrics["pipeline"], "funnel_backfilled": report["funnel"]["backfilled"]}
        return figures, _parse(metrics["as_of"]), pipeline


def send(ingest_url: str, write_key: str, calls: list[dict[str, Any]], attempts: int = 20) -> int:
    """One /v1/batch; waits out a 429 or 503 (Retry-After) and tries again. Returns the events
    ingest took (accepted, bots included)."""
    for _ in range(attempts):
        try:
            answer = _post(f"{ingest_url}/v1/batch", {"writeKey": write_key, "batch": calls})
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503):
                raise
            wait = float(exc.headers.get("Retry-After") or 1)
            log.warning("demo_send_retry", status=exc.code, retry_after=wait)
            time.sleep(min(wait, 5))
            continue
        if answer.get("rejected"):
            log.warning("demo_events_rejected", rejected=answer["rejected"], errors=answer.get("errors"))
        return int(answer["accepted"]) + int(answer.get("bots", 0))
    raise RuntimeError(f"ingest at {ingest_url} kept refusing the demo's events")


def settle(
    api: DemoApi,
    funnel_id: str,
    calls: list[dict[str, Any]],
    fresh: bool,
    sent_at: float,
    timeout: float,
    on_read: Callable[[DemoFigures], None] = lambda _figures: None,
) -> tuple[DemoFigures, DemoFigures | None]:
    """Reads the figures from the API until the pipeline has everything: on a project that
    held nothing before, until they equal those expected from the calls (at the API's clock);
    on one with earlier data, until the aggregator has written everything since `sent_at` (epoch
    seconds) with no lag and two reads agree. Returns (read, expected; None when the project
    held data before), whatever was read last at the timeout."""
    deadline = time.monotonic() + timeout
    previous: DemoFigures | None = None
    while True:
        figures, as_of, pipeline = api.figures(funnel_id)
        on_read(figures)
        if fresh:
            expected: DemoFigures | None = expected_figures(calls, as_of)
            if figures == expected:
                return figures, expected
        else:
            expected = None
            written = pipeline["last_write_at"] and _parse(pipeline["last_write_at"]).timestamp() > sent_at
            done = written and pipeline["lag"] == 0 and pipeline["funnel_backfilled"]
            if done and figures == previous:
                return figures, None
        if time.monotonic() > deadline:
            return figures, expected
        previous = figures
        time.sleep(0.5)


def drive(
    settings: Any,
    out: Callable[[str], None],
    progress_bar: Callable[[], Any],
    *,
    visitors: int = 150,
    days: int = 60,
    live: int = 12,
    seconds: float = 0,
    seed: int = 7,
) -> int:
    """`werkstroom demo`: sends the demo history to the running server's demo project, creates
    the funnel, reads the dashboard's figures back from its API and prints them; then, for
    `seconds`, keeps the live visitors browsing (the stuck ones sending heartbeats).
    `progress_bar()` gives a rich Progress (the CLI's, on stderr)."""
    started = time.monotonic()
    runtime_file, demo_file = settings.data_dir / "runtime.json", settings.data_dir / "demo.json"
    if not runtime_file.exists() or not demo_file.exists():
        out(f"no running server with a demo project in {settings.data_dir}: start `make run` first")
        return 2
    runtime, demo = orjson.loads(runtime_file.read_text()), orjson.loads(demo_file.read_text())
    ingest, key, project_id = runtime["ingest_url"], demo["write_key"], demo["project_id"]
    api = DemoApi(runtime["api_url"], project_id, demo["read_key"])
    try:
        fresh = not api.request("/users?limit=1")["users"]
    except (urllib.error.URLError, OSError) as exc:
        out(f"the server in {settings.data_dir} does not answer ({exc}): start `make run` first")
        return 2
    now = datetime.now(UTC) - timedelta(seconds=1)
    # A project with data (an earlier demo) gets new visitors: see build_history's `cohort`.
    cohort = "" if fresh else f"-{int(now.timestamp()):x}"
    try:
        history = build_history(now, visitors=visitors, days=days, live=live, seed=seed, cohort=cohort)
    except ValueError as exc:
        out(f"werkstroom demo: {exc}")
        return 2

    with progress_bar() as progress:
        sending = progress.add_task("sending events", total=len(history.calls))
        sent = 0
        for chunk in batches(history.calls, 500):
            sent += send(ingest, key, chunk)
            progress.advance(sending, len(chunk))
        sent_at = time.time()
        creating = progress.add_task("funnel: create and back-fill", total=1)
        funnel_id, created = api.ensure_funnel()
        progress.advance(creating)
        target = expected_figures(history.calls, datetime.now(UTC)).persons
        waiting = progress.add_task("aggregator: persons", total=target)
        figures, expected = settle(
            api,
            funnel_id,
            history.calls,
            fresh,
            sent_at,
            timeout=max(5.0, 25.0 - (time.monotonic() - started)),
            on_read=lambda f: progress.update(waiting, completed=min(f.persons, target)),
        )
    took = time.monotonic() - started
    log.debug("demo_sent", events=sent, calls=len(history.calls), funnel_id=funnel_id, seconds=took)

    out(
        f"sent {sent:,} events: {visitors} visitors over {days} days (UTC), {live} browsing now, "
        f"{len(CRAWLERS)} crawlers, to project {project_id}"
    )
    out(f"{'created' if created else 'kept'} the funnel '{FUNNEL_NAME}' ({funnel_id})")
    if fresh and figures == expected:
        source = "read back from the API; equal to those expected from the generated history"
    elif fresh:
        source = "read back from the API; NOT equal to those expected from the generated history"
    else:
        source = "read back from the API; the project held data before, so they include it"
    out(f"what the dashboard shows ({source}):")
    for line in figures.lines():
        out("  " + line)
    if fresh and expected is not None and figures != expected:
        out("expected from the generated history:")
        for line in expected.lines():
            out("  " + line)
    out(f"dashboard: {runtime['api_url']}/  read key: {demo['read_key']}")
    seg = figures.segments
    out(
        f"demo ready in {took:.1f} s: {figures.persons} persons (active {seg['active']}, inactive "
        f"{seg['inactive']}, churned {seg['churned']}, premium {seg['premium']}, trial {seg['trial']}), "
        f"funnel {' -> '.join(str(n) for n in figures.funnel)}, {figures.online} online, "
        f"{figures.stuck} stuck"
    )
    if seconds > 0:
        keep_browsing(ingest, key, history, seconds, out)
    else:
        out(
            f"the {live} live visitors stay online for 5 minutes; to keep them browsing: "
            "werkstroom demo --seconds inf"
        )
    return 0 if not fresh or figures == expected else 1


def keep_browsing(
    ingest_url: str, write_key: str, history: DemoHistory, seconds: float, out: Callable[[str], None]
) -> None:
    """The history's live visitors go on browsing for `seconds` (inf: until Ctrl-C), a call each
    every 10 s: the stuck ones a heartbeat on their page, the others mostly a new page."""
    rng = random.Random(len(history.calls))
    live = [v for v in history.visitors if v.live]
    out(f"{len(live)} visitors browsing live" + (" (Ctrl-C to stop)" if seconds == float("inf") else ""))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            batch = []
            for visitor in live:
                if visitor.stuck:
                    call: dict[str, Any] = {"type": "track", "event": HEARTBEAT}
                elif rng.random() < 0.2:
                    call = {"type": "track", "event": rng.choice(BROWSE_EVENTS)}
                else:
                    path = rng.choice(BROWSE_PATHS)
                    call = {"type": "page", "properties": {"path": path, "url": SITE + path}}
                call.update(anonymousId=visitor.anonymous_id, context={"userAgent": visitor.agent})
                if visitor.user_id:
                    call["userId"] = visitor.user_id
                batch.append(call)
            send(ingest_url, write_key, batch)
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
