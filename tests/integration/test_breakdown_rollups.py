"""The roll-ups of settled days under one filter (breakdown_daily_by, migration 0026;
activity_daily_by, 0029) for the days an aggregator older than them rolled up: the next
aggregator to start rolls them up (services.aggregator.breakdowns.roll_up_backlog), to the rows
a roll-up as the days settled writes. The figures themselves are held to an oracle over `events`
in test_api_breakdowns.py and test_activity_rollups.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.aggregator.breakdowns import RollUps
from tests.conftest import Infra
from tests.integration.stack import Stack
from tests.integration.test_aggregator import identify_with_plan
from tests.integration.test_api_breakdowns import page
from tests.unit.aggregator.test_sink_errors import refused_connection

pytestmark = pytest.mark.integration

D = timedelta(days=1)
ROWS = (
    "SELECT filter, filter_value, dimension, day, value, finalizeAggregation(visitors), sessions, "
    "page_views, bounced, entered, time_ms, timed FROM breakdown_daily_by FINAL "
    "WHERE project_id = {p:String} AND is_deleted = 0 ORDER BY ALL"
)
# The marker of a day rolled up under the plans too (services.aggregator.breakdowns.ROLL_UP_BY).
PLANS_MARKED = "filter = 'plan' AND dimension = ''"
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
                == marked("breakdown_daily_by", PLANS_MARKED)
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
            marked("breakdown_daily_by", "filter = ''")
            == marked("breakdown_daily_by", PLANS_MARKED)
            == marked("activity_daily_by", "filter = ''")
            == days
        )
        # v1's page under its plan (none: never identified)
        assert ("plan", "", "pages", min(days), "/pricing", 1, 1, 1, 0, 0, 0, 0) in rolled

        # As an aggregator older than the plans' roll-up left them: the days rolled up under every
        # filter but the plans; the next start rolls them up again.
        await stack.stop_sink()
        stack.client.command(
            "ALTER TABLE breakdown_daily_by DELETE WHERE filter = 'plan'", settings={"mutations_sync": 2}
        )
        assert marked("breakdown_daily_by", PLANS_MARKED) == set()
        stack.start_sink()
        await stack.until(lambda: stack.rows(ROWS, p=pid) == rolled, timeout=30)
        assert marked("breakdown_daily_by", PLANS_MARKED) == days


@pytest.mark.parametrize("failing", [False, True], ids=["", "roll-ups-fail-once"])
async def test_a_settled_days_rows_under_a_plan_follow_its_persons_plan(
    infra: Infra, names: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failing: bool
) -> None:
    """breakdown_daily_by's rows under filter 'plan': a visitor's page of two days ago, rolled up
    under no plan, moves to premium, then to trial, as identifies today change its person's plan
    (only today is dirty: the earlier day is rolled up again because the plan changed), and the
    top pages under each plan read it there.

    `failing`: each identify's refresh fails once as it starts the roll-ups, after everything of
    the persons is written (ClickHouse away, as a kill -9 does to a batch that is replayed). The
    run again must still roll the earlier day up under the new plan, which only the persons' rows
    as they were tell (derived.CLOSING)."""
    now = datetime.now(UTC).replace(microsecond=0)
    earlier = now - 2 * D
    armed: list[bool] = []
    if failing:
        real = RollUps.refresh

        def refresh(self: RollUps, client: Any, days: dict[str, set[Any]], *args: Any, **kwargs: Any) -> None:
            # the identify's refresh: it rolls the earlier day up again (its plan changed)
            if armed and armed[-1] and any(earlier.date() in d for d in days.values()):
                armed[-1] = False
                raise refused_connection()  # a transient failure: the sink runs the refresh again
            real(self, client, days, *args, **kwargs)

        monkeypatch.setattr(RollUps, "refresh", refresh)
    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, breakdown_rollup_seconds=0
    ) as stack:
        pid, key = stack.project.project_id, stack.project.write_key

        async def send(calls: list[dict[str, Any]]) -> None:
            answer = await stack.post("/v1/batch", {"writeKey": key, "batch": calls})
            assert answer.status_code == 200, answer.text

        def plan_rows() -> set[Any]:
            """(plan, dimension, day, value, visitors, sessions) of the rolled days' plan rows."""
            return set(
                stack.rows(
                    "SELECT filter_value, dimension, day, value, finalizeAggregation(visitors), sessions "
                    "FROM breakdown_daily_by FINAL WHERE project_id = {p:String} AND filter = 'plan' "
                    "AND dimension IN ('pages', 'countries') AND is_deleted = 0",
                    p=pid,
                )
            )

        def under(plan: str) -> set[Any]:
            return {
                (plan, "pages", earlier.date(), "/docs", 1, 1),
                (plan, "countries", earlier.date(), "", 1, 1),
            }

        url = await stack.start_api()
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def top_pages(plan: str) -> list[Any]:
                answer = await api.get(f"/api/projects/{pid}/breakdowns/pages", params={"plan": plan})
                assert answer.status_code == 200, answer.text
                return [(r["value"], r["visitors"], r["sessions"]) for r in answer.json()["rows"]]

            await send([page("p1", earlier, "/docs"), page("p1", now - timedelta(minutes=20), "/")])
            await stack.until(lambda: plan_rows() == under(""), timeout=30)
            assert await top_pages("") == [("/", 1, 1), ("/docs", 1, 1)]
            for n, plan in enumerate(("premium", "trial")):
                when = now - timedelta(minutes=10 - n)
                armed.append(failing)
                await send([identify_with_plan("p1", "user-1", when, plan, f"id-{n}")])
                await stack.until(lambda plan=plan: plan_rows() == under(plan), timeout=30)
                assert await top_pages(plan) == [("/", 1, 1), ("/docs", 1, 1)]
                assert await top_pages("") == []
        assert armed == [False, False]  # (failing: each identify's refresh did fail once)
