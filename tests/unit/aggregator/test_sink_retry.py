"""What `EventsSink.retry` (services/aggregator/retry.py) does with each kind of failure (services/aggregator/errors.py): a
transient one is retried with backoff until it passes, a data error in our own statements and a
programming error stop the sink after one attempt, logged at error level, and a stop abandons
the backoff at once. Also: a client used before run() set it up is an explicit error, not an
`assert` that `python -O` drops. No ClickHouse here: the attempt is a function of ours."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from services.aggregator import retry as retry_module
from services.aggregator.errors import Failure, NotStarted, classify, started
from services.aggregator.sink import EventsSink, SinkStopped, _Abandoned
from tests.unit.aggregator.test_sink_errors import CONSTRAINT, chdb_error, refused_connection
from werkstroom.settings import Settings


class Log:
    """Records what the sink logs, by level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def at(self, level: str) -> list[str]:
        return [event for lvl, event, _fields in self.lines if lvl == level]


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    recorder = Log()
    monkeypatch.setattr(retry_module, "log", recorder)
    return recorder


def new_sink(tmp_path: Any) -> EventsSink:
    return EventsSink(Settings(data_dir=tmp_path), "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]


class Attempt:
    """Raises each of `failures` in turn, then returns "written"."""

    def __init__(self, *failures: BaseException, on_call: Any = None) -> None:
        self.failures, self.calls, self.on_call = list(failures), 0, on_call

    async def __call__(self) -> str:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        if self.failures:
            raise self.failures.pop(0)
        return "written"


def test_a_transient_failure_is_retried_with_backoff_until_it_passes(tmp_path: Any, log: Log) -> None:
    attempt = Attempt(refused_connection(), refused_connection())
    started_at = time.monotonic()
    assert asyncio.run(new_sink(tmp_path).retry("sink_write_failed", attempt)) == "written"
    assert attempt.calls == 3
    assert time.monotonic() - started_at >= 0.3  # backed off 0.1 s, then 0.2 s
    assert log.at("warning") == ["sink_write_failed", "sink_write_failed"]
    assert [fields["retry_in"] for _lvl, _event, fields in log.lines] == [0.1, 0.2]
    assert log.at("error") == []


def test_a_programming_error_stops_the_sink_after_one_attempt_and_is_logged(tmp_path: Any, log: Log) -> None:
    error = TypeError("unsupported operand type(s) for +: 'int' and 'str'")
    attempt = Attempt(error)
    with pytest.raises(
        SinkStopped, match=r"sink_load_failed: TypeError: unsupported.*a programming error"
    ) as raised:
        asyncio.run(new_sink(tmp_path).retry("sink_load_failed", attempt))
    assert raised.value.__cause__ is error
    assert attempt.calls == 1
    assert log.at("error") == ["sink_load_failed"] and log.at("warning") == []
    assert log.lines[0][2]["kind"] == Failure.PROGRAMMING.value


def test_a_data_error_in_our_own_statements_stops_the_sink_too(tmp_path: Any, log: Log) -> None:
    """Rows ClickHouse refuses in a batch are dead-lettered inside the write's attempt; one that
    reaches the retry comes from rows we computed from our own tables."""
    attempt = Attempt(chdb_error(CONSTRAINT))
    with pytest.raises(SinkStopped, match=r"derived_refresh_failed.*VIOLATED_CONSTRAINT.*our own rows"):
        asyncio.run(new_sink(tmp_path).retry("derived_refresh_failed", attempt))
    assert attempt.calls == 1
    assert log.at("error") == ["derived_refresh_failed"]


def test_a_stop_abandons_the_backoff_at_once(tmp_path: Any, log: Log) -> None:
    s = new_sink(tmp_path)
    attempt = Attempt(*[refused_connection()] * 5, on_call=s.stop)
    started_at = time.monotonic()
    with pytest.raises(_Abandoned) as raised:
        asyncio.run(s.retry("sink_write_failed", attempt))
    assert isinstance(raised.value.__cause__, OperationalError)
    assert attempt.calls == 1
    assert time.monotonic() - started_at < 0.1  # the 0.1 s backoff was not waited out
    assert log.at("error") == []


def test_a_stop_during_a_long_backoff_ends_it(tmp_path: Any, log: Log) -> None:
    """Past the first attempts the backoff is seconds long; a stop meanwhile ends it."""
    s = new_sink(tmp_path)
    attempt = Attempt(*[refused_connection()] * 100)

    async def run() -> None:
        asyncio.get_running_loop().call_later(0.5, s.stop)
        await s.retry("sink_write_failed", attempt)

    started_at = time.monotonic()
    with pytest.raises(_Abandoned):
        asyncio.run(run())
    assert time.monotonic() - started_at < 1.5
    assert 2 <= attempt.calls <= 4  # 0.1 + 0.2 s of backoff, then the stop in the 0.4 s one


@pytest.mark.parametrize("error", [SinkStopped("too many refused"), _Abandoned("stop while splitting")])
def test_a_stop_from_inside_the_attempt_passes_through_untouched(
    tmp_path: Any, log: Log, error: Exception
) -> None:
    attempt = Attempt(error)
    with pytest.raises(type(error)) as raised:
        asyncio.run(new_sink(tmp_path).retry("sink_write_failed", attempt))
    assert raised.value is error
    assert attempt.calls == 1 and log.lines == []


def test_a_client_used_before_run_is_an_explicit_programming_error(tmp_path: Any) -> None:
    with pytest.raises(NotStarted, match="the events' client used before run"):
        asyncio.run(new_sink(tmp_path).writer.insert_raw([b"{}"]))
    with pytest.raises(NotStarted):
        new_sink(tmp_path)._waiting()
    assert started(0, "zero is set") == 0  # only None is "not set up"
    assert classify(NotStarted("x")) is Failure.PROGRAMMING  # never retried


def test_a_transient_failure_is_transient_and_a_type_error_is_not() -> None:
    """The classification the tests above rely on (the full table: test_sink_errors.py)."""
    assert classify(refused_connection()) is Failure.TRANSIENT
    assert classify(chdb_error(CONSTRAINT)) is Failure.DATA
    assert classify(TypeError("x")) is Failure.PROGRAMMING
