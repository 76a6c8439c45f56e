"""Who a distinct id is: the identify/alias mappings followed to the end, shared by the aggregator
(which builds persons from them) and the API (which names the visitors it lists).

identify maps an anonymous id to a user id, alias maps a previous id to a user id; the latest
mapping of each id wins (`person_distinct_ids`). A person is the id at the end of the chain:
anon -> u-1 (identify), u-1 -> u-2 (alias), u-2 -> u-3 (alias) makes u-3 the person of all
four. A chain is followed for at most ALIAS_HOPS mappings, and stops before an id it already
passed (alias calls that map two ids onto each other end where the cycle closes).

The mappings are read here and nowhere else (`mappings`, `mapped_to`, `all_mappings`): the
latest mapping of an id is the row FINAL keeps (the highest version; of equal versions, the
last inserted), the same for every reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse.params import StringArray

ALIAS_HOPS = 8

#: ids -> {id: the id it is mapped to}, for those of them that have a mapping.
Lookup = Callable[[set[str]], dict[str, str]]
#: ids -> [(distinct id, the id it is mapped to)], for the distinct ids mapped to one of them.
ReverseLookup = Callable[[set[str]], Iterable[tuple[str, str]]]


def resolve(
    ids: Iterable[str], lookup: Lookup, known: dict[str, str] | None = None, asked: Iterable[str] = ()
) -> dict[str, str]:
    """distinct id -> person id; an id with no mapping is its own person. `lookup` is called once
    per hop, for the ids not read yet. `known`: the mappings already read for the ids `asked`
    (an id of `asked` missing from `known` has none), e.g. of the ids a first hop probably
    leads to, read together with the first hop."""
    known = known or {}
    mapped = dict(known)
    looked = set(asked) | set(known)
    paths = {d: [d] for d in ids}
    moving = set(paths)
    for _ in range(ALIAS_HOPS):
        ends = {paths[d][-1] for d in moving}
        wanted = ends - looked
        if wanted:
            mapped.update(lookup(wanted))
            looked |= wanted
        still = set()
        for d in moving:
            path = paths[d]
            to = mapped.get(path[-1])
            if to is not None and to not in path:
                path.append(to)
                still.add(d)
        moving = still
        if not moving:
            break
    return {d: path[-1] for d, path in paths.items()}


def members(persons: Iterable[str], reverse: ReverseLookup) -> dict[str, set[str]]:
    """person id -> the ids that resolve to it (itself included), found backwards from the
    person one hop at a time, as far as `resolve` follows a chain forwards."""
    owner = {p: p for p in persons}
    frontier = set(owner)
    for _ in range(ALIAS_HOPS):
        if not frontier:
            break
        found = set()
        for distinct_id, via in reverse(frontier):
            if distinct_id not in owner and via in owner:
                owner[distinct_id] = owner[via]
                found.add(distinct_id)
        frontier = found
    out: dict[str, set[str]] = {p: set() for p in set(owner.values())}
    for distinct_id, person in owner.items():
        out[person].add(distinct_id)
    return out


# -- reading the mappings (person_distinct_ids) ---------------------------------------------------

_LATEST = "SELECT distinct_id, person_id FROM person_distinct_ids FINAL "
# Up to this many persons, their ids are found through person_distinct_ids_by_person; more,
# by scanning person_id in person_distinct_ids: the sorted copy wins for a few persons, the
# scan for many (where they cross: bench/README.md, "Figures behind design choices").
BY_PERSON_UP_TO = 2000


def mappings(client: Client, project_id: str, ids: Iterable[str]) -> dict[str, str]:
    """A `Lookup`: the latest mapping of each of these ids that has one."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    # PREWHERE only on distinct_id, the sorting key: on another column it would drop a newer
    # mapping before FINAL and let an older one win.
    sql = _LATEST + "PREWHERE distinct_id IN {v:Array(String)} WHERE project_id = {p:String}"
    rows = client.query(sql, parameters={"p": project_id, "v": StringArray(wanted)}).result_rows
    return {d: p for d, p in rows}


def mapped_to(client: Client, project_id: str, persons: Iterable[str]) -> list[tuple[str, str]]:
    """A `ReverseLookup`: (distinct id, id) of the ids whose latest mapping is to one of
    `persons`. For a few persons, the candidates come from person_distinct_ids_by_person
    (sorted by person) and the latest mapping of each decides: person_distinct_ids is sorted
    by distinct id, so reading it by person is a scan of its person_id column."""
    wanted = set(persons)
    if not wanted:
        return []
    if len(wanted) <= BY_PERSON_UP_TO:
        sql = _LATEST + (
            "PREWHERE distinct_id IN (SELECT distinct_id FROM person_distinct_ids_by_person "
            "PREWHERE person_id IN {v:Array(String)} WHERE project_id = {p:String}) "
            "WHERE project_id = {p:String}"
        )
    else:
        sql = _LATEST + "WHERE project_id = {p:String} AND person_id IN {v:Array(String)}"
    rows = client.query(sql, parameters={"p": project_id, "v": StringArray(sorted(wanted))}).result_rows
    return [(d, p) for d, p in rows if p in wanted]


def all_mappings(client: Client, project_id: str) -> list[tuple[str, str]]:
    """(distinct id, id) of the latest mapping of every id of the project that has one."""
    rows = client.query(_LATEST + "WHERE project_id = {p:String}", parameters={"p": project_id}).result_rows
    return [(d, p) for d, p in rows]
