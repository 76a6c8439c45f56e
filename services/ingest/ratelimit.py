"""Token buckets: `rate` events/s sustained, `burst` at once; one per project, and one per
(project, client address) that caps a client at a share of its project's budget.

The client address is never kept as such: buckets are keyed by a hash of (project, network),
and nothing here logs. Anyone may hold a site's (public) write key, so the per-client buckets
are bounded: a stranger with many addresses cannot grow them past `max_keys`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

#: Per-client buckets one ingest process keeps at most. A bucket refills completely within
#: burst/rate seconds (4 s at the defaults) and is then dropped, so only clients active in
#: the last few seconds count; past the cap the least recently used go first, so memory stays
#: bounded.
MAX_CLIENTS = 20_000


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] | None = None,
        max_keys: int | None = None,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self.max_keys = max_keys
        self._clock = clock or time.monotonic
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, amount: int) -> float:
        """Take `amount` tokens; returns 0.0 when allowed, else the seconds to wait before retrying.

        A request larger than the whole burst is allowed when the bucket is full, so that a
        big batch is never refused forever; it leaves the bucket in debt instead.
        """
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        # Popped and put back: the dict's order is then least recently used first (for pruning).
        state = self._buckets.pop(key, None)
        if state is None:
            if self.max_keys is not None and len(self._buckets) >= self.max_keys:
                self._prune(now)
            tokens = self.burst
        else:
            tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
        if tokens >= amount or tokens >= self.burst:
            self._buckets[key] = (tokens - amount, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (amount - tokens) / self.rate

    def refund(self, key: Hashable, amount: int) -> None:
        """Give back what `take` took, when a later check refused the request after all."""
        state = self._buckets.get(key)
        if state is not None:
            self._buckets[key] = (min(self.burst, state[0] + amount), state[1])

    def _prune(self, now: float) -> None:
        """Drop the buckets that have refilled (a full bucket is the same as none); if that is
        not enough, the least recently used quarter (they get a full bucket if they come back:
        the project's own limit still holds). Amortised O(1) per new key."""
        full = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        assert self.max_keys is not None
        excess = len(self._buckets) - self.max_keys * 3 // 4
        if excess > 0:
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
