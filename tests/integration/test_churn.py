"""Churn is defined once (werkstroom.churn): the aggregator's churn_daily and the API's
answer for a day the aggregator has not stored agree with each other, and with the
definition worked out here by hand, on the same person_activity."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator import derived
from services.api import queries
from werkstroom.clickhouse.migrate import migrate
from werkstroom.clickhouse.params import insert_rows
from werkstroom.clickhouse.tables import CHURN_DAILY_COLUMNS, PERSON_DAYS_COLUMNS

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


def by_hand(active: dict[str, set[date]], day: date) -> tuple[int, int]:
    """base: active on day-13..day-7; churned: of those, not active on day-6..day."""
    base = {p for p, days in active.items() if any(7 <= (day - d).days <= 13 for d in days)}
    churned = {p for p in base if not any(0 <= (day - d).days <= 6 for d in active[p])}
    return len(base), len(churned)


def test_the_aggregator_and_the_api_count_churn_alike(database: Client) -> None:
    migrate(database)
    rng = random.Random(20)
    active = {
        f"person-{i}": {TODAY - timedelta(days=rng.randrange(30)) for _ in range(rng.randrange(1, 5))}
        for i in range(80)
    }
    rows = [["p", d, p, 0, 1] for p, days in active.items() for d in sorted(days)]
    rows += [["other", TODAY - timedelta(days=10), "person-x", 0, 1]]  # another project's
    gone = rows[0]  # a person's day deleted since (merged away): it counts no more
    insert_rows(database, "person_activity", rows, PERSON_DAYS_COLUMNS)
    insert_rows(database, "person_activity", [[*gone[:3], 1, 2]], PERSON_DAYS_COLUMNS)
    active[gone[2]].discard(gone[1])
    week_ago = TODAY - timedelta(days=7)
    expected = (*by_hand(active, TODAY), *by_hand(active, week_ago))
    assert expected[0] > expected[1] > 0 and expected[2] > expected[3] > 0  # not trivially zero

    assert queries.churn_counts(database, "p", NOW) == expected  # nothing stored: the API's path

    days = {TODAY - timedelta(days=i) for i in range(21)}
    derived.refresh_churn(database, "p", days, version=1)  # the aggregator's path
    stored = {
        d: (b, c)
        for d, b, c in database.query(
            "SELECT day, base, churned FROM churn_daily FINAL WHERE project_id = 'p'"
        ).result_rows
    }
    assert stored == {d: by_hand(active, d) for d in days}
    # the API reads the stored days now; a day changed in churn_daily shows it came from there
    assert queries.churn_counts(database, "p", NOW) == expected
    insert_rows(database, "churn_daily", [["p", TODAY, 7, 7, 2]], CHURN_DAILY_COLUMNS)
    assert queries.churn_counts(database, "p", NOW) == (7, 7, *expected[2:])
