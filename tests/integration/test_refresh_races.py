"""Two refreshes of one person at once (two aggregator workers, each applying a batch of the
person's ids from its own partitions): whatever order their statements interleave in, the
derived tables end as one refresh after both would leave them. Each refresh here runs on its
own client (its own session: its staged tables are its own), in a thread, and stops before a
chosen statement until the test lets it go on.

persons_recent is sorted by last_seen: a refresh that moves a person's row there writes the row
at its new place and a tombstone at each old place it knows of. A concurrent refresh's row at a
place neither knew of stayed live beside the newer one (two rows of one person in the users
list's candidates; the e2e two-worker run's persons_recent differed from a one-worker run's)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator import derived
from services.aggregator.processor import Dirty
from tests.conftest import Infra
from werkstroom.clickhouse import connect
from werkstroom.clickhouse.migrate import migrate

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
PERSON = "a"


class Paused:
    """A refresh on its own client, in a thread, held before its first statement that is
    `before` until `go()`."""

    def __init__(self, client: Client, before: str) -> None:
        self.reached, self._go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        command = client.command

        def held(sql: str, *args: Any, **kwargs: Any) -> Any:
            if sql == before and not self._go.is_set():
                self.reached.set()
                assert self._go.wait(60), "the test never let the refresh go on"
            return command(sql, *args, **kwargs)

        client.command = held  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, args=(client,), daemon=True)
        self._thread.start()
        assert self.reached.wait(60), "the refresh never reached the statement"

    def _run(self, client: Client) -> None:
        try:
            derived.refresh(client, Dirty({("p", T0.date())}, {("p", PERSON)}))
        except BaseException as exc:  # raised again in the test's thread (go)
            self.error = exc

    def go(self) -> None:
        self._go.set()
        self._thread.join(120)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def clients(infra: Infra, names: dict[str, str]) -> Iterator[Callable[[], Client]]:
    """Clients (sessions) on this test's own migrated database."""
    name = names["clickhouse_database"]
    first = connect(infra.clickhouse_url, name, create_database=True)
    migrate(first)
    try:
        yield lambda: connect(infra.clickhouse_url, name, session=True)
    finally:
        first.command(f"DROP DATABASE IF EXISTS `{name}`")


def session_until(client: Client, minutes: int, version: int) -> None:
    """Visitor a's one session, from T0 to T0 + `minutes`, as the session writer stores it."""
    client.command(
        "INSERT INTO sessions (project_id, anonymous_id, session_id, start_at, last_event_at, page_views, "
        "version, is_deleted) VALUES ('p', {a:String}, 's1', {start:DateTime64(3)}, {last:DateTime64(3)}, "
        "{views:UInt32}, {v:UInt64}, 0)",
        parameters={
            "a": PERSON,
            "start": T0,
            "last": T0 + timedelta(minutes=minutes),
            "views": minutes,
            "v": version,
        },
    )


def recent(client: Client) -> list[tuple[str, datetime]]:
    return [
        (p, seen.replace(tzinfo=UTC))
        for p, seen in client.query(
            "SELECT person_id, last_seen FROM persons_recent FINAL WHERE is_deleted = 0 ORDER BY ALL"
        ).result_rows
    ]


@pytest.mark.parametrize("newer_first", [True, False], ids=["newer-writes-first", "older-writes-first"])
def test_two_refreshes_of_a_person_at_once_leave_it_one_persons_recent_row(
    clients: Callable[[], Client], newer_first: bool
) -> None:
    """The older refresh (lower version) read the session until 10:02, the newer one until 10:03;
    both stop before writing the persons rows, so neither's read saw the other's rows. Then
    either the newer one writes everything first (the older one's row must not be written live
    after it), or the older one does (the newer one must tombstone it)."""
    client = clients()
    session_until(client, 1, 1)
    derived.refresh(client, Dirty({("p", T0.date())}, {("p", PERSON)}))
    assert recent(client) == [(PERSON, T0 + timedelta(minutes=1))]

    session_until(client, 2, 2)
    older = Paused(clients(), derived.PERSONS_INSERT)
    session_until(client, 3, 3)
    newer = Paused(clients(), derived.PERSONS_INSERT)
    for refresh in (newer, older) if newer_first else (older, newer):
        refresh.go()

    assert recent(client) == [(PERSON, T0 + timedelta(minutes=3))]
    assert client.query("SELECT last_seen FROM persons FINAL").result_rows == [
        (T0.replace(tzinfo=None) + timedelta(minutes=3),)
    ]
