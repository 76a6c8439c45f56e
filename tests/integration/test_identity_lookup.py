"""The recomputation finds a person's ids backwards (derived._mapping by person_id): through
person_distinct_ids_by_person for a few persons, by scanning person_distinct_ids for many.
Both give the ids whose latest mapping names the person, never one mapped elsewhere since."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator import derived
from werkstroom.clickhouse.migrate import migrate
from werkstroom.clickhouse.params import insert_rows

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("by_person_up_to", [derived.BY_PERSON_UP_TO, 0])
def test_a_persons_ids_are_those_whose_latest_mapping_names_it(
    database: Client, monkeypatch: pytest.MonkeyPatch, by_person_up_to: int
) -> None:
    monkeypatch.setattr(derived, "BY_PERSON_UP_TO", by_person_up_to)
    migrate(database)
    columns = ["project_id", "distinct_id", "person_id", "version"]
    for rows in (  # one insert each, as the aggregator's batches write them
        [["p", "anon-x", "user-a", 1], ["p", "anon-y", "user-a", 1], ["q", "anon-z", "user-a", 1]],
        [["p", "anon-x", "user-b", 2]],  # identified again, as another user
    ):
        for table in ("person_distinct_ids", "person_distinct_ids_by_person"):
            insert_rows(database, table, rows, columns)

    by_person = derived._mapping(database, "p", "person_id", {"user-a", "user-b"})
    assert sorted(by_person) == [("anon-x", "user-b"), ("anon-y", "user-a")]
    assert derived._mapping(database, "p", "person_id", {"user-a"}) == [("anon-y", "user-a")]
    forward = derived._mapping(database, "p", "distinct_id", {"anon-x", "anon-y", "nobody"})
    assert sorted(forward) == [("anon-x", "user-b"), ("anon-y", "user-a")]
