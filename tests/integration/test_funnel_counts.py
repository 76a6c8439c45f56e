"""A funnel's counts (funnel_counts) when a back-fill and a batch's recomputation write the same
cells: whichever order their writes and recounts come in, each cell ends as the count of the
persons' levels that both wrote (services.aggregator.funnels._recount)."""

from __future__ import annotations

from datetime import date

import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator import funnels as kept
from werkstroom import funnels, projects
from werkstroom.clickhouse.migrate import migrate
from werkstroom.clickhouse.versions import next_version

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 20)
STEPS = [{"event": "$page", "path": "/a"}, {"event": "$page", "path": "/b"}]


def counts(client: Client, funnel: funnels.Funnel) -> dict[int, int]:
    return {
        int(level): int(n)
        for level, n in client.query(
            "SELECT level, persons FROM funnel_counts FINAL "
            "WHERE project_id = {p:String} AND funnel_id = {f:String} AND day = {d:Date}",
            parameters={"p": funnel.project_id, "f": funnel.funnel_id, "d": DAY},
        ).result_rows
    }


@pytest.mark.parametrize("order", ["refresh counts first, newer", "back-fill counts first, newer"])
def test_a_back_fill_and_a_recomputation_leave_the_count_of_both(database: Client, order: str) -> None:
    migrate(database)
    project = projects.create_project(database, "Shop")
    funnel = funnels.create_funnel(database, project.project_id, "A then B", STEPS)

    def backfill(version: int) -> None:  # u1 reached both steps (read before the batch came)
        kept.write_backfill(database, funnel, {"u1": {DAY: 2}}, version)

    def refresh(version: int) -> None:  # the batch's person u2 reached both steps too
        fresh = {(funnel.funnel_id, "u2", DAY): 2}
        kept._write_levels(database, project.project_id, [funnel], {"u2"}, fresh, version)

    if order == "refresh counts first, newer":
        # The back-fill took its version, then read; a batch came and its recomputation (a
        # newer version) wrote and counted u2 before the back-fill wrote u1.
        back_filled = next_version()
        refresh(next_version())
        backfill(back_filled)
    else:
        # The recomputation took its version first, then waited (reading events) while the
        # back-fill wrote and counted u1; it wrote and counted u2 after.
        refreshed = next_version()
        backfill(next_version())
        refresh(refreshed)
    assert counts(database, funnel) == {1: 2, 2: 2}
