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
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

MAX_NAME = 100


class ProjectError(ValueError):
    """Bad project input; the message says which field and why."""


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    write_key: str
    created_at: datetime


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


def create_project(client: Client, name: str) -> NewProject:
    cleaned = validate_name(name)
    now = datetime.now(UTC)
    project = NewProject(
        project_id=f"p_{secrets.token_hex(8)}",
        name=cleaned,
        write_key=f"wk_{secrets.token_urlsafe(24)}",
        created_at=now,
        read_key=f"rk_{secrets.token_urlsafe(32)}",
    )
    client.insert(
        "projects",
        [[project.project_id, project.name, project.write_key, hash_key(project.read_key), now, now, 0]],
        column_names=[
            "project_id",
            "name",
            "write_key",
            "read_key_hash",
            "created_at",
            "updated_at",
            "deleted",
        ],
    )
    return project


def list_projects(client: Client) -> list[Project]:
    rows = client.query(
        "SELECT project_id, name, write_key, created_at FROM projects FINAL WHERE deleted = 0 "
        "ORDER BY created_at, project_id"
    ).result_rows
    return [Project(pid, name, wk, _utc(created)) for pid, name, wk, created in rows]


def write_keys(client: Client) -> dict[str, str]:
    """write key -> project id, for every live project (the ingest key cache)."""
    rows = client.query("SELECT write_key, project_id FROM projects FINAL WHERE deleted = 0").result_rows
    return {wk: pid for wk, pid in rows}


def verify_read_key(client: Client, project_id: str, read_key: str) -> bool:
    rows = client.query(
        "SELECT read_key_hash FROM projects FINAL WHERE project_id = {pid:String} AND deleted = 0",
        parameters={"pid": project_id},
    ).result_rows
    return bool(rows) and hmac.compare_digest(rows[0][0], hash_key(read_key))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
