"""Funnels: definitions, each person's progress, and reports. Shared by the CLI, the API and the
aggregator (which keeps progress current for the persons each batch touched).

A funnel is an ordered list of 2 to 8 steps, each an event name and optionally a URL path
pattern (`*` matches any run of characters; page views are the event `$page`), with a
conversion window (default 24 hours). A person reaches step k when they did steps 1..k in that
order within the window counted from step 1. This is ClickHouse's `windowFunnel` in its default
mode, reproduced exactly in `levels()` so that the SQL function can cross-check it.

Progress is stored per (person, day on which one of their attempts started): the level reached
counting only attempts that started on that day or later. The funnel of the last N days is,
per person, the highest level of the rows from the first of those days on. A person's rows are
recomputed from their own events (table `visitor_events`); creating a funnel back-fills every
person of the project.

Reports read two small tables derived from that: `funnel_levels`, per person and level k the
latest day whose attempts reached k, and `funnel_counts`, how many persons have each (k, day).
Persons reaching k in the last N days = the sum of the counts of k from the first of those days
on, a few hundred rows whatever the number of persons.
"""

from __future__ import annotations

import re
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from werkstroom import identity
from werkstroom.clickhouse.params import StringArray, insert_rows
from werkstroom.clickhouse.tables import (
    FUNNEL_COUNTS_COLUMNS,
    FUNNEL_LEVELS_COLUMNS,
    FUNNEL_PROGRESS_COLUMNS,
    FUNNELS_COLUMNS,
)
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
        return event == self.event and (not self.path or _pattern(self.path).fullmatch(path) is not None)

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


def like_pattern(glob: str) -> str:
    """The same pattern for SQL LIKE (used by the SQL cross-check)."""
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
    steps: Sequence[Step], window_ms: int, events: Sequence[tuple[int, str, str]]
) -> dict[date, int]:
    """Per UTC day on which a step-1 event happened: the level reached by the attempts that
    started that day or later (the funnel over the events from that day on)."""
    first = steps[0]
    days = sorted({_day(ts) for ts, name, path in events if first.matches(name, path)})
    ordered = sorted(events)
    result: dict[date, int] = {}
    for day in days:
        since = _ms(day)
        result[day] = level(steps, window_ms, (e for e in ordered if e[0] >= since))
    return result


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


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
    """Validate, store, and back-fill every person's progress from the events so far."""
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
    backfill(client, funnel)
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


def _step_events(
    client: Client, project_id: str, funnels: Sequence[Funnel], distinct_ids: Sequence[str] | None
) -> Iterable[tuple[str, int, str, str]]:
    """(distinct id, ms, event, path) of the events that some step of these funnels names."""
    names = sorted({s.event for f in funnels for s in f.steps})
    where = "WHERE project_id = {p:String} AND event IN {names:Array(String)}"
    if distinct_ids is not None:
        # PREWHERE on the sorting key's distinct_id: FINAL reads the other columns only for
        # these ids' rows (safe under FINAL: every version of a row has the same key).
        where = "PREWHERE distinct_id IN {ids:Array(String)} " + where
    sql = (
        "SELECT distinct_id, toUnixTimestamp64Milli(timestamp), event, path "
        f"FROM visitor_events FINAL {where}"
    )
    params = {"p": project_id, "names": names, "ids": StringArray(distinct_ids or [])}
    with client.query_row_block_stream(sql, parameters=params) as stream:
        for block in stream:
            for distinct_id, ms, event, path in block:
                yield distinct_id, int(ms), event, path


def recompute(
    client: Client,
    project_id: str,
    members: dict[str, Sequence[str]],
    gone: Iterable[str],
    version: int,
    funnels: Sequence[Funnel] | None = None,
) -> int:
    """Rewrite the progress of these persons (person id -> the distinct ids whose events count
    for it, `person_ids`) in every funnel of the project, and delete that of persons merged
    into others. Returns rows written."""
    funnels = list_funnels(client, project_id) if funnels is None else funnels
    gone = set(gone)
    if not funnels or not (members or gone):
        return 0
    owner = {d: p for p, ids in members.items() for d in ids}
    events: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    if owner:
        for distinct_id, ms, name, path in _step_events(client, project_id, funnels, sorted(owner)):
            events[owner[distinct_id]].append((ms, name, path))
    fresh: dict[tuple[str, str, date], int] = {}
    for funnel in funnels:
        window_ms = funnel.window_seconds * 1000
        for person_id, person_events in events.items():
            for day, reached in progress(funnel.steps, window_ms, person_events).items():
                fresh[(funnel.funnel_id, person_id, day)] = reached
    persons = set(members) | gone
    written = _write_levels(client, project_id, funnels, persons, fresh, version)
    return written + _write_progress(client, project_id, funnels, persons, fresh, version)


def latest_days(rows: dict[date, int], steps: int) -> list[date | None]:
    """For levels 1..steps: the latest day whose attempts reached that level (None: never)."""
    return [max((d for d, lvl in rows.items() if lvl >= k), default=None) for k in range(1, steps + 1)]


def _write_levels(
    client: Client,
    project_id: str,
    funnels: Sequence[Funnel],
    persons: set[str],
    fresh: dict[tuple[str, str, date], int],
    version: int,
) -> int:
    """Bring funnel_levels to `fresh` for these persons (compared with what funnel_levels
    holds, so a row left by an interrupted or concurrent write is corrected too), then recount
    the funnel_counts cells that changed."""
    if not persons:
        return 0
    by_person: dict[tuple[str, str], dict[date, int]] = defaultdict(dict)
    for (funnel_id, person_id, day), reached in fresh.items():
        by_person[(funnel_id, person_id)][day] = reached
    wanted: set[tuple[str, int, date, str]] = set()
    for funnel in funnels:
        for person_id in persons:
            days = latest_days(by_person.get((funnel.funnel_id, person_id), {}), len(funnel.steps))
            wanted.update((funnel.funnel_id, k, d, person_id) for k, d in enumerate(days, 1) if d is not None)
    stored = {
        (f, int(k), d, p)
        for f, k, d, p in client.query(
            "SELECT funnel_id, level, last_day, person_id FROM funnel_levels FINAL "
            "WHERE project_id = {p:String} AND funnel_id IN {f:Array(String)} "
            "AND person_id IN {ids:Array(String)} AND is_deleted = 0",
            parameters={
                "p": project_id,
                "f": [f.funnel_id for f in funnels],
                "ids": StringArray(sorted(persons)),
            },
        ).result_rows
    }
    added, removed = sorted(wanted - stored), sorted(stored - wanted)
    if not added and not removed:
        return 0
    rows = [[project_id, f, k, d, p, 0, version] for f, k, d, p in added]
    rows += [[project_id, f, k, d, p, 1, version] for f, k, d, p in removed]
    insert_rows(client, "funnel_levels", rows, FUNNEL_LEVELS_COLUMNS)
    cells = {(f, k, d) for f, k, d, _p in added} | {(f, k, d) for f, k, d, _p in removed}
    return len(rows) + _recount(client, project_id, cells, version)


def _recount(client: Client, project_id: str, cells: set[tuple[str, int, date]], version: int) -> int:
    """Rewrite these (funnel, level, day) cells of funnel_counts from funnel_levels."""
    counted = {
        (f, int(k), d): n
        for f, k, d, n in client.query(
            "SELECT funnel_id, level, last_day, count() FROM funnel_levels FINAL "
            "WHERE project_id = {p:String} AND funnel_id IN {f:Array(String)} "
            "AND level IN {k:Array(UInt8)} AND last_day IN {d:Array(Date)} AND is_deleted = 0 "
            "GROUP BY funnel_id, level, last_day",
            parameters={
                "p": project_id,
                "f": sorted({c[0] for c in cells}),
                "k": sorted({c[1] for c in cells}),
                "d": sorted({c[2] for c in cells}),
            },
        ).result_rows
    }
    rows = [[project_id, f, k, d, counted.get((f, k, d), 0), version] for f, k, d in sorted(cells)]
    insert_rows(client, "funnel_counts", rows, FUNNEL_COUNTS_COLUMNS)
    return len(rows)


def _write_progress(
    client: Client,
    project_id: str,
    funnels: Sequence[Funnel],
    persons: set[str],
    fresh: dict[tuple[str, str, date], int],
    version: int,
) -> int:
    """Write `fresh` and delete the stored rows of these persons that it no longer has."""
    stale: list[tuple[str, str, date]] = []
    if persons:
        for funnel_id, person_id, day in client.query(
            "SELECT funnel_id, person_id, day FROM funnel_progress FINAL WHERE project_id = {p:String} "
            "AND funnel_id IN {f:Array(String)} AND person_id IN {ids:Array(String)} AND is_deleted = 0",
            parameters={
                "p": project_id,
                "f": [f.funnel_id for f in funnels],
                "ids": StringArray(sorted(persons)),
            },
        ).result_rows:
            if (funnel_id, person_id, day) not in fresh:
                stale.append((funnel_id, person_id, day))
    rows = [[project_id, f, d, p, lvl, 0, version] for (f, p, d), lvl in sorted(fresh.items())]
    rows += [[project_id, f, d, p, 0, 1, version] for f, p, d in stale]
    if rows:
        insert_rows(client, "funnel_progress", rows, FUNNEL_PROGRESS_COLUMNS)
    return len(rows)


def person_ids(person_id: str, member_ids: Iterable[str]) -> list[str]:
    """The distinct ids whose events count in a person's funnels: its own id (the distinct id of
    the calls a server makes with only a user id) and every id an identify or alias mapped to it
    (`identity.members`): the ids it browsed with, and the user ids it had before an alias,
    whose server-side calls count too. (A person is a person because it browsed: an id with
    only server-side calls has no persons row, and no funnel progress either.)"""
    return sorted({person_id, *member_ids})


def _all_members(client: Client, project_id: str, persons: Iterable[str]) -> dict[str, set[str]]:
    """identity.members of these persons, from one read of the project's latest mappings."""
    mapped_to: dict[str, list[str]] = defaultdict(list)
    for distinct_id, person_id in identity.all_mappings(client, project_id):
        mapped_to[person_id].append(distinct_id)
    return identity.members(persons, lambda ids: [(d, via) for via in ids for d in mapped_to.get(via, ())])


def backfill(client: Client, funnel: Funnel, chunk: int = 20_000) -> int:
    """Compute every person's progress in a new funnel from the events stored so far."""
    version = next_version()  # taken before reading: a later recomputation from newer data wins
    browsed: dict[str, list[str]] = dict(
        client.query(
            "SELECT person_id, anonymous_ids FROM persons FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0",
            parameters={"p": funnel.project_id},
        ).result_rows
    )
    members = _all_members(client, funnel.project_id, browsed)
    owner: dict[str, str] = {}
    for person_id, anonymous_ids in browsed.items():
        for distinct_id in person_ids(person_id, {*anonymous_ids, *members.get(person_id, ())}):
            owner[distinct_id] = person_id
    events: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for distinct_id, ms, name, path in _step_events(client, funnel.project_id, [funnel], None):
        person_id = owner.get(distinct_id)
        if person_id is not None:
            events[person_id].append((ms, name, path))
    window_ms = funnel.window_seconds * 1000
    steps = len(funnel.steps)
    written = 0
    batch: list[list[Any]] = []
    levels: list[list[Any]] = []
    cells: set[tuple[int, date]] = set()
    for person_id, person_events in events.items():
        rows = progress(funnel.steps, window_ms, person_events)
        for day, reached in rows.items():
            batch.append([funnel.project_id, funnel.funnel_id, day, person_id, reached, 0, version])
        for k, day in enumerate(latest_days(rows, steps), 1):
            if day is not None:
                levels.append([funnel.project_id, funnel.funnel_id, k, day, person_id, 0, version])
                cells.add((k, day))
        if len(batch) >= chunk:
            insert_rows(client, "funnel_progress", batch, FUNNEL_PROGRESS_COLUMNS)
            written, batch = written + len(batch), []
        if len(levels) >= chunk:
            insert_rows(client, "funnel_levels", levels, FUNNEL_LEVELS_COLUMNS)
            written, levels = written + len(levels), []
    if batch:
        insert_rows(client, "funnel_progress", batch, FUNNEL_PROGRESS_COLUMNS)
        written += len(batch)
    if levels:
        insert_rows(client, "funnel_levels", levels, FUNNEL_LEVELS_COLUMNS)
        written += len(levels)
    # The cells from the back-fill's own counts, then recounted from funnel_levels: the
    # aggregator may have written persons of this funnel meanwhile.
    recounted = _recount(client, funnel.project_id, {(funnel.funnel_id, k, d) for k, d in cells}, version)
    return written + recounted


def report(client: Client, project_id: str, funnel_id: str, days: int, today: date) -> list[int]:
    """Persons who reached each step, counting attempts that started in the last `days` days
    (UTC, today included)."""
    funnel = get_funnel(client, project_id, funnel_id)
    if funnel is None:
        raise KeyError(funnel_id)
    since = today - timedelta(days=days - 1)
    reached = dict(
        client.query(
            "SELECT level, sum(persons) FROM funnel_counts FINAL "
            "WHERE project_id = {p:String} AND funnel_id = {f:String} AND day >= {since:Date} "
            "GROUP BY level",
            parameters={"p": project_id, "f": funnel_id, "since": since},
        ).result_rows
    )
    return [int(reached.get(k, 0)) for k in range(1, len(funnel.steps) + 1)]
