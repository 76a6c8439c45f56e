"""Numbered SQL migrations, applied in order and recorded in ClickHouse itself.

Rules (checked here and in tests):
- files are `NNNN_name.sql` in `migrations/`, numbered without gaps from 0001;
- a landed file is never edited: its SHA-256 is recorded and a changed file stops `migrate`;
- `max_migration.txt` names the newest file, so two branches that both add one conflict in git.

A file may hold several statements separated by `;` at the end of a line. The same files
build the schema in production, in `make run` and in every test.

On a ClickHouse server, whoever migrates holds a lock first (`migration_lock`), so two
`migrate` jobs, or a job and a role started with WERKSTROOM_MIGRATE_ON_START, never apply the
same file twice at once. The lock is a table: ClickHouse creates a table name once, so a
second CREATE fails with TABLE_ALREADY_EXISTS while the first holder has it. A holder that died
leaves it behind: `werkstroom migrate --break-lock` drops it (the error says who held it since
when). One server; a cluster would need ON CLUSTER and Keeper.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse import ClickHouseError
from werkstroom.logging import get_logger

log = get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
LEDGER = "schema_migrations"
LOCK = "schema_migrations_lock"
TABLE_ALREADY_EXISTS = 57


class MigrationLocked(ClickHouseError):
    """Another migration holds the lock (and did not let go within the wait)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """The statements of the file: whole-line comments dropped, split at `;` ending a line."""
        code = "\n".join(line for line in self.sql.splitlines() if not line.strip().startswith("--"))
        return [part.strip() for part in re.split(r";[ \t]*(?:\n|$)", code) if part.strip()]


def load_migrations() -> list[Migration]:
    folder = resources.files("werkstroom.clickhouse") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
        elif entry.name.endswith(".sql"):
            raise ClickHouseError(f"migration file {entry.name!r} is not named NNNN_name.sql")
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ClickHouseError(f"migrations must be numbered without gaps: expected {expected:04d}")
    newest = (folder / "max_migration.txt").read_text().strip()
    if found and newest != found[-1].name:
        raise ClickHouseError(
            f"max_migration.txt says {newest!r} but the newest migration is {found[-1].name!r}"
        )
    return found


def _ensure_ledger(client: Client) -> None:
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {LEDGER}
        (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
        ENGINE = MergeTree ORDER BY version"""  # ORDER BY version: the ledger is read whole, in order
    )


def applied(client: Client) -> dict[int, tuple[str, str]]:
    _ensure_ledger(client)
    rows = client.query(f"SELECT version, name, checksum FROM {LEDGER} ORDER BY version").result_rows
    return {int(v): (n, c) for v, n, c in rows}


def pending(client: Client) -> list[Migration]:
    done = applied(client)
    todo = []
    for migration in load_migrations():
        if migration.version in done:
            name, checksum = done[migration.version]
            if checksum != migration.checksum:
                raise ClickHouseError(
                    f"migration {migration.name} was edited after it was applied (recorded as {name}); "
                    "landed migrations are never edited: add a new one instead"
                )
        else:
            todo.append(migration)
    return todo


def migrate(client: Client, *, dry_run: bool = False, through: int | None = None) -> list[str]:
    """Apply every pending migration in order (with `through`, those numbered up to it);
    returns the names applied (or that would be)."""
    todo = [m for m in pending(client) if through is None or m.version <= through]
    names = []
    for migration in todo:
        names.append(migration.name)
        if dry_run:
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            LEDGER,
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        log.info("migration_applied", migration=migration.name)
    return names


def is_current(client: Client) -> bool:
    """True when every migration shipped with this code is applied (the /ready check)."""
    return not pending(client)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_holder(client: Client) -> tuple[str, str] | None:
    """(holder, since) of the migration lock, or None when nobody holds it."""
    exists = client.query("EXISTS TABLE {t:Identifier}", parameters={"t": LOCK}).first_row[0]
    if not exists:
        return None
    rows = client.query(f"SELECT holder, toString(taken_at) FROM {LOCK} LIMIT 1").result_rows
    return (str(rows[0][0]), str(rows[0][1]) + " UTC") if rows else ("(being taken)", "just now")


def break_lock(client: Client) -> tuple[str, str] | None:
    """Drop a lock left by a migration that died; returns who held it."""
    held = lock_holder(client)
    client.command(f"DROP TABLE IF EXISTS {LOCK} SYNC")
    return held


@contextlib.contextmanager
def migration_lock(client: Client, *, wait: float = 0.0, poll: float = 1.0) -> Iterator[None]:
    """Hold the migration lock for the block; wait up to `wait` seconds for another holder,
    then raise MigrationLocked naming it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            client.command(
                # ORDER BY tuple(): one row, never looked up by key.
                f"CREATE TABLE {LOCK} (holder String, taken_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                "ENGINE = MergeTree ORDER BY tuple()"
            )
            break
        except Exception as exc:
            if getattr(exc, "code", None) != TABLE_ALREADY_EXISTS and "TABLE_ALREADY_EXISTS" not in str(exc):
                raise
        if time.monotonic() >= deadline:
            holder, since = lock_holder(client) or ("(gone)", "a moment ago")
            raise MigrationLocked(
                f"another migration holds the lock ({holder}, since {since}); if none is running "
                "(it died), run `werkstroom migrate --break-lock`"
            ) from None
        time.sleep(poll)
    try:
        client.insert(LOCK, [[_holder()]], column_names=["holder"], settings={"async_insert": 0})
        yield
    finally:
        client.command(f"DROP TABLE IF EXISTS {LOCK} SYNC")


def wait_until_current(client: Client, *, timeout: float, poll: float = 2.0) -> None:
    """Wait for a migration job to apply every migration this code ships (the scaled
    deployment's roles never migrate by themselves); ClickHouseError after `timeout`."""
    deadline = time.monotonic() + timeout
    logged = False
    while todo := pending(client):
        if time.monotonic() >= deadline:
            raise ClickHouseError(
                f"{len(todo)} migration(s) are not applied ({todo[0].name} first) after {timeout:.0f} s: "
                "run `werkstroom migrate` (the compose file's `migrate` job), or set "
                "WERKSTROOM_MIGRATE_ON_START=true to let this process apply them"
            )
        if not logged:
            log.info("waiting_for_migrations", pending=[m.name for m in todo], timeout_s=timeout)
            logged = True
        time.sleep(poll)
