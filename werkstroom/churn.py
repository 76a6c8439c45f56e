"""Churn, defined once: the aggregator stores it per day (churn_daily) and the API computes a
day the aggregator has not, both with `counts`.

For a UTC day D: the base is the persons active on some day of D-13..D-7, the churned are
those of the base active on none of D-6..D (person_activity: the days a person's sessions
span). The churn rate of D is churned / base.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

#: The days a day's churn reads: itself and the 13 before it.
WINDOW_DAYS = 14

# One pass over the activity of all the asked days' windows: each person's active days,
# then per asked day D whether they fall in the base (D-13..D-7) and in the recent week.
COUNTS_SQL = (
    "SELECT D, countIf(b), countIf(b AND NOT r) FROM ("
    "  SELECT D,"
    "         arrayExists(x -> x BETWEEN D - 13 AND D - 7, active) AS b,"
    "         arrayExists(x -> x BETWEEN D - 6 AND D, active) AS r"
    "  FROM (SELECT person_id, groupArray(day) AS active FROM person_activity FINAL"
    "        WHERE project_id = {p:String} AND is_deleted = 0"
    "          AND day BETWEEN {lo:Date} AND {hi:Date} GROUP BY person_id)"
    "  ARRAY JOIN {days:Array(Date)} AS D"
    ") GROUP BY D"
)

#: COUNTS_SQL with the base narrowed (a view's filters): `{base}` is a SELECT of (person_id, day)
#: rows, the days a person did what the view counts, over {lo:Date}..{hi:Date}; the base of D is
#: the persons with such a day in D-13..D-7, and the churned are still those of the base active
#: (person_activity) on none of D-6..D, so the activity is read from {lo} + 7 on (the first
#: asked day's D-6; at 10M events, one country: 124 -> 111 ms). `{base}` is read once, as the
#: join's in-memory side:
#: narrowing person_activity by `person_id IN` the base as well read the base a second time,
#: and cost more than the activity rows it left out (a filtered metrics card at 10M events,
#: 666 -> 384 ms for country=NL and 868 -> 455 ms for segment=premium, p50 of 3).
NARROWED_COUNTS_SQL = (
    "SELECT D, countIf(b), countIf(b AND NOT r) FROM ("
    "  SELECT D,"
    "         arrayExists(x -> x BETWEEN D - 13 AND D - 7, based) AS b,"
    "         arrayExists(x -> x BETWEEN D - 6 AND D, active) AS r"
    "  FROM (SELECT c.person_id AS person_id, c.based AS based, a.active AS active"
    "        FROM (SELECT person_id, groupArray(day) AS active FROM person_activity FINAL"
    "              WHERE project_id = {{p:String}} AND is_deleted = 0"
    "                AND day BETWEEN {{lo:Date}} + 7 AND {{hi:Date}}"
    "              GROUP BY person_id) AS a"
    "        RIGHT JOIN (SELECT person_id, groupArray(day) AS based FROM ({base}) GROUP BY person_id) AS c"
    "            ON a.person_id = c.person_id)"
    "  ARRAY JOIN {{days:Array(Date)}} AS D"
    ") GROUP BY D"
)


#: How many days before its write's UTC day a person_first_by row (migration 0033) keeps its
#: recent days in (recent_days, recent_active, as bits: `bit`). Churn's windows for today and a
#: week ago reach 20 days back, and a row whose value has a day in them (last_day >= today - 20)
#: was written on or after that day, so every day they need is kept. A bit is a day number modulo
#: 64, so a kept day 64 days before a needed one would share its bit: the kept days of such a row
#: go back at most 43 days from today (written at most a day before its last day, in a zone at
#: most a day from UTC), the windows 20.
RECENT_DAYS = 22
_EPOCH = date(1970, 1, 1)

# The base and churned of today and of a week earlier, with the base narrowed to one rolled filter
# value (or a plan, or a value's persons with a plan), over person_first_by's rows of it (a SELECT
# of their columns, as services.api.people composes it with the other cards' figures): each
# person's recent days of the value and recent active days, kept as bits (RECENT_DAYS), tested
# against the windows' bits (rolled_params: {b0}, {a0} for today's base and recent week, {b1},
# {a1} a week earlier), in the rows with a day of the value on or after the first day of the
# windows ({since}: only those keep every day the windows need, RECENT_DAYS; an older row's days
# could share a window day's bit). The same figures as NARROWED_COUNTS_SQL over that value's
# person_activity_by rows, without reading person_activity (every person's activity of 14 days: at
# 10M events, country=NL, p50 alone 185 -> 33 ms; bench/README.md, 2026-12-04 stop 40).
ROLLED_FIGURES = """
countIf(last_day >= {since:Date} AND bitAnd(recent_days, {b0:UInt64}) != 0),
countIf(last_day >= {since:Date} AND bitAnd(recent_days, {b0:UInt64}) != 0
        AND bitAnd(recent_active, {a0:UInt64}) = 0),
countIf(last_day >= {since:Date} AND bitAnd(recent_days, {b1:UInt64}) != 0),
countIf(last_day >= {since:Date} AND bitAnd(recent_days, {b1:UInt64}) != 0
        AND bitAnd(recent_active, {a1:UInt64}) = 0)
"""


def bit(day: date) -> int:
    """A day's bit in person_first_by's recent days (ClickHouse: toUInt16(day) % 64)."""
    return 1 << ((day - _EPOCH).days % 64)


def bits(first: date, last: date) -> int:
    """The bits of the days first..last (at most 64)."""
    return sum(bit(first + timedelta(days=i)) for i in range((last - first).days + 1))


def rolled_params(today: date) -> dict[str, Any]:
    """ROLLED_FIGURES' parameters for `today`: the windows' bits (base D-13..D-7, recent week
    D-6..D, of D = today and a week earlier) and their first day."""
    params: dict[str, Any] = {"since": today - timedelta(days=20)}
    for i, day in enumerate((today, today - timedelta(days=7))):
        params[f"b{i}"] = bits(day - timedelta(days=13), day - timedelta(days=7))
        params[f"a{i}"] = bits(day - timedelta(days=6), day)
    return params


def days_affected(changed: Iterable[date], today: date) -> set[date]:
    """The days up to today whose churn window holds one of these days."""
    return {
        d + timedelta(days=i) for d in changed for i in range(WINDOW_DAYS) if d + timedelta(days=i) <= today
    }


def counts(client: Client, project_id: str, days: Iterable[date]) -> dict[date, tuple[int, int]]:
    """(base, churned) of each of these days, from person_activity, in one read."""
    return _counts(client, COUNTS_SQL, project_id, days, {})


def narrowed_counts(
    client: Client, project_id: str, days: Iterable[date], base: str, params: Mapping[str, Any]
) -> dict[date, tuple[int, int]]:
    """(base, churned) of each of these days with the base narrowed to `base`'s persons
    (NARROWED_COUNTS_SQL; `params` are its parameters besides p, lo, hi and days)."""
    return _counts(client, NARROWED_COUNTS_SQL.format(base=base), project_id, days, params)


def _counts(
    client: Client, sql: str, project_id: str, days: Iterable[date], params: Mapping[str, Any]
) -> dict[date, tuple[int, int]]:
    """(base, churned) per day of `days` (zeros for a day without a row) from a statement of
    (day, base, churned) over person_activity's days {lo}..{hi} for the days {days}."""
    wanted = sorted(set(days))
    if not wanted:
        return {}
    bound = {
        **params,
        "p": project_id,
        "days": wanted,
        "lo": wanted[0] - timedelta(days=WINDOW_DAYS - 1),
        "hi": wanted[-1],
    }
    found = {day: (int(b), int(c)) for day, b, c in client.query(sql, parameters=bound).result_rows}
    return {d: found.get(d, (0, 0)) for d in wanted}
