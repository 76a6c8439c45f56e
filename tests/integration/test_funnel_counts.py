"""A funnel's levels and counts when two writers write the same persons or cells (a back-fill and
a batch's recomputation, two workers, a replay): whichever order their writes and recounts come
in, each person keeps one live level row per level, the newest read's
(services.aggregator.funnels.settle_levels), and each cell ends as the count of the persons'
levels (_recount)."""

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
        plan = kept.plan_levels(database, project.project_id, [funnel], {"u2"}, fresh, version)
        kept.apply_levels(database, project.project_id, plan)

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


LATER = date(2026, 11, 21)


def live_levels(client: Client, funnel: funnels.Funnel) -> list[tuple[int, date, str]]:
    return sorted(
        (int(k), d, p)
        for k, d, p in client.query(
            "SELECT level, last_day, person_id FROM funnel_levels FINAL "
            "WHERE project_id = {p:String} AND funnel_id = {f:String} AND is_deleted = 0",
            parameters={"p": funnel.project_id, "f": funnel.funnel_id},
        ).result_rows
    )


def counts_by_day(client: Client, funnel: funnels.Funnel) -> dict[tuple[int, date], int]:
    return {
        (int(k), d): int(n)
        for k, d, n in client.query(
            "SELECT level, day, persons FROM funnel_counts FINAL "
            "WHERE project_id = {p:String} AND funnel_id = {f:String}",
            parameters={"p": funnel.project_id, "f": funnel.funnel_id},
        ).result_rows
    }


@pytest.mark.parametrize("newer_writes", ["first", "last"])
def test_two_recomputations_of_one_person_leave_one_level_row_each(
    database: Client, newer_writes: str
) -> None:
    """Two workers (or a batch and its replay after a rebalance) recompute u1: the older read
    saw u1 finish the funnel on DAY, the newer one on LATER too. Both read funnel_levels before
    either wrote, so each would write its own day: the level must end under the newer day only,
    whichever writes first, and the counts must follow."""
    migrate(database)
    project = projects.create_project(database, "Shop")
    funnel = funnels.create_funnel(database, project.project_id, "A then B", STEPS)

    def plan(fresh: dict[date, int]) -> tuple:  # type: ignore[type-arg]
        rows = {(funnel.funnel_id, "u1", d): lvl for d, lvl in fresh.items()}
        return kept.plan_levels(database, project.project_id, [funnel], {"u1"}, rows, next_version())

    older = plan({DAY: 2})
    newer = plan({DAY: 2, LATER: 2})
    for written in [newer, older] if newer_writes == "first" else [older, newer]:
        kept.apply_levels(database, project.project_id, written)
    assert live_levels(database, funnel) == [(1, LATER, "u1"), (2, LATER, "u1")]
    assert counts_by_day(database, funnel) == {(1, DAY): 0, (2, DAY): 0, (1, LATER): 1, (2, LATER): 1}


def test_a_back_fill_older_than_a_recomputation_leaves_the_recomputations_levels(database: Client) -> None:
    """The back-fill read u1's events (finished on DAY) before a batch's recomputation saw u1
    finish again on LATER and wrote that; the back-fill writes after it, without reading levels."""
    migrate(database)
    project = projects.create_project(database, "Shop")
    funnel = funnels.create_funnel(database, project.project_id, "A then B", STEPS)
    back_filled = next_version()
    fresh = {(funnel.funnel_id, "u1", DAY): 2, (funnel.funnel_id, "u1", LATER): 2}
    plan = kept.plan_levels(database, project.project_id, [funnel], {"u1"}, fresh, next_version())
    kept.apply_levels(database, project.project_id, plan)
    kept.write_backfill(database, funnel, {"u1": {DAY: 2}, "u2": {DAY: 1}}, back_filled)
    assert live_levels(database, funnel) == [(1, DAY, "u2"), (1, LATER, "u1"), (2, LATER, "u1")]
    assert counts_by_day(database, funnel) == {(1, DAY): 1, (2, DAY): 0, (1, LATER): 1, (2, LATER): 1}


def test_a_back_fill_of_a_person_merged_away_meanwhile_leaves_no_levels_of_it(database: Client) -> None:
    """The back-fill read a4 (an anonymous visitor that viewed /a) as a person of its own; before
    it wrote, a batch merged a4 into u4 (an identify) and recomputed both: it found no levels of a4
    to delete. The back-fill's levels of a4 must not stay live beside u4's (the client matrix's
    funnel read one person too many at its first step, in CI)."""
    migrate(database)
    project = projects.create_project(database, "Shop")
    funnel = funnels.create_funnel(database, project.project_id, "A then B", STEPS)
    back_filled = next_version()  # the back-fill took its version and read a4 and its events
    # the batch: u4 written, a4 merged away (derived.refresh_persons), then its levels recomputed
    refreshed = next_version()
    columns = "project_id, person_id, first_seen, last_seen, is_deleted, version"
    for person, deleted, version in (("a4", 0, back_filled - 1), ("u4", 0, refreshed), ("a4", 1, refreshed)):
        database.command(
            f"INSERT INTO persons ({columns}) VALUES "
            f"('{project.project_id}', '{person}', '2026-11-20 10:00:00', '2026-11-20 10:00:00', "
            f"{deleted}, {version})"
        )
    fresh = {(funnel.funnel_id, "u4", DAY): 1}
    plan = kept.plan_levels(database, project.project_id, [funnel], {"u4", "a4"}, fresh, refreshed)
    kept.apply_levels(database, project.project_id, plan)
    kept.write_backfill(database, funnel, {"a4": {DAY: 1}, "u5": {DAY: 2}}, back_filled)

    assert live_levels(database, funnel) == [(1, DAY, "u4"), (1, DAY, "u5"), (2, DAY, "u5")]
    assert counts_by_day(database, funnel) == {(1, DAY): 2, (2, DAY): 1}
    progress = database.query(
        "SELECT person_id FROM funnel_progress FINAL WHERE project_id = {p:String} AND is_deleted = 0 "
        "ORDER BY person_id",
        parameters={"p": project.project_id},
    ).result_rows
    assert progress == [("u5",)]  # the batch's own progress rows are recompute's, not called here
