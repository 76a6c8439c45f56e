"""The SQL of the dashboard API: one function per question, each taking a ClickHouse client.

Every value from a request travels as a bound parameter ({name:Type}); the only text spliced
into SQL is chosen from constants here (a segment's condition), never from input. Dashboard
paths read the aggregator's tables (online_visitors, sessions, persons, daily_stats,
person_activity, funnel_progress), never the raw events. "now" is always a parameter (the
answer's `as_of`), so one answer is computed at one instant and tests can fix the clock.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from werkstroom import churn, identity, projects, timezones
from werkstroom.clickhouse.params import StringArray
from werkstroom.clickhouse.tables import DAILY_STATS_FIGURES, ONLINE_VISITOR_READ

ONLINE_WINDOW = timedelta(minutes=5)
STUCK_AFTER = timedelta(minutes=5)
ACTIVE_SESSION = timedelta(minutes=30)
WEEK = timedelta(days=7)
ACTIVE_DAYS = timedelta(days=7)
INACTIVE_DAYS = timedelta(days=30)

T = "DateTime64(3, 'UTC')"


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def seconds(delta: timedelta) -> int:
    """Whole seconds, never negative (a clock a little behind an event's time gives 0)."""
    return max(0, int(delta.total_seconds()))


# -- projects and freshness -----------------------------------------------------------------


def project_by_read_key(client: Client, key_hash: str) -> dict[str, str] | None:
    rows = client.query(
        "SELECT project_id, name, write_key, timezone FROM projects FINAL "
        "WHERE read_key_hash = {h:String} AND deleted = 0 LIMIT 1",
        parameters={"h": key_hash},
    ).result_rows
    if not rows:
        return None
    project_id, name, write_key, zone = rows[0]
    return {"project_id": project_id, "name": name, "write_key": write_key, "timezone": zone}


def write_key(client: Client, project_id: str) -> str | None:
    rows = client.query(
        "SELECT write_key FROM projects FINAL WHERE project_id = {p:String} AND deleted = 0",
        parameters={"p": project_id},
    ).result_rows
    return str(rows[0][0]) if rows else None


#: The bot events of one project over local days of its zone {tz} (bot_events, migration 0019, is
#: sorted by UTC day: the UTC days {utc_lo}..{utc_hi} they overlap are read, then cut to the
#: instants {start}..{end}, each event counted under its local day): uniqExact, so rows a replay
#: wrote again and not yet merged count once. Both SELECTs read the same rows (_BOTS_FROM).
_BOTS_FROM = (
    "FROM bot_events WHERE project_id = {p:String} "
    "AND day BETWEEN {utc_lo:Date} AND {utc_hi:Date} "
    f"AND timestamp >= {{start:{T}}} AND timestamp < {{end:{T}}}"
)
BOTS_OF_DAYS = f"SELECT uniqExact(event_id) {_BOTS_FROM}"
BOTS_PER_DAY = (
    f"SELECT toDate(timestamp, {{tz:String}}) AS local, uniqExact(event_id) {_BOTS_FROM} GROUP BY local"
)


def _local_days(first: date, last: date, zone: str) -> dict[str, Any]:
    """The parameters of BOTS_OF_DAYS for the local days first..last of `zone`."""
    start, end = timezones.bounds(first, last, zone)
    utc_lo, utc_hi = timezones.utc_days(first, last, zone)
    return {"tz": zone, "start": start, "end": end, "utc_lo": utc_lo, "utc_hi": utc_hi}


def pipeline(
    client: Client,
    topic: str,
    project_id: str,
    today: date,
    zone: str = timezones.DEFAULT,
    rezoning: str | None = None,
    read_rezoning: bool = False,
) -> dict[str, Any]:
    """The aggregator's progress on `topic` over all its partitions (nulls before its first
    row), the project's events filtered as bots on its `today` (a local day of `zone`), in one
    round trip; and `rezoning` (projects.recomputing's, as the read-key check found it), or with
    `read_rezoning` read in the same round trip (the live stream's polls, which outlast a check)."""
    zones = f", ({projects.ZONE_COMPUTED})" if read_rezoning else ""
    count, last_write, last_event, lag, bots, *computed = client.query(
        f"SELECT count(), max(last_write_at), max(last_event_at), sum(lag), ({BOTS_OF_DAYS}){zones} "
        "FROM aggregator_status FINAL WHERE topic = {t:String}",
        parameters={"t": topic, "p": project_id, **_local_days(today, today, zone)},
    ).first_row
    if read_rezoning:
        rezoning = projects.recomputing(zone, computed[0])
    # A row from an older aggregator that had not yet written says 1970 (the column's zero).
    written = bool(count) and last_write is not None and utc(last_write).timestamp() > 0
    return {
        "last_write_at": utc(last_write) if written else None,
        "last_event_at": utc(last_event) if written and last_event is not None else None,
        "lag": int(lag) if written else None,
        "bots_today": int(bots),
        "recomputing_timezone": rezoning,
    }


def polled_pipeline(
    client: Client, topic: str, project_id: str, today: date, zone: str = timezones.DEFAULT
) -> dict[str, Any]:
    """pipeline() with the rezoning read in the same round trip: the live stream's polls."""
    return pipeline(client, topic, project_id, today, zone, read_rezoning=True)


# -- persons -----------------------------------------------------------------------------------


def resolve_persons(
    client: Client, project_id: str, ids: Iterable[str], likely: Iterable[str] = ()
) -> dict[str, str]:
    """distinct id -> person id, as the aggregator resolves them (werkstroom.identity): the
    identify/alias mappings followed to the end of the chain; an unmapped id is its own person.

    `likely`: ids the first hop probably leads to (e.g. the user ids on the rows), looked up in
    the same read as `ids`, so the second hop needs no read of its own unless the first hop led
    elsewhere (each read of person_distinct_ids touches most of its granules for ~100 ids)."""
    ids = set(ids)
    asked = ids | set(likely)
    return identity.resolve(
        ids,
        lambda wanted: identity.mappings(client, project_id, wanted),
        identity.mappings(client, project_id, asked),
        asked,
    )


# -- online ------------------------------------------------------------------------------------

#: Who of the online visitors a view keeps: a condition on online_visitors' rows (` AND ...`,
#: "" for everyone) and its parameters, besides p and since (the filters' is
#: services.api.filters.Filters.online). Built from constants; values only as parameters.
Narrowing = tuple[str, Mapping[str, Any]]
EVERYONE: Narrowing = ("", MappingProxyType({}))
_ONLINE_WHERE = f"WHERE project_id = {{p:String}} AND last_event_at >= {{since:{T}}}"


def _online_from(narrowing: str) -> str:
    return f"""
FROM online_visitors FINAL
{_ONLINE_WHERE}{narrowing}
ORDER BY last_event_at DESC, anonymous_id
"""


# The columns online_user reads, by position; the live list has the count after them.
_ONLINE_SELECT = f"SELECT {', '.join(ONLINE_VISITOR_READ)}"


def online_sql(narrowing: str = "") -> str:
    """The online list (newest activity first, at most {n} rows) with the count of all."""
    return f"{_ONLINE_SELECT}, count() OVER () AS online{_online_from(narrowing)}LIMIT {{n:UInt32}}"


def online_export_sql(narrowing: str = "") -> str:
    return f"{_ONLINE_SELECT}{_online_from(narrowing)}"


ONLINE_SQL = online_sql()
ONLINE_EXPORT_SQL = online_export_sql()


def online_user(row: Sequence[Any], person_id: str, now: datetime, last_event: str = "") -> dict[str, Any]:
    anonymous_id, session_id, user_id, start_at, last_event_at, url, path, title, entered = row[:9]
    device_type, browser, os = row[9:12]
    entered, start_at, last_event_at = utc(entered), utc(start_at), utc(last_event_at)
    on_page = now - entered
    return {
        "person_id": person_id,
        "anonymous_id": anonymous_id,
        "user_id": user_id or (person_id if person_id != anonymous_id else None),
        "current_path": path,
        "current_url": url,
        "current_title": title,
        "time_on_page_seconds": seconds(on_page),
        "time_on_site_seconds": seconds(now - start_at),
        "device_type": device_type,
        "browser": browser,
        "os": os,
        "stuck": on_page > STUCK_AFTER,
        "last_event_at": last_event_at,
        "page_entered_at": entered,
        "session_id": session_id,
        "last_event": last_event,
    }


def last_events(client: Client, project_id: str, rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """anonymous id -> the name of their newest event in their current session, heartbeats
    aside ($page, or a track event's name): what an online visitor without a page view is
    doing. From visitor_events (filled by ClickHouse from `events`, sorted by visitor), read
    for the listed visitors only; a visitor whose events are not stored yet is left out."""
    if not rows:
        return {}
    starts = {r[0]: utc(r[3]) for r in rows}
    found = client.query(
        "SELECT distinct_id, argMax(event, timestamp), max(timestamp) FROM visitor_events "
        "WHERE project_id = {p:String} AND distinct_id IN {ids:Array(String)} "
        f"AND timestamp >= {{since:{T}}} GROUP BY distinct_id",
        parameters={"p": project_id, "ids": list(starts), "since": min(starts.values())},
    ).result_rows
    # One read from the earliest session start: drop what predates a visitor's own session.
    return {aid: str(event) for aid, event, at in found if utc(at) >= starts[aid]}


def online_rows(
    client: Client, project_id: str, now: datetime, limit: int, narrowing: Narrowing = EVERYONE
) -> list[Sequence[Any]]:
    """The first `limit` visitors online at `now` that `narrowing` keeps, each with the count of
    all of them last (online_sql)."""
    where, params = narrowing
    return client.query(
        online_sql(where),
        parameters={**params, "p": project_id, "since": now - ONLINE_WINDOW, "n": limit},
    ).result_rows


def online_persons(client: Client, project_id: str, rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """The persons of online_rows' visitors (anonymous id -> person id)."""
    return resolve_persons(client, project_id, (r[0] for r in rows), (r[2] for r in rows if r[2]))


def online_answer(
    rows: Sequence[Sequence[Any]], persons: dict[str, str], events: dict[str, str], now: datetime
) -> dict[str, Any]:
    """GET online's answer from online_rows, online_persons and last_events of the same rows."""
    count = int(rows[0][len(ONLINE_VISITOR_READ)]) if rows else 0
    users = [online_user(r, persons[r[0]], now, events.get(r[0], "")) for r in rows]
    return {"online": count, "users": users}


def online(
    client: Client, project_id: str, now: datetime, limit: int, narrowing: Narrowing = EVERYONE
) -> dict[str, Any]:
    """The visitors online at `now` that `narrowing` keeps: their count and the first `limit`,
    read one statement after another (the route runs the persons' and the last events' reads
    side by side instead)."""
    rows = online_rows(client, project_id, now, limit, narrowing)
    persons = online_persons(client, project_id, rows)
    return online_answer(rows, persons, last_events(client, project_id, rows), now)


# -- metrics -----------------------------------------------------------------------------------


def trend(value: float | None, previous: float | None) -> float | None:
    if value is None or previous is None or previous == 0:
        return None
    return round((value - previous) / previous * 100, 1)


def _metric(value: float | None, previous: float | None) -> dict[str, Any]:
    return {"value": value, "previous": previous, "trend": trend(value, previous)}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole * 100, 1) if whole else None


# The metric cards are four independent reads, run concurrently (each on its own client).


def persons_counts(
    client: Client, project_id: str, now: datetime, zone: str = timezones.DEFAULT
) -> tuple[int, int, int, int]:
    """total now, total a week ago, new this week, new the week before, in the project's local
    days (of `zone`): "this week" is today and the 6 days before. From daily_stats' new users (a
    few hundred rows per project-year) instead of every person."""
    row = client.query(
        "SELECT sumIf(new_users, day <= {t:Date}), sumIf(new_users, day <= {t:Date} - 7), "
        "sumIf(new_users, day > {t:Date} - 7 AND day <= {t:Date}), "
        "sumIf(new_users, day > {t:Date} - 14 AND day <= {t:Date} - 7) "
        "FROM daily_stats FINAL WHERE project_id = {p:String}",
        parameters={"p": project_id, "t": timezones.today(now, zone)},
    ).first_row
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def online_count(client: Client, project_id: str, now: datetime, narrowing: Narrowing = EVERYONE) -> int:
    """The "online now" card: the visitors online at `now` that `narrowing` keeps (a view's
    filters: services.api.filters.Filters.online), the same count as `online`'s."""
    where, params = narrowing
    return int(
        client.query(
            f"SELECT count() FROM online_visitors FINAL {_ONLINE_WHERE}{where}",
            parameters={**params, "p": project_id, "since": now - ONLINE_WINDOW},
        ).first_row[0]
    )


def recorded_week_ago(now: datetime) -> dict[str, datetime]:
    """The parameters of a read of the minute the aggregator recorded nearest now - 7 days
    ({at}), within two minutes of it ({lo}..{hi}): online_history's here, online_history_by's
    under a filter (services.api.people.online_week_ago)."""
    at = (now - WEEK).replace(microsecond=0)
    return {"at": at, "lo": at - 2 * timedelta(minutes=1), "hi": at + 2 * timedelta(minutes=1)}


def online_week_ago(client: Client, project_id: str, now: datetime) -> int:
    """The online count the aggregator recorded (online_history, once a minute) within two
    minutes of now - 7 days; without a record (the pipeline was not running then), visitors
    with a session spanning that moment."""
    recorded = client.query(
        "SELECT online FROM online_history FINAL WHERE project_id = {p:String} "
        "AND minute BETWEEN {lo:DateTime('UTC')} AND {hi:DateTime('UTC')} "
        "ORDER BY abs(dateDiff('second', minute, {at:DateTime('UTC')})) LIMIT 1",
        parameters={"p": project_id, **recorded_week_ago(now)},
    ).result_rows
    if recorded:
        return int(recorded[0][0])
    # A session's rows only grow (an earlier start, a later last event), so its final row meets
    # the condition only if some stored row does: the plain scan finds the candidates, FINAL
    # reads just those keys.
    return int(
        client.query(
            f"SELECT uniqExact(anonymous_id) FROM sessions FINAL WHERE project_id = {{p:String}} "
            "AND (anonymous_id, session_id) IN ("
            "  SELECT anonymous_id, session_id FROM sessions WHERE project_id = {p:String}"
            f"  AND start_at <= {{w1:{T}}} AND last_event_at >= {{since:{T}}}) "
            f"AND is_deleted = 0 AND start_at <= {{w1:{T}}} AND last_event_at >= {{since:{T}}}",
            parameters={"p": project_id, "w1": now - WEEK, "since": now - WEEK - ONLINE_WINDOW},
        ).first_row[0]
    )


def churn_counts(
    client: Client, project_id: str, now: datetime, zone: str = timezones.DEFAULT
) -> tuple[int, int, int, int]:
    """base, churned; base and churned one week earlier (werkstroom.churn, in the project's
    local days, of `zone`). The aggregator keeps them per day in churn_daily; a day it has not
    computed (no activity changed in its window since) is computed here, by the same definition."""
    today = timezones.today(now, zone)
    week_ago = today - timedelta(days=7)
    stored = {
        day: (int(base), int(churned))
        for day, base, churned in client.query(
            "SELECT day, base, churned FROM churn_daily FINAL WHERE project_id = {p:String} "
            "AND day IN ({t:Date}, {t:Date} - 7)",
            parameters={"p": project_id, "t": today},
        ).result_rows
    }
    counts = {**churn.counts(client, project_id, {today, week_ago} - set(stored)), **stored}
    return (*counts[today], *counts[week_ago])


def metric_cards(
    persons: tuple[int, int, int, int], online_now: int, online_before: int, churn: tuple[int, int, int, int]
) -> dict[str, Any]:
    total, total_before, new, new_before = persons
    base, churned, base_before, churned_before = churn
    return {
        "total_users": _metric(total, total_before),
        "online_now": _metric(online_now, online_before),
        "new_this_week": _metric(new, new_before),
        "churn_rate": _metric(_rate(churned, base), _rate(churned_before, base_before)),
    }


# -- activity ----------------------------------------------------------------------------------

#: A day of the activity chart (and its export): daily_stats' figures, by name.
DAY_COLUMNS = ["day", *DAILY_STATS_FIGURES]


def activity(
    client: Client, project_id: str, today: date, days: int, zone: str = timezones.DEFAULT
) -> list[dict[str, Any]]:
    """Exactly `days` entries ending `today`, oldest first, from daily_stats (kept in the
    project's local days, of `zone`); days without a row are zeros."""
    since = today - timedelta(days=days - 1)
    stored = {
        row[0]: row
        for row in client.query(
            f"SELECT {', '.join(DAY_COLUMNS)} FROM daily_stats FINAL "
            "WHERE project_id = {p:String} AND day >= {since:Date} AND day <= {today:Date}",
            parameters={"p": project_id, "since": since, "today": today},
        ).result_rows
    }
    return activity_days(since, days, stored, bots_per_day(client, project_id, since, today, zone))


def bots_per_day(
    client: Client, project_id: str, since: date, today: date, zone: str = timezones.DEFAULT
) -> dict[date, int]:
    """The project's bot events per local day of `zone`, since..today."""
    return {
        day: int(count)
        for day, count in client.query(
            BOTS_PER_DAY, parameters={"p": project_id, **_local_days(since, today, zone)}
        ).result_rows
    }


def activity_days(
    since: date, days: int, stored: dict[date, Sequence[Any]], bots: dict[date, int]
) -> list[dict[str, Any]]:
    """The chart's `days` entries from `since` on: each day's row (day, then DAY_COLUMNS'
    figures in order) by name, zeros for a day without one, and the day's bots."""
    out = []
    for i in range(days):
        day = since + timedelta(days=i)
        row = stored.get(day)
        if row is None:
            out.append(
                {"day": day, **dict.fromkeys(DAY_COLUMNS[1:6], 0), **dict.fromkeys(DAY_COLUMNS[6:], 0.0)}
            )
        else:
            out.append(
                {
                    "day": day,
                    **{c: int(v) for c, v in zip(DAY_COLUMNS[1:6], row[1:6], strict=True)},
                    "bounce_rate": float(row[6]),
                    "avg_session_seconds": float(row[7]),
                }
            )
        out[-1]["bots"] = bots.get(day, 0)
    return out


# -- users -------------------------------------------------------------------------------------

# The only SQL chosen by a request parameter: one of these constants, picked by a validated name.
#: The segments that are a plan: the persons with that plan now (SEGMENT_WHERE).
SEGMENT_PLANS = {"premium": "premium", "trial": "trial"}
SEGMENT_WHERE = {
    "all": "",
    "active": f" AND last_seen >= {{active_since:{T}}}",
    "inactive": f" AND last_seen < {{active_since:{T}}} AND last_seen >= {{inactive_since:{T}}}",
    "churned": f" AND last_seen < {{inactive_since:{T}}}",
    **{name: f" AND plan = '{plan}'" for name, plan in SEGMENT_PLANS.items()},
}
SEGMENT_OF = (
    f"multiIf(last_seen >= {{active_since:{T}}}, 'active', "
    f"last_seen >= {{inactive_since:{T}}}, 'inactive', 'churned')"
)
Q_WHERE = (
    " AND (positionCaseInsensitiveUTF8(person_id, {q:String}) > 0"
    " OR positionCaseInsensitiveUTF8(traits, {q:String}) > 0)"
)
USER_COLUMNS = f"person_id, first_seen, last_seen, sessions, page_views, plan, {SEGMENT_OF} AS segment"


MAX_MS = 10_413_792_000_000  # 2300-01-01, past DateTime64's range: no cursor points later


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the last row of the previous page (last_seen desc, person_id asc)."""

    last_seen_ms: int
    person_id: str

    def encode(self) -> str:
        raw = orjson.dumps([self.last_seen_ms, self.person_id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            ms, person_id = orjson.loads(raw)
        except Exception:
            raise BadCursor("not a cursor this API gave out") from None
        valid = isinstance(ms, int) and not isinstance(ms, bool) and 0 <= ms < MAX_MS
        if not valid or not isinstance(person_id, str):
            raise BadCursor("not a cursor this API gave out")
        return cls(ms, person_id)


def segment_params(now: datetime) -> dict[str, Any]:
    """The parameters SEGMENT_WHERE and SEGMENT_OF bind, at the answer's `now`."""
    return {"active_since": now - ACTIVE_DAYS, "inactive_since": now - INACTIVE_DAYS}


def users_filter(
    project_id: str, now: datetime, segment: str, q: str, narrowing: Narrowing = EVERYONE
) -> tuple[str, dict[str, Any]]:
    """The users list's condition on persons (and persons_recent) rows: the segment, the search,
    and `narrowing` (a view's filters: services.api.people.listed), with their parameters."""
    where = "project_id = {p:String} AND is_deleted = 0" + SEGMENT_WHERE[segment]
    params: dict[str, Any] = {"p": project_id, **segment_params(now)}
    if q:
        where += Q_WHERE
        params["q"] = q
    condition, extra = narrowing
    if condition:
        where += condition
        params.update(extra)
    return where, params


def user_row(row: Sequence[Any]) -> dict[str, Any]:
    person_id, first_seen, last_seen, sessions, page_views, plan, segment = row[:7]
    return {
        "person_id": person_id,
        "first_seen": utc(first_seen),
        "last_seen": utc(last_seen),
        "sessions": int(sessions),
        "page_views": int(page_views),
        "plan": plan or None,
        "segment": segment,
    }


def users_page(
    client: Client,
    project_id: str,
    now: datetime,
    segment: str,
    q: str,
    limit: int,
    cursor: Cursor | None,
    narrowing: Narrowing = EVERYONE,
    members: Members | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the users list: `narrowing` (a view's filters) keeps the persons it lists;
    `members`, when given, is the same narrowing as a test of given persons, which the first
    read uses instead (MEMBERS_SPREAD)."""
    where, params = users_filter(project_id, now, segment, q)
    if cursor is not None:
        where += (
            f" AND (last_seen < {{c_seen:{T}}}"
            f" OR (last_seen = {{c_seen:{T}}} AND person_id > {{c_id:String}}))"
        )
        params["c_seen"] = datetime.fromtimestamp(cursor.last_seen_ms / 1000, UTC)
        params["c_id"] = cursor.person_id
    wanted = limit + 1
    fetch = wanted + max(16, wanted // 4)
    # Without a search, candidates come from persons_recent (sorted by last_seen: it reads only
    # the newest granules); a search over traits needs persons.
    recent = not q
    rows = None
    if members is not None and recent:
        spread = min(fetch * MEMBERS_SPREAD, CANDIDATES_MAX)
        rows = _users_top(client, where, params, wanted, spread, recent, (members, fetch))
    if narrowing[0]:
        where += narrowing[0]
        params.update(narrowing[1])
    while rows is None and fetch <= CANDIDATES_MAX:
        rows = _users_top(client, where, params, wanted, fetch, recent)
        fetch *= 4
    if rows is None:  # a page that many candidates could not settle (e.g. masses of equal last_seen)
        rows = client.query(
            f"SELECT {USER_COLUMNS} FROM persons FINAL WHERE {where} "
            "ORDER BY last_seen DESC, person_id ASC LIMIT {n:UInt32}",
            parameters={**params, "n": wanted},
        ).result_rows
    users = [user_row(r) for r in rows[:limit]]
    following = None
    if len(rows) > limit:
        last = users[-1]
        following = Cursor(_ms(last["last_seen"]), last["person_id"]).encode()
    return users, following


# A users page is the first persons, by (last_seen desc, person_id), whose final row (FINAL:
# the highest version; a deleted person has none) passes the filter. FINAL over all of a
# project's persons merges and sorts every one of them, so a page is read in steps that touch
# only a page's worth of persons, with the same answer:
# 1. candidates, without FINAL: the `fetch` newest stored rows passing the filter, any version,
#    from persons_recent (sorted by last_seen, so only its newest granules are read; each row
#    carries the version of the persons row it copies) or, for a search over traits, from
#    persons (ORDER BY last_seen LIMIT reads last_seen everywhere), with their place;
# 2. which candidate rows are final: FINAL over just the candidates' persons (PREWHERE on the
#    sorting key, so FINAL merges only their granules, and a person's versions all stay in)
#    gives the place of each one's final row;
# 3. persons whose final row is not their candidate row (a newer version, or a merge moved it
#    between the reads): their final rows, read with FINAL and the filter.
# The final row of a person who belongs on the page is a stored row passing the filter, so every
# such person whose last_seen is above the last candidate's is among the candidates; rows at or
# below that bound may be missing. If fewer than a page lie above it, more candidates are read.
CANDIDATES_MAX = 20_000
#: A view's filters as a test of given persons (services.api.people.members): a SELECT of the
#: person_id among {ids:Array(String)} of project {p:String} that they keep, and its other
#: parameters. The users list's first read tests its candidates with it, read without the
#: filters, instead of narrowing them by every person the filters keep (a set it builds first):
#: MEMBERS_SPREAD times a page's candidates settle it for a filter that keeps one in
#: MEMBERS_SPREAD of the persons or more; for fewer (a smaller set to build) the set is read
#: next. At 10M events, country=NL (182,103 of 1M persons), the candidates' read 37 -> 3.5 ms
#: and the test of 400-1,500 of them 18-21 ms (bench/README.md, 2026-12-05 stop 45).
Members = tuple[str, Mapping[str, Any]]
MEMBERS_SPREAD = 16


def _users_top(
    client: Client,
    where: str,
    params: dict[str, Any],
    wanted: int,
    fetch: int,
    recent: bool,
    members: tuple[Members, int] | None = None,
) -> list[Sequence[Any]] | None:
    """The first `wanted` rows of the page, or None when `fetch` candidates cannot settle it.
    With `recent`, the candidates are persons_recent rows (a copy of each persons row, sorted
    by last_seen), identified by (version, last_seen); else persons rows, by their place.
    `members` (a test, and how many candidates to check) narrows the persons kept after `where`:
    the candidates are read without it, those it keeps are kept, and only the newest of them,
    as many as a page's candidates (the bound moves up to the last checked: the steps' argument
    holds for them as for a shorter read). A page under country=NL at 10M events keeps ~200 of
    1,072 and checks 67: the read of their final rows 11.4 -> 6.7 ms, p50 alone (bench/README.md, 2026-12-05
    stop 50)."""
    if recent:
        candidates = client.query(
            f"SELECT {USER_COLUMNS}, version, last_seen FROM persons_recent WHERE {where} "
            "ORDER BY last_seen DESC LIMIT {m:UInt32}",
            parameters={**params, "m": fetch},
        ).result_rows
        identity = "version, last_seen"
    else:
        candidates = client.query(
            f"SELECT {USER_COLUMNS}, _part, _part_offset FROM persons WHERE {where} "
            "ORDER BY last_seen DESC LIMIT {m:UInt32}",
            parameters={**params, "m": fetch},
        ).result_rows
        identity = "_part, _part_offset"
    if not candidates:
        return []
    bound = candidates[-1][2] if len(candidates) == fetch else None  # more may follow, <= it
    if members is not None:
        test, checked = members
        kept = _members(client, test, params["p"], {r[0] for r in candidates})
        candidates = [r for r in candidates if r[0] in kept]
        if not candidates:
            return None if bound is not None else []
        candidates, bound = _newest(candidates, checked, bound)
    final = {
        person_id: (a, b)
        for person_id, a, b in client.query(
            f"SELECT person_id, {identity} FROM persons FINAL "
            "PREWHERE person_id IN {ids:Array(String)} "
            "WHERE project_id = {p:String} AND is_deleted = 0",
            parameters={"p": params["p"], "ids": sorted({r[0] for r in candidates})},
        ).result_rows
    }
    # A row written twice (a replayed recomputation) is two candidates until a merge: one each.
    rows = list({r[0]: r for r in candidates if final.get(r[0]) == (r[7], r[8])}.values())
    moved = sorted(set(final) - {r[0] for r in rows})
    if moved:  # (with `members`, persons it kept)
        rows += client.query(
            f"SELECT {USER_COLUMNS} FROM persons FINAL PREWHERE person_id IN {{moved:Array(String)}} "
            f"WHERE {where}",
            parameters={**params, "moved": moved},
        ).result_rows
    if bound is not None:  # more stored rows may follow, with last_seen <= the bound
        rows = [r for r in rows if r[2] > bound]
    # ClickHouse compares Strings bytewise: the UTF-8 bytes order person ids as it does
    rows.sort(key=lambda r: (-_ms(utc(r[2])), r[0].encode()))
    if len(rows) < wanted and bound is not None:
        return None
    return rows[:wanted]


def _newest(
    candidates: list[Sequence[Any]], persons: int, bound: datetime | None
) -> tuple[list[Sequence[Any]], datetime | None]:
    """The candidates (sorted by last_seen, newest first) up to those of the first `persons`
    persons, and the bound that leaves the rest for a next read: the last_seen of the last row
    kept (the steps above keep only rows above the bound). Counted in persons, not rows: a
    person written again lately (a row per version until a merge) takes one place."""
    seen: set[str] = set()
    for i, row in enumerate(candidates):
        if row[0] not in seen:
            if len(seen) == persons:
                return candidates[:i], candidates[i - 1][2]
            seen.add(row[0])
    return candidates, bound


def _members(client: Client, members: Members, project_id: str, persons: set[str]) -> set[str]:
    """Which of `persons` `members` keeps."""
    sql, params = members
    return {
        person_id
        for (person_id,) in client.query(
            sql, parameters={**params, "p": project_id, "ids": StringArray(sorted(persons))}
        ).result_rows
    }


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: datetime) -> int:
    return (value - EPOCH) // timedelta(milliseconds=1)


USERS_EXPORT_COLUMNS = USER_COLUMNS + ", traits, anonymous_ids"


def user_profile(client: Client, project_id: str, person_id: str, now: datetime) -> dict[str, Any] | None:
    rows = client.query(
        f"SELECT {USER_COLUMNS}, traits, anonymous_ids FROM persons FINAL "
        "PREWHERE person_id = {id:String} WHERE project_id = {p:String} AND is_deleted = 0",
        parameters={"p": project_id, "id": person_id, **segment_params(now)},
    ).result_rows
    if not rows:
        return None
    row = rows[0]
    traits = orjson.loads(row[7]) if row[7] else {}
    return {**user_row(row), "traits": traits, "anonymous_ids": list(row[8])}


SESSION_COLUMNS = (
    "session_id, anonymous_id, start_at, last_event_at, page_views, events, pages, entry_path, "
    "referrer, device_type, browser, os"
)


def session_row(row: Sequence[Any], now: datetime) -> dict[str, Any]:
    session_id, anonymous_id, start_at, last_event_at, views, events, pages, entry, referrer = row[:9]
    start_at, last_event_at = utc(start_at), utc(last_event_at)
    return {
        "session_id": session_id,
        "anonymous_id": anonymous_id,
        "start_at": start_at,
        "last_event_at": last_event_at,
        "duration_seconds": seconds(last_event_at - start_at),
        "page_views": int(views),
        "events": int(events),
        "pages": list(pages),
        "entry_path": entry,
        "referrer": referrer,
        "device_type": row[9],
        "browser": row[10],
        "os": row[11],
        "active": now - last_event_at < ACTIVE_SESSION,
    }


# Point reads with FINAL filter on the sorting key in PREWHERE: only the rows of the wanted keys
# go into FINAL's merge, and a key's versions are all kept or all dropped, so the answer is that
# of WHERE (which, with FINAL, merges the whole granules the key lookup selected). Other
# conditions stay in WHERE, after the merge.


def anonymous_ids(client: Client, project_id: str, person_id: str) -> list[str] | None:
    rows = client.query(
        "SELECT anonymous_ids FROM persons FINAL "
        "PREWHERE person_id = {id:String} WHERE project_id = {p:String} AND is_deleted = 0",
        parameters={"p": project_id, "id": person_id},
    ).result_rows
    return list(rows[0][0]) if rows else None


def user_sessions(
    client: Client, project_id: str, person_id: str, now: datetime, limit: int
) -> list[dict[str, Any]] | None:
    ids = anonymous_ids(client, project_id, person_id)
    if ids is None:
        return None
    rows = client.query(
        f"SELECT {SESSION_COLUMNS} FROM sessions FINAL PREWHERE anonymous_id IN {{ids:Array(String)}} "
        "WHERE project_id = {p:String} AND is_deleted = 0 "
        "ORDER BY start_at DESC, session_id DESC LIMIT {n:UInt32}",
        parameters={"p": project_id, "ids": ids, "n": limit},
    ).result_rows
    return [session_row(r, now) for r in rows]


def sessions_export(project_id: str, since: datetime, ids: list[str] | None) -> tuple[str, dict[str, Any]]:
    where = f"project_id = {{p:String}} AND is_deleted = 0 AND start_at >= {{since:{T}}}"
    params: dict[str, Any] = {"p": project_id, "since": since}
    if ids is not None:
        where += " AND anonymous_id IN {ids:Array(String)}"
        params["ids"] = ids
    sql = (
        f"SELECT {SESSION_COLUMNS} FROM sessions FINAL WHERE {where} ORDER BY start_at DESC, session_id DESC"
    )
    return sql, params
