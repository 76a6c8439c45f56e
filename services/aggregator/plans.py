"""plan_sessions and plan_pages (migrations 0034, 0036): the staged persons' sessions and page
rows under their plans, recomputed in ClickHouse after their breakdown_sessions and
breakdown_pages rows are (services.aggregator.derived).

A row is a live breakdown_sessions row (plan_sessions: with the person and its first_seen) or
breakdown_pages row (plan_pages) of a member of a person, under the plan the person's new row
has. It changes when its source row does (on the dirty days), when its visitor moves to another
person (the days of the members that moved, Changed.moved_days), and when its person's plan or
first_seen changes: then on every day of the person's members' sessions (read from the staged
sessions: statements). Over those days, each current row is compared with the rows held for the
members, of any plan: a row for each one new or different, a tombstone for each held one that is
no longer current (the old plan's, after a change), at the refresh's version. A recomputation
gives the same rows whatever came before.
"""

from __future__ import annotations

from datetime import date
from functools import cache

from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse.tables import PLAN_PAGES_COLUMNS, PLAN_SESSIONS_COLUMNS, SESSION_ATTRIBUTES

#: Each table's key after the project (plan_sessions: plan, day, anonymous_id, session_id;
#: plan_pages: the same and path), from its source table (the same key without the plan).
_SOURCES = {"plan_sessions": ("breakdown_sessions", 4), "plan_pages": ("breakdown_pages", 5)}
_COLUMNS = {"plan_sessions": PLAN_SESSIONS_COLUMNS, "plan_pages": PLAN_PAGES_COLUMNS}
#: The columns a current row takes from its person's new row (the rest are its source row's).
_OF_PERSON = ("person_id", "first_seen")


@cache
def statements(members: str, fresh: str, before: str, sessions: str) -> tuple[str, str]:
    """The staged ids of the persons that are new or whose plan or first_seen changed (a
    subquery: each of their rows changes) and the days of their sessions, over the refresh's
    staged (member, person) pairs `members`, the persons' new rows and old ones (`fresh`,
    `before`: tables with person_id, first_seen and plan) and the members' live sessions
    (`sessions`, a table with anonymous_id and start_at), in the project's zone {tz:String}."""
    changed = f"""(
    SELECT member FROM {members} WHERE person IN (
        SELECT f.person_id FROM {fresh} AS f LEFT JOIN {before} AS b ON b.person_id = f.person_id
        WHERE b.person_id = '' OR b.plan != f.plan OR b.first_seen != f.first_seen
    )
)"""
    days = f"""
SELECT DISTINCT toDate(start_at, {{tz:String}}) FROM {sessions} WHERE anonymous_id IN {changed}
"""
    return changed, days


@cache
def write(
    member_ids: str, members: str, fresh: str, before: str, superseded: str, table: str = "plan_sessions"
) -> str:
    """The recomputation of `table`'s rows (plan_sessions or plan_pages) of the ids `member_ids`
    (a subquery, of the staged pairs `members`) over {days:Array(Date)} of project {p:String} at
    version {v:UInt64}, their persons' new rows `fresh`: each current row is its source row
    (`s`) under its person's plan, with `_OF_PERSON` from the person's new row (`f`); none for a
    person in `superseded` (a subquery of person ids: a newer refresh of it already wrote, so
    its plan may be stale). The same row under each other plan of the person's states in
    `before` (a table with person_id and plan) is a tombstone, whether it is held yet or not:
    a concurrent refresh of the person may write it after this read (services.aggregator.derived,
    STORED_STAGE)."""
    source, length = _SOURCES[table]
    columns = _COLUMNS[table]
    key = columns[1 : 1 + length]
    # The columns compared between a current row and a held one: the rest of a row.
    values = [c for c in columns if c not in (*key, "project_id", "version", "is_deleted")]
    # LowCardinality as stored, String as computed: the UNION's two sides read as one type
    stored = {*SESSION_ATTRIBUTES, "plan"}
    current = ", ".join(
        f"f.{c} AS {c}" if c in _OF_PERSON else f"toString(s.{c}) AS {c}" if c in stored else f"s.{c} AS {c}"
        for c in key[1:] + values
    )
    held = ", ".join(f"toString({c})" if c in stored else c for c in [*key, *values])
    plans = (
        f"arrayConcat(if(m.person IN {superseded}, [], [(f.plan, toUInt8(1))]), "
        "arrayMap(x -> (x, toUInt8(0)), arrayFilter(x -> x != f.plan, b.plans)))"
    )
    # The outer expressions have no aliases: an alias that is also a column's name would be read
    # as the aggregate inside another one.
    return f"""
INSERT INTO {table} ({", ".join(columns)})
SELECT {{p:String}}, {", ".join(key)}, {", ".join(f"argMax({c}, current)" for c in values)},
       {{v:UInt64}}, toUInt8(max(current) = 0)
FROM (
    SELECT pc.1 AS plan, {", ".join(key[1:] + values)}, pc.2 AS current
    FROM (
        SELECT {current}, {plans} AS pcs
        FROM (SELECT * FROM {source} FINAL
              PREWHERE day IN {{days:Array(Date)}} AND anonymous_id IN {member_ids}
              WHERE project_id = {{p:String}} AND is_deleted = 0) AS s
        INNER JOIN {members} AS m ON m.member = s.anonymous_id
        INNER JOIN {fresh} AS f ON f.person_id = m.person
        LEFT JOIN (SELECT person_id, groupUniqArray(plan) AS plans FROM {before} GROUP BY person_id) AS b
            ON b.person_id = m.person
    )
    ARRAY JOIN pcs AS pc
    UNION ALL
    SELECT {held}, toUInt8(0)
    FROM {table} FINAL
    PREWHERE day IN {{days:Array(Date)}} AND anonymous_id IN {member_ids}
    WHERE project_id = {{p:String}} AND is_deleted = 0
)
GROUP BY {", ".join(key)}
HAVING max(current) = 0 OR min(current) = 1 OR uniqExact(tuple({", ".join(values)})) > 1
"""


def refresh(
    client: Client,
    project_id: str,
    days: set[date],
    version: int,
    zone: str,
    staged: tuple[str, str, str, str, str, str],
) -> set[date]:
    """Bring plan_sessions and plan_pages in line for the staged persons' members over `days`
    (the dirty days and those of the members that moved), and for the members of the persons
    whose plan or first_seen changed over their sessions' other days, which it returns (their
    plans' roll-up changes: services.aggregator.breakdowns). `staged`: the refresh's staged ids
    (a subquery), (member, person) pairs, persons' new and old rows, sessions (see statements)
    and the persons a newer refresh already wrote (a subquery: see write)."""
    member_ids, members, fresh, before, sessions, superseded = staged
    changed, days_sql = statements(members, fresh, before, sessions)
    params = {"p": project_id, "tz": zone, "v": version}
    settings = {"max_threads": 1}  # as the breakdowns' refresh: beside the aggregator's own work
    if days:
        for table in _SOURCES:
            sql = write(member_ids, members, fresh, before, superseded, table)
            client.command(sql, parameters={**params, "days": sorted(days)}, settings=settings)
    # their rows on `days` were just written with every member's (the new persons of a batch
    # of new visitors have no other day: most refreshes write once)
    their_days = sorted(d for (d,) in client.query(days_sql, parameters=params).result_rows if d not in days)
    if their_days:
        for table in _SOURCES:
            sql = write(changed, members, fresh, before, superseded, table)
            client.command(sql, parameters={**params, "days": their_days}, settings=settings)
    return set(their_days)
