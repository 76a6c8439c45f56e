"""The breakdown tables' rows (migration 0023), from the sessions the aggregator holds.

For every session a batch changed, `breakdown_sessions` gets its row (entry and exit page, the
attributes of its entry page view, page views, duration) and `breakdown_pages` a row per path it
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

from typing import Any

from services.aggregator.sessions import Session, Written, day_of


def breakdown_rows(session: Session, sessions: list[list[Any]], pages: list[list[Any]]) -> None:
    """Append the rows `session` changes to `sessions` (breakdown_sessions) and `pages`
    (breakdown_pages), in werkstroom.clickhouse.tables' column order, and remember them."""
    before = session.written
    if session.deleted or not session.pages:
        if before is not None:
            _bury(session, before, before.pages, sessions, pages)
            session.written = None
        return
    if not session.timed:
        return
    day = day_of(session.start_ms)
    figures = page_figures(session)
    entry = (session.pages[0], *session.entry_attributes)
    summary = (
        session.pages[0],
        session.pages[-1],
        *session.entry_attributes,
        session.page_views,
        session.last_ms - session.start_ms,
    )
    key = [session.project_id, day, session.anonymous_id, session.session_id]
    version = session.version
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
            pages.append([*key, path, *row, *entry, version, 0])
    if before is None or before.session != summary:
        sessions.append([*key, *summary, version, 0])
    session.written = Written(day, written, summary)


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
    sessions: list[list[Any]],
    pages: list[list[Any]],
    session_row: bool = True,
) -> None:
    """Tombstones, under the day written before, for these paths (and the session's row). They
    carry the session's present version, above that of any row it wrote before."""
    key = [session.project_id, before.day, session.anonymous_id, session.session_id]
    version = session.version
    for path in paths:
        pages.append([*key, path, *_EMPTY_PAGE, version, 1])
    if session_row:
        sessions.append([*key, *_EMPTY_SESSION, version, 1])


_EMPTY_PAGE: tuple[Any, ...] = (0, 0, 0, 0, 0, 0, "", *("",) * 8)
_EMPTY_SESSION: tuple[Any, ...] = ("", "", *("",) * 8, 0, 0)
