"""The roll-ups of settled days under one filter (breakdown_daily_by, migration 0026;
activity_daily_by, 0029) for the days an aggregator older than them rolled up: the next
aggregator to start rolls them up (services.aggregator.breakdowns.roll_up_backlog), to the rows
a roll-up as the days settled writes. The figures themselves are held to an oracle over `events`
in test_api_breakdowns.py and test_activity_rollups.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Infra
from tests.integration.stack import Stack
from tests.integration.test_api_breakdowns import page

pytestmark = pytest.mark.integration

D = timedelta(days=1)
ROWS = (
    "SELECT filter, filter_value, dimension, day, value, finalizeAggregation(visitors), sessions, "
    "page_views, bounced, entered, time_ms, timed FROM breakdown_daily_by FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0 ORDER BY ALL"
)
ACTIVITY_ROWS = (
    "SELECT * EXCEPT (project_id, version) FROM activity_daily_by FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0 ORDER BY ALL"
)


async def test_days_rolled_up_before_the_one_filter_roll_up_are_rolled_up_at_the_next_start(
    infra: Infra, names: dict[str, str], tmp_path: Any
) -> None:
    noon = datetime.combine(datetime.now(UTC).date() - 3 * D, datetime.min.time(), tzinfo=UTC) + D / 2
    calls = [
        page("v1", noon, "/", "https://www.google.com/"),
        page("v1", noon + timedelta(minutes=2), "/pricing"),
        page("v2", noon + D, "/blog", "https://news.ycombinator.com/"),
        page("v3", noon + 2 * D, "/pricing"),
    ]
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, breakdown_rollup_seconds=0
    ) as stack:
        pid = stack.project.project_id
        answer = await stack.post("/v1/batch", {"writeKey": stack.project.write_key, "batch": calls})
        assert answer.status_code == 200, answer.text
        assert await stack.wait_count(len(calls)) == len(calls)
        days = {(noon + i * D).date() for i in range(3)}

        def marked(table: str, marker: str) -> set[Any]:
            return {
                d
                for (d,) in stack.rows(
                    f"SELECT day FROM {table} FINAL WHERE project_id = {{p:String}} AND {marker} "
                    "AND is_deleted = 0",
                    p=pid,
                )
            }

        await stack.until(
            lambda: (
                marked("breakdown_daily", "dimension = ''")
                == marked("breakdown_daily_by", "filter = ''")
                == marked("activity_daily_by", "filter = ''")
                == days
            ),
            timeout=30,
        )
        rolled, activity = stack.rows(ROWS, p=pid), stack.rows(ACTIVITY_ROWS, p=pid)
        # v1's source under its own country's row, and the pages of that day under it
        assert ("source", "Google", "pages", min(days), "/pricing", 1, 1, 1, 0, 0, 0, 0) in rolled

        # v1's first day: one person, new, one session of two page views, 2 minutes long
        assert ("country", "", min(days), 1, 1, 1, 2, 0, 120_000, 0) in activity

        # As an aggregator older than 0026 left them: rolled up in breakdown_daily only.
        await stack.stop_sink()
        stack.client.command("TRUNCATE TABLE breakdown_daily_by")
        stack.client.command("TRUNCATE TABLE activity_daily_by")
        assert stack.rows(ROWS, p=pid) == [] == stack.rows(ACTIVITY_ROWS, p=pid)
        sink = stack.start_sink()
        # the rows are back a moment before the back-fill task counts its last day: wait for both
        await stack.until(
            lambda: (
                stack.rows(ROWS, p=pid) == rolled
                and stack.rows(ACTIVITY_ROWS, p=pid) == activity
                and sink.backfills.rolled_backlog == len(days)
            ),
            timeout=30,
        )
        assert (
            marked("breakdown_daily_by", "filter = ''") == marked("activity_daily_by", "filter = ''") == days
        )
