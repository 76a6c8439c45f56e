"""What a ClickHouse failure is: transient, data, or programming. One classification, two uses:

- the aggregator's events sink (services/aggregator/errors.py adds Kafka's errors): a
  transient failure is retried with nothing committed meanwhile, a data error goes to the
  dead-letter topic, a programming error stops the sink;
- the API: a transient failure is 503 with a reason and Retry-After, anything else stays a 500.

Arroyo's rule: retry only what is transient, and say which errors those are. So the two lists
below are the whole of what is retried or dead-lettered. Anything not named there, however it
is spelt, is a programming error: an error nobody thought of must stop the sink where someone
sees it, not spin in a retry loop that holds every project back.

How the failures reach us (clickhouse-connect 1.12, checked against both drivers):

- A ClickHouse server over HTTP: its exception is a `DatabaseError` whose `code` is the
  X-ClickHouse-Exception-Code header (an `OperationalError` when the server answered 429, 503
  or 504 and the driver's own retries ran out). A connection refused or reset, a timeout, a
  response cut short or not HTTP at all: an `OperationalError` without a code ("Error ...
  executing HTTP request"; tests/unit/core/test_clickhouse_errors.py makes the driver raise
  each against a real socket). A proxy in between that answers 502/503/504 itself: a
  `DatabaseError` without a code, "HTTP driver received HTTP status 502". A codeless 500 is
  not ClickHouse's (it always names its error): it stays a programming error.
- Opening a client (`werkstroom.clickhouse.connect`) asks the server first; a failure there is
  our `ClickHouseError` wrapping the driver's, and is classified by what it wraps.
- The embedded engine (chdb): every engine exception is a plain `DatabaseError` whose `code` is
  read from "Code: NNN." in the message (a result stream that breaks: `StreamFailureError`, an
  `OperationalError` with the code). There is no network, so no codeless `OperationalError`.
- The driver refuses a value before anything is sent (a date past Date's 2149-06-06, a
  negative number for a UInt column): `DataError` without a code ("Unable to create native
  array for column `day`"). A Python value of the wrong type (a str for a Date) is a bare
  TypeError from its serializer: our own rows are wrong, a programming error.

The codes and names are ClickHouse's (src/Common/ErrorCodes.cpp); the integration tests check
each pair against the engine's own errorCodeToName().
"""

from __future__ import annotations

import enum
import re

from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from clickhouse_connect.driver.exceptions import DataError, OperationalError, scrub_error_details

from werkstroom.clickhouse import ClickHouseError


class Failure(enum.Enum):
    TRANSIENT = "transient"  # retried with backoff; nothing is committed meanwhile; API: 503
    DATA = "data"  # the rows are refused: found by splitting the batch, then dead-lettered
    PROGRAMMING = "programming"  # ours to fix: the sink stops with an error; API: 500


#: ClickHouse errors that pass by themselves: retrying the same statement later succeeds.
TRANSIENT_CODES: dict[int, str] = {
    # The server is busy or short of memory, disk, threads or merges; it catches up.
    159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW",
    173: "CANNOT_ALLOCATE_MEMORY",
    201: "QUOTA_EXCEEDED",  # quotas are per interval
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",
    243: "NOT_ENOUGH_SPACE",
    252: "TOO_MANY_PARTS",  # merges lag behind inserts (but see TOO_MANY_PARTITIONS below)
    373: "SESSION_IS_LOCKED",  # the session's previous statement still runs after a client timeout
    394: "QUERY_WAS_CANCELLED",  # a server shutting down, or an operator's KILL QUERY
    439: "CANNOT_SCHEDULE_TASK",
    473: "DEADLOCK_AVOIDED",
    # The network, or the cluster around the server: replicas, Keeper, quorum.
    198: "DNS_ERROR",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    242: "TABLE_IS_READ_ONLY",  # a replica that lost Keeper, until it is back
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    319: "UNKNOWN_STATUS_OF_INSERT",  # maybe written: writing it again collapses on the keys
    999: "KEEPER_EXCEPTION",
    # The schema is being migrated: a table is renamed away and back, or not created yet (the
    # sink started before `werkstroom migrate`). Nothing is committed until it is there.
    60: "UNKNOWN_TABLE",
    81: "UNKNOWN_DATABASE",
}

#: ClickHouse errors that refuse the rows themselves: a value it cannot parse or store, or a
#: row a table constraint rejects. Another row of the same batch goes in; this one never will.
DATA_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    19: "SIZE_OF_FIXED_STRING_DOESNT_MATCH",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    128: "TOO_LARGE_ARRAY_SIZE",
    130: "CANNOT_READ_ARRAY_FROM_TEXT",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    376: "CANNOT_PARSE_UUID",
    407: "DECIMAL_OVERFLOW",
    467: "CANNOT_PARSE_BOOL",
    469: "VIOLATED_CONSTRAINT",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}

#: TOO_MANY_PARTS has a second meaning: one insert that spans more partitions than
#: max_partitions_per_insert_block (100; `events` and `sessions` are partitioned by month, and
#: a batch may carry a century of event times). Retrying the same batch fails forever; halves
#: of it go in. So it is a data error: splitting the batch finds no refused row and writes all.
TOO_MANY_PARTITIONS = "Too many partitions for single INSERT block"

#: What a proxy between us and ClickHouse answers while the server is away.
_PROXY_STATUS = re.compile(r"HTTP driver received HTTP status (502|503|504)\b")


def _opened_through(exc: BaseException) -> BaseException:
    """The driver's error behind our `ClickHouseError` from opening a client, else `exc`."""
    if isinstance(exc, ClickHouseError) and isinstance(exc.__cause__, Exception):
        return exc.__cause__
    return exc


def classify(exc: BaseException) -> Failure:
    """Which kind of failure `exc` is (see the module's docstring)."""
    exc = _opened_through(exc)
    if isinstance(exc, DriverError):
        code = getattr(exc, "code", None)
        if code in DATA_CODES or (code == 252 and TOO_MANY_PARTITIONS in str(exc)):
            return Failure.DATA
        if code in TRANSIENT_CODES:
            return Failure.TRANSIENT
        if code is None:
            if isinstance(exc, OperationalError):  # the network, or the server's 429/503/504
                return Failure.TRANSIENT
            if isinstance(exc, DataError):  # the driver refused a value of a row
                return Failure.DATA
            if _PROXY_STATUS.search(str(exc)):
                return Failure.TRANSIENT
        return Failure.PROGRAMMING  # a code not listed: a statement of ours the server refused
    if isinstance(exc, ConnectionError | TimeoutError):
        return Failure.TRANSIENT
    return Failure.PROGRAMMING


def is_transient(exc: BaseException) -> bool:
    """ClickHouse is away or busy: the same statement later is expected to succeed."""
    return classify(exc) is Failure.TRANSIENT


#: What the HTTP driver appends to a server's message: the URL it asked.
_FOR_URL = re.compile(r"\s*\(for url [^)]*\)\s*$")


def describe(exc: BaseException, limit: int = 2000) -> str:
    """The error as one line of text for a log or a dead letter: its type and ClickHouse's
    message, without the server's version and the URL asked, cut at `limit` characters."""
    text = str(exc)
    if isinstance(exc, DriverError):
        text = scrub_error_details(_FOR_URL.sub("", text))
    text = f"{type(exc).__name__}: {' '.join(text.split())}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_name(exc: BaseException) -> str:
    """ClickHouse's name for the error (VIOLATED_CONSTRAINT), else the exception's type."""
    name = getattr(exc, "name", None)
    if isinstance(name, str) and name:
        return name
    code = getattr(exc, "code", None)
    return DATA_CODES.get(code) or TRANSIENT_CODES.get(code) or type(exc).__name__  # type: ignore[arg-type]
