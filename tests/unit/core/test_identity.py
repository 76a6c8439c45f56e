"""Following identify/alias mappings to the person, forwards (resolve) and backwards (members)."""

from __future__ import annotations

from werkstroom import identity

# anon -> u-1 (identify), u-1 -> u-2 -> u-3 -> u-4 (aliases); other -> u-2; x <-> y (a cycle)
MAPPINGS = {"anon": "u-1", "u-1": "u-2", "u-2": "u-3", "u-3": "u-4", "other": "u-2", "x": "y", "y": "x"}


class Table:
    """person_distinct_ids as lookups, counting the reads."""

    def __init__(self, mappings: dict[str, str]) -> None:
        self.mappings = mappings
        self.reads: list[set[str]] = []

    def lookup(self, ids: set[str]) -> dict[str, str]:
        self.reads.append(set(ids))
        return {d: self.mappings[d] for d in ids if d in self.mappings}

    def reverse(self, ids: set[str]) -> list[tuple[str, str]]:
        self.reads.append(set(ids))
        return [(d, p) for d, p in self.mappings.items() if p in ids]


def test_a_chain_is_followed_to_its_end_one_read_per_hop() -> None:
    table = Table(MAPPINGS)
    got = identity.resolve(["anon", "u-3", "other", "alone"], table.lookup)
    assert got == {"anon": "u-4", "u-3": "u-4", "other": "u-4", "alone": "alone"}
    # u-3 was read with the first hop; u-4 is read to learn that the chain ends there
    assert table.reads == [{"anon", "u-3", "other", "alone"}, {"u-1", "u-2", "u-4"}]


def test_a_cycle_ends_where_it_closes() -> None:
    assert identity.resolve(["x", "y"], Table(MAPPINGS).lookup) == {"x": "y", "y": "x"}


def test_a_chain_longer_than_the_limit_stops_after_alias_hops() -> None:
    chain = {f"id-{i}": f"id-{i + 1}" for i in range(20)}
    got = identity.resolve(["id-0"], Table(chain).lookup)
    assert got == {"id-0": f"id-{identity.ALIAS_HOPS}"}


def test_mappings_read_already_are_not_read_again() -> None:
    table = Table(MAPPINGS)
    asked = {"anon", "u-1", "nobody"}
    known = {d: MAPPINGS[d] for d in asked if d in MAPPINGS}
    got = identity.resolve(["anon", "nobody"], table.lookup, known, asked)
    assert got == {"anon": "u-4", "nobody": "nobody"}
    assert table.reads == [{"u-2"}, {"u-3"}, {"u-4"}]  # u-1's mapping was read with the first hop


def test_members_are_every_id_that_resolves_to_the_person() -> None:
    table = Table(MAPPINGS)
    got = identity.members({"u-4", "alone"}, table.reverse)
    assert got == {"u-4": {"u-4", "u-3", "u-2", "u-1", "other", "anon"}, "alone": {"alone"}}
    everyone = [d for ds in got.values() for d in ds]
    resolved = identity.resolve(everyone, Table(MAPPINGS).lookup)
    assert all(resolved[d] == p for p, ds in got.items() for d in ds)


def test_members_stop_at_a_cycle() -> None:
    assert identity.members({"x"}, Table(MAPPINGS).reverse) == {"x": {"x", "y"}}
