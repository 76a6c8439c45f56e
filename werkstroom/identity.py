"""Who a distinct id is: the identify/alias mappings followed to the end, shared by the aggregator
(which builds persons from them) and the API (which names the visitors it lists).

identify maps an anonymous id to a user id, alias maps a previous id to a user id; the latest
mapping of each id wins (`person_distinct_ids`). A person is the id at the end of the chain:
anon -> u-1 (identify), u-1 -> u-2 (alias), u-2 -> u-3 (alias) makes u-3 the person of all
four. A chain is followed for at most ALIAS_HOPS mappings, and stops before an id it already
passed (alias calls that map two ids onto each other end where the cycle closes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
