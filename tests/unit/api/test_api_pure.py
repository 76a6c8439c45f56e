"""The API's pure parts: time format, CSV quoting, cursors, trends, funnel steps, the snippet,
and the live hub's change detection and fan-out (fed canned snapshots: no ClickHouse)."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.api import queries
from services.api.filters import Filters
from services.api.live import LiveHub, feed_key
from services.api.models import iso
from services.api.routes.export import csv_text, neutralise
from services.api.routes.funnels import _field_path, report_steps
from services.api.routes.snippet import snippet_html
from werkstroom.funnels import Funnel, Step

NOW = datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)


def test_iso_is_utc_with_milliseconds_and_z() -> None:
    assert iso(NOW) == "2026-11-25T12:00:00.123Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000Z"  # naive = UTC
    plus_two = NOW.astimezone(__import__("datetime").timezone(timedelta(hours=2)))
    assert iso(plus_two) == "2026-11-25T12:00:00.123Z"


def test_csv_quoting_round_trips_commas_quotes_and_newlines() -> None:
    tricky = ["a,b", 'say "hi"', "two\nlines", "cr\rlf", "", "plain", "ünï 🙂"]
    text = csv_text([["h1", "h2"], tricky, [None, True, False, 3, 1.5, NOW, ["/", "/a,b"], {"k": 'v"'}]])
    assert text.splitlines(keepends=True)[0] == "h1,h2\r\n"
    assert '"a,b","say ""hi""","two\nlines"' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1] == tricky
    assert rows[2] == [
        "",
        "true",
        "false",
        "3",
        "1.5",
        "2026-11-25T12:00:00.123Z",
        '["/","/a,b"]',
        '{"k":"v\\""}',
    ]


def test_csv_cells_that_a_spreadsheet_would_run_get_an_apostrophe() -> None:
    rows = list(csv.reader(io.StringIO(csv_text([["=1+1", "+x", "-y", "@SUM(A1)", "\tz", "a=b", "-"]]))))
    assert rows == [["'=1+1", "'+x", "'-y", "'@SUM(A1)", "'\tz", "a=b", "'-"]]
    assert csv_text([[-5, -1.5]]) == "-5,-1.5\r\n"  # numbers stay numbers


# Text whose first character that is not blank starts a formula: what spreadsheets trim or skip
# before that character (spaces, line breaks, no-break and ideographic spaces, zero-width and
# direction marks, a byte-order mark, control characters) must not hide it.
HIDDEN_FORMULAS = [
    " =1+1",
    "   +cmd|' /C calc'!A0",
    '\n=HYPERLINK("http://evil")',
    "\r\n@SUM(A1)",
    "\t-2+3",
    " \t \n-x",
    "\u00a0=1",
    "\u3000=1",
    "\u2003@x",
    "\u200b=1",
    "\ufeff=1",
    "\u200e+1",
    "\x00=1",
    "\x0b=1",
    "\uff1dSUM(A1)",  # full-width = + - @
    "\uff0b1",
    " \uff0d1",
    "\uff20x",
]


@pytest.mark.parametrize("text", HIDDEN_FORMULAS)
def test_csv_formula_after_blanks_is_neutralised(text: str) -> None:
    assert neutralise(text) == "'" + text
    (row,) = csv.reader(io.StringIO(csv_text([[text]]), newline=""))
    assert row == ["'" + text]  # and it survives the CSV quoting whole


def test_csv_leading_tab_or_line_break_is_neutralised_whatever_follows() -> None:
    for text in ("\tz", "\rz", "\nz", "\t", "\n", "\r\n plain"):
        assert neutralise(text) == "'" + text


PLAIN = ["", " ", "\u00a0", "plain", " plain", "a=b", "a-b", "1-2", "x+y", "/pricing", "'=1", "[=1]", "ü =x"]


@pytest.mark.parametrize("text", PLAIN)
def test_csv_text_that_starts_no_formula_is_left_alone(text: str) -> None:
    assert neutralise(text) == text


def test_csv_numbers_and_structured_cells_are_never_prefixed() -> None:
    # a negative trend or value is a number cell, not visitors' text
    assert csv_text([["churn_rate", -12.5, -3, 0, -0.0]]) == "churn_rate,-12.5,-3,0,-0.0\r\n"
    # JSON cells start with [ or {, which no spreadsheet runs, whatever they hold
    assert csv_text([[["=1", "-2"], {"k": "=x"}]]) == '"[""=1"",""-2""]","{""k"":""=x""}"\r\n'
    assert csv_text([[NOW, True]]) == "2026-11-25T12:00:00.123Z,true\r\n"


def test_cursor_round_trip_and_rejects() -> None:
    cursor = queries.Cursor(1_764_072_000_123, "user 'x' \"y\" 🙂")
    assert queries.Cursor.decode(cursor.encode()) == cursor
    assert "=" not in cursor.encode()
    for bad in (
        "",
        "!!!",
        "bm90IGpzb24",
        "WzEsMl0",
        "WyJ4IiwieSJd",
        "W3RydWUsIngiXQ",
        "WzEwMDAwMDAwMDAwMDAwMDAwLCJ4Il0",
    ):
        with pytest.raises(queries.BadCursor):
            queries.Cursor.decode(bad)


def test_trend_rounding_and_nulls() -> None:
    assert queries.trend(9, 6) == 50.0
    assert queries.trend(2, 3) == -33.3
    assert queries.trend(3, 0) is None
    assert queries.trend(None, 5) is None and queries.trend(5, None) is None
    assert queries.trend(0, 4) == -100.0


def test_funnel_steps_conversion_and_drop_off() -> None:
    funnel = Funnel(
        "f_1", "p", "Signup", (Step("$page", "/pricing"), Step("Signed Up"), Step("Paid")), 60, NOW
    )
    steps = report_steps(funnel, [5, 2, 1])
    assert [(s["count"], s["conversion_pct"], s["drop_off_pct"], s["high_drop_off"]) for s in steps] == [
        (5, 100.0, None, False),
        (2, 40.0, 60.0, True),
        (1, 20.0, 50.0, False),  # exactly 50 % is not above 50 %
    ]
    assert steps[0]["step"] == 1 and steps[0]["path"] == "/pricing" and steps[2]["event"] == "Paid"
    empty = report_steps(funnel, [0, 0, 0])
    assert [(s["conversion_pct"], s["drop_off_pct"], s["high_drop_off"]) for s in empty] == [
        (None, None, False)
    ] * 3
    assert report_steps(funnel, [3, 0, 0])[2]["drop_off_pct"] is None  # nobody to drop off from


def test_funnel_error_fields_become_fastapi_locations() -> None:
    assert _field_path("steps[1].event") == ["steps", 1, "event"]
    assert _field_path("window_seconds") == ["window_seconds"]


def test_snippet_is_a_loader_with_the_key_and_a_safe_host() -> None:
    html = snippet_html("wk_abc-DEF_1", "https://ingest.example.com/")
    assert html.startswith("<script>") and html.endswith("</script>") and html.count("</script>") == 1
    assert '(window, document, "wk_abc-DEF_1", "https://ingest.example.com")' in html
    assert 'host + "/t.js"' in html and "a.q.push" in html
    hostile = snippet_html('k"</script><b>', "http://x/</script>")
    assert hostile.count("</script>") == 1 and "<b>" not in hostile
    assert '"k\\"\\u003c/script\\u003e\\u003cb\\u003e"' in hostile


# -- the live hub with canned snapshots ----------------------------------------------------------


def user(anon: str, *, stuck: bool = False, on_page: int = 10) -> dict[str, Any]:
    return {
        "person_id": anon,
        "anonymous_id": anon,
        "user_id": None,
        "current_path": "/",
        "current_url": "https://x/",
        "current_title": "",
        "time_on_page_seconds": on_page,
        "time_on_site_seconds": on_page,
        "device_type": "desktop",
        "browser": "Chrome",
        "os": "Linux",
        "stuck": stuck,
        "last_event_at": NOW,
        "page_entered_at": NOW,
        "session_id": f"s-{anon}",
        "last_event": "$page",
    }


class CannedPool:
    """Answers the hub's two reads from `self.online` (or, for a filtered read, from
    `self.narrowed` by its country filter); counts the reads per project."""

    def __init__(self) -> None:
        self.online: dict[str, Any] = {"online": 0, "users": []}
        self.narrowed: dict[str, dict[str, Any]] = {}
        self.reads: list[tuple[str, int]] = []
        self.filtered_reads: list[tuple[str, str]] = []

    async def run(self, fn: Any, *args: Any) -> Any:
        if fn is queries.online:
            project_id, _now, limit, (where, params) = args
            self.reads.append((project_id, limit))
            answer = self.online
            if where:
                self.filtered_reads.append((project_id, params["f_country"]))
                answer = self.narrowed[params["f_country"]]
            return {"online": answer["online"], "users": answer["users"][:limit]}
        assert fn is queries.polled_pipeline  # the stream's polls outlast a read-key check
        return {"last_write_at": None, "last_event_at": None, "lag": None, "bots_today": 0}


async def next_data(stream: Any) -> dict[str, Any]:
    event = await asyncio.wait_for(stream.__anext__(), 2)
    assert event["event"] == "online"
    return orjson.loads(event["data"])


async def test_hub_pushes_on_change_only_and_shares_one_poller() -> None:
    pool = CannedPool()
    hub = LiveHub(pool, "topic", lambda: NOW, poll_seconds=0.02)  # type: ignore[arg-type]
    big, small = hub.stream("p1", 100), hub.stream("p1", 1)
    first_big, first_small = await asyncio.gather(next_data(big), next_data(small))
    assert first_big["online"] == first_small["online"] == 0
    assert len(hub.feeds) == 1 and hub.subscribers == 2
    await asyncio.sleep(0.1)
    assert {limit for _p, limit in pool.reads} <= {1, 100} and max(lim for _p, lim in pool.reads) == 100

    pool.online = {"online": 2, "users": [user("a"), user("b")]}
    got_big, got_small = await asyncio.gather(next_data(big), next_data(small))
    assert [u["anonymous_id"] for u in got_big["users"]] == ["a", "b"]
    assert [u["anonymous_id"] for u in got_small["users"]] == ["a"] and got_small["online"] == 2

    # time on page ticking is no change; turning stuck is
    pool.online = {"online": 2, "users": [user("a", on_page=20), user("b", on_page=20)]}
    pending = asyncio.ensure_future(big.__anext__())
    await asyncio.sleep(0.2)  # ten polls
    assert not pending.done()
    pool.online = {"online": 2, "users": [user("a", stuck=True, on_page=301), user("b")]}
    pushed = orjson.loads((await asyncio.wait_for(pending, 2))["data"])
    assert [(u["anonymous_id"], u["stuck"]) for u in pushed["users"]] == [("a", True), ("b", False)]
    # the newest event's name, read from another table than the live row, can come a poll later
    b_signed_up = {**user("b"), "last_event": "Signed Up"}
    pool.online = {"online": 2, "users": [user("a", stuck=True, on_page=301), b_signed_up]}
    pushed = await next_data(big)
    assert [u["last_event"] for u in pushed["users"]] == ["$page", "Signed Up"]
    assert hub.subscribers == 2
    await hub.close()
    assert hub.closed.is_set() and not hub.feeds


async def test_hub_close_ends_streams_and_leaving_stops_the_poller() -> None:
    pool = CannedPool()
    hub = LiveHub(pool, "topic", lambda: NOW, poll_seconds=0.02)  # type: ignore[arg-type]
    stream = hub.stream("p1", 10)
    await next_data(stream)
    await stream.aclose()  # the client went away
    assert hub.subscribers == 0 and not hub.feeds
    reads = len(pool.reads)
    await asyncio.sleep(0.1)
    assert len(pool.reads) == reads  # no poller left behind

    stream = hub.stream("p2", 10)
    await next_data(stream)
    ended = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    await hub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(ended, 1)


async def test_hub_polls_once_per_project_and_filters() -> None:
    pool = CannedPool()
    pool.online = {"online": 3, "users": [user("a"), user("b"), user("c")]}
    pool.narrowed = {
        "NL": {"online": 1, "users": [user("a")]},
        "DE": {"online": 2, "users": [user("b"), user("c")]},
    }
    hub = LiveHub(pool, "topic", lambda: NOW, poll_seconds=0.02)  # type: ignore[arg-type]
    nl, de = Filters.parse({"country": "NL"}), Filters.parse({"country": "DE"})
    streams = [
        hub.stream("p1", 10, nl),
        hub.stream("p1", 10, de),
        hub.stream("p1", 10, nl),
        hub.stream("p1", 10),
    ]
    got = await asyncio.gather(*(next_data(s) for s in streams))
    assert [[u["anonymous_id"] for u in g["users"]] for g in got] == [
        ["a"],
        ["b", "c"],
        ["a"],
        ["a", "b", "c"],
    ]
    assert [g["online"] for g in got] == [1, 2, 1, 3]
    # the two NL subscribers share one poller; each set of filters (none is one) has its own
    assert set(hub.feeds) == {feed_key("p1", nl), feed_key("p1", de), feed_key("p1")} and hub.subscribers == 4
    assert {country for _p, country in pool.filtered_reads} == {"NL", "DE"}

    pool.narrowed["NL"] = {"online": 0, "users": []}
    assert (await next_data(streams[0]))["online"] == (await next_data(streams[2]))["online"] == 0
    await streams[1].aclose()  # DE's last subscriber left: its poller goes, the others stay
    assert set(hub.feeds) == {feed_key("p1", nl), feed_key("p1")} and hub.subscribers == 3
    await hub.close()
    assert not hub.feeds
