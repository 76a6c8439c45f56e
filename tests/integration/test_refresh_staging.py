"""The refresh stages its ids in temporary tables of its own session (derived.stage_members):
they must come back exactly as given, whatever characters an id holds, and stay private to
the session that staged them."""

from __future__ import annotations

import pytest

from services.aggregator.derived import STAGE, stage_members
from tests.conftest import Infra
from werkstroom.clickhouse import connect

pytestmark = pytest.mark.integration

AWKWARD = ["plain", "tab\there", "new\nline", "back\\slash", "cr\rhere", "quote'd", 'dq"', "ünï", "", "\\N"]


def test_staged_pairs_read_back_exactly_and_only_in_their_session(
    infra: Infra, names: dict[str, str]
) -> None:
    database = names["clickhouse_database"]
    connect(infra.clickhouse_url, database, create_database=True)
    client = connect(infra.clickhouse_url, database, session=True)
    pairs = [(member, f"person-{member}") for member in AWKWARD]
    stage_members(client, pairs)
    staged = client.query(f"SELECT member, person FROM {STAGE}").result_rows
    assert sorted(staged) == sorted(pairs)

    stage_members(client, pairs[:2])  # the next refresh replaces them
    assert sorted(client.query(f"SELECT member, person FROM {STAGE}").result_rows) == sorted(pairs[:2])

    other = connect(infra.clickhouse_url, database, session=True)
    with pytest.raises(Exception, match="refresh_members"):
        other.query(f"SELECT count() FROM {STAGE}")
