"""Which failures the sink retries, dead-letters or stops on (services/aggregator/errors.py),
on exceptions built the way clickhouse-connect and aiokafka build them; and how the sink finds
the rows ClickHouse refuses in a batch (no ClickHouse here: the insert is a function of ours)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from chdb import ChdbError
from clickhouse_connect.driver._backend.chdb_backend import ChdbBackend, _stream_failure_error
from clickhouse_connect.driver._backend.httpcommon import build_http_error
from clickhouse_connect.driver.common import write_array
from clickhouse_connect.driver.exceptions import DataError, OperationalError, ProgrammingError
from urllib3.exceptions import MaxRetryError, NewConnectionError

from services.aggregator.errors import DATA_CODES, TRANSIENT_CODES, Failure, classify, describe, error_name
from services.aggregator.sink import EventsSink, SinkStopped, _Abandoned, _raise_worst, message_of, raw_row
from werkstroom.contract import decode_event
from werkstroom.settings import Settings

URL = "http://clickhouse:8123/?query_id=1"


def http_error(status: int, code: int | None, body: str, *, retried: bool = False) -> Exception:
    """As the HTTP driver builds it from the server's answer (code: the exception header)."""
    return build_http_error(status, str(code) if code else None, body, True, URL, retried)


def chdb_error(message: str) -> Exception:
    """As the embedded driver wraps what the engine raised."""
    backend = object.__new__(ChdbBackend)  # no engine needed: only the wrapping is used
    backend.show_clickhouse_errors = True
    return backend._wrap_exception(ChdbError(message))


def refused_connection() -> Exception:
    """As the HTTP driver reports a server nobody listens for (http_sync.request)."""
    cause = MaxRetryError(None, "/", NewConnectionError(None, "[Errno 111] Connection refused"))  # type: ignore[arg-type]
    error = OperationalError(f"Error {cause} executing HTTP request attempt 1 ({URL})")
    error.__cause__ = cause
    return error


def driver_refused_value() -> Exception:
    """What the driver raises for a Date past 2149-06-06 (days since 1970 past a UInt16)."""
    with pytest.raises(DataError) as raised:
        write_array("H", [(dt.date(2150, 1, 1) - dt.date(1970, 1, 1)).days], bytearray(), "day")
    return raised.value


CONSTRAINT = (
    "Code: 469. DB::Exception: Constraint `c` for table db.events (uuid) is violated at row 2. "
    "Expression: (path != '/refuse-me'). Column values: path = '/refuse-me'. (VIOLATED_CONSTRAINT) "
    "(version 24.8.4.13 (official build))"
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # transient: the server busy, away or being migrated
        (refused_connection(), Failure.TRANSIENT),
        (OperationalError("Failed to read response data from server"), Failure.TRANSIENT),
        (
            http_error(503, 202, "Code: 202. DB::Exception: Too many simultaneous queries", retried=True),
            Failure.TRANSIENT,
        ),
        (http_error(500, 241, "Code: 241. DB::Exception: Memory limit (total) exceeded"), Failure.TRANSIENT),
        (http_error(500, 242, "Code: 242. DB::Exception: Table is in readonly mode"), Failure.TRANSIENT),
        (http_error(502, None, "<html>502 Bad Gateway</html>"), Failure.TRANSIENT),
        (
            chdb_error(
                "Code: 252. DB::Exception: Too many parts (600). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)"
            ),
            Failure.TRANSIENT,
        ),
        (
            chdb_error("Code: 159. DB::Exception: Timeout exceeded: elapsed 1001 ms. (TIMEOUT_EXCEEDED)"),
            Failure.TRANSIENT,
        ),
        (
            chdb_error("Code: 60. DB::Exception: Table db.events_later does not exist. (UNKNOWN_TABLE)"),
            Failure.TRANSIENT,
        ),
        (
            _stream_failure_error(
                "Code: 210. DB::NetException: Connection reset by peer. (NETWORK_ERROR)", True
            ),
            Failure.TRANSIENT,
        ),
        (KafkaConnectionError("Unable to bootstrap from [('localhost', 9092)]"), Failure.TRANSIENT),
        (KafkaTimeoutError(), Failure.TRANSIENT),
        (ConnectionResetError(104, "Connection reset by peer"), Failure.TRANSIENT),
        (TimeoutError(), Failure.TRANSIENT),
        # data: the rows are refused
        (http_error(500, 469, CONSTRAINT), Failure.DATA),
        (chdb_error(CONSTRAINT), Failure.DATA),
        (
            chdb_error(
                "Code: 41. DB::Exception: Code: 41. DB::Exception: Cannot read DateTime: (at row 1) (CANNOT_PARSE_DATETIME)"
            ),
            Failure.DATA,
        ),
        (
            chdb_error(
                "Code: 72. DB::Exception: Unsigned type must not contain '-' symbol (CANNOT_PARSE_NUMBER)"
            ),
            Failure.DATA,
        ),
        (
            chdb_error(
                "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)"
            ),
            Failure.DATA,
        ),
        (driver_refused_value(), Failure.DATA),
        # programming: ours to fix
        (
            chdb_error("Code: 62. DB::Exception: Syntax error: failed at position 1 (SELEC). (SYNTAX_ERROR)"),
            Failure.PROGRAMMING,
        ),
        (
            chdb_error("Code: 47. DB::Exception: Unknown expression identifier `nope`. (UNKNOWN_IDENTIFIER)"),
            Failure.PROGRAMMING,
        ),
        (
            http_error(500, 16, "Code: 16. DB::Exception: No such column kafka_offsett in table events"),
            Failure.PROGRAMMING,
        ),
        (
            http_error(401, 516, "Code: 516. DB::Exception: default: Authentication failed"),
            Failure.PROGRAMMING,
        ),
        (http_error(500, None, "something broke"), Failure.PROGRAMMING),
        (
            ProgrammingError("Attempt to execute concurrent queries within the same session."),
            Failure.PROGRAMMING,
        ),
        (MessageSizeTooLargeError(), Failure.PROGRAMMING),
        (TypeError("unsupported operand type(s) for -: 'str' and 'datetime.date'"), Failure.PROGRAMMING),
        (AttributeError("'NoneType' object has no attribute 'insert'"), Failure.PROGRAMMING),
        (KeyError("project_id"), Failure.PROGRAMMING),
        (NameError("name 'rows' is not defined"), Failure.PROGRAMMING),
        (AssertionError(), Failure.PROGRAMMING),
        (FileNotFoundError(2, "No such file or directory"), Failure.PROGRAMMING),
    ],
    ids=lambda v: getattr(v, "value", None) or type(v).__name__,
)
def test_a_failure_is_transient_data_or_programming(error: Exception, kind: Failure) -> None:
    assert classify(error) is kind


def test_no_code_is_both_transient_and_data() -> None:
    assert not set(TRANSIENT_CODES) & set(DATA_CODES)


def test_the_codes_come_out_of_the_drivers_as_numbers() -> None:
    assert (chdb_error(CONSTRAINT).code, chdb_error(CONSTRAINT).name) == (469, "VIOLATED_CONSTRAINT")  # type: ignore[attr-defined]
    assert http_error(500, 469, CONSTRAINT).code == 469  # type: ignore[attr-defined]


def test_describe_keeps_clickhouses_reason_on_one_line_without_the_version() -> None:
    text = describe(http_error(500, 469, CONSTRAINT + "\n"))
    assert text.startswith("DatabaseError: Received ClickHouse exception, code: 469")
    assert "Constraint `c`" in text and "(VIOLATED_CONSTRAINT)" in text
    assert "version 24.8" not in text and "\n" not in text
    assert len(describe(KeyError("x" * 5000), 100)) == 100
    assert error_name(chdb_error(CONSTRAINT)) == "VIOLATED_CONSTRAINT"
    assert error_name(driver_refused_value()) == "DataError"


def test_a_refused_line_maps_back_to_its_message() -> None:
    value = b'{"schema_version":1,"event_id":"e-1","project_id":"p","type":"track","event":"E","anonymous_id":"a","timestamp":"2026-11-20T10:00:00Z","received_at":"2026-11-20T10:00:01Z","properties":{},"traits":{}}\n'
    line = raw_row(value, decode_event(value), 3, 17)
    assert message_of(line, 3, 17) == value.rstrip()
    assert message_of(line, 3, 18) == line  # not its place: left as it is


def test_the_gravest_failure_of_the_side_by_side_inserts_is_raised() -> None:
    transient, programming = refused_connection(), TypeError("bad")
    stopped, abandoned = SinkStopped("limit"), _Abandoned("stop")
    for results, expected in (
        ([[], transient], transient),
        ([transient, programming], programming),
        ([abandoned, transient], abandoned),
        ([programming, stopped], stopped),
    ):
        with pytest.raises(type(expected)) as raised:
            _raise_worst(*results)
        assert raised.value is expected
    _raise_worst([], [])


# -- finding the refused rows ------------------------------------------------------------


class Table:
    """A table that refuses some rows, all or nothing per insert, as ClickHouse does a block."""

    def __init__(self, refused: set[int], *, fail_once: Exception | None = None) -> None:
        self.refused, self.rows, self.inserts = refused, [], 0
        self.fail_once = fail_once
        self.stop_after: tuple[int, EventsSink] | None = None

    async def insert(self, part: list[int]) -> None:
        self.inserts += 1
        if self.stop_after and self.inserts >= self.stop_after[0]:
            self.stop_after[1].stop()
        if self.fail_once is not None:
            error, self.fail_once = self.fail_once, None
            raise error
        bad = [r for r in part if r in self.refused]
        if bad:
            raise chdb_error(
                f"Code: 469. DB::Exception: Constraint `c` is violated: row {bad[0]}. (VIOLATED_CONSTRAINT)"
            )
        self.rows.extend(part)


def sink(tmp_path: Any, limit: int = 1000) -> EventsSink:
    settings = Settings(data_dir=tmp_path, sink_max_consecutive_bad=limit)
    return EventsSink(settings, "localhost:1", lambda: None)  # type: ignore[arg-type,return-value]


def find(s: EventsSink, table: Table, rows: list[int], runs: dict[str, int] | None = None) -> list[int]:
    first = chdb_error("Code: 469. DB::Exception: the whole batch (VIOLATED_CONSTRAINT)")
    found = asyncio.run(
        s.writer.insert_refusing("t", rows, first, table.insert, {} if runs is None else runs)
    )
    return [rows[i] for i, _error in found]


def test_each_refused_row_is_found_and_every_other_written_once(tmp_path: Any) -> None:
    rows = list(range(1000))
    table = Table({0, 3, 500, 501, 999})
    assert find(sink(tmp_path), table, rows) == [0, 3, 500, 501, 999]
    assert sorted(table.rows) == sorted(set(rows) - table.refused)  # each once
    assert table.inserts <= 5 * 2 * 10 + 2  # about 2 log2(n) inserts per refused row


def test_a_batch_refused_whole_with_no_bad_row_is_written_in_parts(tmp_path: Any) -> None:
    """TOO_MANY_PARTITIONS: the halves go in."""
    table = Table(set())
    assert find(sink(tmp_path), table, list(range(10))) == []
    assert sorted(table.rows) == list(range(10)) and table.inserts == 2


def test_too_many_refused_in_a_row_stop_the_sink_across_batches(tmp_path: Any) -> None:
    s = sink(tmp_path, limit=5)
    s.writer.refused_run = {"t": 3}  # the previous batch ended with three refused rows
    table = Table({0, 1, 5})
    runs: dict[str, int] = {}
    with pytest.raises(SinkStopped, match="refused 5 rows in a row of t"):
        find(s, table, list(range(8)), runs)
    s.writer.refused_run = {}
    assert find(s, Table({0, 1, 5}), list(range(8)), runs) == [0, 1, 5]
    assert runs == {"t": 0}  # the batch ended on written rows


def test_a_transient_failure_while_splitting_goes_to_the_retry(tmp_path: Any) -> None:
    table = Table({1}, fail_once=refused_connection())
    with pytest.raises(OperationalError):
        find(sink(tmp_path), table, list(range(4)))


def test_a_stop_ends_the_splitting(tmp_path: Any) -> None:
    s = sink(tmp_path)
    table = Table(set(range(0, 1000, 2)))
    table.stop_after = (3, s)
    with pytest.raises(_Abandoned):
        find(s, table, list(range(1000)))
    assert table.inserts == 3
