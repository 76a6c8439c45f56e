"""The filters a view is narrowed by (`?country=NL&page=/blog/*`), and their SQL.

One model for every view that reads the breakdown tables (migration 0023): each filter names a
session attribute (werkstroom.clickhouse.tables.SESSION_ATTRIBUTES) or, for `page`, a path the
session viewed. Values are bound as query parameters, never spliced into SQL. A path filter
(`page`, `entry_page`, `exit_page`) is an exact path, or a glob where `*` matches anything
(`/blog/*`, as a funnel step's path: werkstroom.funnels.glob_matches, like_pattern); the
others are exact values. An empty value is a value: `source=` is "Direct / None", `country=`
the unknown country.

Two filters name the person a session's visitor belongs to now (the live persons row whose
`anonymous_ids` hold the visitor ids of breakdown_sessions and breakdown_pages, read from
visitor_persons, migration 0030): `plan`, the person's current plan ("" none), and `segment`,
one of the users list's segments (services.api.queries.SEGMENT_WHERE, at the API's clock).
When they name a plan alone (`plan`, the premium or trial segment, or both naming the same), the
sessions are read from plan_sessions (migration 0034: the same rows sorted by their person's
plan now, with the person on the row) instead of testing every session's visitor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from services.api.queries import SEGMENT_PLANS, SEGMENT_WHERE, Narrowing, T, segment_params
from werkstroom.breakdowns import PLAN_FILTER, ROLLED_FILTERS, Joined, md5_key, planned
from werkstroom.breakdowns import with_persons as join_persons
from werkstroom.funnels import like_pattern

#: Query parameter -> the column it narrows (a SESSION_ATTRIBUTES column, or `path`). `page` is
#: the special one: on breakdown_pages the row's own path, elsewhere the sessions that viewed a
#: matching path.
COLUMNS: dict[str, str] = {
    "page": "path",
    "entry_page": "entry_path",
    "exit_page": "exit_path",
    "source": "source",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "country": "country",
    "device": "device_type",
    "browser": "browser",
    "os": "os",
}
GLOBS = frozenset({"page", "entry_page", "exit_page"})
#: The session attributes the page rows hold too (breakdown_pages, plan_pages; migration 0041:
#: those of the session's entry page view, ROLLED_FILTERS), so that a filter on one narrows the
#: page rows by their own column; the others (entry_page, exit_page) look the sessions up.
ON_PAGE_ROWS = frozenset(ROLLED_FILTERS)
#: Filters on the visitor's person, after COLUMNS's in a request's order.
PERSON_FILTERS = ("plan", "segment")
#: What `segment` takes: the users list's segments ("all" is no filter, so not one of them).
SEGMENTS = tuple(name for name in SEGMENT_WHERE if name != "all")
# The visitor ids of the persons a condition picks (visitor_persons, migration 0030: each
# visitor's live person, with its last_seen and plan); the users list's conditions
# (SEGMENT_WHERE) read the same columns of the persons rows.
_VISITORS_OF = (
    "SELECT visitor FROM visitor_persons FINAL WHERE project_id = {{p:String}}{among} AND is_deleted = 0"
    "{conditions}"
)
#: The session ids of `{table}` (a breakdown table) over the days {lo:Date}..{hi:Date}, to which
#: ` AND <conditions>` is appended: what `where` narrows another table's rows to (the `page`
#: filter outside breakdown_pages, a session attribute on breakdown_pages), and what a view
#: that is not a breakdown narrows its sessions to.
SESSIONS_OF = (
    "SELECT session_id FROM {table} FINAL WHERE project_id = {{p:String}} "
    "AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND is_deleted = 0"
)
# SESSIONS_OF on breakdown_sessions (or plan_sessions: Filters.sessions_table), with the
# columns chosen (Filters.matching).
_MATCHING = (
    "SELECT {columns} FROM {table} FINAL WHERE project_id = {{p:String}} "
    "AND day BETWEEN {{lo:Date}} AND {{hi:Date}} AND is_deleted = 0"
)
#: The condition on plan_sessions' rows (migration 0034: breakdown_sessions' rows under their
#: visitor's person's plan now, sorted by plan) that keeps a plan's sessions: what `plan` and
#: `segment` are when they name a plan alone (Filters.plan), instead of the visitor being in the
#: set of every visitor with it, built from visitor_persons and tested for every session of the
#: range. At 10M events (64,042 premium visitors; 1.48M sessions over 30 days) that set and test
#: were 80-95 ms of a view's read, alone; with plan_sessions the sources of 30 days under
#: segment=premium went 175 -> 50 ms, the activity chart 140 -> 37 (bench/README.md, 2026-12-04
#: stops 41 and 42).
PLAN = "plan = {pl:String}"
#: The page rows and the sessions under their person's plan (plan_pages, migration 0036, and
#: plan_sessions): the tables `where` reads with PLAN.
_PLAN_TABLES = ("plan_pages", "plan_sessions")
#: SESSIONS_OF for the online visitors' page rows (a page filter under GET online, the live
#: stream and the "online now" card): only the rows of the visitors online now (a plain read of
#: online_visitors, a superset of who is online: the outer query decides). The key (project,
#: day, visitor) then skips the granules holding none of them, which helps while few are online
#: against the days' rows; with many online the read approaches the two days' rows, and past
#: 10,000 the key is not looked at for them (services.api.deps.READ_SETTINGS). Its {lo}..{hi}
#: are Filters.online's days. The sessions themselves are read whole (SESSIONS_OF): the outer
#: query's session ids narrow them anyway, and narrowing by visitor too cost more than it saved,
#: at 10M events with 3,500 visitors online, p50 alone: country=NL 10.5 -> 7.5 ms, segment=premium
#: 7.6 -> 4.8, page=/changelog 25.7 -> 22.8, page=/* 25.7 -> 23.3 (the page rows read whole: 33.4;
#: bench/README.md, 2026-12-05 stop 49).
ONLINE_SESSIONS_OF = (
    f"{SESSIONS_OF} AND anonymous_id IN (SELECT anonymous_id FROM online_visitors "
    f"WHERE project_id = {{{{p:String}}}} AND last_event_at >= {{{{since:{T}}}}})"
)
#: The setting of a filtered statement whose FINAL reads are a few hundred thousand rows at most (a
#: breakdown's rolled_sql; the cards' read of person_first_by): one thread merges each read's
#: parts. ClickHouse's default splits the merge over max_threads (layers of key ranges), which
#: costs more CPU than it saves time here, and the cards run beside three other reads on 2
#: cores. At 10M events, p50 alone, 2 cores (bench/README.md): pages 30 days 34 -> 29 ms, under
#: country=NL 42 -> 38 (2026-12-05 stop 48); the cards under country=NL 27 -> 25 ms and 43 -> 37
#: ms of CPU, under country=NL&segment=premium 32 -> 28 and 43 -> 35 (stop 49). A funnel's read
#: of funnel_levels_by keeps the default: the same time alone (41 -> 36 ms of CPU), but the
#: funnel under country=NL answered 6 % slower so, beside one other read (bench/api_ab.py).
ONE_FINAL_THREAD = "max_final_threads = 1"
#: The setting of a breakdown statement whose IN sets are all of session ids (a session's entry
#: or exit page looked up for its page rows, the sessions that viewed a page; not a set of
#: visitors: Filters.visitor_set): ClickHouse does not analyse the tables' primary keys with
#: them. Every table they test sorts a day's rows by visitor, then session (breakdown_sessions,
#: breakdown_pages, plan_sessions, plan_pages: ..., day, anonymous_id, session_id), so a set of
#: sessions never narrows the granules read; the analysis builds the set while the statement is
#: planned, before any read starts. At 10M events, p50 alone, alternating: pages 7 days under
#: country=NL&segment=premium 30.5 -> 28.7 ms, 30 days under country=NL 33.6 -> 31.7 (p95
#: 45.2 -> 38.4) (bench/README.md, 2026-12-05 stop 50), when their page rows still looked the
#: country up in a set of sessions (since migration 0041 they hold it).
SESSION_SETS = "use_index_for_in_with_subqueries = 0"
#: How many days (the project's) an online visitor's session is looked for in (today and yesterday): a
#: session is under the day it starts on, so one that began before midnight is yesterday's.
#: Two days hold every session shorter than 24 hours, which is all of them in practice (30
#: minutes without an event end one); each day more is another day of rows to read.
ONLINE_DAYS = 2
#: The (person_id, day) rows of person_activity_by (migration 0031: each person's days with a
#: session of each value of the ROLLED_FILTERS, kept by the aggregator) of the value {rv:String}
#: of the column {rf:String} over {lo:Date}..{hi:Date} of project {p:String}: the persons with a
#: matching session and their days, with one rolled filter (Filters.rolled_person_days).
ROLLED_PERSON_DAYS = """
SELECT person_id, day FROM person_activity_by FINAL
WHERE project_id = {p:String} AND day BETWEEN {lo:Date} AND {hi:Date}
  AND filter = {rf:String} AND filter_value = {rv:String} AND is_deleted = 0
"""
#: The persons with a day of the value {rv:String} of the column {rf:String} in {lo:Date}..{hi:Date},
#: with the first and last such day of each (first_day, last_day), the day it was first seen
#: (first_seen_day) and churn's recent days (recent_days, recent_active:
#: werkstroom.churn.ROLLED_FIGURES), of
#: project {p:String}, from person_first_by
#: (migration 0033: each person's first and last day per value, kept by the aggregator): one row
#: per person where ROLLED_PERSON_DAYS reads one per person and day (Filters.rolled_persons).
#: Exact for a range that ends today or later (every view's but a breakdown's, which reads no
#: persons): a person's days are its sessions' days, and none is after today (an event is at
#: most a minute ahead of its arrival: werkstroom.contract.event_time), so a person with a day on
#: or after {lo} has one in the range.
#: Rows of one value in person_first_by are its value_key's (migration 0038: the sorting key
#: starts with it), a contiguous run; PREWHERE on the key keeps all of a row's versions or none.
_VALUE_KEY = md5_key("{p:String}", "{rf:String}", "{rv:String}")


def rolled_persons_sql(among: str = "") -> str:
    """ROLLED_PERSONS, its rows narrowed by `among` (` AND ...` on person_first_by's sorting key,
    which PREWHERE may test before FINAL: WITH_PLAN)."""
    return f"""
SELECT person_id, first_day, last_day, first_seen_day, recent_days, recent_active FROM person_first_by FINAL
PREWHERE value_key = {_VALUE_KEY}{among}
WHERE is_deleted = 0 AND first_day <= {{hi:Date}} AND last_day >= {{lo:Date}}
"""


ROLLED_PERSONS = rolled_persons_sql()
#: Which of the persons {ids:Array(String)} ROLLED_PERSONS selects (Filters.rolled_members): a
#: test of a few persons (the users list's candidates: services.api.queries.Members). PREWHERE
#: on the sorting key keeps all of a person's versions or none, so FINAL merges only theirs.
ROLLED_MEMBERS = f"""
SELECT person_id FROM person_first_by FINAL
PREWHERE value_key = {_VALUE_KEY} AND person_id IN {{ids:Array(String)}}
WHERE is_deleted = 0 AND first_day <= {{hi:Date}} AND last_day >= {{lo:Date}}
"""
#: ROLLED_PERSONS' rows narrowed to the persons whose plan is now {rp:String}: person_first_by's
#: plan rows (a row per person and its current plan), for one rolled filter with a plan
#: (Filters.first_by). A plan row spans all of its person's days, so a person with a row of the
#: value in the range has a plan row; only its being there is asked. At 10M events, p50 alone,
#: country=NL&segment=premium: the cards' persons counts and churn, 128 and 113 ms as two reads
#: joining every matching session to its person, are one read of 74 ms; the users list's first
#: page under country=NL&plan=premium 128 -> 77 ms (bench/README.md, 2026-12-04 stop 41). Tested
#: in PREWHERE, on the sorting key (the value's rows of the plan's persons alone are merged): the
#: cards' read 45 -> 31 ms with 0038's key (2026-12-05 stop 48).
_PLAN_KEY = md5_key("{p:String}", f"'{PLAN_FILTER}'", "{rp:String}")
WITH_PLAN = (
    "\n  AND person_id IN (SELECT person_id FROM person_first_by FINAL "
    f"PREWHERE value_key = {_PLAN_KEY} WHERE is_deleted = 0)"
)
#: The longest filter value accepted (a path is stored up to 2048 characters).
MAX_VALUE = 2048


@dataclass(frozen=True)
class Filters:
    """The filters of one request, in COLUMNS's then PERSON_FILTERS's order; a name absent is
    no filter. `now` is the API's clock, which `segment` is decided at (as on the users list)."""

    values: dict[str, str] = field(default_factory=dict)
    now: datetime | None = None

    @classmethod
    def parse(cls, given: Mapping[str, str | None], now: datetime | None = None) -> Filters:
        """From the request's values (None: not given). Unknown names, an unknown segment or a
        segment without `now` are programming errors: the route refuses bad input first."""
        unknown = set(given) - set(COLUMNS) - set(PERSON_FILTERS)
        if unknown:
            raise KeyError(f"no such filter: {sorted(unknown)}")
        segment = given.get("segment")
        if segment is not None and (segment not in SEGMENTS or now is None):
            raise ValueError(f"segment {segment!r} needs to be one of {SEGMENTS}, with a clock")
        names = (*COLUMNS, *PERSON_FILTERS)
        return cls({name: given[name] for name in names if given.get(name) is not None}, now)  # type: ignore[misc]

    def rolled(self) -> tuple[str, str] | None:
        """(column, value) when these filters are one filter that breakdown_daily_by rolls up
        (an attribute of the session's entry page view), else None."""
        if len(self.values) != 1:
            return None
        ((name, value),) = self.values.items()
        column = COLUMNS.get(name)
        return (column, value) if column in ROLLED_FILTERS and name not in GLOBS else None

    def rolled_person_days(self) -> tuple[str, dict[str, Any]] | None:
        """ROLLED_PERSON_DAYS and its parameters when these filters are one rolled filter
        (rolled), else None."""
        rolled = self.rolled()
        return None if rolled is None else (ROLLED_PERSON_DAYS, {"rf": rolled[0], "rv": rolled[1]})

    def first_by(self) -> tuple[str, str] | None:
        """(filter, value) of the person_first_by rows (migration 0033) whose persons these
        filters keep: one rolled filter (as rolled), alone or with a plan (then narrowed to the
        persons with it: rolled_persons), or a plan alone as ('plan', the plan); else None. A
        plan is `plan`, or a segment that is a plan (SEGMENT_PLANS), or both naming the same."""
        kept = self._first_by()
        return None if kept is None else kept[0]

    def _first_by(self) -> tuple[tuple[str, str], str | None] | None:
        """first_by's (filter, value), and the plan its persons must have besides (or None)."""
        plans = self._plans()
        if plans is None:
            return None
        others = Filters({k: v for k, v in self.values.items() if k not in PERSON_FILTERS})
        rolled = others.rolled()
        if not plans:
            return None if rolled is None else (rolled, None)
        if len(plans) > 1:  # plan=trial&segment=premium: no one (the slower path answers it)
            return None
        (plan,) = plans
        if not others.values:
            return (PLAN_FILTER, plan), None
        return None if rolled is None else (rolled, plan)

    def plan(self) -> str | None:
        """The plan the person filters name, when they are a plan alone: `plan`, or a segment
        that is a plan (SEGMENT_PLANS), or both naming the same; else None (no person filter, a
        segment of last_seen, or two plans, which no one has: the slower path answers them)."""
        plans = self._plans()
        return next(iter(plans)) if plans is not None and len(plans) == 1 else None

    def plan_alone(self) -> str | None:
        """The plan when these filters are person filters naming a plan alone (plan) and no
        others: breakdown_daily_by holds the settled days' breakdowns of each plan (filter
        werkstroom.breakdowns.PLAN_FILTER); else None."""
        return None if any(name not in PERSON_FILTERS for name in self.values) else self.plan()

    def sessions_table(self) -> str:
        """The table of sessions to read these filters' sessions from: plan_sessions when they
        name a plan alone (plan), narrowed by PLAN; else breakdown_sessions."""
        return "breakdown_sessions" if self.plan() is None else "plan_sessions"

    def pages_table(self) -> str:
        """The same of the page rows: plan_pages (migration 0036) when they name a plan alone;
        else breakdown_pages."""
        return "breakdown_pages" if self.plan() is None else "plan_pages"

    def _plans(self) -> set[str] | None:
        """The plans the person filters name (empty: none), or None for a segment of last_seen."""
        plans: set[str] = set()
        if "plan" in self.values:
            plans.add(self.values["plan"])
        if "segment" in self.values:
            if self.values["segment"] not in SEGMENT_PLANS:
                return None  # a segment of last_seen: it moves with the clock
            plans.add(SEGMENT_PLANS[self.values["segment"]])
        return plans

    def rolled_persons(self, with_plan: bool = True) -> tuple[str, dict[str, Any]] | None:
        """ROLLED_PERSONS (with WITH_PLAN for a rolled filter with a plan) and its parameters
        when these filters select person_first_by rows (first_by), else None. Without
        `with_plan`, a rolled filter with a plan gives None too, and the caller reads the plan's
        sessions with the value from plan_sessions, their persons on the rows (with_persons):
        faster for the persons' ids alone (the users list; a funnel's report read so before
        funnel_levels_by), slower for the cards, which read the persons' days too. At 10M
        events, p50 alone, funnel 30 days / the users list's first page:
        country=NL&segment=premium 118 -> 89 / 89 -> 58 ms, source=Google&segment=trial 128 ->
        73 / 98 -> 50, device=mobile&plan= 264 -> 219 / 235 -> 136; the cards' four reads at once
        under country=NL&segment=premium 83 -> 115 ms (bench/README.md, 2026-12-04 stop 42)."""
        kept = self._first_by()
        if kept is None:
            return None
        (rf, rv), plan = kept
        if plan is None:
            return ROLLED_PERSONS, {"rf": rf, "rv": rv}
        if not with_plan:
            return None
        return rolled_persons_sql(WITH_PLAN), {"rf": rf, "rv": rv, "rp": plan}

    def rolled_members(self) -> tuple[str, dict[str, Any]] | None:
        """ROLLED_MEMBERS and its parameters when rolled_persons (without a plan) selects these
        filters' persons, else None."""
        rolled = self.rolled_persons(with_plan=False)
        return None if rolled is None else (ROLLED_MEMBERS, rolled[1])

    def where(
        self, table: str, sessions_of: str, person: bool = True, among: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """The conditions (` AND ...`, or "") on a breakdown table's rows, and their parameters.
        `table` is "breakdown_pages", "breakdown_sessions" or, for filters that name a plan alone,
        "plan_pages" or "plan_sessions" (pages_table, sessions_table); `sessions_of` is a SELECT
        of the session ids of `{table}` in the same range, to which ` AND <conditions>` is
        appended: `page` on the sessions reads the page rows (breakdown_pages; plan_pages on
        plan_sessions); on the page rows, the entry page view's attributes (ON_PAGE_ROWS) are
        the row's own columns, and the entry and exit page are read from the sessions
        (breakdown_sessions; plan_sessions on plan_pages).
        `plan` and `segment` are one condition on the row's visitor, the same on both breakdown
        tables (person, with `among`), and on the plan tables the plan's rows (PLAN), in both
        reads; left out without `person` (with_persons)."""
        own: list[str] = []
        of_sessions: list[str] = []
        params: dict[str, Any] = {}
        planned = table in _PLAN_TABLES  # the other table read is the plan's too
        pages_table, sessions_table = _PLAN_TABLES if planned else ("breakdown_pages", "breakdown_sessions")
        of_plan = f" AND {PLAN}" if planned else ""
        for name, value in self.values.items():
            if name in PERSON_FILTERS:
                continue
            column = COLUMNS[name]
            param = f"f_{name}"
            condition = _condition(column, param, value, name in GLOBS)
            params[param] = like_pattern(value) if name in GLOBS and "*" in value else value
            if name == "page" and table != pages_table:
                viewed = f"{sessions_of.format(table=pages_table)}{of_plan} AND {condition}"
                own.append(f"session_id IN ({viewed})")
            elif name != "page" and table == pages_table and column not in ON_PAGE_ROWS:
                of_sessions.append(condition)
            else:
                own.append(condition)
        if of_sessions:
            found = f"{sessions_of.format(table=sessions_table)}{of_plan} AND {' AND '.join(of_sessions)}"
            own.append(f"session_id IN ({found})")
        if planned:
            of_person, person_params = PLAN, {"pl": self.plan()}
        else:
            of_person, person_params = self.person(among) if person else ("", {})
        if of_person:
            own.append(of_person)
            params.update(person_params)
        return "".join(f" AND {c}" for c in own), params

    def matching(self, columns: str, person: bool = True, among: str = "") -> tuple[str, dict[str, Any]]:
        """A SELECT of `columns` of the breakdown_sessions rows these filters match over the
        days {lo:Date}..{hi:Date} of project {p:String} (the sessions a filtered view counts),
        and the filters' parameters; every row unfiltered. Without `person`, `plan` and
        `segment` are left out (with_persons narrows the persons by them instead); `among`
        narrows the visitors their condition looks at (person). With them naming a plan alone,
        the rows are plan_sessions' (sessions_table), which has breakdown_sessions' columns."""
        table = self.sessions_table() if person else "breakdown_sessions"
        where, params = self.where(table, SESSIONS_OF, person, among)
        return f"{_MATCHING.format(columns=columns, table=table)}{where}", params

    def with_persons(self, columns: str, every: str) -> tuple[Joined, dict[str, Any]]:
        """The sessions `matching` selects (`columns`, with anonymous_id), as `s`, with their
        persons (werkstroom.breakdowns.Joined), and the parameters. Filters that name a plan
        alone (plan) read them from plan_sessions, whose rows hold their person and its
        first_seen (planned). Otherwise they are joined (werkstroom.breakdowns.with_persons) to
        their visitors' persons `every` (EVERY_PERSON or EVERY_PERSON_OF), as `m`: `plan` and
        `segment` narrow the persons, not the sessions, so only the sessions of the persons they
        keep are joined. A visitor in no persons row is its own person with plan "": no person
        filter keeps it, as `person`'s condition does not."""
        if self.plan() is not None:
            matching, params = self.matching(f"{columns}, person_id, first_seen")
            return planned(matching), params
        matching, params = self.matching(columns, person=False)
        conditions, person_params = self._person_conditions()
        joined = join_persons(matching, f"{every}{conditions}", narrowed=bool(conditions))
        return Joined(joined), {**params, **person_params}

    def online(self, today: date) -> Narrowing:
        """The condition (` AND ...`, or "" unfiltered) on online_visitors' rows that keeps the
        visitors whose current session is a matching session: a breakdown_sessions row (so a
        session without a page view matches no filter) of today or yesterday (ONLINE_DAYS), and
        its parameters besides the online read's own (p, since). `today` is the API's clock's."""
        if not self.values:
            return "", {}
        table = self.sessions_table()
        where, params = self.where(table, ONLINE_SESSIONS_OF)
        matching = f"{SESSIONS_OF.format(table=table)}{where}"
        lo = today - timedelta(days=ONLINE_DAYS - 1)
        return f" AND session_id IN ({matching})", {**params, "lo": lo, "hi": today}

    def visitor_set(self, table: str) -> bool:
        """Whether where(table, ...) tests the rows' visitors against a set (person): `plan` or
        `segment`, unless `table` is a plan table (there the plan is a column, PLAN)."""
        return table not in _PLAN_TABLES and bool(self._person_conditions()[0])

    def person(self, among: str = "") -> tuple[str, dict[str, Any]]:
        """The condition (or "") on a breakdown row's `anonymous_id` that `plan` and `segment`
        make together: the visitor is one of the ids of a live person that has both. A visitor
        never identified is its own person (plan ""); one identified later counts under its
        person in every session, those before the identify too. `among` (` AND visitor ...`, on
        visitor_persons' key) narrows the visitors looked at to those the caller can keep: worth
        it for a few hundred (their granules alone are read), not for thousands (online now: a
        3,500-visitor set made the read slower than taking every premium visitor)."""
        conditions, params = self._person_conditions()
        if not conditions:
            return "", {}
        return f"anonymous_id IN ({_VISITORS_OF.format(among=among, conditions=conditions)})", params

    def _person_conditions(self) -> tuple[str, dict[str, Any]]:
        """` AND ...` on visitor_persons' rows (or "") for `plan` and `segment`, and their
        parameters."""
        conditions = ""
        params: dict[str, Any] = {}
        if "plan" in self.values:
            conditions += " AND plan = {f_plan:String}"
            params["f_plan"] = self.values["plan"]
        if "segment" in self.values:
            assert self.now is not None  # parse makes sure
            conditions += SEGMENT_WHERE[self.values["segment"]]
            params.update(segment_params(self.now))
        return conditions, params


def _condition(column: str, param: str, value: str, glob: bool) -> str:
    if glob and "*" in value:
        return f"{column} LIKE {{{param}:String}}"
    return f"{column} = {{{param}:String}}"
