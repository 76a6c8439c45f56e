"""Per-project token buckets: `rate` events/s sustained, `burst` at once."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] | None = None) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self._clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, amount: int) -> float:
        """Take `amount` tokens; returns 0.0 when allowed, else the seconds to wait before retrying.

        A request larger than the whole burst is allowed when the bucket is full, so that a
        big batch is never refused forever; it leaves the bucket in debt instead.
        """
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= amount or tokens >= self.burst:
            self._buckets[key] = (tokens - amount, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (amount - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
