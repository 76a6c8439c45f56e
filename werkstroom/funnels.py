"""Funnels: the model, its validation and the definitions' storage. Shared by the CLI, the API
and the aggregator.

A funnel is an ordered list of 2 to 8 steps, each an event name and optionally a URL path
pattern (`*` matches any run of characters; page views are the event `$page`), with a
conversion window (default 24 hours). A person reaches step k when they did steps 1..k in that
order within the window counted from step 1. This is ClickHouse's `windowFunnel` in its default
mode, reproduced exactly in `level()` so that the SQL function can cross-check it.

Progress is per (person, day on which one of their attempts started): the level reached
counting only attempts that started on that day or later (`progress()`). The funnel of the last
N days is, per person, the highest level from the first of those days on.

Who does what with it:
- the API and the CLI store a definition (`create_funnel`, `delete_funnel`);
- the aggregator keeps the derived tables (`funnel_progress`, `funnel_levels`, `funnel_counts`)
  current for the persons each batch touched, and back-fills a new funnel from the events
  stored before it (services/aggregator/funnels.py), then marks it in `funnel_backfills`;
- the API reads the report from `funnel_counts` (services/api/routes/funnels.py), and says
  whether the back-fill is done (`backfilled`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from werkstroom import timezones
from werkstroom.clickhouse.tables import FUNNELS_COLUMNS
from werkstroom.clickhouse.versions import next_version
from werkstroom.contract import HEARTBEAT

MIN_STEPS = 2
MAX_STEPS = 8
DEFAULT_WINDOW = 24 * 3600
MIN_WINDOW = 60
MAX_WINDOW = 30 * 24 * 3600
MAX_NAME = 100
MAX_EVENT = 200
MAX_PATH = 500


class FunnelError(ValueError):
    """A funnel definition that cannot be accepted; says which field and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Step:
    event: str
    path: str = ""  # a pattern; "" matches every path

    def matches(self, event: str, path: str) -> bool:
        return event == self.event and (not self.path or glob_matches(self.path, path))

    def as_dict(self) -> dict[str, str]:
        return {"event": self.event, "path": self.path}


@dataclass(frozen=True)
class Funnel:
    funnel_id: str
    project_id: str
    name: str
    steps: tuple[Step, ...]
    window_seconds: int
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "funnel_id": self.funnel_id,
            "name": self.name,
            "steps": [s.as_dict() for s in self.steps],
            "window_seconds": self.window_seconds,
            "created_at": self.created_at,
        }


_patterns: dict[str, re.Pattern[str]] = {}


def _pattern(glob: str) -> re.Pattern[str]:
    found = _patterns.get(glob)
    if found is None:
        found = _patterns[glob] = re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.S)
    return found


def glob_matches(glob: str, value: str) -> bool:
    """Whether `value` is `glob`, where `*` matches anything (a funnel step's path, a view's
    path filter)."""
    return _pattern(glob).fullmatch(value) is not None


def like_pattern(glob: str) -> str:
    """The same pattern for SQL LIKE (the SQL cross-check, a view's path filter): LIKE's own
    wildcards and its escape are escaped first."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


# -- validation --------------------------------------------------------------------------------


def validate(
    name: object, steps: object, window_seconds: object = DEFAULT_WINDOW
) -> tuple[str, list[Step], int]:
    if not isinstance(name, str) or not name.strip():
        raise FunnelError("name", "must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_NAME or any(ord(ch) < 32 for ch in name):
        raise FunnelError("name", f"at most {MAX_NAME} characters, no control characters")
    if not isinstance(steps, list | tuple) or not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise FunnelError("steps", f"must be a list of {MIN_STEPS} to {MAX_STEPS} steps")
    parsed: list[Step] = []
    for index, raw in enumerate(steps):
        where = f"steps[{index}]"
        if isinstance(raw, Step):
            raw = raw.as_dict()
        if not isinstance(raw, dict):
            raise FunnelError(where, 'must be an object {"event": ..., "path": ...}')
        unknown = set(raw) - {"event", "path"}
        if unknown:
            raise FunnelError(where, f"unknown field(s) {sorted(unknown)}")
        event, path = raw.get("event"), raw.get("path") or ""
        if not isinstance(event, str) or not event.strip() or len(event) > MAX_EVENT:
            raise FunnelError(
                f"{where}.event", f"must be a non-empty string of at most {MAX_EVENT} characters"
            )
        if event.strip() == HEARTBEAT:
            raise FunnelError(
                f"{where}.event", f"{HEARTBEAT} is a liveness signal, not an event a funnel can use"
            )
        if not isinstance(path, str) or len(path) > MAX_PATH:
            raise FunnelError(f"{where}.path", f"must be a string of at most {MAX_PATH} characters")
        parsed.append(Step(event.strip(), path.strip()))
    if isinstance(window_seconds, bool) or not isinstance(window_seconds, int):
        raise FunnelError("window_seconds", "must be an integer")
    if not MIN_WINDOW <= window_seconds <= MAX_WINDOW:
        raise FunnelError("window_seconds", f"must be between {MIN_WINDOW} and {MAX_WINDOW}")
    return name, parsed, window_seconds


# -- the funnel itself (pure) --------------------------------------------------------------------


def level(steps: Sequence[Step], window_ms: int, events: Iterable[tuple[int, str, str]]) -> int:
    """Steps reached by one person's events (epoch ms, event name, path): windowFunnel's default
    mode. Each (event, matching step) is one entry, sorted by time then step; a step-1 entry
    starts a chain, a step-k entry extends the chain that reached step k-1 when it lies within
    the window of that chain's start."""
    entries = sorted(
        (ts, k) for ts, name, path in events for k, step in enumerate(steps) if step.matches(name, path)
    )
    starts: list[int | None] = [None] * len(steps)
    for ts, k in entries:
        if k == 0:
            starts[0] = ts
            continue
        begun = starts[k - 1]
        if begun is not None and ts <= begun + window_ms:
            starts[k] = begun
            if k == len(steps) - 1:
                return len(steps)
    reached = 0
    for k, begun in enumerate(starts):
        if begun is not None:
            reached = k + 1
    return reached


def progress(
    steps: Sequence[Step],
    window_ms: int,
    events: Sequence[tuple[int, str, str]],
    zone: str = timezones.DEFAULT,
) -> dict[date, int]:
    """Per local day (the project's time `zone`) on which a step-1 event happened: the level
    reached by the attempts that started that day or later (the funnel over the events from
    that day's start on)."""
    first = steps[0]
    days = sorted({_day(ts, zone) for ts, name, path in events if first.matches(name, path)})
    ordered = sorted(events)
    result: dict[date, int] = {}
    for day in days:
        since = _ms(day, zone)
        result[day] = level(steps, window_ms, (e for e in ordered if e[0] >= since))
    return result


def _day(ms: int, zone: str) -> date:
    return timezones.day_of(datetime.fromtimestamp(ms / 1000, UTC), zone)


def _ms(day: date, zone: str) -> int:
    return int(timezones.start_of(day, zone).timestamp() * 1000)


# -- storage -------------------------------------------------------------------------------------


def _from_row(row: tuple[Any, ...]) -> Funnel:
    funnel_id, project_id, name, steps, window, created = row
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
    parsed = tuple(Step(s["event"], s.get("path", "")) for s in orjson.loads(steps))
    return Funnel(funnel_id, project_id, name, parsed, int(window), created)


_SELECT = "SELECT funnel_id, project_id, name, steps, window_seconds, created_at FROM funnels FINAL "


def list_funnels(client: Client, project_id: str | None = None) -> list[Funnel]:
    """The live funnels of a project (of every project when None), oldest first."""
    where = "WHERE is_deleted = 0" + (" AND project_id = {p:String}" if project_id is not None else "")
    rows = client.query(
        _SELECT + where + " ORDER BY created_at, funnel_id", parameters={"p": project_id or ""}
    ).result_rows
    return [_from_row(tuple(r)) for r in rows]


def get_funnel(client: Client, project_id: str, funnel_id: str) -> Funnel | None:
    rows = client.query(
        _SELECT + "WHERE project_id = {p:String} AND funnel_id = {f:String} AND is_deleted = 0",
        parameters={"p": project_id, "f": funnel_id},
    ).result_rows
    return _from_row(tuple(rows[0])) if rows else None


def create_funnel(
    client: Client, project_id: str, name: object, steps: object, window_seconds: object = DEFAULT_WINDOW
) -> Funnel:
    """Validate and store. The aggregator back-fills every person's progress from the events
    stored so far (`backfilled` says when it has)."""
    clean_name, clean_steps, window = validate(name, steps, window_seconds)
    funnel = Funnel(
        funnel_id=f"f_{secrets.token_hex(6)}",
        project_id=project_id,
        name=clean_name,
        steps=tuple(clean_steps),
        window_seconds=window,
        created_at=datetime.now(UTC),
    )
    _write_definition(client, funnel, deleted=False)
    return funnel


def delete_funnel(client: Client, project_id: str, funnel_id: str) -> bool:
    funnel = get_funnel(client, project_id, funnel_id)
    if funnel is None:
        return False
    _write_definition(client, funnel, deleted=True)
    return True


def _write_definition(client: Client, funnel: Funnel, *, deleted: bool) -> None:
    steps = orjson.dumps([s.as_dict() for s in funnel.steps]).decode()
    client.insert(
        "funnels",
        [
            [
                funnel.project_id,
                funnel.funnel_id,
                funnel.name,
                steps,
                funnel.window_seconds,
                funnel.created_at,
                int(deleted),
                next_version(),
            ]
        ],
        column_names=FUNNELS_COLUMNS,
    )


def backfilled(client: Client, project_id: str, funnel_ids: Sequence[str]) -> set[str]:
    """Those of these funnels the aggregator has back-filled from the events stored before them."""
    if not funnel_ids:
        return set()
    rows = client.query(
        "SELECT DISTINCT funnel_id FROM funnel_backfills "
        "WHERE project_id = {p:String} AND funnel_id IN {f:Array(String)}",
        parameters={"p": project_id, "f": list(funnel_ids)},
    ).result_rows
    return {r[0] for r in rows}
