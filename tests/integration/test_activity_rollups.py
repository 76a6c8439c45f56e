"""The filtered activity chart's roll-up of settled days (activity_daily_by, migration 0029), over
the real path: hand-made events sent through ingest's HTTP API (countries from trusted
X-Forwarded-For addresses), Kafka, the aggregator's refresh and roll-up, ClickHouse and the API.
With one filter on an attribute of the entry page view, the chart reads the rolled-up days
from activity_daily_by and computes today from the tables; each day is held to the oracle of
test_api_activity_filters (sessions from `events` by the 30-minute rule, figures in Python).

Days d0..d2 are the three UTC days before today.
  v1 (country A): d0 10:00 / from Google, 10:02 /pricing; d2 11:00 / (a bounce)
  v2 (A): d0 12:00 /pricing (a bounce)
  v3 (B, mobile): d1 09:00 /blog from t.co, 09:01 /
  v4 (A): today, a page view (the live part); v1 too (not new today)
  v6 (B): d0 13:00 /, identified u3 at 13:05
Then v1 and v2 identify as one user u1: d0's two persons of country A become one. The day is
rolled up already, so its rows must be rolled up again. Then v2 identifies as u3: d0's persons
of country A are two again (u1 by v1, u3 by v2), while every person's active days stay as they
were (u1 by v1, u3 by v6 on d0), so the day changes only for the member that moved.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Infra
from tests.integration.stack import Stack
from tests.integration.test_api import identify
from tests.integration.test_api_activity_filters import (
    ATTRIBUTE_FILTERS,
    oracle_days,
    oracle_first_days,
    oracle_sessions,
    same_days,
)
from tests.integration.test_api_breakdowns import oracle_persons, page
from tests.integration.test_countries import two_countries
from werkstroom.breakdowns import ACTIVITY_FIGURES, ROLLED_FILTERS
from werkstroom.demo import AGENTS

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
D = timedelta(days=1)
SITE = "https://shop.example"
# The filters activity_daily_by rolls up, by name (device: device_type).
ROLLED = {name: column for name, column in ATTRIBUTE_FILTERS.items() if column in ROLLED_FILTERS}


async def test_one_filter_reads_the_rolled_up_days_and_follows_a_merge_into_them(
    infra: Infra, names: dict[str, str], tmp_path: Any
) -> None:
    addr_a, country_a, addr_b, _country_b = two_countries()
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.date()
    d0 = today - 3 * D
    midnight = datetime.combine(today, datetime.min.time(), tzinfo=UTC)

    def today_at(share: float) -> datetime:
        """A moment of today before now, whenever the test runs (minutes before now are
        yesterday's just after midnight), in whole seconds as the other events."""
        return (midnight + (now - midnight) * share).replace(microsecond=0)

    def at(day: int, hh: int, mm: int) -> datetime:
        return datetime.combine(d0 + day * D, datetime.min.time(), tzinfo=UTC) + hh * 60 * M + mm * M

    by_address = {
        addr_a: [
            page("v1", at(0, 10, 0), "/", "https://www.google.com/"),
            page("v1", at(0, 10, 2), "/pricing", f"{SITE}/"),
            page("v1", at(2, 11, 0), "/"),
            page("v2", at(0, 12, 0), "/pricing"),
            page("v4", today_at(1 / 2), "/"),  # today, whenever the test runs
            page("v1", today_at(1 / 3), "/"),  # today too, not new
        ],
        addr_b: [
            page("v3", at(1, 9, 0), "/blog", "https://t.co/x", ua=AGENTS["mobile"]),
            page("v3", at(1, 9, 1), "/", ua=AGENTS["mobile"]),
            page("v6", at(0, 13, 0), "/"),
        ],
        "": [identify("v6", at(0, 13, 5), "u3", {"plan": "trial"})],
    }
    settled = {d0, d0 + D, d0 + 2 * D}
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        trust_forwarded_for=True,
        breakdown_rollup_seconds=0,  # every change of a settled day rolls it up again at once
    ) as stack:
        pid, key = stack.project.project_id, stack.project.write_key
        url = await stack.start_api(clock=lambda: now)
        headers = {"Authorization": f"Bearer {stack.project.read_key}"}

        def rolled_days() -> set[date]:
            return {
                d
                for (d,) in stack.rows(
                    "SELECT day FROM activity_daily_by FINAL WHERE project_id = {p:String} AND filter = '' "
                    "AND is_deleted = 0",
                    p=pid,
                )
            }

        def row(day: date) -> tuple[Any, ...]:
            """activity_daily_by's figures of country A on `day` (one row, or none)."""
            found = stack.rows(
                f"SELECT {', '.join(ACTIVITY_FIGURES)} FROM activity_daily_by FINAL WHERE project_id = {{p:String}} "
                "AND filter = 'country' AND filter_value = {a:String} AND day = {d:Date} AND is_deleted = 0",
                p=pid,
                a=country_a,
                d=day,
            )
            return found[0] if found else ()

        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:

            async def chart(**filters: str) -> list[dict[str, Any]]:
                response = await api.get(f"/api/projects/{pid}/activity", params={"days": 4, **filters})
                assert response.status_code == 200, response.text
                days: list[dict[str, Any]] = response.json()["days"]
                return days

            async def agrees(identifies: list[dict[str, Any]]) -> list[tuple[dict[str, str], Any, Any]]:
                """Every rolled-up filter and value the sessions have, and one value none has:
                (filters, got, want) where the chart and the oracle differ."""
                sessions = oracle_sessions(stack, pid)
                people = oracle_persons(stack, pid, identifies)
                first_days = oracle_first_days(stack, pid, people)
                cases = [{"country": "nowhere"}]
                for name, column in ROLLED.items():
                    cases += [{name: v} for v in sorted({s.attributes[column] for s in sessions})]
                wrong = []
                for filters in cases:
                    got = await chart(**filters)
                    want = oracle_days(sessions, people, first_days, {}, filters, today, 4, now)
                    if not same_days(got, want):
                        wrong.append((filters, got, want))
                return wrong

            await stack.send_from(by_address)
            total = sum(len(c) for c in by_address.values())
            assert await stack.wait_count(total) == total
            # The three settled days rolled up; today never is.
            await stack.until(lambda: rolled_days() == settled, timeout=30)
            # d0 of country A: v1 and v2, two new persons, two sessions (one bounced), 3 page
            # views, 120 s and 0 s long.
            assert row(d0) == (2, 2, 2, 3, 1, 120_000)
            first = by_address[""]
            assert await agrees(first) == []
            country = await chart(country=country_a)
            assert [(d["active_users"], d["sessions"]) for d in country] == [(2, 2), (0, 0), (1, 1), (2, 2)]
            # The chart reads a rolled-up day's row, not the tables: a row written there (d1 has
            # none for country A) shows in it, and is gone with its tombstone.
            columns = (
                f"project_id, filter, filter_value, day, {', '.join(ACTIVITY_FIGURES)}, version, is_deleted"
            )
            for deleted in (0, 1):
                stack.client.command(
                    f"INSERT INTO activity_daily_by ({columns}) VALUES "
                    "({p:String}, 'country', {a:String}, {d:Date}, 5, 0, 7, 7, 0, 0, {v:UInt64}, {x:UInt8})",
                    parameters={"p": pid, "a": country_a, "d": d0 + D, "v": 2**62 + deleted, "x": deleted},
                )
                shown = (await chart(country=country_a))[1]
                assert (shown["active_users"], shown["sessions"]) == ((0, 0) if deleted else (5, 7))

            # v1 and v2 become one person (identified today): d0 is rolled up again, with one.
            identifies = [
                *first,
                identify("v1", today_at(0.6), "u1", {"plan": "premium"}),
                identify("v2", today_at(0.7), "u1", {"plan": "premium"}),
            ]
            answer = await stack.post("/v1/batch", {"writeKey": key, "batch": identifies[1:]})
            assert answer.status_code == 200, answer.text
            assert await stack.wait_count(total + 2) == total + 2
            await stack.until(lambda: row(d0)[:2] == (1, 1) and rolled_days() == settled, timeout=30)
            assert row(d0) == (1, 1, 2, 3, 1, 120_000)
            assert await agrees(identifies) == []
            country = await chart(country=country_a)
            assert [(d["active_users"], d["new_users"]) for d in country] == [(1, 1), (0, 0), (1, 0), (2, 1)]

            # v2 leaves u1 for u3: no person's active days change on d0, its member moved does.
            moved = identify("v2", today_at(0.8), "u3", {"plan": "trial"})
            answer = await stack.post("/v1/batch", {"writeKey": key, "batch": [moved]})
            assert answer.status_code == 200, answer.text
            assert await stack.wait_count(total + 3) == total + 3
            await stack.until(lambda: row(d0)[:2] == (2, 2) and rolled_days() == settled, timeout=30)
            assert await agrees([*identifies, moved]) == []
            country = await chart(country=country_a)
            assert [(d["active_users"], d["new_users"]) for d in country] == [(2, 2), (0, 0), (1, 0), (2, 1)]
