"""The column lists of werkstroom.clickhouse.tables name columns the migrated tables have."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse import tables
from werkstroom.clickhouse.migrate import migrate

pytestmark = pytest.mark.integration


def test_every_written_column_list_matches_its_table(database: Client) -> None:
    migrate(database)
    for table, columns in tables.WRITTEN.items():
        found = [
            name
            for (name,) in database.query(
                f"SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}'"
            ).result_rows
        ]
        assert found, table
        assert len(set(columns)) == len(columns), table
        assert set(columns) <= set(found), (table, sorted(set(columns) - set(found)))
