"""Numbered SQL migrations, applied in order and recorded in ClickHouse itself.

Rules (checked here and in tests):
- files are `NNNN_name.sql` in `migrations/`, numbered without gaps from 0001;
- a landed file is never edited: its SHA-256 is recorded and a changed file stops `migrate`;
- `max_migration.txt` names the newest file, so two branches that both add one conflict in git.

A file may hold several statements separated by `;` at the end of a line. The same files
build the schema in production, in `make run` and in every test.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

from werkstroom.clickhouse import ClickHouseError
from werkstroom.logging import get_logger

log = get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
LEDGER = "schema_migrations"


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
