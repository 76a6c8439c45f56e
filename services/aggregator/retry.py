"""What a stage does when ClickHouse fails it (services.aggregator.errors classifies the error):
retry what is transient with backoff, until it passes or the sink stops; stop the sink on
anything else. Shared by every stage that talks to ClickHouse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.aggregator.errors import Failure, classify, describe
from werkstroom import metrics
from werkstroom.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class SinkStopped(RuntimeError):
    """The sink stopped on purpose (a programming error, too many bad messages or refused rows
    in a row); the message says why, and the cause is chained."""


class Abandoned(Exception):
    """A stop came while a write was failing: the batch stays unwritten and uncommitted."""


class Retry:
    """The retry policy, tied to the sink's stop signal: a stop ends any backoff at once."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping

    async def __call__(self, failure: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, backing off up to 5 s, while it fails transiently;
        nothing new is fetched meanwhile, so a ClickHouse outage holds the consumer back. A stop
        ends the backoff at once (`Abandoned`: the batch is left uncommitted). Any other failure
        stops the sink: rows ClickHouse refuses are dealt with inside the write's attempt, so a
        data error that reaches here comes from our own statements (loading visitors, the
        derived tables), a programming error too."""
        backoff = 0.1
        while True:
            try:
                return await attempt()
            except (SinkStopped, Abandoned):
                raise
            except Exception as exc:
                kind = classify(exc)
                if kind is not Failure.TRANSIENT:
                    # A data error here comes from rows or parameters we computed from our own
                    # tables (the derived tables, loading visitors): ours to fix as well.
                    what = (
                        "a programming error"
                        if kind is Failure.PROGRAMMING
                        else "a data error in our own rows"
                    )
                    log.error(failure, error=describe(exc), kind=kind.value)
                    raise SinkStopped(
                        f"{failure}: {describe(exc, 500)}; {what}, not retried: stopping. Nothing that "
                        "depends on it is committed: it is read again at the next start."
                    ) from exc
                metrics.SINK_INSERT_FAILURES.inc()
                log.warning(failure, error=describe(exc), kind=kind.value, retry_in=backoff)
                if await self.stopped_within(backoff):
                    raise Abandoned(failure) from exc
                backoff = min(backoff * 2, 5.0)

    async def stopped_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the sink stops meanwhile; whether it stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()


def best_effort(failure: str, exc: Exception) -> None:
    """A best-effort write failed (status, online history): a transient failure is only logged,
    the next one comes in seconds; anything else is a statement or rows of ours that ClickHouse
    will refuse every time, a programming error."""
    kind = classify(exc)
    if kind is Failure.TRANSIENT:
        log.warning(failure, error=describe(exc), kind=kind.value)
        return
    raise SinkStopped(f"{failure}: {describe(exc, 500)} ({kind.value} error, not retried); stopping") from exc


def raise_worst(*results: object) -> None:
    """Raise the gravest of the failures among `results` (asyncio.gather's, with exceptions):
    a stop or a programming error before a stop request, before a transient failure."""
    errors = [r for r in results if isinstance(r, BaseException)]
    if not errors:
        return

    def gravity(error: BaseException) -> int:
        if isinstance(error, SinkStopped) or not isinstance(error, Exception):
            return 0
        if isinstance(error, Abandoned):
            return 2
        return 1 if classify(error) is not Failure.TRANSIENT else 3

    raise min(errors, key=gravity)
