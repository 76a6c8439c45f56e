"""The metric cards and the users list narrowed by filters (docs/definitions.md, "Filters").

Both count **persons with a matching session**: the breakdown_sessions rows `Filters.matching`
selects (what the breakdowns and the filtered activity chart count), each visitor resolved to
its live person (werkstroom.breakdowns.EVERY_PERSON_OF), else itself. With one filter on an
attribute of the session's entry page view (Filters.rolled: country, source, device, ...),
alone or with a plan, or a plan alone (Filters.first_by), those persons are read from
person_first_by (migration 0033: a row per person and value or plan, with its first and last
day of it, the day it was first seen, its recent days), which the aggregator keeps from the same
join (person_activity_by, 0031). Unfiltered, the cards and the list are read as before
(services.api.queries), with the same SQL.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.api import queries
from services.api.filters import ONE_FINAL_THREAD, ONLINE_DAYS, Filters
from services.api.queries import ONLINE_WINDOW, WEEK, Narrowing, T
from werkstroom import churn, timezones
from werkstroom.breakdowns import EVERY_PERSON_OF

#: The first and the last day a Date holds: "every day the breakdown tables hold".
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2149, 6, 6)

# Each matching session's (person, day): the visitor's live person, else the visitor (an outer
# join without join_use_nulls gives '' for a visitor in no persons row, and 1970 as its first
# day, so such a person is never new). Over {lo:Date}..{hi:Date}. The persons of every visitor
# (werkstroom.breakdowns.EVERY_PERSON_OF) are joined to the matching sessions, held in memory,
# as the activity chart does: narrowing them to the matching visitors first read those sessions
# twice.
# With `plan` or `segment`, the persons are narrowed by them and the sessions are not
# (Filters.with_persons); naming a plan alone, the plan's sessions and their persons and first
# days are plan_sessions' rows (no join).
_PERSON_DAYS = """
SELECT {person} AS person_id, s.day AS day, {first_day} AS first_day
FROM {joined}
"""
# With one rolled filter (alone or with a plan), or a plan alone (Filters.first_by), the persons
# are read from person_first_by instead (_rolled_cards). A rolled filter's were read from
# person_activity_by's rows of the value before (at 10M events, country=NL, p50 alone: the
# persons counts 323 -> 165 ms, churn 293 -> 160, the users list's first page 259 -> 108;
# bench/README.md, 2026-12-04 stop 37), and from every matching session and every visitor's
# person before that.
# The four figures of queries.persons_counts, of the persons with a matching session (lo..hi =
# FIRST_DAY..today): total, those with one by today (a week earlier: by that day); new, those of
# the total first seen in the week (a week earlier: in the 7 days before). A person first seen
# in the week has every session in it, so its matching session is that week's too.
_PERSONS_COUNTS = """
SELECT countIf(first_match <= {{t:Date}}), countIf(first_match <= {{t:Date}} - 7),
       countIf(first_match <= {{t:Date}} AND first_day > {{t:Date}} - 7 AND first_day <= {{t:Date}}),
       countIf(first_match <= {{t:Date}} - 7 AND first_day > {{t:Date}} - 14 AND first_day <= {{t:Date}} - 7)
FROM (
    SELECT person_id, min(day) AS first_match, max(first_day) AS first_day
    FROM ({person_days})
    GROUP BY person_id
)
"""
# The cards' person figures with one rolled filter or a plan, in one read of person_first_by (its
# rows of the value: services.api.filters.ROLLED_PERSONS, lo..hi = FIRST_DAY..today; with a plan
# too, those of its persons: WITH_PLAN): a row per person with its first matching day and the day
# it was first seen, where person_activity_by has one per person and day, and no join (the first
# seen days were joined from persons_first_day's last two weeks): _PERSONS_COUNTS's four figures,
# then churn's (werkstroom.churn.ROLLED_FIGURES) from the same rows, whose FINAL is most of the
# read. At 10M events, country=NL, p50 alone, merged into one part: persons counts 273 -> 21 ms,
# churn 185 -> 33 ms as two reads (bench/README.md, 2026-12-04 stop 40); in 3 parts, 37.5 -> 21-25
# ms with the table sorted by a fixed-width key of the value (migration 0038; 2026-12-05 stop 48).
_CHURN_FIGURES = churn.ROLLED_FIGURES.strip().replace("\n", "\n       ")


def _rolled_cards(persons: str) -> str:
    """The cards' statement over `persons` (Filters.rolled_persons' SELECT)."""
    return f"""
SELECT countIf(first_day <= {{t:Date}}), countIf(first_day <= {{t:Date}} - 7),
       countIf(first_day <= {{t:Date}} AND first_seen_day > {{t:Date}} - 7 AND first_seen_day <= {{t:Date}}),
       countIf(first_day <= {{t:Date}} - 7 AND first_seen_day > {{t:Date}} - 14
               AND first_seen_day <= {{t:Date}} - 7),
       {_CHURN_FIGURES}
FROM ({persons})
SETTINGS {ONE_FINAL_THREAD}
"""


# The visitors with a matching session spanning a moment {w1} (online then: its last event at
# most ONLINE_WINDOW before): the matching breakdown_sessions rows of {lo}..{hi} (the moment's day
# and the one before, as Filters.online) with their session's start (migration 0032) and
# duration. It read the start and last event of `sessions`, sorted by visitor, for every session
# of the project: at 10M events, p50 alone, country=NL 96 -> 14 ms, device=mobile 74 -> 13,
# segment=premium 96 -> 41 (bench/README.md, 2026-12-04 stop 37).
_ONLINE_AT = f"""
SELECT uniqExact(anonymous_id) FROM ({{matching}}
  AND start_at <= {{{{w1:{T}}}}} AND addMilliseconds(start_at, duration_ms) >= {{{{since:{T}}}}})
"""
# The visitors with a session spanning {w1} (from {since}) in a plain read of breakdown_sessions,
# as Filters.matching's `among` (on visitor_persons' visitor): a session's final row is one of its
# rows, so they include every visitor _ONLINE_AT counts. A few hundred at 1M persons, so the person
# filter reads their granules of visitor_persons, not every visitor with the plan or segment: at
# 10M events, p50 alone, segment=premium 43 -> 38 ms, plan=trial 46 -> 35, segment=active 89 -> 35.
_SPANNING = (
    " AND visitor IN (SELECT anonymous_id FROM breakdown_sessions WHERE project_id = {p:String}"
    f" AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND start_at <= {{w1:{T}}}"
    f" AND addMilliseconds(start_at, duration_ms) >= {{since:{T}}})"
)
# The persons with a matching session on any day the breakdown tables hold, as a condition on
# persons' (and persons_recent's) person_id.
_LISTED = " AND person_id IN (SELECT person_id FROM ({person_days}))"


def person_days(filters: Filters) -> tuple[str, dict[str, Any]]:
    """A SELECT of (person_id, day, ...) for each session `filters` matches over
    {lo:Date}..{hi:Date} of project {p:String}, and the filters' parameters (binding {tz:String}
    too). One rolled filter reads person_first_by instead (Filters.rolled_persons)."""
    joined, params = filters.with_persons("day, anonymous_id", EVERY_PERSON_OF)
    return _PERSON_DAYS.format(joined=joined.source, person=joined.person, first_day=joined.first_day), params


def persons_counts_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """queries.persons_counts' four figures over the persons with a matching session, binding
    {t:Date} (today) besides p, lo, hi and tz, and the filters' parameters (not for a filter set
    with Filters.first_by: rolled_cards)."""
    sql, params = person_days(filters)
    return _PERSONS_COUNTS.format(person_days=sql), params


def online_at_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The count of visitors with a matching session spanning {w1} (from {since}: _ONLINE_AT),
    binding p, lo and hi too. A person filter looks only at the visitors of the sessions
    spanning it (_SPANNING)."""
    matching, params = filters.matching("anonymous_id", among=_SPANNING)
    return _ONLINE_AT.format(matching=matching), params


def listed(filters: Filters, zone: str = timezones.DEFAULT) -> Narrowing:
    """The users list's condition (` AND ...`, "" unfiltered) keeping the persons with a
    matching session, and its parameters besides the list's own (`zone`: the project's)."""
    if not filters.values:
        return queries.EVERYONE
    # with a plan, from plan_sessions (faster here: Filters.rolled_persons)
    sql, params = filters.rolled_persons(with_plan=False) or person_days(filters)
    return _LISTED.format(person_days=sql), {**params, "lo": FIRST_DAY, "hi": LAST_DAY, "tz": zone}


def members(filters: Filters) -> queries.Members | None:
    """listed's condition as a test of given persons (queries.Members), where one read of
    person_first_by answers it (Filters.rolled_members), else None."""
    rolled = filters.rolled_members()
    if rolled is None:
        return None
    sql, params = rolled
    return sql, {**params, "lo": FIRST_DAY, "hi": LAST_DAY}


def persons_counts(
    client: Client, project_id: str, now: datetime, filters: Filters, zone: str = timezones.DEFAULT
) -> tuple[int, int, int, int]:
    """total now, total a week ago, new this week, new the week before, in the project's days
    (of `zone`) (queries.persons_counts unfiltered)."""
    if not filters.values:
        return queries.persons_counts(client, project_id, now, zone)
    if filters.first_by() is not None:
        return rolled_cards(client, project_id, now, filters, zone)[0]
    sql, params = persons_counts_sql(filters)
    today = timezones.today(now, zone)
    bound = {**params, "p": project_id, "lo": FIRST_DAY, "hi": today, "t": today, "tz": zone}
    row = client.query(sql, parameters=bound).first_row
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


# The online count under one rolled filter value that the aggregator recorded (online_history_by,
# migration 0040) in the minute nearest {at} within two minutes that it recorded that filter in
# (a minute with a row of the filter: there, a value without one had nobody online), as
# queries.online_week_ago reads online_history's. No row: not recorded then.
_RECORDED_BY = """
SELECT sumIf(online, filter_value = {rv:String}) FROM online_history_by FINAL
WHERE project_id = {p:String} AND filter = {rf:String}
  AND minute BETWEEN {lo:DateTime('UTC')} AND {hi:DateTime('UTC')}
GROUP BY minute
ORDER BY abs(dateDiff('second', minute, {at:DateTime('UTC')}))
LIMIT 1
"""


def online_week_ago(
    client: Client, project_id: str, now: datetime, filters: Filters, zone: str = timezones.DEFAULT
) -> int:
    """The online count a week ago under `filters`: with one rolled filter, the count the
    aggregator recorded then (_RECORDED_BY: of the visitors online whose current session
    matched); else, or without a record, the visitors with a matching session spanning now - 7
    days (queries.online_week_ago unfiltered, which prefers the aggregator's online_history)."""
    if not filters.values:
        return queries.online_week_ago(client, project_id, now)
    rolled = filters.rolled()
    if rolled is not None:
        recorded = client.query(
            _RECORDED_BY,
            parameters={"p": project_id, "rf": rolled[0], "rv": rolled[1], **queries.recorded_week_ago(now)},
        ).result_rows
        if recorded:
            return int(recorded[0][0])
    sql, params = online_at_sql(filters)
    then = now - WEEK
    day = timezones.today(then, zone)  # the project's day of that moment: its sessions' day or the next
    return int(
        client.query(
            sql,
            parameters={
                **params,
                "p": project_id,
                "lo": day - timedelta(days=ONLINE_DAYS - 1),
                "hi": day,
                "w1": then,
                "since": then - ONLINE_WINDOW,
            },
        ).first_row[0]
    )


def churn_counts(
    client: Client, project_id: str, now: datetime, filters: Filters, zone: str = timezones.DEFAULT
) -> tuple[int, int, int, int]:
    """base, churned; base and churned a week earlier, the base narrowed to the persons with a
    matching session in its window (werkstroom.churn.NARROWED_COUNTS_SQL; with a filter set of
    Filters.first_by rolled_cards; queries.churn_counts unfiltered)."""
    if not filters.values:
        return queries.churn_counts(client, project_id, now, zone)
    if filters.first_by() is not None:
        return rolled_cards(client, project_id, now, filters, zone)[1]
    today = timezones.today(now, zone)
    week_ago = today - WEEK
    base, params = person_days(filters)
    counts = churn.narrowed_counts(client, project_id, {today, week_ago}, base, {**params, "tz": zone})
    return (*counts[today], *counts[week_ago])


Figures = tuple[int, int, int, int]


def rolled_cards(
    client: Client, project_id: str, now: datetime, filters: Filters, zone: str = timezones.DEFAULT
) -> tuple[Figures, Figures]:
    """persons_counts' and churn_counts' figures for a filter set with Filters.first_by (one
    rolled filter, alone or with a plan, or a plan alone), in one read (_rolled_cards)."""
    rolled = filters.rolled_persons()
    assert rolled is not None, "not a filter set person_first_by holds"
    today = timezones.today(now, zone)
    bound = {
        **rolled[1],
        **churn.rolled_params(today),
        "p": project_id,
        "lo": FIRST_DAY,
        "hi": today,
        "t": today,
    }
    row = [int(x) for x in client.query(_rolled_cards(rolled[0]), parameters=bound).first_row]
    return (row[0], row[1], row[2], row[3]), (row[4], row[5], row[6], row[7])
