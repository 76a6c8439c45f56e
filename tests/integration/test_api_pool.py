"""The API's ClickHouse clients (services.api.deps.ClickHousePool) read with READ_SETTINGS, on
the real engine; the other clients of the same factory (the aggregator's, in `serve --target
all`) keep the engine's defaults: an `IN` over the aggregator's staged ids must keep using the
primary key whatever its size."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from services.api.deps import READ_SETTINGS, ClickHousePool
from tests.conftest import Infra
from werkstroom.clickhouse import connect

pytestmark = pytest.mark.integration


def settings_of(client: Client) -> dict[str, int]:
    return {
        name: int(client.query("SELECT getSetting({n:String})", parameters={"n": name}).first_row[0])
        for name in READ_SETTINGS
    }


async def test_the_pools_clients_read_with_the_apis_settings_and_no_other_client_does(
    infra: Infra, names: dict[str, str], database: Client
) -> None:
    def factory() -> Client:
        return connect(infra.clickhouse_url, names["clickhouse_database"])

    pool = ClickHousePool(factory, size=2)
    try:
        assert await pool.run(settings_of) == READ_SETTINGS
        async with pool.dedicated() as exporting:
            assert settings_of(exporting) == READ_SETTINGS
        other = factory()
        try:
            assert settings_of(other) != READ_SETTINGS
            assert settings_of(database) != READ_SETTINGS
        finally:
            other.close()
    finally:
        pool.close()


async def test_a_setting_the_server_does_not_know_is_left_out_and_the_pool_still_reads(
    infra: Infra, names: dict[str, str], database: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server older than a READ_SETTINGS entry would refuse every query that carries it."""
    from services.api import deps

    monkeypatch.setattr(deps, "READ_SETTINGS", {**READ_SETTINGS, "werkstroom_no_such_setting": 1})
    pool = ClickHousePool(lambda: connect(infra.clickhouse_url, names["clickhouse_database"]), size=1)
    try:
        assert await pool.run(lambda c: c.query("SELECT 1").result_rows) == [(1,)]
        assert await pool.run(settings_of) == READ_SETTINGS  # the known ones still set
    finally:
        pool.close()
