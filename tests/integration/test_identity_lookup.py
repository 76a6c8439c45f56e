"""The one reader of person_distinct_ids (werkstroom.identity): forwards by distinct id, and
backwards by person (through person_distinct_ids_by_person for a few persons, by scanning
person_distinct_ids for many). Every way gives the latest mapping of each id, never one
mapped elsewhere since; the aggregator and the API both read through it."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from services.api import queries
from werkstroom import identity
from werkstroom.clickhouse.migrate import migrate
from werkstroom.clickhouse.params import insert_rows
from werkstroom.clickhouse.tables import PERSON_DISTINCT_IDS_COLUMNS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("by_person_up_to", [identity.BY_PERSON_UP_TO, 0])
def test_a_persons_ids_are_those_whose_latest_mapping_names_it(
    database: Client, monkeypatch: pytest.MonkeyPatch, by_person_up_to: int
) -> None:
    monkeypatch.setattr(identity, "BY_PERSON_UP_TO", by_person_up_to)
    migrate(database)
    for rows in (  # one insert each, as the aggregator's batches write them
        [["p", "anon-x", "user-a", 1], ["p", "anon-y", "user-a", 1], ["q", "anon-z", "user-a", 1]],
        [["p", "anon-x", "user-b", 2]],  # identified again, as another user
    ):
        for table in ("person_distinct_ids", "person_distinct_ids_by_person"):
            insert_rows(database, table, rows, PERSON_DISTINCT_IDS_COLUMNS)

    by_person = identity.mapped_to(database, "p", {"user-a", "user-b"})
    assert sorted(by_person) == [("anon-x", "user-b"), ("anon-y", "user-a")]
    assert identity.mapped_to(database, "p", {"user-a"}) == [("anon-y", "user-a")]
    forward = identity.mappings(database, "p", {"anon-x", "anon-y", "nobody"})
    assert forward == {"anon-x": "user-b", "anon-y": "user-a"}
    assert sorted(identity.all_mappings(database, "p")) == [("anon-x", "user-b"), ("anon-y", "user-a")]
    # the API names a visitor as the aggregator does: through the same reader
    assert queries.resolve_persons(database, "p", ["anon-x", "anon-y", "nobody"]) == {
        "anon-x": "user-b",
        "anon-y": "user-a",
        "nobody": "nobody",
    }


def test_of_two_mappings_with_the_same_version_every_reader_takes_the_same(database: Client) -> None:
    """A tie (two identifies with the same event time) is decided once, by FINAL: the API used
    argMax, which could pick the other one."""
    migrate(database)
    for person in ("user-a", "user-b"):
        insert_rows(database, "person_distinct_ids", [["p", "anon", person, 5]], PERSON_DISTINCT_IDS_COLUMNS)
    latest = identity.mappings(database, "p", {"anon"})
    assert identity.all_mappings(database, "p") == list(latest.items())
    assert queries.resolve_persons(database, "p", ["anon"]) == latest
