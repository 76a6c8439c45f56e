"""Migrations run by one job at a time, and the roles of the scaled deployment wait for it
(issue 22): the lock excludes a second migrator and names the first, lets go on error, can be
broken when its holder died; a role that must not migrate waits until the job is done."""

from __future__ import annotations

import threading
import time

import pytest
from clickhouse_connect.driver.client import Client

from tests.conftest import Infra
from werkstroom.clickhouse import ClickHouseError
from werkstroom.clickhouse.migrate import (
    MigrationLocked,
    break_lock,
    load_migrations,
    lock_holder,
    migrate,
    migration_lock,
    pending,
    wait_until_current,
)
from werkstroom.serve import prepare_clickhouse
from werkstroom.settings import Settings

pytestmark = pytest.mark.integration


def test_a_second_migrator_is_refused_with_the_holders_name_until_the_first_lets_go(database: Client) -> None:
    assert lock_holder(database) is None
    with migration_lock(database):
        holder = lock_holder(database)
        assert holder is not None and ":" in holder[0] and holder[1].endswith("UTC")
        with pytest.raises(MigrationLocked, match="--break-lock") as refused:
            with migration_lock(database, wait=0.3, poll=0.1):
                pytest.fail("two holders at once")
        assert holder[0] in str(refused.value)
    assert lock_holder(database) is None
    with migration_lock(database):  # free again
        pass


def test_the_lock_is_let_go_when_a_migration_fails(database: Client) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with migration_lock(database):
            raise RuntimeError("boom")
    assert lock_holder(database) is None


def test_a_waiting_migrator_gets_the_lock_once_the_holder_lets_go(database: Client) -> None:
    taken = threading.Event()

    def hold() -> None:
        with migration_lock(database):
            taken.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(30)
    started = time.monotonic()
    with migration_lock(database, wait=60, poll=0.1):
        waited = time.monotonic() - started
    holder.join()
    assert waited > 0.3  # it did wait for the holder


def test_a_lock_left_by_a_dead_migrator_is_broken_on_request(database: Client) -> None:
    lock = migration_lock(database)
    lock.__enter__()  # and never __exit__: the process "died" holding it
    with pytest.raises(MigrationLocked):
        with migration_lock(database):
            pass
    held = break_lock(database)
    assert held is not None
    assert lock_holder(database) is None
    with migration_lock(database):
        pass


def test_a_role_that_must_not_migrate_waits_for_the_job_and_times_out_with_what_to_do(
    database: Client,
) -> None:
    with pytest.raises(ClickHouseError, match="werkstroom migrate") as late:
        wait_until_current(database, timeout=0.5, poll=0.1)
    assert load_migrations()[0].name in str(late.value)
    assert pending(database)  # it applied nothing itself

    def job() -> None:
        time.sleep(0.5)
        with migration_lock(database):
            migrate(database)

    runner = threading.Thread(target=job)
    runner.start()
    wait_until_current(database, timeout=120, poll=0.2)
    runner.join()
    assert pending(database) == []


def test_serve_waits_for_the_job_when_told_not_to_migrate(
    infra: Infra, names: dict[str, str], database: Client
) -> None:
    settings = Settings(
        clickhouse_url=infra.clickhouse_url,
        clickhouse_database=names["clickhouse_database"],
        migrate_on_start=False,
        migrations_wait_seconds=0.5,
    )
    with pytest.raises(ClickHouseError, match="MIGRATE_ON_START"):
        prepare_clickhouse(settings)
    assert pending(database)  # the role applied nothing
    migrate(database)
    prepare_clickhouse(settings)  # current now: it goes on at once
    assert prepare_clickhouse(settings.model_copy(update={"migrate_on_start": True})) is not None
