"""The aggregations the aggregator keeps beside the raw events: sessions, the live view
(`online_visitors`), identities (`person_distinct_ids`) and the day's counts (`events_daily`).

State lives in memory as a cache of ClickHouse: a visitor not in memory is loaded from its
`sessions` rows (one query per batch for all of them), and visitors quiet for longer than a
session gap are dropped after their rows were written; a day's counts likewise. So a restart,
a rebalance or a second worker needs no changelog: the rows are the state.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from clickhouse_connect.driver.client import Client

from services.aggregator.sessions import (
    GAP_MS,
    HISTORY,
    Changes,
    DayCount,
    DayKey,
    Visitor,
    apply,
    identity_rows,
    online_row,
    session_at,
    session_days,
    session_from_row,
    session_row,
    to_ms,
    trait_rows,
)
from werkstroom import timezones
from werkstroom.clickhouse.params import StringArray
from werkstroom.clickhouse.tables import (
    EVENTS_DAILY_COLUMNS,
    ONLINE_VISITORS_COLUMNS,
    PERSON_DISTINCT_IDS_COLUMNS,
    PERSON_TRAITS_COLUMNS,
    SESSIONS_COLUMNS,
)
from werkstroom.contract import HEARTBEAT, Event

VisitorKey = tuple[str, str]
Decoded = tuple[Event, int, int]  # event, partition, offset
Rows = dict[str, tuple[list[str], list[list[Any]]]]

EVICT_AFTER_MS = GAP_MS + 10 * 60 * 1000
#: How far past the wall clock an event time may move the aggregator's clock. An event from a
#: client whose clock is far ahead would otherwise make every other visitor look idle: all of
#: them evicted, and reloaded from ClickHouse at their next event.
CLOCK_AHEAD_MS = 5 * 60 * 1000


#: Seconds between two reads of the projects' time zones (a project not known yet is read at once).
ZONES_EVERY = 10.0
RECENT_IDS = 200_000  # event ids remembered for de-duplication (RecentIds); bounds their memory


def clock_ceiling_ms() -> int:
    """The latest event time the aggregator's clock may take: CLOCK_AHEAD_MS past the wall clock."""
    return time.time_ns() // 1_000_000 + CLOCK_AHEAD_MS


@dataclass
class Dirty:
    """Keys whose derived rows must be recomputed: (project, local day) and (project, distinct
    id); and the time zone of each project they name, whose local days those are."""

    days: set[tuple[str, date]] = field(default_factory=set)
    ids: set[tuple[str, str]] = field(default_factory=set)
    zones: dict[str, str] = field(default_factory=dict)

    def update(self, other: Dirty) -> None:
        self.days |= other.days
        self.ids |= other.ids
        self.zones.update(other.zones)


class RecentIds:
    """The positions at which the last RECENT_IDS to RECENT_IDS * 2 event ids were first seen.

    A client sends an event again when it did not get its answer: a 503 after the produce
    timeout (the broker may have taken the events all the same), a connection lost before the
    200. The copy has the same event id and a later position. Versions only skip positions
    already applied (a re-read after a crash: the same event at the same position), so the copy
    would count twice; `events` keeps it once (ReplacingMergeTree on the id). Retries come
    within seconds, so a window of recent ids catches them, at two dicts of ints: no per-visitor
    state, O(1) a lookup, bounded memory. Not across a restart or a partition moving to
    another worker (the window starts empty there)."""

    def __init__(self, size: int = 0) -> None:
        self.size = size or RECENT_IDS
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}

    def first_at(self, project_id: str, event_id: str, position: int) -> int:
        """Where this event was first seen (recording `position` if nowhere yet)."""
        key = hash((project_id, event_id))
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                found = position
            self._current[key] = found
            if len(self._current) >= self.size:
                self._previous, self._current = self._current, {}
        return found


class SessionsProcessor:
    def __init__(self) -> None:
        self.visitors: dict[VisitorKey, Visitor] = {}
        self.day_counts: dict[DayKey, DayCount] = {}
        self._partition_of: dict[VisitorKey, int] = {}
        self.seen = RecentIds()
        # The latest event time seen, at most CLOCK_AHEAD_MS past the wall clock: the
        # aggregator's notion of "now", for evicting idle visitors and old days' counts.
        self._clock_ms = 0
        # Each project's time zone (werkstroom.timezones), whose local days every day here is:
        # the name per project, and the tzinfo of those not in UTC (the per-event lookup).
        self.zones: dict[str, str] = {}
        self._tz: dict[str, tzinfo] = {}
        self._zones_at = -ZONES_EVERY

    def needs_zones(self, batch: list[Decoded]) -> bool:
        """Whether the zones are due a read: every ZONES_EVERY seconds, and at once when the
        batch names a project not read yet (one created since)."""
        if time.monotonic() - self._zones_at >= ZONES_EVERY:
            return True
        zones = self.zones
        return any(e.project_id not in zones for e, _p, _o in batch)

    def load_zones(
        self, client: Client, batch: list[Decoded], read: Callable[[Client], dict[str, str]]
    ) -> None:
        """Read every project's time zone (`read`: werkstroom.projects.time_zones); a project of
        the batch that has no row (deleted, or a test's) is UTC until the next read."""
        found = read(client)
        for event, _p, _o in batch:
            found.setdefault(event.project_id, timezones.DEFAULT)
        self.set_zones(found)

    def set_zones(self, zones: dict[str, str]) -> None:
        self.zones = zones
        self._tz = {p: timezones.zone(name) for p, name in zones.items() if name != timezones.DEFAULT}
        self._zones_at = time.monotonic()

    def adopt_zones(self, zones: Mapping[str, str]) -> None:
        """These projects' days are now local days of these zones (their rows are recomputed
        in them, services.aggregator.rezone): the days' counts held for them are forgotten (a
        day met again loads its recomputed row). Call it with nothing applied and unwritten."""
        self.set_zones({**self.zones, **zones})
        for key in [k for k in self.day_counts if k[0] in zones]:
            del self.day_counts[key]

    def day_of(self, project_id: str, timestamp: datetime) -> date:
        """The project's local day of an event time (aware)."""
        zone = self._tz.get(project_id)
        return timestamp.date() if zone is None else timestamp.astimezone(zone).date()

    def local_days(self, project_id: str, utc_days: Iterable[date]) -> Iterable[date]:
        """The project's local days that these UTC days overlap (the same days in UTC)."""
        if project_id not in self._tz:
            return utc_days
        return timezones.local_days_of(utc_days, self.zones[project_id])

    def missing(self, batch: list[Decoded]) -> set[VisitorKey]:
        return {
            (e.project_id, e.anonymous_id)
            for e, _p, _o in batch
            if e.anonymous_id and (e.project_id, e.anonymous_id) not in self.visitors
        }

    def load(self, client: Client, keys: set[VisitorKey]) -> None:
        """Bring visitors into memory from their newest `sessions` rows (none: a new visitor)."""
        by_project: dict[str, list[str]] = defaultdict(list)
        for project_id, anonymous_id in keys:
            by_project[project_id].append(anonymous_id)
        found: dict[VisitorKey, list[Any]] = defaultdict(list)
        for project_id, ids in by_project.items():
            # PREWHERE: FINAL reads the other columns only for the visitors' rows (ClickHouse
            # does not move a condition there itself under FINAL; on a sorting-key column it is
            # safe, every version of a row has the same key).
            result = client.query(
                "SELECT * FROM sessions FINAL PREWHERE anonymous_id IN {ids:Array(String)} "
                "WHERE project_id = {p:String} "
                "ORDER BY start_at DESC, session_id DESC LIMIT {n:UInt32} BY anonymous_id",
                parameters={"p": project_id, "ids": StringArray(ids), "n": HISTORY},
            )
            for row in result.named_results():
                found[(project_id, row["anonymous_id"])].append(session_from_row(row))
        for key in keys:
            self.visitors[key] = Visitor.from_sessions(found.get(key, []))

    def process(self, batch: list[Decoded], seq: int = 0) -> tuple[Rows, Dirty]:
        """Apply a batch (in offset order per partition); returns the rows to write and what
        the derived tables (persons, daily stats) must recompute once they are written."""
        changes, dirty = Changes(), Dirty()
        self.apply_events(batch, changes, dirty, seq)
        return self.rows(changes, dirty)

    def apply_events(self, batch: list[Decoded], changes: Changes, dirty: Dirty, seq: int = 0) -> None:
        """Apply part of a batch; `rows` then gives the rows of everything applied. `seq` is the
        batch's number: each visitor remembers the last batch that changed it (see evict_idle).
        Every event dirties its (project, local day) and each of its distinct ids, and counts in
        its day's row unless the row counted its offset already (a replay)."""
        visitors, partition_of, newest = self.visitors, self._partition_of, changes.newest
        days, ids = dirty.days, dirty.ids
        day_counts, changed_counts = self.day_counts, changes.day_counts
        clock = self._clock_ms
        ceiling = clock_ceiling_ms()
        count_key: DayKey | None = None
        count = DayCount()
        seen = self.seen.first_at
        tz_of = self._tz.get
        for event, partition, offset in batch:
            project_id, anonymous_id, timestamp = event.project_id, event.anonymous_id, event.timestamp
            if seen(project_id, event.event_id, offset) != offset:
                continue  # the same event sent again (a client's retry): counted once
            t = to_ms(timestamp)
            if t > newest.get(partition, 0):
                newest[partition] = t
            zone = tz_of(project_id)  # the project's local day: UTC's at the cost of a lookup
            day = timestamp.date() if zone is None else timestamp.astimezone(zone).date()
            day_key = (project_id, day, partition)
            if day_key != count_key:  # a batch is runs of one partition's events: once per run
                count_key = day_key
                days.add((project_id, day))
                found = day_counts.get(day_key)
                if found is None:  # counted from zero for now; resolve_days adds its stored row
                    found = day_counts[day_key] = DayCount(since=offset)
                    changes.unresolved.add(day_key)
                count = found
            if offset > count.last_offset:
                count.last_offset = offset
                if event.type == "page":
                    count.page_views += 1
                if event.event != HEARTBEAT:
                    count.events += 1
                count.batch = seq
                changed_counts[day_key] = count
            if event.user_id or event.previous_id:
                for distinct_id in (event.user_id, event.previous_id):
                    if distinct_id:
                        ids.add((project_id, distinct_id))
            if event.type == "identify" or event.type == "alias":  # the only ones that map or set traits
                identity_rows(event, changes)
                trait_rows(event, changes)
            if not anonymous_id:
                continue  # server-side calls with only a user id: no browsing session
            key = (project_id, anonymous_id)
            ids.add(key)
            visitor = visitors.get(key)
            if visitor is None:
                visitor = visitors[key] = Visitor()
            partition_of[key] = partition
            visitor.batch = seq
            if not apply(visitor, event, partition, offset, changes, t):
                # Re-read after a crash: its session may have been written but not yet counted
                # (the recomputation that follows the write did not run). Its days are dirty.
                replayed = session_at(visitor, t)
                if replayed is not None:
                    days.update(
                        (project_id, day) for day in self.local_days(project_id, session_days(replayed))
                    )
            if visitor.last_seen_ms > clock:
                clock = min(visitor.last_seen_ms, ceiling)
        self._clock_ms = clock

    def resolve_days(self, client: Client, changes: Changes, batch: list[Decoded]) -> None:
        """Days' counts first met in this batch (not in memory: a new day, a restart, a late
        event for a day forgotten) were counted from zero: add their stored `events_daily` rows.
        Loaded after the batch is applied rather than before, as visitors are: finding them
        first cost a pass over every event (0.4 us each), for the few batches that have any."""
        keys = changes.unresolved
        if not keys:
            return
        result = client.query(
            f"SELECT {', '.join(EVENTS_DAILY_COLUMNS)} FROM events_daily FINAL "
            "WHERE project_id IN {ps:Array(String)} AND day IN {ds:Array(Date)} "
            "AND kafka_partition IN {ks:Array(UInt32)}",
            parameters={
                "ps": StringArray(sorted({p for p, _d, _k in keys})),
                "ds": sorted({d for _p, d, _k in keys}),
                "ks": sorted({k for _p, _d, k in keys}),
            },
        )
        for project_id, day, partition, page_views, events, version in result.result_rows:
            key = (project_id, day, partition)
            if key not in keys:
                continue
            count = self.day_counts[key]
            if version < count.since:  # none of this batch's events counted there yet
                count.page_views += page_views
                count.events += events
                continue
            # A replay: the stored row counted some of them. Count those past it again.
            count.page_views, count.events, count.last_offset = page_views, events, version
            for event, p, offset in batch:
                if offset > version and p == partition and event.project_id == project_id:
                    if self.day_of(project_id, event.timestamp) == day:
                        count.last_offset = offset
                        count.page_views += event.type == "page"
                        count.events += event.event != HEARTBEAT
        keys.clear()

    def rows(self, changes: Changes, dirty: Dirty) -> tuple[Rows, Dirty]:
        days, day_counts = dirty.days, changes.day_counts
        for session in changes.sessions.values():
            # Every day it spans: the day it starts on, and the days it started on before a
            # late event moved its start earlier (sessions_daily keeps it under its start day).
            days.update(
                (session.project_id, day)
                for day in self.local_days(session.project_id, session_days(session))
            )
        identities = [[p, d, person, version] for (p, d), (person, version) in changes.identities.items()]
        rows = {  # in the order the writer inserts them: the live view first, it has 1 s
            "online_visitors": (ONLINE_VISITORS_COLUMNS, [online_row(v) for v in changes.online.values()]),
            "sessions": (SESSIONS_COLUMNS, [session_row(s) for s in changes.sessions.values()]),
            "person_distinct_ids": (PERSON_DISTINCT_IDS_COLUMNS, identities),
            # the same rows, sorted by person
            "person_distinct_ids_by_person": (PERSON_DISTINCT_IDS_COLUMNS, identities),
            "person_traits": (
                PERSON_TRAITS_COLUMNS,
                [[p, d, k, value, version] for (p, d, k), (value, version) in changes.traits.items()],
            ),
            "events_daily": (
                EVENTS_DAILY_COLUMNS,
                [[p, d, k, c.page_views, c.events, c.last_offset] for (p, d, k), c in day_counts.items()],
            ),
        }
        # every event dirties its day, so the days name every project the ids do
        zones = self.zones
        dirty.zones.update({p: zones.get(p, timezones.DEFAULT) for p in {p for p, _d in days}})
        return rows, dirty

    def evict_idle(self, written_seq: int) -> int:
        """Forget visitors quiet for a session gap and more whose rows are all written, and the
        written counts of days before yesterday (a late event loads its day again). A visitor
        whose last event time is ahead of the wall clock (by more than CLOCK_AHEAD_MS) is
        forgotten too, once written: otherwise it would be held until real time caught up."""
        horizon = self._clock_ms - EVICT_AFTER_MS
        ceiling = clock_ceiling_ms()  # past it: a clock far ahead
        idle = [
            k
            for k, v in self.visitors.items()
            if (v.last_seen_ms < horizon or v.last_seen_ms > ceiling) and v.batch <= written_seq
        ]
        for key in idle:
            del self.visitors[key]
            self._partition_of.pop(key, None)
        # the day before yesterday in UTC is before yesterday in every zone's local days too
        yesterday = datetime.fromtimestamp(self._clock_ms / 1000, UTC).date() - timedelta(days=2)
        old = [k for k, c in self.day_counts.items() if k[1] < yesterday and c.batch <= written_seq]
        for key in old:
            del self.day_counts[key]
        return len(idle)

    def revoke(self, partitions: set[int]) -> None:
        """Another worker takes these partitions over: drop their visitors (it reloads them)."""
        gone = [k for k, p in self._partition_of.items() if p in partitions]
        for key in gone:
            self.visitors.pop(key, None)
            del self._partition_of[key]
        for day_key in [k for k in self.day_counts if k[2] in partitions]:
            del self.day_counts[day_key]
