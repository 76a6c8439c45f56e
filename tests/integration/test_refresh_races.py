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
from services.aggregator import plans as plans_module
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


def _database(url: str, name: str) -> Iterator[Callable[[], Client]]:
    first = connect(url, name, create_database=True)
    migrate(first)
    try:
        yield lambda: connect(url, name, session=True)
    finally:
        first.command(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def clients(infra: Infra, names: dict[str, str]) -> Iterator[Callable[[], Client]]:
    """Clients (sessions) on this test's own migrated database."""
    yield from _database(infra.clickhouse_url, names["clickhouse_database"])


@pytest.fixture
def reference(infra: Infra, names: dict[str, str]) -> Iterator[Callable[[], Client]]:
    """Clients on a second database of this test's, where the same refreshes run one after the
    other."""
    yield from _database(infra.clickhouse_url, f"{names['clickhouse_database']}_ref")


#: The tables a refresh writes, compared between a raced database and the reference.
DERIVED = (
    *("persons", "persons_recent", "visitor_persons", "person_activity", "persons_first_day"),
    *("person_activity_by", "person_first_by", "plan_sessions", "plan_pages", "sessions_daily"),
    *("breakdown_sessions", "breakdown_pages", "daily_stats"),
)


def derived_rows(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """Each table of DERIVED's live rows, without the columns a run's clock sets."""
    out = {}
    for table in DERIVED:
        columns = {
            c
            for (c,) in client.query(
                f"SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}'"
            ).result_rows
        }
        skipped = [c for c in ("version", "updated_at", "refreshed_at") if c in columns]
        select = f"SELECT * EXCEPT ({', '.join(skipped)})" if skipped else "SELECT *"
        live = " WHERE is_deleted = 0" if "is_deleted" in columns else ""
        out[table] = client.query(f"{select} FROM {table} FINAL{live} ORDER BY ALL").result_rows
    return out


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
    clients: Callable[[], Client], reference: Callable[[], Client], newer_first: bool
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
    sequential = reference()  # every table a refresh writes, as the same refreshes in turn leave it
    for minutes in (1, 2, 3):
        session_until(sequential, minutes, minutes)
        derived.refresh(sequential, Dirty({("p", T0.date())}, {("p", PERSON)}))
    assert derived_rows(client) == derived_rows(sequential)


def page_view(client: Client) -> None:
    """Visitor a's page view at T0, as the event writer stores it (its session's entry)."""
    client.command(
        "INSERT INTO visitor_events (project_id, distinct_id, timestamp, event_id, event, path) "
        "VALUES ('p', {a:String}, {t:DateTime64(3)}, 'e1', '$page', '/pricing')",
        parameters={"a": PERSON, "t": T0},
    )


def plan_trait(client: Client, plan: str, version: int) -> None:
    """Visitor a's `plan` trait, as an identify stores it."""
    client.command(
        "INSERT INTO person_traits (project_id, distinct_id, key, value, version) "
        "VALUES ('p', {a:String}, 'plan', {v:String}, {n:UInt64})",
        parameters={"a": PERSON, "v": f'"{plan}"', "n": version},
    )


def plans(client: Client) -> dict[str, list[str]]:
    """The person's plan in each table that holds one, live rows."""
    return {
        table: [p for (p,) in client.query(sql).result_rows]
        for table, sql in {
            "persons": "SELECT plan FROM persons FINAL WHERE is_deleted = 0",
            "persons_recent": "SELECT plan FROM persons_recent FINAL WHERE is_deleted = 0",
            "visitor_persons": "SELECT plan FROM visitor_persons FINAL WHERE is_deleted = 0",
            "person_first_by": "SELECT filter_value FROM person_first_by FINAL "
            "WHERE filter = 'plan' AND is_deleted = 0 ORDER BY ALL",
            "plan_sessions": "SELECT plan FROM plan_sessions FINAL WHERE is_deleted = 0 ORDER BY ALL",
            "plan_pages": "SELECT plan FROM plan_pages FINAL WHERE is_deleted = 0 ORDER BY ALL",
        }.items()
    }


@pytest.mark.parametrize("order", ["newer-writes-first", "older-writes-first", "older-writes-its-plans-last"])
def test_two_refreshes_of_a_person_at_once_leave_it_under_one_plan(
    clients: Callable[[], Client], reference: Callable[[], Client], order: str
) -> None:
    """The older refresh read the person's plan as trial, the newer one as premium (an identify
    between their reads). Every table that keys a row by the plan must end with the person under
    premium alone, whichever writes first: both held before their persons rows and let go in
    either order, or the older one held after its persons rows, before its plan rows, while the
    newer one runs whole (it must tombstone rows under trial that are not written yet)."""
    client = clients()
    session_until(client, 1, 1)
    page_view(client)
    derived.refresh(client, Dirty({("p", T0.date())}, {("p", PERSON)}))
    assert plans(client)["plan_sessions"] == [""]

    plan_trait(client, "trial", 2)
    if order == "older-writes-its-plans-last":
        staged = (derived.MEMBER_IDS, derived.MEMBERS, derived.FRESH, derived.BEFORE, derived.SUPERSEDED)
        older = Paused(clients(), plans_module.write(*staged, "plan_sessions"))
        plan_trait(client, "premium", 3)
        derived.refresh(clients(), Dirty({("p", T0.date())}, {("p", PERSON)}))
        older.go()
    else:
        older = Paused(clients(), derived.PERSONS_INSERT)
        plan_trait(client, "premium", 3)
        newer = Paused(clients(), derived.PERSONS_INSERT)
        for refresh in (newer, older) if order == "newer-writes-first" else (older, newer):
            refresh.go()

    assert plans(client) == {
        "persons": ["premium"],
        "persons_recent": ["premium"],
        "visitor_persons": ["premium"],
        "person_first_by": ["premium"],
        "plan_sessions": ["premium"],
        "plan_pages": ["premium"],
    }
    # and every table a refresh writes as the same refreshes leave it one after the other
    sequential = reference()
    session_until(sequential, 1, 1)
    page_view(sequential)
    for plan, version in (("", 0), ("trial", 2), ("premium", 3)):
        if plan:
            plan_trait(sequential, plan, version)
        derived.refresh(sequential, Dirty({("p", T0.date())}, {("p", PERSON)}))
    assert derived_rows(client) == derived_rows(sequential)
