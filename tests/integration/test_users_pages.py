"""The users list reads candidates without FINAL (persons_recent, or persons for a search) and re-checks them (services/api/queries.py,
users_page): over hand-made persons rows with many versions, merged-away persons (a tombstone
over an older live version with a recent last_seen), ties on last_seen, stale versions that
looked newer and several parts, every page must be exactly what one FINAL query over all
persons gives, and walking the cursor must give every live person once, in order."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from services.api import queries
from tests.conftest import Infra
from tests.integration.stack import Stack, own_names
from werkstroom.clickhouse.tables import PERSONS_COLUMNS as PERSON_COLUMNS
from werkstroom.clickhouse.tables import PERSONS_RECENT_COLUMNS as RECENT_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def persons_rows(project_id: str, seed: int) -> tuple[list[list[list[Any]]], set[str]]:
    """Insert batches (each its own part) of persons rows, and the persons merged away."""
    rng = random.Random(seed)
    batches: list[list[list[Any]]] = [[], [], []]
    merged: set[str] = set()
    tie = NOW - timedelta(hours=3)  # many persons share this last_seen exactly

    def row(pid: str, seen: datetime, plan: str, version: int, deleted: int = 0) -> list[Any]:
        traits = f'{{"plan":"{plan}","name":"{pid}"}}' if plan else "{}"
        return [project_id, pid, seen - timedelta(days=1), seen, 1, 2, [pid], traits, plan, deleted, version]

    for n in range(400):
        pid = f"{rng.choice(['anon', 'user', 'Ünï', 'a b'])}-{n:04d}"
        seen = tie if n % 9 == 0 else NOW - timedelta(minutes=rng.randrange(0, 60 * 24 * 45))
        plan = rng.choice(["", "premium", "trial", "free"])
        kind = rng.random()
        if kind < 0.5:  # one version
            batches[0].append(row(pid, seen, plan, 1000))
        elif kind < 0.65:  # a newer version, seen later (the usual recomputation)
            batches[0].append(row(pid, seen - timedelta(days=2), plan, 1000))
            batches[1].append(row(pid, seen, plan, 2000))
        elif kind < 0.75:  # a newer version whose last_seen is *older* and plan changed
            batches[0].append(row(pid, NOW - timedelta(minutes=rng.randrange(0, 90)), "premium", 1000))
            batches[2].append(row(pid, seen, rng.choice(["", "trial"]), 3000))
        elif kind < 0.85:  # merged away: a tombstone (epoch last_seen) over a recent live row
            batches[0].append(row(pid, NOW - timedelta(minutes=rng.randrange(0, 600)), plan, 1000))
            batches[rng.choice([1, 2])].append(row(pid, EPOCH, "", 5000, deleted=1))
            merged.add(pid)
        elif kind < 0.92:  # the same row written twice (a replayed recomputation)
            batches[0].append(row(pid, seen, plan, 1000))
            batches[1].append(row(pid, seen, plan, 1000))
        else:  # an old version in a later part than the newer one
            batches[0].append(row(pid, seen, plan, 4000))
            batches[2].append(row(pid, NOW - timedelta(minutes=1), plan, 1500))
    return batches, merged


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def filled(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, set[str]]]:
    names = own_names()
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path_factory.mktemp("users-pages"),
        ingest=False,
        sink=False,
    ) as stack:
        batches, merged = persons_rows(stack.project.project_id, seed=4)
        for batch in batches:
            stack.client.insert("persons", batch, column_names=PERSON_COLUMNS)
            # persons_recent as the aggregator writes it, but without the tombstones for the rows
            # it replaces (as after two workers raced): the pages must not depend on them.
            recent = [
                [p, last, pid, first, s, v, plan, 0, ver]
                for p, pid, first, last, s, v, _a, _t, plan, d, ver in batch
                if not d
            ]
            stack.client.insert("persons_recent", recent, column_names=RECENT_COLUMNS)
        yield stack, merged


def reference(
    stack: Stack,
    segment: str,
    q: str,
    limit: int,
    cursor: queries.Cursor | None,
    narrowing: queries.Narrowing = queries.EVERYONE,
) -> tuple[list[dict[str, Any]], str | None]:
    """The page as one FINAL query over all persons gives it (the former users_page)."""
    where, params = queries.users_filter(stack.project.project_id, NOW, segment, q, narrowing)
    if cursor is not None:
        where += (
            f" AND (last_seen < {{c_seen:{queries.T}}}"
            f" OR (last_seen = {{c_seen:{queries.T}}} AND person_id > {{c_id:String}}))"
        )
        params["c_seen"] = datetime.fromtimestamp(cursor.last_seen_ms / 1000, UTC)
        params["c_id"] = cursor.person_id
    rows = stack.client.query(
        f"SELECT {queries.USER_COLUMNS} FROM persons FINAL WHERE {where} "
        "ORDER BY last_seen DESC, person_id ASC LIMIT {n:UInt32}",
        parameters={**params, "n": limit + 1},
    ).result_rows
    users = [queries.user_row(r) for r in rows[:limit]]
    following = None
    if len(rows) > limit:
        last = users[-1]
        following = queries.Cursor(queries._ms(last["last_seen"]), last["person_id"]).encode()
    return users, following


def walk(
    stack: Stack,
    segment: str,
    q: str,
    limit: int,
    narrowing: queries.Narrowing = queries.EVERYONE,
    members: queries.Members | None = None,
) -> list[str]:
    """Every page in turn, each checked against the reference; the persons, in order."""
    seen: list[str] = []
    cursor = None
    while True:
        page = queries.users_page(
            stack.client, stack.project.project_id, NOW, segment, q, limit, cursor, narrowing, members
        )
        assert page == reference(stack, segment, q, limit, cursor, narrowing), (segment, q, limit, cursor)
        seen += [u["person_id"] for u in page[0]]
        if page[1] is None:
            return seen
        cursor = queries.Cursor.decode(page[1])


@pytest.mark.parametrize("segment", ["all", "active", "inactive", "churned", "premium", "trial"])
async def test_every_page_is_exactly_the_final_answer(filled: tuple[Stack, set[str]], segment: str) -> None:
    stack, merged = filled
    everyone, _ = reference(stack, segment, "", 10_000, None)
    for limit in (1, 7, 50):
        seen = walk(stack, segment, "", limit)
        assert seen == [u["person_id"] for u in everyone]
        assert not merged & set(seen)
    assert walk(stack, segment, "a b", 5) == [u["person_id"] for u in everyone if "a b" in u["person_id"]]


async def test_merged_away_persons_never_appear(filled: tuple[Stack, set[str]]) -> None:
    stack, merged = filled
    assert merged  # the fixture has some, and their older live rows are recent
    everyone = walk(stack, "all", "", 500)
    assert len(everyone) == len(set(everyone)) and not merged & set(everyone)
    live = stack.client.query(
        "SELECT count() FROM persons FINAL WHERE project_id = {p:String} AND is_deleted = 0",
        parameters={"p": stack.project.project_id},
    ).first_row[0]
    assert len(everyone) == live


async def test_ties_beyond_the_candidates_fall_back_exactly(
    filled: tuple[Stack, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 45 persons share one last_seen: with so few candidates allowed, pages across the tie
    # cannot be settled by candidates and take the single FINAL read
    stack, _ = filled
    monkeypatch.setattr(queries, "CANDIDATES_MAX", 30)
    everyone, _ = reference(stack, "all", "", 10_000, None)
    assert walk(stack, "all", "", 10) == [u["person_id"] for u in everyone]


# A narrowing (a view's filters) as the users list gets it: a condition on the persons, and the
# same as a test of given persons (queries.Members), which the first read uses instead. `share`
# persons in every `of` are kept: one in two settles a page from the first read; one in fifty
# leaves it to the condition.
def narrowing(share: int, of: int) -> tuple[queries.Narrowing, queries.Members]:
    kept = "cityHash64(person_id) % {of:UInt32} < {share:UInt32}"
    params = {"of": of, "share": share}
    members = f"SELECT person_id FROM (SELECT arrayJoin({{ids:Array(String)}}) AS person_id) WHERE {kept}"
    return (f" AND {kept}", params), (members, params)


@pytest.mark.parametrize(("share", "of"), [(1, 2), (1, 50), (0, 1)])
@pytest.mark.parametrize("segment", ["all", "active", "premium"])
async def test_pages_narrowed_by_a_test_of_the_candidates_are_exactly_the_final_answer(
    filled: tuple[Stack, set[str]], segment: str, share: int, of: int
) -> None:
    stack, merged = filled
    condition, members = narrowing(share, of)
    everyone, _ = reference(stack, segment, "", 10_000, None, condition)
    assert (share == 0) == (not everyone)  # the fixture's persons: some are kept, unless none is
    for limit in (1, 7, 50):
        seen = walk(stack, segment, "", limit, condition, members)
        assert seen == [u["person_id"] for u in everyone] and not merged & set(seen)
