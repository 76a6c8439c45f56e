"""ClickHouse being away is a transient failure (werkstroom.clickhouse.errors): the sink retries
it without committing, the API answers 503. Checked on the exceptions the real HTTP driver
raises against real loopback sockets, not on exceptions built by hand: a port nobody listens
on, a connection closed without an answer, an answer that is not HTTP, no answer within the
timeout, and a proxy's own 502 (tests/faults.py).

Each failure is met when the client opens (clickhouse-connect asks the server for its version
first): the same request path (HttpSyncBackend.request) that every later query, command and
insert of an open client takes, so the same exceptions. A client that was open before the
server went away is checked against a real server in
tests/integration/test_clickhouse_unavailable.py (through a proxy that cuts it).

Marked `integration` only so that the unit tests' socket guard (tests/conftest.py) lets the
driver connect to 127.0.0.1: nothing here needs a server, Docker or the `infra` fixture.
"""

from __future__ import annotations

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from services.aggregator.errors import classify as sink_classify
from tests.faults import Mode, closed_port, faulty_server
from werkstroom.clickhouse import ClickHouseError, connect
from werkstroom.clickhouse.errors import Failure, classify, describe, error_name, is_transient

pytestmark = pytest.mark.integration


def opening(url: str) -> Exception:
    """What opening a real HTTP client on `url` raises."""
    with pytest.raises(Exception) as raised:
        clickhouse_connect.get_client(dsn=url, connect_timeout=1, send_receive_timeout=1)
    return raised.value


def test_a_refused_connection_is_transient() -> None:
    error = opening(f"http://127.0.0.1:{closed_port()}")
    assert type(error) is OperationalError and getattr(error, "code", None) is None
    assert "Connection refused" in str(error)
    assert classify(error) is Failure.TRANSIENT and sink_classify(error) is Failure.TRANSIENT
    assert is_transient(error) and error_name(error) == "OperationalError"


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        # taken, then closed (a server going down, a reset): an orderly close, or a reset where
        # the kernel sends one (a CI run once got "Connection reset by peer" on the retry)
        ("close", ("RemoteDisconnected", "Connection reset by peer")),
        ("garbage", ("BadStatusLine",)),  # something else listens on the port
        ("hang", ("Read timed out",)),  # a server stuck, or a network that drops the packets
    ],
)
def test_a_connection_that_gets_no_answer_is_transient(mode: Mode, says: tuple[str, ...]) -> None:
    with faulty_server(mode) as server:
        error = opening(server.url)
    assert server.accepted >= 1  # the driver did reach it
    assert type(error) is OperationalError and getattr(error, "code", None) is None
    assert any(words in str(error) for words in says), error
    assert classify(error) is Failure.TRANSIENT and sink_classify(error) is Failure.TRANSIENT


def test_a_proxys_502_is_transient_and_a_codeless_500_is_not() -> None:
    """A proxy in front of an absent ClickHouse answers 502/503/504 itself; a 500 without
    ClickHouse's exception code is nobody's known failure, so it is not retried (the sink
    stops where someone sees it; the API answers 500)."""
    with faulty_server("status_502") as proxy:
        gateway = opening(proxy.url)
    assert type(gateway) is DatabaseError and "HTTP status 502" in str(gateway)
    assert classify(gateway) is Failure.TRANSIENT and sink_classify(gateway) is Failure.TRANSIENT
    with faulty_server("status_500") as broken:
        other = opening(broken.url)
    assert type(other) is DatabaseError and "HTTP status 500" in str(other)
    assert classify(other) is Failure.PROGRAMMING and sink_classify(other) is Failure.PROGRAMMING


def test_opening_through_werkstroom_connect_is_classified_by_the_drivers_error() -> None:
    """connect() wraps the driver's error in ours (with the address masked): still transient,
    and named by the driver's error."""
    with pytest.raises(ClickHouseError) as raised:
        connect(f"http://user:s3cret@127.0.0.1:{closed_port()}", "werkstroom")
    error = raised.value
    assert isinstance(error.__cause__, OperationalError)
    assert classify(error) is Failure.TRANSIENT and sink_classify(error) is Failure.TRANSIENT
    assert error_name(error.__cause__) == "OperationalError"
    assert "s3cret" not in describe(error)


def test_socket_errors_of_our_own_are_transient_too() -> None:
    assert classify(ConnectionRefusedError(111, "Connection refused")) is Failure.TRANSIENT
    assert classify(TimeoutError()) is Failure.TRANSIENT
    # Ours wrapping nothing (a locked embedded directory, a bad URL) is not a passing failure.
    assert classify(ClickHouseError("chdb URL must be chdb:///absolute/path")) is Failure.PROGRAMMING
