"""The breakdowns' parts the aggregator keeps (migration 0023): tombstones for a session's rows
when its start moves to an earlier day, and the roll-up of settled days.

The breakdown tables themselves are filled by ClickHouse from each `sessions` row written (two
materialized views): the aggregator only keeps what a session's rows are computed from on its
`sessions` row (its first page views with their times, the attributes of its entry page view).
A view writes a session's rows under the day it starts on; when a late event moves that start
to an earlier day, the rows under the old day would stay, so the aggregator writes tombstones
for them (`moved_rows`), with the session's present version, above theirs. A session absorbed by
another is a deleted `sessions` row, which the views turn into deleted rows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from clickhouse_connect.driver.client import Client

from services.aggregator.sessions import DAY_MS, Session, day_of
from werkstroom.breakdowns import figures_sql
from werkstroom.clickhouse.tables import BREAKDOWN_DIMENSIONS, BREAKDOWN_FIGURES


def moved_rows(session: Session, sessions: list[tuple[Any, ...]], pages: list[tuple[Any, ...]]) -> None:
    """If the session's start moved to another day since its rows were last written, append
    tombstones for them under that day to `sessions` (breakdown_sessions) and `pages`
    (breakdown_pages), in werkstroom.clickhouse.tables' column order; remember the day now."""
    day = session.start_ms // DAY_MS
    before = session.written_day
    session.written_day = day
    if before < 0 or before == day or not session.pages:
        return
    key = (session.project_id, day_of(before * DAY_MS), session.anonymous_id, session.session_id)
    version = session.version
    for path in set(session.pages):  # the paths then: a session's paths only grow
        pages.append((*key, path, *_EMPTY_PAGE, version, 1))
    sessions.append((*key, *_EMPTY_SESSION, version, 1))


_EMPTY_PAGE: tuple[Any, ...] = (0, 0, 0, 0, 0, 0)
_EMPTY_SESSION: tuple[Any, ...] = ("", "", *("",) * 8, 0)


# -- the roll-up of settled days (breakdown_daily) ------------------------------------------------

_COLUMNS = f"project_id, dimension, day, value, {', '.join(BREAKDOWN_FIGURES)}, version, is_deleted"
ROLL_UP = f"""
INSERT INTO breakdown_daily ({_COLUMNS})
SELECT {{p:String}}, dimension, day, value, {", ".join(BREAKDOWN_FIGURES)}, {{v:UInt64}}, 0
FROM ({figures_sql(list(BREAKDOWN_DIMENSIONS), "day IN {days:Array(Date)}")})
UNION ALL
SELECT {{p:String}}, '', day, '', uniqCombined64State(12)(''), 0, 0, 0, 0, 0, 0, {{v:UInt64}}, 0
FROM (SELECT arrayJoin({{days:Array(Date)}}) AS day) GROUP BY day
"""
# The values of those days not rolled up again: gone from the day (each is a tombstone).
BURY = f"""
INSERT INTO breakdown_daily ({_COLUMNS})
SELECT project_id, dimension, day, value, {", ".join(BREAKDOWN_FIGURES)}, {{v:UInt64}}, 1
FROM breakdown_daily FINAL
WHERE project_id = {{p:String}} AND day IN {{days:Array(Date)}} AND version < {{v:UInt64}}
"""


# A marker taken back: the day is read from the breakdown tables until it is rolled up again.
UNMARK = f"""
INSERT INTO breakdown_daily ({_COLUMNS})
SELECT {{p:String}}, '', day, '', uniqCombined64State(12)(''), 0, 0, 0, 0, 0, 0, {{v:UInt64}}, 1
FROM (SELECT arrayJoin({{days:Array(Date)}}) AS day) GROUP BY day
"""


@dataclass
class RollUps:
    """Which settled days a worker rolls up when: a day a batch changed is rolled up at once
    unless this worker rolled it up less than `every` seconds ago; then its marker is taken back
    (the breakdowns read it from the tables, exactly) and it waits for its turn. A worker that
    stops with days waiting leaves them unmarked: read from the tables until they change again."""

    every: float
    last: dict[tuple[str, date], float] = field(default_factory=dict)  # (project, day) -> when
    waiting: set[tuple[str, date]] = field(default_factory=set)
    unmarked: set[tuple[str, date]] = field(default_factory=set)  # waiting, marker taken back

    def refresh(
        self, client: Client, days: dict[str, set[date]], version: int, today: date, now: float
    ) -> None:
        self.waiting.update((p, d) for p, project_days in days.items() for d in project_days if d < today)
        due = {k for k in self.waiting if now - self.last.get(k, -self.every) >= self.every}
        hold = self.waiting - due - self.unmarked
        for project_id, held in _by_project(hold).items():
            client.command(UNMARK, parameters={"p": project_id, "days": sorted(held), "v": version})
        self.unmarked |= hold
        for project_id, rolled in _by_project(due).items():
            roll_up(client, project_id, rolled, version, today)
        for key in due:
            self.last[key] = now
        self.waiting -= due
        self.unmarked -= due
        for key in [k for k, at in self.last.items() if now - at >= self.every and k not in self.waiting]:
            del self.last[key]


def _by_project(keys: set[tuple[str, date]]) -> dict[str, set[date]]:
    grouped: dict[str, set[date]] = {}
    for project_id, day in keys:
        grouped.setdefault(project_id, set()).add(day)
    return grouped


def roll_up(client: Client, project_id: str, days: set[date], version: int, today: date) -> None:
    """Rewrite breakdown_daily for the settled days among `days` (before `today`), from the
    breakdown tables as written, with `version` (taken before reading: a newer roll-up wins)."""
    settled = sorted(d for d in days if d < today)
    if not settled:
        return
    params = {"p": project_id, "days": settled, "v": version}
    client.command(ROLL_UP, parameters=params)
    client.command(BURY, parameters=params)
