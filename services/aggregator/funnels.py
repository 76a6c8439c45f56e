"""The funnels' derived tables, kept by the aggregator (the model and the definitions are
werkstroom/funnels.py's; the report query is the API's).

- `recompute`: after each batch, the progress of the persons it touched, in every funnel of
  their project (services.aggregator.derived.refresh calls it);
- `Backfills`: a funnel created after the traffic (by the API or the CLI) is back-filled from
  the events stored so far, every person of the project, then marked in `funnel_backfills`.
  One worker does it, the one assigned partition 0 of the events topic; a back-fill cut short
  (a stop, a rebalance, a failure) is not marked and is done again, whole, which changes nothing.

The tables: `funnel_progress` holds per (person, day on which one of their attempts started)
the level reached by the attempts from that day on; `funnel_levels`, per person and level k, the
latest day whose attempts reached k (one live row per person and k: `settle_levels`);
`funnel_counts`, how many persons have each (k, day).
Persons reaching k in the last N days = the sum of the counts of k from the first of those days
on, a few hundred rows whatever the number of persons.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from services.aggregator import breakdowns
from werkstroom import identity, metrics
from werkstroom.breakdowns import PLAN_FILTER
from werkstroom.clickhouse import ClientFactory
from werkstroom.clickhouse.params import StringArray, insert_rows
from werkstroom.clickhouse.tables import (
    FUNNEL_BACKFILLS_COLUMNS,
    FUNNEL_COUNTS_COLUMNS,
    FUNNEL_LEVELS_BY_COLUMNS,
    FUNNEL_LEVELS_COLUMNS,
    FUNNEL_PROGRESS_COLUMNS,
)
from werkstroom.clickhouse.versions import next_version
from werkstroom.funnels import Funnel, get_funnel, list_funnels, progress
from werkstroom.logging import get_logger
from werkstroom.projects import time_zone

log = get_logger(__name__)

BACKFILL_EVERY = 1.0  # seconds between two looks for funnels not yet back-filled
RETRY_AFTER = 10.0  # seconds before a failed back-fill is tried again


class Interrupted(Exception):
    """A back-fill cut short by a stop: nothing is marked, the next start does it again."""


def _step_events(
    client: Client, project_id: str, funnels: Sequence[Funnel], distinct_ids: Sequence[str] | None
) -> Iterable[tuple[str, int, str, str]]:
    """(distinct id, ms, event, path) of the events that some step of these funnels names."""
    names = sorted({s.event for f in funnels for s in f.steps})
    where = "WHERE project_id = {p:String} AND event IN {names:Array(String)}"
    if distinct_ids is not None:
        # PREWHERE on the sorting key's distinct_id: FINAL reads the other columns only for
        # these ids' rows (safe under FINAL: every version of a row has the same key).
        where = "PREWHERE distinct_id IN {ids:Array(String)} " + where
    sql = (
        "SELECT distinct_id, toUnixTimestamp64Milli(timestamp), event, path "
        f"FROM visitor_events FINAL {where}"
    )
    params = {"p": project_id, "names": names, "ids": StringArray(distinct_ids or [])}
    with client.query_row_block_stream(sql, parameters=params) as stream:
        for block in stream:
            for distinct_id, ms, event, path in block:
                yield distinct_id, int(ms), event, path


def recompute(
    client: Client,
    project_id: str,
    members: dict[str, Sequence[str]],
    gone: Iterable[str],
    version: int,
    funnels: Sequence[Funnel] | None = None,
    zone: str | None = None,
) -> int:
    """Rewrite the progress of these persons (person id -> the distinct ids whose events count
    for it, `person_ids`) in every funnel of the project, and delete that of persons merged
    into others. Returns rows written."""
    funnels = list_funnels(client, project_id) if funnels is None else funnels
    gone = set(gone)
    zone = time_zone(client, project_id) if zone is None else zone
    if not funnels or not (members or gone):
        return 0
    owner = {d: p for p, ids in members.items() for d in ids}
    events: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    if owner:
        for distinct_id, ms, name, path in _step_events(client, project_id, funnels, sorted(owner)):
            events[owner[distinct_id]].append((ms, name, path))
    fresh: dict[tuple[str, str, date], int] = {}
    for funnel in funnels:
        window_ms = funnel.window_seconds * 1000
        for person_id, person_events in events.items():
            for day, reached in progress(funnel.steps, window_ms, person_events, zone).items():
                fresh[(funnel.funnel_id, person_id, day)] = reached
    persons = set(members) | gone
    levels = plan_levels(client, project_id, funnels, persons, fresh, version)
    written = apply_levels(client, project_id, levels)
    return written + _write_progress(client, project_id, funnels, persons, fresh, version)


def latest_days(rows: dict[date, int], steps: int) -> list[date | None]:
    """For levels 1..steps: the latest day whose attempts reached that level (None: never)."""
    return [max((d for d, lvl in rows.items() if lvl >= k), default=None) for k in range(1, steps + 1)]


LevelRow = tuple[str, int, date, str]  # (funnel, level, last_day, person)
# plan_levels' plan: the rows to insert, the funnel_counts cells (funnel, level, day) they fall
# in, and the (funnel, level, person) they add
LevelPlan = tuple[list[list[Any]], set[tuple[str, int, date]], set[tuple[str, int, str]]]


def plan_levels(
    client: Client,
    project_id: str,
    funnels: Sequence[Funnel],
    persons: set[str],
    fresh: dict[tuple[str, str, date], int],
    version: int,
) -> LevelPlan:
    """How to bring funnel_levels to `fresh` for these persons (LevelPlan): the levels to add
    and tombstones for the stored ones no longer wanted, compared with what funnel_levels holds,
    so that a row left by an interrupted or concurrent write is corrected too."""
    if not persons:
        return [], set(), set()
    by_person: dict[tuple[str, str], dict[date, int]] = defaultdict(dict)
    for (funnel_id, person_id, day), reached in fresh.items():
        by_person[(funnel_id, person_id)][day] = reached
    wanted: set[LevelRow] = set()
    for funnel in funnels:
        for person_id in persons:
            days = latest_days(by_person.get((funnel.funnel_id, person_id), {}), len(funnel.steps))
            wanted.update((funnel.funnel_id, k, d, person_id) for k, d in enumerate(days, 1) if d is not None)
    stored = {
        (f, int(k), d, p)
        for f, k, d, p in client.query(
            "SELECT funnel_id, level, last_day, person_id FROM funnel_levels FINAL "
            "WHERE project_id = {p:String} AND funnel_id IN {f:Array(String)} "
            "AND person_id IN {ids:Array(String)} AND is_deleted = 0",
            parameters={
                "p": project_id,
                "f": [f.funnel_id for f in funnels],
                "ids": StringArray(sorted(persons)),
            },
        ).result_rows
    }
    added, removed = sorted(wanted - stored), sorted(stored - wanted)
    rows = [[project_id, f, k, d, p, 0, version] for f, k, d, p in added]
    rows += [[project_id, f, k, d, p, 1, version] for f, k, d, p in removed]
    cells = {(f, k, d) for f, k, d, _p in added} | {(f, k, d) for f, k, d, _p in removed}
    return rows, cells, {(f, k, p) for f, k, _d, p in added}


def apply_levels(client: Client, project_id: str, plan: LevelPlan) -> int:
    """Write a `plan_levels` plan, settle the persons it added levels to, and recount the
    funnel_counts cells that changed; returns rows written."""
    rows, cells, touched = plan
    if not rows:
        return 0
    insert_rows(client, "funnel_levels", rows, FUNNEL_LEVELS_COLUMNS)
    settled, unsettled = settle_levels(client, project_id, touched)
    return len(rows) + settled + _recount(client, project_id, cells | unsettled)


def settle_levels(
    client: Client, project_id: str, touched: set[tuple[str, int, str]] | None, funnel_id: str | None = None
) -> tuple[int, set[tuple[str, int, date]]]:
    """Leave one live level row per (funnel, person, level): the one written from the newest
    read (the highest version; the later day on a tie), the others tombstoned. Returns the
    tombstones written and the funnel_counts cells they leave.

    Two writers of one person (two workers whose batches both hold the person, a batch replayed
    after a rebalance, or the back-fill beside a batch) can each read the person's levels before
    the other writes, and so write one level under two days, both live: the key holds the day.
    Each writer settles after its write, so the later of the two settles sees both rows.
    `touched`: the (funnel, level, person) a writer added rows of; None with `funnel_id`: every
    person of that funnel (the back-fill's)."""
    if touched is None:
        where, params = "funnel_id = {f:String}", {"f": funnel_id}
    elif touched:
        # the levels too: the key's prefix, so the persons' index is looked at in those only
        where = (
            "funnel_id IN {f:Array(String)} AND level IN {k:Array(UInt8)} "
            "AND person_id IN {ids:Array(String)}"
        )
        params = {
            "f": sorted({f for f, _k, _p in touched}),
            "k": sorted({k for _f, k, _p in touched}),
            "ids": StringArray(sorted({p for _f, _k, p in touched})),
        }
    else:
        return 0, set()
    rows: list[list[Any]] = []
    for f, k, p, days in client.query(
        "SELECT funnel_id, level, person_id, groupArray((version, last_day)) FROM funnel_levels FINAL "
        f"WHERE project_id = {{p:String}} AND {where} AND is_deleted = 0 "
        "GROUP BY funnel_id, level, person_id HAVING count() > 1",
        parameters={"p": project_id, **params},
    ).result_rows:
        # A tombstone outranks just the row it ends (version + 1), not a later write of that key.
        rows += [[project_id, f, int(k), d, p, 1, v + 1] for v, d in sorted(days)[:-1]]
    if rows:
        insert_rows(client, "funnel_levels", rows, FUNNEL_LEVELS_COLUMNS)
        log.info("funnel_levels_settled", project_id=project_id, rows=len(rows))
    return len(rows), {(f, k, d) for _p, f, k, d, *_rest in rows}


# One recount of funnel_counts cells at a time in this process, each with a version taken when
# it starts, under the lock: the count written last, and kept, is the one read last. A cell's
# count is read from every person's levels, which the back-fill (a thread of its own) and the
# batches' recomputations both write; with the writer's own version (taken before its reading
# of events), a recomputation that counted before a back-fill wrote its levels outranked the
# back-fill's later, complete count, or a back-fill's count outranked a later one, and the cell
# stayed short until some batch touched it again (a client matrix test's funnel in CI).
_RECOUNTING = threading.Lock()


def _recount(client: Client, project_id: str, cells: set[tuple[str, int, date]]) -> int:
    """Rewrite these (funnel, level, day) cells of funnel_counts from funnel_levels."""
    with _RECOUNTING:
        version = next_version()
        counted = {
            (f, int(k), d): n
            for f, k, d, n in client.query(
                "SELECT funnel_id, level, last_day, count() FROM funnel_levels FINAL "
                "WHERE project_id = {p:String} AND funnel_id IN {f:Array(String)} "
                "AND level IN {k:Array(UInt8)} AND last_day IN {d:Array(Date)} AND is_deleted = 0 "
                "GROUP BY funnel_id, level, last_day",
                parameters={
                    "p": project_id,
                    "f": sorted({c[0] for c in cells}),
                    "k": sorted({c[1] for c in cells}),
                    "d": sorted({c[2] for c in cells}),
                },
            ).result_rows
        }
        rows = [[project_id, f, k, d, counted.get((f, k, d), 0), version] for f, k, d in sorted(cells)]
        insert_rows(client, "funnel_counts", rows, FUNNEL_COUNTS_COLUMNS)
    return len(rows)


def _write_progress(
    client: Client,
    project_id: str,
    funnels: Sequence[Funnel],
    persons: set[str],
    fresh: dict[tuple[str, str, date], int],
    version: int,
) -> int:
    """Write `fresh` and delete the stored rows of these persons that it no longer has."""
    stale: list[tuple[str, str, date]] = []
    if persons:
        for funnel_id, person_id, day in client.query(
            "SELECT funnel_id, person_id, day FROM funnel_progress FINAL WHERE project_id = {p:String} "
            "AND funnel_id IN {f:Array(String)} AND person_id IN {ids:Array(String)} AND is_deleted = 0",
            parameters={
                "p": project_id,
                "f": [f.funnel_id for f in funnels],
                "ids": StringArray(sorted(persons)),
            },
        ).result_rows:
            if (funnel_id, person_id, day) not in fresh:
                stale.append((funnel_id, person_id, day))
    rows = [[project_id, f, d, p, lvl, 0, version] for (f, p, d), lvl in sorted(fresh.items())]
    rows += [[project_id, f, d, p, 0, 1, version] for f, p, d in stale]
    if rows:
        insert_rows(client, "funnel_progress", rows, FUNNEL_PROGRESS_COLUMNS)
    return len(rows)


def person_ids(person_id: str, member_ids: Iterable[str]) -> list[str]:
    """The distinct ids whose events count in a person's funnels: its own id (the distinct id of
    the calls a server makes with only a user id) and every id an identify or alias mapped to it
    (`identity.members`): the ids it browsed with, and the user ids it had before an alias,
    whose server-side calls count too. (A person is a person because it browsed: an id with
    only server-side calls has no persons row, and no funnel progress either.)"""
    return sorted({person_id, *member_ids})


def _all_members(client: Client, project_id: str, persons: Iterable[str]) -> dict[str, set[str]]:
    """identity.members of these persons, from one read of the project's latest mappings."""
    mapped_to: dict[str, list[str]] = defaultdict(list)
    for distinct_id, person_id in identity.all_mappings(client, project_id):
        mapped_to[person_id].append(distinct_id)
    return identity.members(persons, lambda ids: [(d, via) for via in ids for d in mapped_to.get(via, ())])


def backfill(
    client: Client, funnel: Funnel, chunk: int = 20_000, should_stop: Callable[[], bool] = lambda: False
) -> int:
    """Compute every person's progress in a new funnel from the events stored so far; returns
    rows written. Raises Interrupted, between two inserts, once `should_stop()`."""
    version = next_version()  # taken before reading: a later recomputation from newer data wins
    browsed: dict[str, list[str]] = dict(
        client.query(
            "SELECT person_id, anonymous_ids FROM persons FINAL "
            "WHERE project_id = {p:String} AND is_deleted = 0",
            parameters={"p": funnel.project_id},
        ).result_rows
    )
    members = _all_members(client, funnel.project_id, browsed)
    owner: dict[str, str] = {}
    for person_id, anonymous_ids in browsed.items():
        for distinct_id in person_ids(person_id, {*anonymous_ids, *members.get(person_id, ())}):
            owner[distinct_id] = person_id
    events: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for distinct_id, ms, name, path in _step_events(client, funnel.project_id, [funnel], None):
        person_id = owner.get(distinct_id)
        if person_id is not None:
            events[person_id].append((ms, name, path))
    window_ms = funnel.window_seconds * 1000
    zone = time_zone(client, funnel.project_id)
    reached = {
        person_id: progress(funnel.steps, window_ms, person_events, zone)
        for person_id, person_events in events.items()
    }
    return write_backfill(client, funnel, reached, version, chunk, should_stop)


def write_backfill(
    client: Client,
    funnel: Funnel,
    reached: dict[str, dict[date, int]],
    version: int,
    chunk: int = 20_000,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Write a back-fill's progress (person -> day -> level reached by the attempts of that day
    on) and levels with `version`, then recount the funnel_counts cells they fall in; returns
    rows written."""
    steps = len(funnel.steps)
    written = 0
    batch: list[list[Any]] = []
    levels: list[list[Any]] = []
    cells: set[tuple[int, date]] = set()
    for person_id, rows in reached.items():
        for day, level in rows.items():
            batch.append([funnel.project_id, funnel.funnel_id, day, person_id, level, 0, version])
        for k, day in enumerate(latest_days(rows, steps), 1):
            if day is not None:
                levels.append([funnel.project_id, funnel.funnel_id, k, day, person_id, 0, version])
                cells.add((k, day))
        if len(batch) >= chunk or len(levels) >= chunk:
            if should_stop():
                raise Interrupted(funnel.funnel_id)
        if len(batch) >= chunk:
            insert_rows(client, "funnel_progress", batch, FUNNEL_PROGRESS_COLUMNS)
            written, batch = written + len(batch), []
        if len(levels) >= chunk:
            insert_rows(client, "funnel_levels", levels, FUNNEL_LEVELS_COLUMNS)
            written, levels = written + len(levels), []
    if batch:
        insert_rows(client, "funnel_progress", batch, FUNNEL_PROGRESS_COLUMNS)
        written += len(batch)
    if levels:
        insert_rows(client, "funnel_levels", levels, FUNNEL_LEVELS_COLUMNS)
        written += len(levels)
    # A batch may have merged a person the back-fill read into another meanwhile (an identify)
    # and tombstoned the person's levels before these were written: they end here.
    ended, left = end_gone(client, funnel)
    # A batch may have written persons of this funnel meanwhile: their levels settled against
    # the back-fill's, then the cells from the back-fill's own levels and the settled ones
    # recounted from funnel_levels (_recount).
    settled, unsettled = settle_levels(client, funnel.project_id, None, funnel.funnel_id)
    cells_of = {(funnel.funnel_id, k, d) for k, d in cells}
    written += ended + settled + _recount(client, funnel.project_id, cells_of | left | unsettled)
    # and each person's levels under its values, at a version taken after the levels are settled:
    # a batch's refresh of a person that read its levels before wrote fewer (LEVELS_BY_BACKFILL)
    client.command(
        LEVELS_BY_BACKFILL, parameters={"p": funnel.project_id, "f": funnel.funnel_id, "v": next_version()}
    )
    return written


# The persons of a funnel {f:String}'s live levels and progress whose newest persons row in
# project {p:String} is a tombstone (merged into another person: derived.refresh_persons'
# `gone`). argMax over the versions, not FINAL, which hides the tombstones.
_GONE = """
SELECT person_id FROM persons
WHERE project_id = {p:String} AND person_id IN (
    SELECT person_id FROM funnel_levels FINAL
    WHERE project_id = {p:String} AND funnel_id = {f:String} AND is_deleted = 0
    UNION ALL
    SELECT person_id FROM funnel_progress FINAL
    WHERE project_id = {p:String} AND funnel_id = {f:String} AND is_deleted = 0)
GROUP BY person_id HAVING argMax(is_deleted, version) = 1
"""
# The live rows of funnel {f:String} of the persons {gone:Array(String)}, with their versions.
_ROWS_OF = """
SELECT {columns}, version FROM {table} FINAL
PREWHERE person_id IN {{gone:Array(String)}}
WHERE project_id = {{p:String}} AND funnel_id = {{f:String}} AND is_deleted = 0
"""


def end_gone(client: Client, funnel: Funnel) -> tuple[int, set[tuple[str, int, date]]]:
    """Tombstone a back-fill's levels and progress of the persons merged away since it read them.
    The batch that merged a person away writes its persons rows, then tombstones the person's
    stored levels (recompute's `gone`); a back-fill that read the person before and writes after
    that read would leave them live (a funnel's first step one person too many, in CI). Read
    after the back-fill's writes, the persons rows show every such person: its batch wrote them
    before reading the levels. Each tombstone ends just its row (version + 1, as settle_levels).
    Returns the rows written and the funnel_counts cells they leave."""
    p, f = funnel.project_id, funnel.funnel_id
    gone = [person for (person,) in client.query(_GONE, parameters={"p": p, "f": f}).result_rows]
    if not gone:
        return 0, set()
    params = {"p": p, "f": f, "gone": StringArray(sorted(gone))}
    levels = client.query(
        _ROWS_OF.format(columns="level, last_day, person_id", table="funnel_levels"), parameters=params
    ).result_rows
    progress = client.query(
        _ROWS_OF.format(columns="day, person_id, level", table="funnel_progress"), parameters=params
    ).result_rows
    if levels:
        rows = [[p, f, int(k), d, person, 1, v + 1] for k, d, person, v in levels]
        insert_rows(client, "funnel_levels", rows, FUNNEL_LEVELS_COLUMNS)
    if progress:
        rows = [[p, f, d, person, int(k), 1, v + 1] for d, person, k, v in progress]
        insert_rows(client, "funnel_progress", rows, FUNNEL_PROGRESS_COLUMNS)
    log.info("funnel_backfill_gone_ended", project_id=p, funnel_id=f, persons=len(gone), levels=len(levels))
    return len(levels) + len(progress), {(f, int(k), d) for k, d, _person, _v in levels}


# The right sides of a statement's joins in buckets of at most 50 MB, the others on disk, not
# whole in memory (migration 0037's back-fill, which gives the figures).
BOUNDED_JOINS = (
    "SETTINGS join_algorithm = 'grace_hash', grace_hash_join_initial_buckets = 8, "
    "max_bytes_in_join = 50000000"
)

# A funnel's funnel_levels_by rows (migration 0037), as its back-fill ends: each live level
# under each live person_first_by row of its person, with its plan row's plan (the migration's
# statement, for one funnel). person_first_by is sorted by its values' keys (migration 0038), so
# its project's rows are a scan of the table: once per funnel.
LEVELS_BY_BACKFILL = f"""
INSERT INTO funnel_levels_by ({", ".join(FUNNEL_LEVELS_BY_COLUMNS)})
SELECT {{p:String}}, {{f:String}}, v.filter, v.filter_value, l.level, v.person_id,
       least(l.last_day, v.last_day), pl.plan, {{v:UInt64}}, 0
FROM (SELECT person_id, filter, filter_value, last_day FROM person_first_by FINAL
      WHERE project_id = {{p:String}} AND is_deleted = 0) AS v
INNER JOIN (SELECT level, person_id, last_day FROM funnel_levels FINAL
            WHERE project_id = {{p:String}} AND funnel_id = {{f:String}} AND is_deleted = 0) AS l
    ON l.person_id = v.person_id
LEFT JOIN (SELECT person_id, filter_value AS plan FROM person_first_by FINAL
           WHERE project_id = {{p:String}} AND filter = '{PLAN_FILTER}' AND is_deleted = 0) AS pl
    ON pl.person_id = v.person_id
{BOUNDED_JOINS}
"""


def pending(client: Client) -> list[tuple[str, str]]:
    """(project, funnel) of the live funnels not back-filled yet, oldest first."""
    rows = client.query(
        "SELECT project_id, funnel_id FROM funnels FINAL WHERE is_deleted = 0 "
        "AND (project_id, funnel_id) NOT IN (SELECT project_id, funnel_id FROM funnel_backfills) "
        "ORDER BY created_at, funnel_id"
    ).result_rows
    return [(p, f) for p, f in rows]


def backfill_and_mark(client: Client, funnel: Funnel, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Back-fill a funnel and mark it done; returns rows written."""
    written = backfill(client, funnel, should_stop=should_stop)
    insert_rows(
        client,
        "funnel_backfills",
        [[funnel.project_id, funnel.funnel_id, written, next_version()]],
        FUNNEL_BACKFILLS_COLUMNS,
    )
    return written


class Backfills:
    """The aggregator's back-fill of new funnels (module docstring): looks every BACKFILL_EVERY
    seconds while `owns()` (this worker is assigned partition 0 of the events topic), and
    back-fills what it finds one funnel at a time, in a thread, on a client of its own. Once a
    process, it also rolls up the breakdowns of the days rolled up before breakdown_daily_by
    existed (services.aggregator.breakdowns.roll_up_backlog), beside the batches."""

    def __init__(self, clickhouse: ClientFactory, owns: Callable[[], bool], stopping: asyncio.Event) -> None:
        self._factory = clickhouse
        self._owns = owns
        self._stopping = stopping
        self._failed: dict[tuple[str, str], float] = {}  # (project, funnel) -> monotonic time
        self.done = 0  # funnels back-filled by this worker
        self.rolled_backlog: int | None = None  # days of the roll-up backlog done, once it is

    async def loop(self) -> None:
        while not self._stopping.is_set():
            if self._owns():
                try:
                    await asyncio.to_thread(self.run_once)
                except Interrupted:  # stopping (the loop ends), or partition 0 went elsewhere
                    pass
                except Exception as exc:  # ClickHouse away: looked again at the next tick
                    log.warning("funnel_backfill_lookup_failed", error=repr(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), BACKFILL_EVERY)
            except TimeoutError:
                pass

    def run_once(self) -> int:
        """Back-fill every funnel pending now (in the calling thread); returns how many."""
        client = self._factory()
        try:
            done = 0
            now = time.monotonic()
            for project_id, funnel_id in pending(client):
                if now - self._failed.get((project_id, funnel_id), -RETRY_AFTER) < RETRY_AFTER:
                    continue
                if self._stopping.is_set() or not self._owns():
                    raise Interrupted(funnel_id)
                funnel = get_funnel(client, project_id, funnel_id)
                if funnel is None:  # deleted meanwhile
                    continue
                started = time.monotonic()
                try:
                    written = backfill_and_mark(client, funnel, should_stop=self._stopping.is_set)
                except Interrupted:
                    raise
                except Exception as exc:
                    self._failed[(project_id, funnel_id)] = time.monotonic()
                    metrics.FUNNEL_BACKFILLS.labels(outcome="failed").inc()
                    log.error(
                        "funnel_backfill_failed", project_id=project_id, funnel_id=funnel_id, error=repr(exc)
                    )
                    continue
                self._failed.pop((project_id, funnel_id), None)
                seconds = time.monotonic() - started
                metrics.FUNNEL_BACKFILLS.labels(outcome="done").inc()
                metrics.FUNNEL_BACKFILL_SECONDS.observe(seconds)
                log.info(
                    "funnel_backfilled",
                    project_id=project_id,
                    funnel_id=funnel_id,
                    rows=written,
                    seconds=round(seconds, 3),
                )
                done += 1
            self.done += done
            if self.rolled_backlog is None:
                self._roll_up_backlog(client)
            return done
        finally:
            client.close()

    def _roll_up_backlog(self, client: Client) -> None:
        rolled = breakdowns.roll_up_backlog(
            client,
            datetime.now(UTC),
            lambda project_id: time_zone(client, project_id),
            lambda: self._stopping.is_set() or not self._owns(),
        )
        if rolled is None:
            raise Interrupted("the breakdowns' roll-up backlog")
        self.rolled_backlog = rolled
        if rolled:
            log.info("breakdown_backlog_rolled_up", days=rolled)
