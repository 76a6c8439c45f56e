"""A funnel's report narrowed by filters (docs/definitions.md, "Filters"): the funnel counted over
the persons that have a matching session in the report's days.

A person counts at level k when, as in the unfiltered report, their attempts that started in the
last `days` days (the project's) reached k (a live funnel_levels row of k whose last_day is one of those
days: the rows funnel_counts counts), and one of their visitors has a matching session starting
in those days (a breakdown_sessions row that `Filters.where` selects, as the breakdowns and the
activity chart count it). A visitor's person is the live persons row whose anonymous_ids hold it
(visitor_persons), else the visitor itself, as on the activity chart; with one filter on an
attribute of the entry page view, or a plan alone (Filters.first_by), those persons are read
from person_first_by (migration 0033), which the aggregator keeps from that join; with a plan
and other filters, from plan_sessions (migration 0034: the plan's sessions with their persons;
Filters.rolled_persons says why). Unfiltered, the report reads funnel_counts
(services.api.routes.funnels.report_counts), unchanged.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from services.api.filters import Filters
from werkstroom.breakdowns import EVERY_PERSON
from werkstroom.funnels import Funnel

# Each matching visitor's person (werkstroom.breakdowns.EVERY_PERSON and PERSON_OF_SESSION,
# joined to the matching visitors, held in memory: narrowing the persons to them first read the
# matching sessions twice), then the funnel's rows of those persons. count() of the live rows,
# as funnel_counts counts them, so that a filter every counted person matches gives the
# unfiltered report. funnel_levels' key holds person_id: narrowing by it under FINAL keeps every
# version of a row or none.
# With `plan` or `segment`, the persons are narrowed by them and the sessions are not
# (Filters.with_persons: at 10M events, segment=premium over 30 days, p50 alone: 153 -> 119 ms);
# naming a plan alone, the plan's sessions and their persons are plan_sessions' rows.
_FILTERED = """
SELECT level, count() FROM funnel_levels FINAL
WHERE project_id = {{p:String}} AND funnel_id = {{f:String}} AND last_day >= {{lo:Date}} AND is_deleted = 0
  AND person_id IN (SELECT {person} FROM {joined})
GROUP BY level
"""
# With one rolled filter, the persons with a session of its value in the days, as the aggregator
# keeps them (services.api.filters.ROLLED_PERSONS: a row per person, their first and last
# such day; before 0033 a row per person and day), instead of every matching visitor joined
# to every visitor's person: at 10M events, 30 days, p50 alone: country=NL 199 -> 106 ms,
# device=mobile 314 -> 155 ms (bench/README.md, 2026-12-04 stop 37).
_ROLLED = """
SELECT level, count() FROM funnel_levels FINAL
WHERE project_id = {{p:String}} AND funnel_id = {{f:String}} AND last_day >= {{lo:Date}} AND is_deleted = 0
  AND person_id IN (SELECT person_id FROM ({persons}))
GROUP BY level
"""


def filtered_sql(filters: Filters) -> tuple[str, dict[str, Any]]:
    """Per level, the persons `filters` keeps who reached it, for funnel {f:String} of project
    {p:String} over the days {lo:Date}..{hi:Date}, and the filters' parameters. Every value is a
    parameter; the SQL is chosen from constants only."""
    rolled = filters.rolled_persons(with_plan=False)  # with a plan: plan_sessions (faster here)
    if rolled is not None:
        persons, params = rolled
        return _ROLLED.format(persons=persons), params
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
