"""Persons, daily statistics and the breakdowns of settled days, recomputed from the written
rows for the keys a batch touched.

They depend on rows from every partition (a person's anonymous ids live in different
partitions; a day's events too), so instead of per-worker state they are recomputed in
ClickHouse for the dirty keys, a few times a second at most, before the offsets that dirtied
them are committed. A recomputation gives the same row whatever came before, so a replay after
a crash, or two workers recomputing the same key, changes nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.aggregator import breakdowns, plans
from services.aggregator.breakdowns import RollUps
from services.aggregator.funnels import person_ids, recompute
from services.aggregator.processor import Dirty
from werkstroom import churn, identity, timezones
from werkstroom.breakdowns import PLAN_FILTER, filter_pairs
from werkstroom.clickhouse.params import StringArray, insert_rows, tab_separated
from werkstroom.clickhouse.tables import (
    CHURN_DAILY_COLUMNS,
    DAILY_STATS_COLUMNS,
    FUNNEL_LEVELS_BY_COLUMNS,
    PERSON_DAYS_COLUMNS,
    PERSON_FIRST_BY_COLUMNS,
    PERSON_REFRESHES_COLUMNS,
    PERSONS_COLUMNS,
    PERSONS_RECENT_COLUMNS,
    SESSIONS_DAILY_COLUMNS,
    VISITOR_PERSONS_COLUMNS,
)
from werkstroom.clickhouse.versions import next_version
from werkstroom.funnels import Funnel, list_funnels


def refresh(client: Client, dirty: Dirty, rollups: RollUps | None = None) -> None:
    """Recompute what `dirty` touched; `rollups` (the worker's, None: none) rolls up the
    settled days among its days (services.aggregator.breakdowns)."""
    version = next_version()  # taken before reading: a recomputation from newer data wins
    days: dict[str, set[date]] = defaultdict(set)
    for project_id, day in dirty.days:
        days[project_id].add(day)
    ids: dict[str, set[str]] = defaultdict(set)
    for project_id, distinct_id in dirty.ids:
        ids[project_id].add(distinct_id)
    activity_days: dict[str, set[date]] = defaultdict(set)
    planned: dict[str, set[date]] = defaultdict(set)  # other days of persons whose plan changed
    zones = dirty.zones  # each project's time zone: its days are local days in it
    if ids:  # a run again after a failure starts with none held (it reads the rows still open)
        client.command(f"DROP TEMPORARY TABLE IF EXISTS {CLOSING}")
        client.command(CLOSING_CREATE)
    for project_id, distinct_ids in ids.items():
        zone = zones.get(project_id, timezones.DEFAULT)
        changed = refresh_persons(client, project_id, distinct_ids, version, days[project_id], zone)
        refresh_session_days(client, project_id, days[project_id], zone)  # its members are staged
        breakdowns.recompute(client, project_id, days[project_id], MEMBER_IDS, SESSIONS, zone)  # and theirs
        activity_by_days = days[project_id] | changed.moved_days
        planned[project_id] = refresh_activity_by(
            client, project_id, activity_by_days, changed.gone, version, zone
        )
        days[project_id] |= changed.first_days | changed.activity_days | changed.moved_days
        activity_days[project_id] = changed.activity_days
        project_funnels = list_funnels(client, project_id)
        if project_funnels:
            members = funnel_members(client, changed.members)
            recompute(client, project_id, members, changed.gone, version, project_funnels, zone)
            refresh_levels_by(client, project_id, project_funnels, changed.gone, version)
        client.command(HOLD_CLOSING, parameters={"p": project_id, "v": version})  # closed last
    now = datetime.now(UTC)
    today = {
        p: timezones.today(now, zones.get(p, timezones.DEFAULT)) for p in days.keys() | activity_days.keys()
    }
    for project_id, project_days in days.items():
        refresh_daily(client, project_id, project_days, version)
    if rollups is not None:
        # the days whose breakdowns under a plan changed too (breakdowns.ROLL_UP_BY)
        rolled = {p: project_days | planned[p] for p, project_days in days.items()}
        rollups.refresh(client, rolled, version, now, time.monotonic(), zones)
    for project_id, changed_days in activity_days.items():
        refresh_churn(client, project_id, churn.days_affected(changed_days, today[project_id]), version)
    if ids:
        client.command(CLOSE_HELD)  # the refresh's last write (CLOSING)


@dataclass
class Changed:
    """What refresh_persons rewrote: the persons and their member ids, the persons merged away,
    and the days whose counts changed (first visits before and after the rewrite; days a person
    became (in)active on; days of the sessions of members that joined or left a person, whose
    person changed although no person's active days may have: the filtered activity roll-up
    counts a day's persons per filter value, activity_daily_by)."""

    members: dict[str, set[str]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    first_days: set[date] = field(default_factory=set)
    activity_days: set[date] = field(default_factory=set)
    moved_days: set[date] = field(default_factory=set)


# The statements here read a few ids' rows of tables under FINAL with `PREWHERE <sorting-key
# column> IN ...`: FINAL then reads the other columns only for those rows. ClickHouse does not
# move a condition to PREWHERE itself under FINAL (on other columns it would change which
# version wins); on a sorting-key column it is safe, as every version of a row has the same key.
#
# The persons a refresh rewrites and each one's member ids, staged once per refresh in a
# temporary table of the refresh's session (`stage_members`): every statement below reads it
# instead of binding tens of thousands of ids again, which ClickHouse parsed once per statement
# and parameter (most of a refresh's time).
STAGE = "refresh_members"
BEFORE = "refresh_before"  # the rows the refresh replaces, as they were
# The members' live sessions, read once (SESSIONS_STAGE): persons, active days, sessions_daily
# and funnels read them here instead of each reading `sessions` FINAL again.
SESSIONS = "refresh_sessions"
# The persons' new rows, computed once (PERSONS_STAGE): written to persons and persons_recent,
# and their first days compared, from here.
FRESH = "refresh_persons"
# The persons' values as person_first_by gets them (_VALUES, computed once: VALUES_STAGE), which
# funnel_levels_by's rows are written from too (LEVELS_BY_INSERT).
VALUES = "refresh_values"
# Every stored version of the persons' persons rows, read once the refresh wrote its own
# (STORED_STAGE): the states another refresh of them at once may have written (added to BEFORE:
# STORED_BEFORE) and whether one newer than this one already wrote (SUPERSEDED).
STORED = "refresh_stored"
MEMBERS = f"(SELECT member, person FROM {STAGE})"
MEMBER_IDS = f"(SELECT member FROM {STAGE})"
PERSON_IDS = f"(SELECT DISTINCT person FROM {STAGE})"
STAGE_TABLES = {
    STAGE: "member String, person String",
    BEFORE: "person_id String, first_seen DateTime64(3, 'UTC'), last_seen DateTime64(3, 'UTC'), "
    "anonymous_ids Array(String), plan String, refresh UInt64",
    SESSIONS: "anonymous_id String, session_id String, start_at DateTime64(3, 'UTC'), "
    "last_event_at DateTime64(3, 'UTC'), page_views UInt32, version UInt64",
    FRESH: "person_id String, first_seen DateTime64(3, 'UTC'), last_seen DateTime64(3, 'UTC'), "
    "sessions UInt32, page_views UInt32, anonymous_ids Array(String), traits String, plan String",
    VALUES: "person_id String, filter String, value String, first_day Date, last_day Date, recent UInt64, "
    "gone UInt8",
    STORED: "person_id String, first_seen DateTime64(3, 'UTC'), last_seen DateTime64(3, 'UTC'), "
    "anonymous_ids Array(String), plan String, version UInt64, is_deleted UInt8",
}
SESSIONS_STAGE = f"""
INSERT INTO {SESSIONS} (anonymous_id, session_id, start_at, last_event_at, page_views, version)
SELECT anonymous_id, session_id, start_at, last_event_at, page_views, version FROM sessions FINAL
PREWHERE anonymous_id IN {MEMBER_IDS}
WHERE project_id = {{p:String}} AND is_deleted = 0
"""


def stage_members(client: Client, pairs: list[tuple[str, str]]) -> None:
    """(member, person) pairs into the session's temporary table, replacing the last ones."""
    for table, columns in STAGE_TABLES.items():
        client.command(f"DROP TEMPORARY TABLE IF EXISTS {table}")
        client.command(f"CREATE TEMPORARY TABLE {table} ({columns}) ENGINE = Memory")
    if pairs:
        client.raw_insert(STAGE, ["member", "person"], tab_separated(pairs), fmt="TabSeparated")


# The persons' rows before the rewrite (those merged away included): their first days get
# recounted too (a merge or a late event can move a first visit to another day, and the old
# day must lose it), their last_seen locates the persons_recent rows to tombstone, their
# anonymous_ids tell which members moved between persons (MOVED_DAYS), their plan which
# person_first_by plan rows to tombstone (FIRST_BY_INSERT, with the stored versions), and their
# plan and first_seen which persons' sessions plan_sessions moves (services.aggregator.plans).
#
# A person can have more than one row here: besides its live persons row, the rows an earlier
# refresh of it found and left open (person_refreshes, migration 0035: it failed part of the way,
# or another worker's is under way). A refresh run again after it wrote the new persons rows
# (a kill -9, ClickHouse away) then still sees the state before the change. Every use of BEFORE
# takes each of its rows as a state the derived rows may hold: a superset of old states only
# tombstones or recomputes more, never less.
# The staged persons' rows and those merged away, by person_id (a sorting-key column, so safe in
# PREWHERE under FINAL): BEFORE's reads and FIRST_BY_INSERT's.
_OF_PERSONS = f"PREWHERE person_id IN {PERSON_IDS} OR person_id IN {{gone:Array(String)}}"
BEFORE_INSERT = f"""
INSERT INTO {BEFORE} (person_id, first_seen, last_seen, anonymous_ids, plan, refresh)
SELECT person_id, first_seen, last_seen, anonymous_ids, plan, 0 FROM persons FINAL
{_OF_PERSONS}
WHERE project_id = {{p:String}} AND is_deleted = 0
UNION ALL
SELECT person_id, first_seen, last_seen, anonymous_ids, plan, refresh FROM person_refreshes FINAL
{_OF_PERSONS}
WHERE project_id = {{p:String}} AND done = 0
"""
# The persons rows of the refresh's BEFORE (refresh 0; the open ones of earlier refreshes stay
# open under their own), open in person_refreshes under its version before it writes anything
# derived from the change; closed, with the open rows of earlier refreshes it read (a lower
# version: a newer one under way on another worker stays open), as its last write (from BEFORE:
# the closing row replaces the open one whatever it holds).
OPEN_REFRESH = f"""
INSERT INTO person_refreshes ({", ".join(PERSON_REFRESHES_COLUMNS)})
SELECT {{p:String}}, person_id, {{v:UInt64}}, first_seen, last_seen, anonymous_ids, plan, 0
FROM {BEFORE} WHERE refresh = 0
"""
_CLOSING_ROWS = f"""
SELECT {{p:String}}, person_id, if(refresh = 0, {{v:UInt64}}, refresh), first_seen, last_seen,
       anonymous_ids, plan, 1
FROM {BEFORE} WHERE refresh < {{v:UInt64}}
"""
CLOSE_REFRESH = f"INSERT INTO person_refreshes ({', '.join(PERSON_REFRESHES_COLUMNS)}){_CLOSING_ROWS}"
# A refresh's closing rows wait in a temporary table of its session (CLOSING) from the end of
# each project's persons' work until the refresh's last statement (CLOSE_HELD): the daily
# figures, churn and the roll-ups after the projects' loop are written from what the persons'
# change told (days a first visit, a member or a plan moved from or to), which a run again after
# a failure there learns only from the rows still open. Closed per project, a failure in them (a
# kill -9, ClickHouse away) left those days' roll-ups and figures on the old persons until the
# days changed again (tests/integration/test_breakdown_rollups.py).
CLOSING = "refresh_closing"
# person_refreshes' columns, as the table has them (no copy of their types to keep in step)
CLOSING_CREATE = (
    f"CREATE TEMPORARY TABLE {CLOSING} ENGINE = Memory AS "
    f"SELECT {', '.join(PERSON_REFRESHES_COLUMNS)} FROM person_refreshes WHERE 0"
)
HOLD_CLOSING = f"INSERT INTO {CLOSING} ({', '.join(PERSON_REFRESHES_COLUMNS)}){_CLOSING_ROWS}"
CLOSE_HELD = (
    f"INSERT INTO person_refreshes ({', '.join(PERSON_REFRESHES_COLUMNS)}) "
    f"SELECT {', '.join(PERSON_REFRESHES_COLUMNS)} FROM {CLOSING}"
)


# A person's row, computed in ClickHouse from its members' sessions and traits: first and last
# seen, sessions and page views over the members' sessions; the members that have sessions;
# each trait's latest value over all members (ties: the greater value, so that a replay picks
# the same one), as one JSON object with sorted keys; the plan when it is a string. Persons
# with no session (server-side calls only) get no row.
PERSONS_STAGE = f"""
INSERT INTO {FRESH} (person_id, first_seen, last_seen, sessions, page_views, anonymous_ids, traits, plan)
SELECT v.person, v.first_seen, v.last_seen, v.sessions, v.page_views, v.ids,
       if(t.person = '', '{{}}', t.traits),
       if(JSONType(t.plan) = 'String', JSONExtractString(t.plan), '')
FROM (
    SELECT m.person AS person, min(s.first) AS first_seen, max(s.last) AS last_seen,
           sum(s.n) AS sessions, sum(s.views) AS page_views, arraySort(groupArray(m.member)) AS ids
    FROM (
        SELECT anonymous_id, min(start_at) AS first, max(last_event_at) AS last, count() AS n,
               sum(page_views) AS views
        FROM {SESSIONS}
        GROUP BY anonymous_id
    ) AS s
    INNER JOIN {MEMBERS} AS m ON s.anonymous_id = m.member
    GROUP BY m.person
) AS v
LEFT JOIN (
    SELECT person,
           '{{' || arrayStringConcat(arrayMap(kv -> concat(toJSONString(kv.1), ':', kv.2),
                                               arraySort(groupArray((key, value)))), ',') || '}}' AS traits,
           anyIf(value, key = 'plan') AS plan
    FROM (
        SELECT m.person AS person, tr.key AS key, argMax(tr.value, (tr.version, tr.value)) AS value
        FROM (
            SELECT distinct_id, key, value, version FROM person_traits FINAL
            PREWHERE distinct_id IN {MEMBER_IDS} WHERE project_id = {{p:String}}
        ) AS tr
        INNER JOIN {MEMBERS} AS m ON tr.distinct_id = m.member
        GROUP BY m.person, tr.key
    )
    GROUP BY person
) AS t ON t.person = v.person
SETTINGS output_format_json_escape_forward_slashes = 0
"""
PERSONS_INSERT = f"""
INSERT INTO persons ({", ".join(PERSONS_COLUMNS)})
SELECT {{p:String}}, person_id, first_seen, last_seen, sessions, page_views, anonymous_ids, traits, plan,
       0, {{v:UInt64}}
FROM {FRESH}
"""

# Two refreshes of one person at once (two workers whose batches both hold its ids) each compute
# the person from what they read, and neither need have read the other's persons row. Rows keyed
# by what they describe resolve by version; rows keyed by a column of the person (persons_recent
# by last_seen; person_first_by's plan rows, plan_sessions and plan_pages by the plan) would keep
# the older refresh's row beside the newer one's, at another place. So each refresh reads every
# stored version of its persons' rows once it wrote its own (STORED_STAGE) and:
# - takes their states as states its derived rows may hold (STORED_BEFORE: into BEFORE, under
#   its own version, so that it closes none of them), whose places it tombstones;
# - writes no live row at a place of a person that a newer refresh already wrote (SUPERSEDED):
#   its place may be stale.
# Each writes its persons row before this read: either the newer one's read finds the older
# one's row (and tombstones its places, at the newer version), or the older one's read finds the
# newer one's (tests/integration/test_refresh_races.py). (A merge of the two persons rows in the
# milliseconds between the newer one's write and read would hide the older row from it;
# docs/guarantees.md.)
STORED_STAGE = f"""
INSERT INTO {STORED} (person_id, first_seen, last_seen, anonymous_ids, plan, version, is_deleted)
SELECT person_id, first_seen, last_seen, anonymous_ids, plan, version, is_deleted FROM persons
{_OF_PERSONS}
WHERE project_id = {{p:String}}
"""
STORED_BEFORE = f"""
INSERT INTO {BEFORE} (person_id, first_seen, last_seen, anonymous_ids, plan, refresh)
SELECT person_id, first_seen, last_seen, anonymous_ids, plan, {{v:UInt64}} FROM {STORED}
WHERE is_deleted = 0 AND version != {{v:UInt64}}
"""
SUPERSEDED = f"(SELECT person_id FROM {STORED} WHERE version > {{v:UInt64}})"

# persons_recent: a copy of each row just written (its version; a tombstone when SUPERSEDED),
# and a tombstone for each row it replaces whose place (last_seen) moved or whose person is gone:
# the places in BEFORE (with the stored versions: STORED_BEFORE).
RECENT_INSERT = f"""
INSERT INTO persons_recent ({", ".join(PERSONS_RECENT_COLUMNS)})
SELECT {{p:String}}, last_seen, person_id, first_seen, sessions, page_views, plan,
       toUInt8(person_id IN {SUPERSEDED}), {{v:UInt64}}
FROM {FRESH}
UNION ALL
SELECT {{p:String}}, old.last_seen, old.person_id, any(old.first_seen), 0, 0, '', 1, {{v:UInt64}}
FROM {BEFORE} AS old
LEFT JOIN {FRESH} AS fresh ON fresh.person_id = old.person_id
WHERE old.person_id IN {{gone:Array(String)}} OR (fresh.person_id != '' AND fresh.last_seen != old.last_seen)
GROUP BY old.person_id, old.last_seen
"""

# visitor_persons: a row per visitor of each row just written (its version). No tombstones: a
# visitor leaves a person only when its latest mapping names another (identify, alias), which
# makes the refresh that takes that mapping write the other person's row, with the visitor, at
# its own version. A tombstone here, at the version of a later refresh of the person it left,
# would delete that newer row (a refresh of user-a after anon-x moved to user-b). Its sessions
# never go, so a visitor is never in no person.
VISITORS_INSERT = f"""
INSERT INTO visitor_persons ({", ".join(VISITOR_PERSONS_COLUMNS)})
SELECT {{p:String}}, visitor, person_id, first_seen, last_seen, plan, 0, {{v:UInt64}}
FROM {FRESH} ARRAY JOIN anonymous_ids AS visitor
"""


def _span(start: str, last: str) -> str:
    """Each local day (the project's zone, {tz}) from the day of `start` to the day of `last`,
    one row each (arrayJoin)."""
    first, final = f"toDate({start}, {{tz:String}})", f"toDate({last}, {{tz:String}})"
    return f"arrayJoin(arrayMap(d -> {first} + d, range(toUInt32({final} - {first}) + 1)))"


def _person_days_diff(table: str, computed: str, keys: str = "") -> str:
    """The (day, person) rows of `table` (ReplacingMergeTree(version, is_deleted)) for these
    persons over `days`, against the (person_id, day) rows `computed` gives: the rows to add
    (is_deleted 0) and to delete (1). A person merged away (gone) has no computed rows.
    `keys`: the tables' further key columns, ", "-led, on both sides and after day and
    person_id in the result."""
    return f"""
SELECT day, person_id{keys}, toUInt8(min(source) = 2) FROM (
    SELECT DISTINCT person_id, day{keys}, 1 AS source FROM ({computed}) WHERE day IN {{days:Array(Date)}}
    UNION ALL
    SELECT person_id, day{keys}, 2 FROM {table} FINAL
    PREWHERE day IN {{days:Array(Date)}}
        AND (person_id IN {PERSON_IDS} OR person_id IN {{gone:Array(String)}})
    WHERE project_id = {{p:String}} AND is_deleted = 0
)
GROUP BY day, person_id{keys}
HAVING count() = 1
"""


# A person's stored active days are the days its members' sessions span, as of its last
# recomputation (_apply_diff makes them so). They change only on days a changed session
# spans (the dirty days: a session's span only grows, and SessionsProcessor.rows dirties its
# old days too), and on the days of the sessions of members that joined or left the person
# (identify, alias, a merge: the members in one of the states BEFORE holds of a person and not
# among its staged ones with sessions, or the other way round; a person with no state there has
# all of its members moved). The diff compares those days alone: person_activity is sorted by
# day, so reading all of a person's days was a scan of the project's person_id column.
MOVED_DAYS = f"""
SELECT DISTINCT {_span("start_at", "last_event_at")}
FROM sessions FINAL
PREWHERE anonymous_id IN (
    SELECT arrayJoin(arrayConcat(arrayFilter(x -> NOT has(s.ids, x), b.ids),
                                 arrayFilter(x -> NOT has(b.ids, x), s.ids)))
    FROM (SELECT person_id AS person, anonymous_ids AS ids FROM {BEFORE}) AS b
    FULL OUTER JOIN (
        SELECT person, groupArray(member) AS ids FROM {STAGE}
        WHERE member IN (SELECT anonymous_id FROM {SESSIONS})
        GROUP BY person
    ) AS s ON s.person = b.person
)
WHERE project_id = {{p:String}} AND is_deleted = 0
"""
ACTIVE_DAYS = f"""
SELECT m.person AS person_id, {_span("s.start_at", "s.last_event_at")} AS day
FROM {SESSIONS} AS s
INNER JOIN {MEMBERS} AS m ON s.anonymous_id = m.member
"""

# Each person's first day (persons_first_day) against its new row's first_seen, over the
# persons' old and new first days (FIRST_DAYS).
FIRST_DAY = f"SELECT person_id, toDate(first_seen, {{tz:String}}) AS day FROM {FRESH}"
FIRST_DAYS = (
    f"SELECT day FROM ({FIRST_DAY}) "
    f"UNION DISTINCT SELECT DISTINCT toDate(first_seen, {{tz:String}}) FROM {BEFORE}"
)


def refresh_persons(
    client: Client,
    project_id: str,
    distinct_ids: set[str],
    version: int,
    days: set[date],
    zone: str,
    rezone: bool = False,
) -> Changed:
    """Rewrite the persons these ids belong to, and the days on which each was active (over
    `days`, the dirty days, and the days of members that moved). The rows are computed by
    ClickHouse (INSERT ... SELECT): Python only resolves which ids make up which person, and
    reads back the few days whose counts changed.

    The persons' rows as they were are kept open in person_refreshes (OPEN_REFRESH) until the
    refresh ends (CLOSING, close_refresh): run again after a failure past the persons write, the refresh
    still reads them (BEFORE_INSERT), and with them which members moved and what changed.

    `rezone`: the project's zone changed (services.aggregator.rezone), so a person's stored
    first day may be another zone's day: its first days are compared over `days` too."""
    resolved = identity.resolve(distinct_ids, lambda ids: identity.mappings(client, project_id, ids))
    persons = set(resolved.values())
    members = identity.members(persons, lambda ids: identity.mapped_to(client, project_id, ids))
    changed = Changed(members=members, gone=distinct_ids - persons)
    stage_members(client, [(d, p) for p, ds in members.items() for d in ds])
    bound = {"p": project_id, "v": version, "gone": StringArray(sorted(changed.gone)), "tz": zone}
    client.command(SESSIONS_STAGE, parameters={"p": project_id})
    client.command(BEFORE_INSERT, parameters=bound)
    client.command(OPEN_REFRESH, parameters=bound)
    client.command(PERSONS_STAGE, parameters=bound)
    moved = {d for (d,) in client.query(MOVED_DAYS, parameters=bound).result_rows}
    changed.moved_days = moved
    changed.activity_days = _apply_diff(client, "person_activity", ACTIVE_DAYS, bound, days | moved)
    first_days = {d for (d,) in client.query(FIRST_DAYS, parameters=bound).result_rows}
    if rezone:
        first_days |= days
    changed.first_days = _apply_diff(client, "persons_first_day", FIRST_DAY, bound, first_days)
    client.command(PERSONS_INSERT, parameters=bound)
    if changed.gone:  # merged into another person
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        rows = [[project_id, g, epoch, epoch, 0, 0, [], "{}", "", 1, version] for g in sorted(changed.gone)]
        insert_rows(client, "persons", rows, PERSONS_COLUMNS)
    client.command(STORED_STAGE, parameters=bound)  # after the persons rows: see STORED_STAGE
    client.command(STORED_BEFORE, parameters=bound)
    client.command(RECENT_INSERT, parameters=bound)
    client.command(VISITORS_INSERT, parameters=bound)
    return changed


def close_refresh(client: Client, project_id: str, version: int) -> None:
    """Close the refresh's rows in person_refreshes and the open ones of earlier refreshes (lower
    versions) it read: the last write of a refresh of the persons refresh_persons staged, once everything
    derived from their change is written (services.aggregator.rezone's chunks; `refresh` holds
    them until its own end: CLOSING)."""
    client.command(CLOSE_REFRESH, parameters={"p": project_id, "v": version})


def _apply_diff(
    client: Client, table: str, computed: str, bound: dict[str, Any], days: set[date]
) -> set[date]:
    """Bring a person-by-day table in line with the (person_id, day) rows `computed` gives,
    over `days` (_person_days_diff); returns the days whose counts changed."""
    sql = _person_days_diff(table, computed)
    diff = client.query(sql, parameters={**bound, "days": sorted(days)}).result_rows
    if diff:
        insert_rows(
            client, table, [[bound["p"], d, p, x, bound["v"]] for d, p, x in diff], PERSON_DAYS_COLUMNS
        )
    return {d for d, _p, _x in diff}


# person_activity_by (migration 0031) for the staged persons: each (day, filter, value) of their
# members' breakdown_sessions rows (breakdowns.recompute wrote the dirty days' first) against the
# rows stored for them and the persons merged away, as person_activity's (_person_days_diff),
# read from its copy sorted by person (person_activity_by_person), over the days {days}: a row
# for each one now held, a tombstone for each one no longer held, none for the rest. Over the
# dirty days and the days of the members that moved (Changed.moved_days), every day whose rows
# a batch can change: a session's day and its entry page view's attributes change only on dirty
# days; a member's person only when it moves.
ACTIVE_BY = f"""
SELECT m.person AS person_id, s.day AS day, s.f.1 AS filter, s.f.2 AS filter_value
FROM (SELECT day, anonymous_id, arrayJoin([{filter_pairs()}]) AS f FROM breakdown_sessions FINAL
      PREWHERE day IN {{days:Array(Date)}} AND anonymous_id IN {MEMBER_IDS}
      WHERE project_id = {{p:String}} AND is_deleted = 0) AS s
INNER JOIN {MEMBERS} AS m ON s.anonymous_id = m.member
"""
ACTIVITY_BY_INSERT = f"""
INSERT INTO person_activity_by (project_id, day, person_id, filter, filter_value, is_deleted, version)
SELECT {{p:String}}, *, {{v:UInt64}}
FROM ({_person_days_diff("person_activity_by_person", ACTIVE_BY, ", filter, filter_value")})
"""


# person_first_by (migration 0033) for the staged persons and those merged away: each (filter,
# value) they have a stored person_activity_by row of, any version, with its first and last live
# day and its live days since {since:Date} (churn.RECENT_DAYS) as bits (churn.bit), or a
# tombstone when no day of it is live any more (argMax over the versions of each row instead of
# FINAL, which would drop the deleted rows that tell which values went); and of the person, the
# day it was first seen and its active days since {since:Date} as bits, from its new persons row
# and active days (FRESH, ACTIVE_DAYS: a person merged away has neither, 1970 and 0). Besides the
# session filters, the person's plan (filter 'plan', the value its new persons row has: what the
# `plan` filter and the plan segments keep) over all its sessions' days (a session has a country,
# '' included, so its `country` rows are its days), and a tombstone for every other plan its
# row before the batch has (BEFORE, with the states an unfinished refresh left open and the
# stored versions: STORED_BEFORE; the person went: all of them); the plan row itself a tombstone
# when a newer refresh of the person already wrote (SUPERSEDED: two refreshes at once, see
# STORED_STAGE). (The persons rows alone, or BEFORE without the open states, missed the old plan
# on a refresh run again after a crash: test_aggregator_crash caught a merged-away person's plan
# row left behind.) All of the persons' rows are written, changed or not: diffing would need their
# stored rows, and the table is sorted by value, not person. At the batch's version, as persons
# and person_activity_by.
_BIT = "bitShiftLeft(toUInt64(1), toUInt16(day) % 64)"
_LIVE_BY = f"""
    SELECT person_id, day, filter, filter_value, argMax(is_deleted, version) = 0 AS live
    FROM person_activity_by_person
    {_OF_PERSONS}
    WHERE project_id = {{p:String}}
    GROUP BY person_id, day, filter, filter_value
"""
# The persons' values (filter, value), as person_first_by's rows without the person's own
# columns: person_id, filter, value, first_day, last_day, recent and gone (1: a tombstone), over
# the CTE live_by (_LIVE_BY).
_VALUES = f"""
    SELECT person_id, filter, filter_value AS value, minIf(day, live) AS first_day,
           maxIf(day, live) AS last_day, groupBitOrIf({_BIT}, live AND day >= {{since:Date}}) AS recent,
           toUInt8(countIf(live) = 0) AS gone
    FROM live_by
    GROUP BY person_id, filter, filter_value
    UNION ALL
    SELECT l.person_id, '{PLAN_FILTER}', f.plan, minIf(l.day, l.live), maxIf(l.day, l.live),
           groupBitOrIf({_BIT}, l.live AND l.day >= {{since:Date}}),
           toUInt8(countIf(l.live) = 0 OR l.person_id IN {SUPERSEDED})
    FROM live_by AS l INNER JOIN {FRESH} AS f ON f.person_id = l.person_id
    WHERE l.filter = 'country'
    GROUP BY l.person_id, f.plan
    UNION ALL
    SELECT o.person_id, '{PLAN_FILTER}', o.plan, toDate(0), toDate(0), 0, 1
    FROM (SELECT DISTINCT person_id, plan FROM {BEFORE}) AS o
    LEFT JOIN {FRESH} AS f ON f.person_id = o.person_id
    WHERE f.person_id = '' OR f.plan != o.plan
"""
VALUES_STAGE = f"""
INSERT INTO {VALUES} (person_id, filter, value, first_day, last_day, recent, gone)
WITH live_by AS ({_LIVE_BY})
{_VALUES}"""
FIRST_BY_INSERT = f"""
INSERT INTO person_first_by ({", ".join(PERSON_FIRST_BY_COLUMNS)})
SELECT {{p:String}}, a.filter, a.value, a.person_id, a.first_day, a.last_day, s.day, a.recent, r.recent,
       a.gone, {{v:UInt64}}
FROM {VALUES} AS a
LEFT JOIN (SELECT person_id, toDate(first_seen, {{tz:String}}) AS day FROM {FRESH}) AS s
    ON s.person_id = a.person_id
LEFT JOIN (
    SELECT person_id, groupBitOr({_BIT}) AS recent FROM ({ACTIVE_DAYS}) WHERE day >= {{since:Date}}
    GROUP BY person_id
) AS r ON r.person_id = a.person_id
"""

# funnel_levels_by (migration 0037) for the same persons, once their funnel levels are written
# (funnels.recompute): each live funnel_levels row of a live funnel {funnels:Array(String)} under
# each value the person has (VALUES: person_first_by's rows as just written), with the earlier
# of the two last days and the person's plan (its live plan row's), and a tombstone for every
# other (level, value) pair the person has a stored row of, any version, on either side (a value
# that went, a level of a person merged away). Written whole, changed or not, as person_first_by:
# the table is sorted by value (and a changed plan changes every row).
LEVELS_BY_INSERT = f"""
INSERT INTO funnel_levels_by ({", ".join(FUNNEL_LEVELS_BY_COLUMNS)})
SELECT {{p:String}}, l.funnel_id, a.filter, a.value, l.level, a.person_id,
       if(l.live AND NOT a.gone, least(l.last_day, a.last_day), toDate(0)), pl.plan, {{v:UInt64}},
       toUInt8(NOT (l.live AND NOT a.gone))
FROM {VALUES} AS a
LEFT JOIN (SELECT person_id, value AS plan FROM {VALUES} WHERE filter = '{PLAN_FILTER}' AND gone = 0) AS pl
    ON pl.person_id = a.person_id
INNER JOIN (
    SELECT funnel_id, level, person_id, max(held) AS live, maxIf(day, held = 1) AS last_day
    FROM (
        SELECT funnel_id, level, person_id, last_day AS day, toUInt8(argMax(is_deleted, version) = 0) AS held
        FROM funnel_levels
        {_OF_PERSONS}
        WHERE project_id = {{p:String}} AND funnel_id IN {{funnels:Array(String)}}
        GROUP BY funnel_id, level, person_id, last_day
    )
    GROUP BY funnel_id, level, person_id
) AS l ON l.person_id = a.person_id
"""


def refresh_activity_by(
    client: Client, project_id: str, days: set[date], gone: set[str], version: int, zone: str
) -> set[date]:
    """Bring person_activity_by in line for the persons refresh_persons staged (and those merged
    away, `gone`) over `days`, after breakdowns.recompute wrote their breakdown_sessions rows;
    then their person_first_by rows and their members' plan_sessions and plan_pages rows
    (`zone`: the project's). Returns the other days whose plan rows changed (plans.refresh)."""
    staged = (MEMBER_IDS, MEMBERS, FRESH, BEFORE, SESSIONS, SUPERSEDED)
    planned = plans.refresh(client, project_id, days, version, zone, staged)
    since = datetime.now(UTC).date() - timedelta(days=churn.RECENT_DAYS)
    params = {"p": project_id, "days": sorted(days), "gone": StringArray(sorted(gone)), "v": version}
    if days:
        client.command(ACTIVITY_BY_INSERT, parameters=params)
    # the values, also without days: funnel_levels_by's rows are written from them
    client.command(VALUES_STAGE, parameters={**params, "since": since})
    if days:
        client.command(FIRST_BY_INSERT, parameters={**params, "tz": zone, "since": since})
    return planned


# sessions_daily for the staged visitors over these days (the days their changed sessions span,
# so every day a changed session was ever counted on): each live session under the day it starts
# on, and a tombstone for a row whose session no longer starts that day (it moved to an earlier
# day, or another session absorbed it). Rows that did not change (same version) are not written
# again. Computed from `sessions` each time, so a replay after a crash mends what it missed.
SESSION_DAYS_INSERT = f"""
INSERT INTO sessions_daily ({", ".join(SESSIONS_DAILY_COLUMNS)})
SELECT {{p:String}}, day, anonymous_id, session_id, argMax(page_views, current),
       argMax(duration_ms, current), if(max(current) = 1, argMax(version, current), max(version) + 1),
       toUInt8(max(current) = 0)
FROM (
    SELECT toDate(start_at, {{tz:String}}) AS day, anonymous_id, session_id, page_views,
           dateDiff('millisecond', start_at, last_event_at) AS duration_ms, version, toUInt8(1) AS current
    FROM {SESSIONS}
    WHERE toDate(start_at, {{tz:String}}) IN {{days:Array(Date)}}
    UNION ALL
    SELECT day, anonymous_id, session_id, page_views, duration_ms, version, toUInt8(0)
    FROM sessions_daily FINAL PREWHERE anonymous_id IN {MEMBER_IDS}
    WHERE project_id = {{p:String}} AND day IN {{days:Array(Date)}} AND is_deleted = 0
)
GROUP BY day, anonymous_id, session_id
HAVING max(current) = 0 OR min(current) = 1 OR min(version) != max(version)
"""


def refresh_session_days(client: Client, project_id: str, days: set[date], zone: str) -> None:
    """Bring sessions_daily up to date for the visitors refresh_persons staged, over `days`
    (the dirty local days: they hold every day a changed session spans, SessionsProcessor.rows)."""
    if days:
        client.command(SESSION_DAYS_INSERT, parameters={"p": project_id, "days": sorted(days), "tz": zone})


def refresh_levels_by(
    client: Client, project_id: str, funnels: Sequence[Funnel], gone: set[str], version: int
) -> None:
    """Bring funnel_levels_by in line for the persons refresh_persons staged (and those merged
    away, `gone`) in the project's live `funnels`, after refresh_activity_by and
    funnels.recompute wrote their person_first_by and funnel_levels rows (LEVELS_BY_INSERT)."""
    if not funnels:
        return
    params = {"p": project_id, "gone": StringArray(sorted(gone)), "v": version}
    client.command(LEVELS_BY_INSERT, parameters={**params, "funnels": [f.funnel_id for f in funnels]})


def funnel_members(client: Client, members: dict[str, set[str]]) -> dict[str, list[str]]:
    """The ids whose events count in the funnels of each person that browsed (has a persons
    row, i.e. one of its member ids has sessions): all its member ids and its own id, so that
    the calls a server makes with only a user id count too, also under a user id the person
    had before an alias (person_ids, as the back-fill reads them). The members'
    sessions are the ones refresh_persons staged."""
    if not members:
        return {}
    browsing = {d for (d,) in client.query(f"SELECT DISTINCT anonymous_id FROM {SESSIONS}").result_rows}
    return {p: person_ids(p, ds) for p, ds in members.items() if ds & browsing}


def refresh_churn(client: Client, project_id: str, days: set[date], version: int) -> None:
    """Rewrite churn_daily for these days (werkstroom.churn)."""
    if days:
        rows = [
            [project_id, d, base, churned, version]
            for d, (base, churned) in churn.counts(client, project_id, days).items()
        ]
        insert_rows(client, "churn_daily", rows, CHURN_DAILY_COLUMNS)


def refresh_daily(client: Client, project_id: str, days: set[date], version: int) -> None:
    """Rewrite the daily statistics of these (local) days."""
    wanted = sorted(days)
    params = {"p": project_id, "days": wanted}
    activity = {  # counted by the aggregator per partition as it applies the events
        day: (views, events)
        for day, views, events in client.query(
            "SELECT day, sum(page_views), sum(events) FROM events_daily FINAL "
            "WHERE project_id = {p:String} AND day IN {days:Array(Date)} GROUP BY day",
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
            "SELECT day, count(), countIf(page_views = 1) / count(), avg(duration_ms) / 1000 "
            "FROM sessions_daily FINAL WHERE project_id = {p:String} AND day IN {days:Array(Date)} "
            "AND is_deleted = 0 GROUP BY day",
            parameters=params,
        ).result_rows
    }
    new = dict(
        client.query(
            "SELECT day, count() FROM persons_first_day FINAL WHERE project_id = {p:String} "
            "AND is_deleted = 0 AND day IN {days:Array(Date)} GROUP BY day",
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
    insert_rows(client, "daily_stats", rows, DAILY_STATS_COLUMNS)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
