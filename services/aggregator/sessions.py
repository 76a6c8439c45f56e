"""Sessions and the live view, derived from event time. Pure state machines, no I/O.

A visitor is (project_id, anonymous_id) — the events topic's key, so one visitor's events all
arrive in one partition, in offset order. A visitor's events split into sessions wherever
30 minutes pass without an event (by event time, not arrival): the same definition as

    SELECT ..., sum(gap > 30 min) OVER (PARTITION BY visitor ORDER BY timestamp) AS session

over the raw events, and tests hold the two to each other. Events that arrive late or out of
order join the session they fall in; one that fills a gap merges the two sessions around it.

Idempotence: a visitor remembers the offset of the last event applied to it (`last_offset`,
kept on every session row as `version`), and ignores events at or below it. After a crash,
a visitor reloaded from ClickHouse therefore skips exactly the events already written, and
the rows come out the same as in an uninterrupted run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import attrgetter
from typing import Any

import orjson

from werkstroom.contract import HEARTBEAT, Event, epoch_ms

GAP_MS = 30 * 60 * 1000
HISTORY = 20  # sessions per visitor kept for late events
MAX_PAGES = 100  # paths remembered per session


to_ms = epoch_ms


DAY_MS = 24 * 60 * 60 * 1000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def session_id_for(project_id: str, anonymous_id: str, event_id: str) -> str:
    """Deterministic: the same first event always names the same session."""
    return hashlib.blake2b(
        f"{project_id}\x00{anonymous_id}\x00{event_id}".encode(), digest_size=12
    ).hexdigest()


@dataclass(slots=True)
class Session:
    session_id: str
    project_id: str
    anonymous_id: str
    start_ms: int
    last_ms: int
    user_id: str = ""
    entry_ms: int = -1
    entry_url: str = ""
    entry_path: str = ""
    referrer: str = ""
    current_url: str = ""
    current_path: str = ""
    current_title: str = ""
    page_entered_ms: int = -1
    page_views: int = 0
    events: int = 0
    pages: list[str] = field(default_factory=list)  # page paths, in the order applied
    device_type: str = ""
    browser: str = ""
    os: str = ""
    partition: int = 0
    version: int = -1
    deleted: bool = False

    def absorb(self, other: Session) -> None:
        """Merge a later session into this one (a late event filled the gap between them)."""
        self.start_ms = min(self.start_ms, other.start_ms)
        self.last_ms = max(self.last_ms, other.last_ms)
        self.page_views += other.page_views
        self.events += other.events
        self.pages = (self.pages + other.pages)[:MAX_PAGES]
        if other.entry_ms >= 0 and (self.entry_ms < 0 or other.entry_ms < self.entry_ms):
            self.entry_ms, self.entry_url, self.entry_path = other.entry_ms, other.entry_url, other.entry_path
            self.referrer = other.referrer
        if other.page_entered_ms > self.page_entered_ms:
            self.page_entered_ms = other.page_entered_ms
            self.current_url, self.current_path = other.current_url, other.current_path
            self.current_title = other.current_title
        self.user_id = other.user_id or self.user_id


@dataclass(slots=True)
class Visitor:
    sessions: list[Session] = field(default_factory=list)  # ordered by start, oldest first
    last_offset: int = -1
    last_seen_ms: int = 0
    batch: int = 0  # the aggregator's batch that last changed this visitor

    @classmethod
    def from_sessions(cls, sessions: list[Session]) -> Visitor:
        ordered = sorted(sessions, key=lambda s: (s.start_ms, s.session_id))[-HISTORY:]
        return cls(
            ordered,
            max((s.version for s in ordered), default=-1),
            max((s.last_ms for s in ordered), default=0),
        )


DayKey = tuple[str, date, int]  # project, UTC day, topic partition


@dataclass(slots=True)
class DayCount:
    """A day's page views and events from one partition, up to the offset `last_offset`."""

    page_views: int = 0
    events: int = 0
    last_offset: int = -1
    batch: int = 0  # the aggregator's batch that last changed it
    since: int = -1  # the first offset counted, while its stored row is not added yet


@dataclass(slots=True)
class Changes:
    """What one batch changed: the rows to write."""

    sessions: dict[str, Session] = field(default_factory=dict)
    online: dict[tuple[str, str], Visitor] = field(default_factory=dict)
    identities: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    traits: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    newest: dict[int, int] = field(default_factory=dict)  # partition -> newest event time (ms)
    day_counts: dict[DayKey, DayCount] = field(default_factory=dict)
    unresolved: set[DayKey] = field(default_factory=set)  # day_counts counted from zero so far


def apply(
    visitor: Visitor, event: Event, partition: int, offset: int, changes: Changes, t: int | None = None
) -> bool:
    """Apply one decoded contract event to its visitor (`t`: its time in ms, when the caller
    has it already). Returns False for a replayed event."""
    if offset <= visitor.last_offset:
        return False
    visitor.last_offset = offset
    if t is None:
        t = to_ms(event.timestamp)
    project_id, anonymous_id = event.project_id, event.anonymous_id
    if t > visitor.last_seen_ms:
        visitor.last_seen_ms = t
    sessions = visitor.sessions
    if sessions and sessions[-1].start_ms <= t <= sessions[-1].last_ms + GAP_MS:
        # The common case: t falls in the newest session, which is more than GAP after the others.
        session = sessions[-1]
    else:
        session = _session_for(
            visitor, t, project_id, anonymous_id, event.event_id, partition, offset, changes
        )
    _update(session, event, t)
    session.version = offset
    changes.sessions[session.session_id] = session
    changes.online[(project_id, anonymous_id)] = visitor
    return True


def _session_for(
    visitor: Visitor,
    t: int,
    project_id: str,
    anonymous_id: str,
    event_id: str,
    partition: int,
    offset: int,
    changes: Changes,
) -> Session:
    """The session `t` falls in, when not the newest one (apply looks there first): a new one,
    an older one, or several that `t` bridges, merged."""
    sessions = visitor.sessions
    # Sessions (oldest first) whose reach [start - GAP, last + GAP] holds t.
    hits = [i for i, s in enumerate(sessions) if s.start_ms - GAP_MS <= t <= s.last_ms + GAP_MS]
    if not hits:
        session = Session(
            session_id_for(project_id, anonymous_id, event_id),
            project_id,
            anonymous_id,
            t,
            t,
            partition=partition,
        )
        at = next((i for i, s in enumerate(sessions) if s.start_ms > t), len(sessions))
        sessions.insert(at, session)
        if len(sessions) > HISTORY:
            del sessions[0]
        return session
    keep = sessions[hits[0]]
    for i in reversed(hits[1:]):  # t bridges several sessions: they become one
        gone = sessions.pop(i)
        keep.absorb(gone)
        gone.deleted, gone.version = True, offset
        changes.sessions[gone.session_id] = gone
    return keep


def _update(session: Session, event: Event, t: int) -> None:
    if t < session.start_ms:
        session.start_ms = t
    if t > session.last_ms:
        session.last_ms = t
    if event.user_id:
        session.user_id = event.user_id
    if session.device_type in ("", "unknown") and event.device_type not in ("", "unknown"):
        session.device_type, session.browser, session.os = event.device_type, event.browser, event.os
    elif not session.device_type:
        session.device_type = event.device_type or "unknown"
    if event.type == "page":
        session.page_views += 1
        path = event.path
        if len(session.pages) < MAX_PAGES:
            session.pages.append(path)
        if t >= session.page_entered_ms:
            session.page_entered_ms = t
            session.current_url, session.current_path = event.url, path
            session.current_title = event.title
        if session.entry_ms < 0 or t < session.entry_ms:
            session.entry_ms, session.entry_url, session.entry_path = t, event.url, path
            session.referrer = event.referrer
    if event.event != HEARTBEAT:
        session.events += 1


def session_days(session: Session) -> Iterator[date]:
    """The UTC days from the session's start to its last event (usually one)."""
    for day in range(session.start_ms // DAY_MS, session.last_ms // DAY_MS + 1):
        yield date.fromordinal(_EPOCH_ORDINAL + day)


def session_at(visitor: Visitor, t: int) -> Session | None:
    """The visitor's session that holds event time `t`, if it is still in memory."""
    for session in reversed(visitor.sessions):
        if session.start_ms <= t <= session.last_ms:
            return session
    return None


def identity_rows(event: Event, changes: Changes) -> None:
    """identify: anonymous_id -> user_id; alias: previous_id -> user_id (the latest wins)."""
    user_id = event.user_id
    if not user_id:
        return
    version = to_ms(event.timestamp)
    sources = []
    if event.type == "identify" and event.anonymous_id:
        sources.append(event.anonymous_id)
    if event.type == "alias" and event.previous_id:
        sources.append(event.previous_id)
    for distinct_id in sources:
        key = (event.project_id, distinct_id)
        if key not in changes.identities or changes.identities[key][1] <= version:
            changes.identities[key] = (user_id, version)


def trait_rows(event: Event, changes: Changes) -> None:
    """identify: each trait, as JSON, for the user id (else the anonymous id); latest wins."""
    if event.type != "identify":
        return
    traits = orjson.loads(bytes(event.traits))
    if not traits:
        return
    version = to_ms(event.timestamp)
    distinct_id = event.user_id or event.anonymous_id
    for key, value in traits.items():
        slot = (event.project_id, distinct_id, str(key)[:200])
        if slot not in changes.traits or changes.traits[slot][1] <= version:
            changes.traits[slot] = (orjson.dumps(value).decode(), version)


def _page_time(s: Session) -> int:
    return s.page_entered_ms if s.page_entered_ms >= 0 else s.start_ms


# The runs of columns the sessions row and the live row share, in their column order.
_WHO = attrgetter("project_id", "anonymous_id", "session_id", "user_id", "start_ms", "last_ms")
_PAGE = attrgetter("current_url", "current_path", "current_title")
_COUNTS = attrgetter("page_views", "events")
_DEVICE = attrgetter("device_type", "browser", "os")


def session_row(s: Session) -> list[Any]:
    return [
        *_WHO(s),
        s.entry_ms if s.entry_ms >= 0 else s.start_ms,
        s.entry_url,
        s.entry_path,
        s.referrer,
        *_PAGE(s),
        _page_time(s),
        *_COUNTS(s),
        list(s.pages),  # a copy: the row waits for the writer while the session keeps changing
        *_DEVICE(s),
        s.partition,
        s.version,
        int(s.deleted),
    ]


def online_row(visitor: Visitor) -> list[Any]:
    """The visitor's newest session (its `sessions` row, cut down to the columns of
    `online_visitors`, werkstroom.clickhouse.tables), versioned by the visitor's last applied offset."""
    s = visitor.sessions[-1]
    return [*_WHO(s), *_PAGE(s), _page_time(s), *_COUNTS(s), *_DEVICE(s), visitor.last_offset]


def session_from_row(row: dict[str, Any]) -> Session:
    """Rebuild a session from its `sessions` row (the aggregator's state after a restart)."""
    entry_ms = _ms(row["entry_at"])
    page_ms = _ms(row["page_entered_at"])
    has_pages = row["page_views"] > 0
    return Session(
        session_id=row["session_id"],
        project_id=row["project_id"],
        anonymous_id=row["anonymous_id"],
        start_ms=_ms(row["start_at"]),
        last_ms=_ms(row["last_event_at"]),
        user_id=row["user_id"],
        entry_ms=entry_ms if has_pages else -1,
        entry_url=row["entry_url"],
        entry_path=row["entry_path"],
        referrer=row["referrer"],
        current_url=row["current_url"],
        current_path=row["current_path"],
        current_title=row["current_title"],
        page_entered_ms=page_ms if has_pages else -1,
        page_views=row["page_views"],
        events=row["events"],
        pages=list(row["pages"]),
        device_type=row["device_type"],
        browser=row["browser"],
        os=row["os"],
        partition=row["kafka_partition"],
        version=row["version"],
    )


def _ms(value: datetime | int) -> int:
    """A DateTime64(3) column as read back (a datetime, naive meaning UTC) or as written (ms)."""
    if isinstance(value, int):
        return value
    return to_ms(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
