"""Persons and daily statistics, recomputed from the written rows for the keys a batch touched.

They depend on rows from every partition (a person's anonymous ids live in different
partitions; a day's events too), so instead of per-worker state they are recomputed in
ClickHouse for the dirty keys, a few times a second at most, before the offsets that dirtied
them are committed. A recomputation gives the same row whatever came before, so a replay after
a crash, or two workers recomputing the same key, changes nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from services.aggregator.processor import Dirty
from werkstroom import funnels
from werkstroom.clickhouse.params import StringArray, insert_rows

PERSON_COLUMNS = [
    "project_id",
    "person_id",
    "first_seen",
    "last_seen",
    "sessions",
    "page_views",
    "anonymous_ids",
    "traits",
    "plan",
    "is_deleted",
    "version",
]
DAILY_COLUMNS = [
    "project_id",
    "day",
    "active_users",
    "new_users",
    "sessions",
    "page_views",
    "events",
    "bounce_rate",
    "avg_session_seconds",
    "version",
]

ACTIVITY_COLUMNS = ["project_id", "day", "person_id", "is_deleted", "version"]

_last_version = 0


def next_version() -> int:
    """Milliseconds now, strictly increasing within this process."""
    global _last_version
    _last_version = max(_last_version + 1, time.time_ns() // 1_000_000)
    return _last_version


def refresh(client: Client, dirty: Dirty) -> None:
    version = next_version()  # taken before reading: a recomputation from newer data wins
    days: dict[str, set[date]] = defaultdict(set)
    for project_id, day in dirty.days:
        days[project_id].add(day)
    ids: dict[str, set[str]] = defaultdict(set)
    for project_id, distinct_id in dirty.ids:
        ids[project_id].add(distinct_id)
    activity_days: dict[str, set[date]] = defaultdict(set)
    for project_id, distinct_ids in ids.items():
        changed = refresh_persons(client, project_id, distinct_ids, version)
        days[project_id] |= changed.first_days | changed.activity_days
        activity_days[project_id] = changed.activity_days
        funnels.recompute(client, project_id, changed.members, changed.gone, version)
    for project_id, project_days in days.items():
        refresh_daily(client, project_id, project_days, version)
    today = datetime.now(UTC).date()
    for project_id, changed_days in activity_days.items():
        refresh_churn(client, project_id, churn_days(changed_days, today), version)


def _mapping(client: Client, project_id: str, column: str, values: set[str]) -> list[tuple[str, str]]:
    if not values:
        return []
    rows = client.query(
        f"SELECT distinct_id, person_id FROM person_distinct_ids FINAL "
        f"WHERE project_id = {{p:String}} AND {column} IN {{v:Array(String)}}",
        parameters={"p": project_id, "v": StringArray(sorted(values))},
    ).result_rows
    return [(d, p) for d, p in rows]


@dataclass
class Changed:
    """What refresh_persons rewrote: each person's anonymous ids, the persons merged away, and
    the days whose new-user counts changed (first visits before and after the rewrite)."""

    members: dict[str, list[str]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    first_days: set[date] = field(default_factory=set)
    activity_days: set[date] = field(default_factory=set)  # days someone became (in)active on


def refresh_persons(client: Client, project_id: str, distinct_ids: set[str], version: int) -> Changed:
    """Rewrite the persons these ids belong to, and the days on which each was active."""
    direct = dict(_mapping(client, project_id, "distinct_id", distinct_ids))
    onward = dict(_mapping(client, project_id, "distinct_id", set(direct.values())))  # alias chains: one hop

    def resolve(distinct_id: str) -> str:
        first = direct.get(distinct_id, distinct_id)
        return onward.get(first, first)

    persons = {resolve(d) for d in distinct_ids}
    members: dict[str, set[str]] = {p: {p} for p in persons}
    level1 = _mapping(client, project_id, "person_id", persons)
    level2 = _mapping(client, project_id, "person_id", {d for d, _ in level1})
    hop = {d: p for d, p in level1}
    for distinct_id, person_id in level1:
        members[person_id].add(distinct_id)
    for distinct_id, via in level2:
        if hop.get(via) in members:
            members[hop[via]].add(distinct_id)
    everyone = set().union(*members.values()) if members else set()
    everyone_ids = StringArray(sorted(everyone))

    visits = {
        anonymous_id: (first, last, count, views, active_days)
        for anonymous_id, first, last, count, views, active_days in client.query(
            "SELECT anonymous_id, min(start_at), max(last_event_at), count(), sum(page_views), "
            "groupUniqArrayArray(arrayMap(d -> toDate(start_at) + d, "
            "                    range(toUInt32(toDate(last_event_at) - toDate(start_at)) + 1))) "
            "FROM sessions FINAL WHERE project_id = {p:String} AND anonymous_id IN {ids:Array(String)} "
            "GROUP BY anonymous_id",
            parameters={"p": project_id, "ids": everyone_ids},
        ).result_rows
    }
    latest: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)
    owner = {d: p for p, ds in members.items() for d in ds}
    for distinct_id, key, value, trait_version in client.query(
        "SELECT distinct_id, key, value, version FROM person_traits FINAL "
        "WHERE project_id = {p:String} AND distinct_id IN {ids:Array(String)}",
        parameters={"p": project_id, "ids": everyone_ids},
    ).result_rows:
        person_traits = latest[owner[distinct_id]]
        if key not in person_traits or person_traits[key][0] < trait_version:
            person_traits[key] = (trait_version, value)

    rows: list[list[Any]] = []
    changed = Changed(gone=distinct_ids - persons)
    # The days these persons were first seen on before this rewrite get recounted too: a merge
    # or a late event can move a first visit to another day, and the old day must lose it. Their
    # last_seen locates the persons_recent rows this rewrite replaces.
    before = {
        person_id: (_utc(first_seen), _utc(last_seen))
        for person_id, first_seen, last_seen in client.query(
            "SELECT person_id, first_seen, last_seen FROM persons FINAL WHERE project_id = {p:String} "
            "AND person_id IN {ids:Array(String)} AND is_deleted = 0",
            parameters={"p": project_id, "ids": StringArray(sorted(persons | changed.gone))},
        ).result_rows
    }
    changed.first_days.update(first.date() for first, _last in before.values())
    activity: dict[tuple[date, str], int] = {}
    for person_id in sorted(persons):
        seen = [visits[d] for d in members[person_id] if d in visits]
        if not seen:
            continue  # no browsing yet (server-side calls only): no person row
        traits = {k: orjson.loads(v) for k, (_, v) in latest.get(person_id, {}).items()}
        plan = traits.get("plan")
        first_seen = min(_utc(s[0]) for s in seen)
        changed.first_days.add(first_seen.date())
        changed.members[person_id] = sorted(d for d in members[person_id] if d in visits)
        for s in seen:
            for day in s[4]:
                activity[(day, person_id)] = 0
        rows.append(
            [
                project_id,
                person_id,
                first_seen,
                max(_utc(s[1]) for s in seen),
                sum(s[2] for s in seen),
                sum(s[3] for s in seen),
                changed.members[person_id],
                orjson.dumps(traits, option=orjson.OPT_SORT_KEYS).decode(),
                plan if isinstance(plan, str) else "",
                0,
                version,
            ]
        )
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for gone in sorted(changed.gone):  # merged into another person
        rows.append([project_id, gone, epoch, epoch, 0, 0, [], "{}", "", 1, version])
    if rows:
        insert_rows(client, "persons", rows, PERSON_COLUMNS)
        _write_recent(client, rows, before)
    changed.activity_days = _write_activity(
        client, project_id, set(changed.members) | changed.gone, activity, version
    )
    return changed


RECENT_COLUMNS = [
    *("project_id", "last_seen", "person_id", "first_seen"),
    *("sessions", "page_views", "plan", "is_deleted", "version"),
]


def _write_recent(
    client: Client, rows: list[list[Any]], before: dict[str, tuple[datetime, datetime]]
) -> None:
    """persons_recent, the persons sorted by last seen: the new rows, and a tombstone for each
    replaced row whose place (last_seen) changed or whose person is gone."""
    recent: list[list[Any]] = []
    for project_id, person_id, first, last, sessions, views, _ids, _traits, plan, deleted, version in rows:
        previous = before.get(person_id)
        if previous is not None and (deleted or previous[1] != last):
            recent.append([project_id, previous[1], person_id, previous[0], 0, 0, "", 1, version])
        if not deleted:
            recent.append([project_id, last, person_id, first, sessions, views, plan, 0, version])
    if recent:
        insert_rows(client, "persons_recent", recent, RECENT_COLUMNS)


def _write_activity(
    client: Client, project_id: str, persons: set[str], fresh: dict[tuple[date, str], int], version: int
) -> set[date]:
    """Bring these persons' stored active days to `fresh`: add the new ones, delete the ones
    they no longer have (a person merged away has none). Returns the days that changed."""
    if not persons:
        return set()
    stored = {
        (day, person_id)
        for day, person_id in client.query(
            "SELECT day, person_id FROM person_activity FINAL WHERE project_id = {p:String} "
            "AND person_id IN {ids:Array(String)} AND is_deleted = 0",
            parameters={"p": project_id, "ids": StringArray(sorted(persons))},
        ).result_rows
    }
    added, stale = sorted(set(fresh) - stored), sorted(stored - set(fresh))
    rows = [[project_id, d, p, 0, version] for d, p in added]
    rows += [[project_id, d, p, 1, version] for d, p in stale]
    if rows:
        insert_rows(client, "person_activity", rows, ACTIVITY_COLUMNS)
    return {d for d, _p in added} | {d for d, _p in stale}


CHURN_COLUMNS = ["project_id", "day", "base", "churned", "version"]


def churn_days(changed: set[date], today: date) -> set[date]:
    """The days whose churn window (the 14 days ending on them) holds a changed day."""
    return {d + timedelta(days=i) for d in changed for i in range(14) if d + timedelta(days=i) <= today}


def refresh_churn(client: Client, project_id: str, days: set[date], version: int) -> None:
    """Rewrite churn_daily for these days, in one pass over the activity of their windows:
    base(D) = persons active on D-13..D-7, churned(D) = those of them not active on D-6..D."""
    if not days:
        return
    wanted = sorted(days)
    counts = {
        day: (base, churned)
        for day, base, churned in client.query(
            "SELECT D, countIf(b), countIf(b AND NOT r) FROM ("
            "  SELECT D,"
            "         arrayExists(x -> x BETWEEN D - 13 AND D - 7, active) AS b,"
            "         arrayExists(x -> x BETWEEN D - 6 AND D, active) AS r"
            "  FROM (SELECT person_id, groupArray(day) AS active FROM person_activity FINAL"
            "        WHERE project_id = {p:String} AND is_deleted = 0"
            "          AND day BETWEEN {lo:Date} AND {hi:Date} GROUP BY person_id)"
            "  ARRAY JOIN {days:Array(Date)} AS D"
            ") GROUP BY D",
            parameters={
                "p": project_id,
                "days": wanted,
                "lo": wanted[0] - timedelta(days=13),
                "hi": wanted[-1],
            },
        ).result_rows
    }
    rows = [[project_id, d, *counts.get(d, (0, 0)), version] for d in wanted]
    insert_rows(client, "churn_daily", rows, CHURN_COLUMNS)


def refresh_daily(client: Client, project_id: str, days: set[date], version: int) -> None:
    """Rewrite the daily statistics of these (UTC) days."""
    wanted = sorted(days)
    params = {"p": project_id, "days": wanted}
    activity = {
        day: (views, events)
        for day, views, events in client.query(
            "SELECT toDate(timestamp) AS day, countIf(type = 'page'), countIf(event != '$heartbeat') "
            "FROM events FINAL WHERE project_id = {p:String} AND toDate(timestamp) IN {days:Array(Date)} "
            "GROUP BY day",
            parameters=params,
        ).result_rows
    }
    active = dict(
        client.query(
            "SELECT day, count() FROM person_activity FINAL WHERE project_id = {p:String} "
            "AND is_deleted = 0 AND day IN {days:Array(Date)} GROUP BY day",
            parameters=params,
        ).result_rows
    )
    visits = {
        day: (count, bounce, seconds)
        for day, count, bounce, seconds in client.query(
            "SELECT toDate(start_at) AS day, count(), countIf(page_views = 1) / count(), "
            "avg(dateDiff('millisecond', start_at, last_event_at)) / 1000 FROM sessions FINAL "
            "WHERE project_id = {p:String} AND toDate(start_at) IN {days:Array(Date)} GROUP BY day",
            parameters=params,
        ).result_rows
    }
    new = dict(
        client.query(
            "SELECT toDate(first_seen) AS day, count() FROM persons FINAL WHERE project_id = {p:String} "
            "AND is_deleted = 0 AND toDate(first_seen) IN {days:Array(Date)} GROUP BY day",
            parameters=params,
        ).result_rows
    )
    rows = []
    for day in wanted:
        views, events = activity.get(day, (0, 0))
        count, bounce, seconds = visits.get(day, (0, 0.0, 0.0))
        rows.append(
            [
                project_id,
                day,
                active.get(day, 0),
                new.get(day, 0),
                count,
                views,
                events,
                round(bounce, 6),
                round(seconds, 3),
                version,
            ]
        )
    insert_rows(client, "daily_stats", rows, DAILY_COLUMNS)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
