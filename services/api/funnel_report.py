"""A funnel's report narrowed by filters (docs/definitions.md, "Filters"): the funnel counted over
the persons that have a matching session in the report's days.

A person counts at level k when, as in the unfiltered report, their attempts that started in the
last `days` days (the project's) reached k (a live funnel_levels row of k whose last_day is one of those
days: the rows funnel_counts counts), and one of their visitors has a matching session starting
in those days (a breakdown_sessions row that `Filters.where` selects, as the breakdowns and the
activity chart count it). A visitor's person is the live persons row whose anonymous_ids hold it
(visitor_persons), else the visitor itself, as on the activity chart; with one filter on an
attribute of the entry page view, alone or with a plan, or a plan alone (Filters.first_by), the
funnel's rows of the value are read from funnel_levels_by (migration 0037), which the aggregator
keeps from funnel_levels and person_first_by (0033: that join's persons); with a plan and other
filters, the persons from plan_sessions (migration 0034: the plan's sessions with their persons).
Unfiltered, the report reads funnel_counts (services.api.routes.funnels.report_counts), unchanged.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.api.filters import Filters
from werkstroom.breakdowns import EVERY_PERSON, PLAN_FILTER, md5_key
from werkstroom.funnels import Funnel

# Each matching visitor's person (werkstroom.breakdowns.EVERY_PERSON and PERSON_OF_SESSION,
# joined to the matching visitors, held in memory: narrowing the persons to them first read the
# matching sessions twice), then the funnel's rows of those persons. count() of the live rows,
# as funnel_counts counts them, so that a filter every counted person matches gives the
# unfiltered report. funnel_levels' key holds person_id: narrowing by it under FINAL keeps every
# version of a row or none.
# With `plan` or `segment`, the persons are narrowed by them and the sessions are not
# (Filters.with_persons: at 10M events, segment=premium over 30 days, p50 alone: 153 -> 119 ms);
# naming a plan (with filters that are not one rolled filter: _levels_by otherwise), the plan's
# sessions and their persons are plan_sessions' rows.
_FILTERED = """
SELECT level, count() FROM funnel_levels FINAL
WHERE project_id = {{p:String}} AND funnel_id = {{f:String}} AND last_day >= {{lo:Date}} AND is_deleted = 0
  AND person_id IN (SELECT {person} FROM {joined})
GROUP BY level
"""


# With one rolled filter, alone or with a plan, or a plan alone (Filters.first_by), the funnel's
# rows of its value in funnel_levels_by (migration 0037: each level under each of the person's
# values, with the earlier of the level's last day and the value's: both in the days; with a plan
# besides, the rows whose person has it, the person's plan row's plan on each), kept by the
# aggregator, instead of the value's persons (person_first_by's rows: before 0033 its days,
# before 0031 every matching visitor joined to every visitor's person) looked up in all of the
# funnel's rows: at 10M events, 30 days, p50 alone: country=NL 92 -> 11 ms (merged into one part;
# 27 in 4), country=NL&segment=premium 70 -> 38 in 10 parts (52 with the plan's persons as a set
# instead of the row's plan); the endpoints' p95 106 -> 34 and 77 -> 35 ms (bench/README.md,
# 2026-12-05 stop 46). A value's last day is never after today ({hi:Date}: an event is at most a
# minute ahead of its arrival), so its first day is in the days when its last one is. The
# funnel's rows of the value are those of its key (migration 0039: the table is sorted by it), in
# PREWHERE: at 10M events, in 3 parts, country=NL 45 -> 20 ms (2026-12-05 stop 48).
_LEVELS_BY_KEY = md5_key("{p:String}", "{f:String}", "{rf:String}", "{rv:String}")


def _levels_by(with_plan: str = "") -> str:
    """The statement above, its rows narrowed by `with_plan` (` AND ...`, or "")."""
    return f"""
SELECT level, count() FROM funnel_levels_by FINAL
PREWHERE value_key = {_LEVELS_BY_KEY}
WHERE last_day >= {{lo:Date}} AND is_deleted = 0{with_plan}
GROUP BY level
"""


def filtered_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """Per level, the persons `filters` keeps who reached it, for funnel {f:String} of project
    {p:String} over the days {lo:Date}..{hi:Date} ({hi} today), and the filters' parameters.
    Every value is a parameter; the SQL is chosen from constants only."""
    kept = filters.first_by()
    if kept is not None:
        rf, rv = kept
        plan = filters.plan() if rf != PLAN_FILTER else None  # a rolled filter with a plan
        if plan is None:
            return _levels_by(), {"rf": rf, "rv": rv}
        return _levels_by(" AND plan = {rp:String}"), {"rf": rf, "rv": rv, "rp": plan}
    joined, params = filters.with_persons("DISTINCT anonymous_id", EVERY_PERSON)
    return _FILTERED.format(joined=joined.source, person=joined.person), params


def filtered_counts(client: Client, funnel: Funnel, days: int, today: date, filters: Filters) -> list[int]:
    """Persons who reached each step (module docstring), steps in order."""
    sql, params = filtered_sql(filters)
    since = today - timedelta(days=days - 1)
    rows = client.query(
        sql, parameters={**params, "p": funnel.project_id, "f": funnel.funnel_id, "lo": since, "hi": today}
    ).result_rows
    reached = {int(level): int(n) for level, n in rows}
    return [reached.get(k, 0) for k in range(1, len(funnel.steps) + 1)]
