"""What the benches ask of running processes, read from /proc (Linux) and a port, and of a
`werkstroom serve --target all` they start: its environment and its JSON log lines."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def serve_env(data: Path, ingest_port: int, api_port: int, drain_timeout: float) -> dict[str, str]:
    """The environment of a serve on `data` alone: embedded broker and ClickHouse, its own
    ports, no rate limit, JSON logs."""
    env = {
        **os.environ,
        "WERKSTROOM_DATA_DIR": str(data),
        "WERKSTROOM_CLICKHOUSE_URL": f"chdb://{(data / 'clickhouse').resolve()}",
        "WERKSTROOM_INGEST_PORT": str(ingest_port),
        "WERKSTROOM_API_PORT": str(api_port),
        "WERKSTROOM_DRAIN_TIMEOUT_SECONDS": str(drain_timeout),
        "WERKSTROOM_RATE_LIMIT_EPS": "0",
        "WERKSTROOM_LOG_FORMAT": "json",
    }
    env.pop("WERKSTROOM_KAFKA_BOOTSTRAP", None)
    return env


def logged(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `event` in a serve's log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if f'"{event}"' in line and "{" in line:
            try:
                found.append(json.loads(line[line.index("{") :]))
            except json.JSONDecodeError:
                continue
    return found


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (the embedded broker, for serve): from the
    kernel's list for its main thread, else by the parent id of every process."""
    try:
        listed = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        listed = []
    if listed:
        return listed
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running: /proc has it and it is not a zombie (dead, waiting for its new parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) used so far by the process `pid` alone; OSError
    when it is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by `pid` and its live descendants (granian's worker process, a
    supervisor's workers): a figure other load on the machine moves far less than a rate does."""
    total = 0.0
    for proc in [pid, *_descendants(pid)]:
        try:
            total += process_cpu_seconds(proc)
        except OSError:
            continue
    return total


def _descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *_descendants(child)]
    return found
