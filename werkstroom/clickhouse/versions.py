"""The clock of the versions Werkstroom writes to its ReplacingMergeTree tables.

A recomputation or a record takes its version before it reads, so that one computed from
newer data wins. Strictly increasing within a process: two writes in the same millisecond
(a funnel defined and deleted at once, two recomputations) still order.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_last = 0


def next_version() -> int:
    """Milliseconds now (Unix epoch), strictly increasing within this process."""
    global _last
    with _lock:
        _last = max(_last + 1, time.time_ns() // 1_000_000)
        return _last
