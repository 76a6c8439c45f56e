"""Projects (sites) and their keys, stored in the ClickHouse `projects` table.

The write key is public: it ships in the tracking snippet and authorises sending events
only. The read key is a secret that opens a project's data: it is shown once, at creation,
and only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from werkstroom import timezones
from werkstroom.clickhouse.tables import PROJECTS_COLUMNS

MAX_NAME = 100


class ProjectError(ValueError):
    """Bad project input; the message says which field and why."""


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    write_key: str
    created_at: datetime
    timezone: str


@dataclass(frozen=True)
class NewProject(Project):
    read_key: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise ProjectError("name: must be a string")
    cleaned = name.strip()
    if not cleaned:
        raise ProjectError("name: must not be empty")
    if len(cleaned) > MAX_NAME:
        raise ProjectError(f"name: at most {MAX_NAME} characters")
    if any(ord(ch) < 32 for ch in cleaned):
        raise ProjectError("name: control characters are not allowed")
    return cleaned


def validate_timezone(timezone: object) -> str:
    """An IANA zone name, checked (werkstroom.timezones); ProjectError says why not."""
    try:
        return timezones.validate(timezone)
    except timezones.TimezoneError as exc:
        raise ProjectError(str(exc)) from None


def create_project(client: Client, name: str, timezone: str = timezones.DEFAULT) -> NewProject:
    cleaned = validate_name(name)
    zone = validate_timezone(timezone)
    now = datetime.now(UTC)
    project = NewProject(
        project_id=f"p_{secrets.token_hex(8)}",
        name=cleaned,
        write_key=f"wk_{secrets.token_urlsafe(24)}",
        created_at=now,
        timezone=zone,
        read_key=f"rk_{secrets.token_urlsafe(32)}",
    )
    row = [project.project_id, project.name, project.write_key, hash_key(project.read_key), zone, now, now, 0]
    client.insert("projects", [row], column_names=PROJECTS_COLUMNS)
    return project


def list_projects(client: Client) -> list[Project]:
    rows = client.query(
        "SELECT project_id, name, write_key, created_at, timezone FROM projects FINAL WHERE deleted = 0 "
        "ORDER BY created_at, project_id"
    ).result_rows
    return [Project(pid, name, wk, _utc(created), zone) for pid, name, wk, created, zone in rows]


def time_zones(client: Client) -> dict[str, str]:
    """project id -> its time zone, for every live project (the aggregator's days)."""
    rows = client.query("SELECT project_id, timezone FROM projects FINAL WHERE deleted = 0").result_rows
    return {pid: zone for pid, zone in rows}


def time_zone(client: Client, project_id: str) -> str:
    """A project's time zone (UTC for a project with no row)."""
    rows = client.query(
        "SELECT timezone FROM projects FINAL WHERE project_id = {pid:String} AND deleted = 0",
        parameters={"pid": project_id},
    ).result_rows
    return str(rows[0][0]) if rows else timezones.DEFAULT


def set_timezone(client: Client, project_id: str, timezone: str) -> Project | None:
    """Change a project's time zone (a new row, its other columns as they are); None: no such
    project. What depends on its days is recomputed by the aggregator in the new zone."""
    zone = validate_timezone(timezone)
    rows = client.query(
        f"SELECT {', '.join(PROJECTS_COLUMNS)} FROM projects FINAL "
        "WHERE project_id = {pid:String} AND deleted = 0",
        parameters={"pid": project_id},
    ).result_rows
    if not rows:
        return None
    row = dict(zip(PROJECTS_COLUMNS, rows[0], strict=True))
    now = datetime.now(UTC)
    row.update(timezone=zone, updated_at=max(now, _utc(row["updated_at"]) + timedelta(milliseconds=1)))
    client.insert("projects", [[row[c] for c in PROJECTS_COLUMNS]], column_names=PROJECTS_COLUMNS)
    return Project(project_id, row["name"], row["write_key"], _utc(row["created_at"]), zone)


def write_keys(client: Client) -> dict[str, str]:
    """write key -> project id, for every live project (the ingest key cache)."""
    rows = client.query("SELECT write_key, project_id FROM projects FINAL WHERE deleted = 0").result_rows
    return {wk: pid for wk, pid in rows}


#: The zone the aggregator last recomputed a project's derived rows in, {p:String} the project
#: (project_zones, migration 0025; partition -1 is the derived tables'; '' when never, i.e. UTC).
ZONE_COMPUTED = (
    "SELECT argMax(timezone, version) FROM project_zones "
    "WHERE project_id = {p:String} AND kafka_partition = -1"
)


def recomputing(zone: str, computed: str | None) -> str | None:
    """The project's `zone` while its days are being recomputed in it after a change of zone
    (ZONE_COMPUTED, `computed`, is another), None once the aggregator has done so."""
    return zone if (computed or timezones.DEFAULT) != zone else None


def read_key_scope(client: Client, project_id: str, read_key: str) -> tuple[str, str | None] | None:
    """The project's time zone and recomputing()'s zone, in one read, when `read_key` is its read
    key; None otherwise."""
    rows = client.query(
        f"SELECT read_key_hash, timezone, ({ZONE_COMPUTED}) FROM projects FINAL "
        "WHERE project_id = {p:String} AND deleted = 0",
        parameters={"p": project_id},
    ).result_rows
    if rows and hmac.compare_digest(rows[0][0], hash_key(read_key)):
        zone = str(rows[0][1])
        return zone, recomputing(zone, rows[0][2])
    return None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
