"""What the benches ask of running processes, read from /proc (Linux) and a port."""

from __future__ import annotations

import socket
from pathlib import Path


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
