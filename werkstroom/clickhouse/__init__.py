"""ClickHouse access: one client factory for `chdb://` (embedded engine) and `http(s)://` URLs.

The embedded engine (chdb) lets only one process open a data directory. We take an advisory
lock file beside it so that a second process gets a clear `ClickHouseLockedError` naming the
process that holds it, instead of the engine's bare "Error initializing EmbeddedServer".
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import parse_qs, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

__all__ = ["ClickHouseError", "ClickHouseLockedError", "ClientFactory", "connect", "is_embedded"]


class ClientFactory(Protocol):
    """Opens a new client on the configured ClickHouse (`session`: see `connect`)."""

    def __call__(self, *, session: bool = False) -> Client: ...


class ClickHouseError(RuntimeError):
    """ClickHouse could not be reached or used; the message says what to do."""


class ClickHouseLockedError(ClickHouseError):
    """The embedded ClickHouse data directory is already open in another process."""


_locks: dict[str, IO[str]] = {}
_locks_guard = threading.Lock()


def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")


def _chdb_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc and parsed.netloc != "memory":
        raise ClickHouseError(f"chdb URL must be chdb:///absolute/path or chdb://memory, got {url!r}")
    return parsed.path or ":memory:"


def _chdb_options(url: str) -> dict[str, str]:
    """The engine's options a chdb URL names in its query (`?uncompressed_cache_size=N`: the
    server settings of the engine, Settings.effective_clickhouse_url). The engine takes them from
    the first client a process opens on its path; later ones share that engine."""
    return {key: values[-1] for key, values in parse_qs(urlparse(url).query).items()}


def _require_chdb() -> None:
    """chdb is the extra `werkstroom[embedded]`; without it, say how to get it (clickhouse-connect
    would suggest its own extra)."""
    from werkstroom.embedded import missing_embedded

    try:
        import chdb  # noqa: F401  (clickhouse-connect imports it next)
    except ModuleNotFoundError as exc:
        if exc.name != "chdb":
            raise
        raise ClickHouseError(
            missing_embedded("chdb (the in-process ClickHouse)", "set WERKSTROOM_CLICKHOUSE_URL to a server")
        ) from None


def _lock_embedded(path: str) -> None:
    """Hold an exclusive lock on <path>.lock for the life of this process."""
    with _locks_guard:
        if path in _locks:
            return
        Path(path).mkdir(parents=True, exist_ok=True)
        lock_path = f"{path.rstrip('/')}.lock"
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ClickHouseLockedError(
                f"The embedded ClickHouse at {path} is already open by {holder}. Only one process may "
                "open it: run every component in one process (`werkstroom serve --target all`), talk to "
                "that process over HTTP, or point WERKSTROOM_CLICKHOUSE_URL at a ClickHouse server."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        _locks[path] = handle


#: Settings of every client. Event times span 2000 to now (the contract's time policy), so one
#: batch may touch hundreds of monthly partitions; ClickHouse's default refuses an insert into
#: more than 100, which would make a stranger's batch of old dates stop the aggregator.
CLIENT_SETTINGS = {"max_partitions_per_insert_block": 0}


def connect(
    url: str, database: str | None = None, *, create_database: bool = False, session: bool = False
) -> Client:
    """A clickhouse-connect client for `url`, using `database` by default.

    With `create_database`, the database is created first when missing (migrations do this).
    With `session`, a server client keeps one ClickHouse session (for temporary tables); it
    must then run one statement at a time. An embedded client is always its own session.
    """
    try:
        if is_embedded(url):
            path = _chdb_path(url)
            _require_chdb()
            if path != ":memory:":
                _lock_embedded(path)
            base = clickhouse_connect.get_client(
                dsn=f"chdb://{path}" if path != ":memory:" else url,
                settings=CLIENT_SETTINGS,
                chdb_options=_chdb_options(url) or None,
            )
        else:
            base = clickhouse_connect.get_client(
                dsn=url,
                connect_timeout=5,
                send_receive_timeout=60,
                autogenerate_session_id=session,
                settings=CLIENT_SETTINGS,
            )
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError(f"cannot open ClickHouse at {_safe(url)}: {exc}") from exc
    if database is None:
        return base
    if create_database:
        base.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    if is_embedded(url):
        base.database = database
        return base
    base.close()  # its pool is not the database's: one client per connect(), not two
    return clickhouse_connect.get_client(
        dsn=url,
        database=database,
        connect_timeout=5,
        send_receive_timeout=60,
        autogenerate_session_id=session,
        settings=CLIENT_SETTINGS,
    )


def _safe(url: str) -> str:
    from werkstroom.settings import mask_url

    return mask_url(url)
