"""The breakdown tables' rows (migration 0023), from the sessions the aggregator holds.

For every session a batch changed, `breakdown_sessions` gets its row (entry and exit page, the
attributes of its entry page view, page views) and `breakdown_pages` a row per path it
viewed (views, time on page, whether it entered or left there, whether it bounced there), all
under the UTC day the session starts on. Only rows whose figures changed since the session's last
write are written (`Session.written`); a session that moved to another day, was absorbed by
another, or no longer lists a path gets a tombstone (is_deleted = 1) for each row it leaves.
Every row carries the session's version (the position of its last event), so a replay writes
the same rows again and they collapse, as the `sessions` rows do. A visitor reloaded from
`sessions` writes all its rows at its next change: what the tables held is not known then.

Definitions (docs/definitions.md): a session's page views are its first MAX_PAGES, in (time,
path) order; its entry page is the first, its exit page the last; its source, campaign,
country, device, browser and OS are those of its entry page view. Time on a page view lasts
until the next page view or, for the last one, until the session's last event; it is unknown
when that last page view is the session's last event (or when later page views were not kept).
A session bounced when it has one page view; the row of its entry page says so.

A session loaded from a row written before 0023 has no page times (`Session.timed`): its rows are
the migration's, and stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from clickhouse_connect.driver.client import Client

from services.aggregator.sessions import DAY_MS, MAX_PAGES, Session, Written, day_of
from werkstroom.breakdowns import figures_sql
from werkstroom.clickhouse.tables import BREAKDOWN_DIMENSIONS, BREAKDOWN_FIGURES


def breakdown_rows(session: Session, sessions: list[tuple[Any, ...]], pages: list[tuple[Any, ...]]) -> None:
    """Append the rows `session` changes to `sessions` (breakdown_sessions) and `pages`
    (breakdown_pages), in werkstroom.clickhouse.tables' column order, and remember them."""
    before = session.written
    if before is not None and _appended(session, before, sessions, pages):
        return
    if session.deleted or not session.pages:
        if before is not None:
            _bury(session, before, before.pages, sessions, pages)
            session.written = None
        return
    if not session.timed:
        return
    day = day_of(session.start_ms)
    paths = session.pages
    summary = (paths[0], paths[-1], *session.entry_attributes, session.page_views)
    key = (session.project_id, day, session.anonymous_id, session.session_id)
    version = session.version
    figures = page_figures(session)
    written: dict[str, tuple[Any, ...] | None] = {}
    if before is not None and before.day != day:
        _bury(session, before, before.pages, sessions, pages)
        before = None
    elif before is not None:
        gone = {path: row for path, row in before.pages.items() if path not in figures}
        if gone:
            _bury(session, before, gone, sessions, pages, session_row=False)
    for path, row in figures.items():
        written[path] = row
        if before is None or before.pages.get(path) != row:
            pages.append((*key, path, *row, version, 0))
    if before is None or before.session != summary:
        sessions.append((*key, *summary, version, 0))
    session.written = Written(
        day,
        written,
        summary,
        len(paths),
        _last_view(session),
        session.page_inserts,
        session.start_ms // DAY_MS,
    )


def _last_view(session: Session) -> tuple[int, int]:
    """(timed, time on page) of the session's last page view listed (page_figures)."""
    t = session.page_ms[-1]
    if session.page_views == len(session.pages) and session.last_ms > t:
        return 1, session.last_ms - t
    return 0, 0


def _appended(
    session: Session, before: Written, sessions: list[tuple[Any, ...]], pages: list[tuple[Any, ...]]
) -> bool:
    """The common changes, written here if they are the ones: page views added at the end of the
    session's list, or none (a heartbeat, a custom event), since the last write. Then only the
    rows of the paths viewed since, of the last page view before (its time on page is known now)
    and of the entry page (it no longer bounced) change, and the session's row if it has new page
    views (a heartbeat changes the time on its last page only). False:
    not one of them (a late page view, a day moved, the list full, ...): breakdown_rows works it
    all out. test_breakdowns holds the two ways to each other."""
    m, n = before.views, len(session.pages)
    summary = before.session
    if (
        summary is None  # not known: a reloaded session (else every path's figures are)
        or not 0 < m <= n < MAX_PAGES
        or session.page_views != n
        or session.page_inserts != before.inserts
        or session.deleted
        or session.start_ms // DAY_MS != before.day_number
    ):
        return False
    paths, times, figures, was = session.pages, session.page_ms, before.pages, before.last
    last = _last_view(session)
    changed: dict[str, list[int]] = {}
    if n > m:  # the old last page view lasts until the next one now, and is no longer the exit
        r = changed[paths[m - 1]] = list(figures[paths[m - 1]])  # type: ignore[arg-type]
        r[1] += 1 - was[0]
        r[2] += times[m] - times[m - 1] - was[1]
        r[4] = 0
        for i in range(m, n):
            path = paths[i]
            r = changed.get(path)  # type: ignore[assignment]
            if r is None:
                r = changed[path] = list(figures.get(path) or _NEW)
            r[0] += 1
            if i < n - 1:
                r[1] += 1
                r[2] += times[i + 1] - times[i]
            else:
                r[1] += last[0]
                r[2] += last[1]
        r[4] = 1
        if m == 1:  # a second page view: the entry page no longer bounced
            r = changed.get(paths[0]) or changed.setdefault(paths[0], list(figures[paths[0]]))  # type: ignore[arg-type]
            r[5] = 0
    elif last != was:  # only the last page view's time changed
        r = changed[paths[-1]] = list(figures[paths[-1]])  # type: ignore[arg-type]
        r[1] += last[0] - was[0]
        r[2] += last[1] - was[1]
    key = (session.project_id, before.day, session.anonymous_id, session.session_id)
    version = session.version
    for path, r in changed.items():
        figures[path] = done = tuple(r)
        pages.append((*key, path, *done, version, 0))
    if n > m:  # a new exit page and page views (the entry and its attributes are as they were)
        before.session = now = (summary[0], paths[-1], *summary[2:-1], session.page_views)
        sessions.append((*key, *now, version, 0))
    before.views, before.last = n, last
    return True


_NEW = (0, 0, 0, 0, 0, 0)  # a path's figures before its first view


def page_figures(session: Session) -> dict[str, tuple[Any, ...]]:
    """Each path's (views, timed_views, time_ms, is_entry, is_exit, bounced), in the session's
    order of first view."""
    paths, times = session.pages, session.page_ms
    last = len(paths) - 1
    complete = session.page_views == len(paths)  # else later page views were not kept
    figures: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        t = times[i]
        if i < last:
            timed, spent = 1, times[i + 1] - t
        elif complete and session.last_ms > t:
            timed, spent = 1, session.last_ms - t
        else:
            timed, spent = 0, 0
        found = figures.get(path)
        if found is None:
            figures[path] = [1, timed, spent, 0, 0, 0]
        else:
            found[0] += 1
            found[1] += timed
            found[2] += spent
    figures[paths[0]][3] = 1
    figures[paths[last]][4] = 1
    if session.page_views == 1:
        figures[paths[0]][5] = 1
    return {path: tuple(row) for path, row in figures.items()}


def _bury(
    session: Session,
    before: Written,
    paths: dict[str, tuple[Any, ...] | None],
    sessions: list[tuple[Any, ...]],
    pages: list[tuple[Any, ...]],
    session_row: bool = True,
) -> None:
    """Tombstones, under the day written before, for these paths (and the session's row). They
    carry the session's present version, above that of any row it wrote before."""
    key = (session.project_id, before.day, session.anonymous_id, session.session_id)
    version = session.version
    for path in paths:
        pages.append((*key, path, *_EMPTY_PAGE, version, 1))
    if session_row:
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
