"""Countries without keeping addresses, through the real path (HTTP -> ingest -> Kafka -> sink ->
ClickHouse): the country is the forwarded address's only when the proxy is trusted, and neither
address is anywhere afterwards: not in any table, not in any message of the events, bots and
dead-letter topics, not in any log line of ingest or the aggregator (captured at DEBUG)."""

from __future__ import annotations

import io
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from tests.conftest import Infra
from tests.integration.stack import Stack
from werkstroom.geo import Locator
from werkstroom.logging import configure_logging
from werkstroom.settings import DEFAULT_GEO_DATABASE

pytestmark = pytest.mark.integration

#: Candidates for the two client addresses behind the proxy, one IPv4 and one IPv6 (a university
#: network, a hosting provider, a public resolver); the test takes the first the database places,
#: the second in another country than the first.
IPV4 = ["81.2.69.142", "133.11.0.1", "8.8.8.8"]
IPV6 = ["2001:610::1", "2a01:4f8::1", "2001:4860:4860::8888"]
#: What a client claims left of the proxy's entry: never used, never stored.
CLAIMED = "198.18.7.7"
CURL = "curl/8.5.0"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the process (structlog and the standard library's, every logger at
    DEBUG but the libraries werkstroom.logging quiets) as production writes them, JSON lines."""
    root = logging.getLogger()
    saved = (structlog.get_config(), root.handlers[:], root.level)
    quieted = {
        name: logging.getLogger(name).level
        for name in ("aiokafka", "kafka", "uvicorn.access", "faust", "mode")
    }
    configure_logging("DEBUG", "json")
    structlog.configure(cache_logger_on_first_use=False)  # no logger keeps this set-up after the test
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        config, handlers, level = saved
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in quieted.items():
            logging.getLogger(name).setLevel(was)


def placed(candidates: list[str], geo: Locator, not_in: str = "") -> tuple[str, str]:
    for address in candidates:
        country = geo.locate(address).country
        if country and country != not_in:
            return address, country
    raise AssertionError(f"the database places none of {candidates} (outside {not_in!r})")


def two_countries() -> tuple[str, str, str, str]:
    """An IPv4 and an IPv6 address the installed database places in two different countries:
    (v4, its country, v6, its country). Skips the test when the database is not installed."""
    geo = Locator.open(DEFAULT_GEO_DATABASE)
    if geo.reader is None:
        pytest.skip(f"the country database is not installed ({DEFAULT_GEO_DATABASE}): run `make geo`")
    try:
        v4, v4_country = placed(IPV4, geo)
        v6, v6_country = placed(IPV6, geo, not_in=v4_country)
    finally:
        geo.close()
    return v4, v4_country, v6, v6_country


def forms(address: str) -> list[bytes]:
    """The ways an address can be written: as sent, compressed, exploded (IPv6 in full)."""
    ip = ipaddress.ip_address(address)
    return sorted({address.encode(), str(ip).encode(), ip.exploded.encode()})


def everything_in_clickhouse(stack: Stack) -> dict[str, bytes]:
    """Every row of every table of the test's database, as JSON lines."""
    tables = [t for (t,) in stack.rows("SELECT name FROM system.tables WHERE database = currentDatabase()")]
    assert "events" in tables and "bot_events" in tables
    return {t: stack.client.raw_query(f"SELECT * FROM `{t}` FORMAT JSONEachRow") for t in tables}


@pytest.mark.parametrize("trust", [False, True], ids=["forwarded-ignored", "forwarded-trusted"])
async def test_the_country_is_stored_and_the_address_nowhere(
    infra: Infra, names: dict[str, str], tmp_path: Path, logs: io.StringIO, trust: bool
) -> None:
    v4, v4_country, v6, v6_country = two_countries()

    async with Stack(
        infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, bots=True, trust_forwarded_for=trust
    ) as stack:
        key = stack.project.write_key
        page = {
            "writeKey": key,
            "anonymousId": "v4-visitor",
            "messageId": "p-1",
            "properties": {"url": "https://a.example/"},
        }
        first = await stack.post("/v1/page", page, headers={"X-Forwarded-For": f"{CLAIMED}, {v4}"})
        batch = {
            "writeKey": key,
            "batch": [
                {"type": "track", "anonymousId": "v6-visitor", "event": "Signed Up", "messageId": "t-1"},
                {"type": "page", "anonymousId": "v6-bot", "messageId": "b-1", "context": {"userAgent": CURL}},
                {"type": "track", "anonymousId": "v6-visitor", "messageId": "bad-1"},  # no event name
            ],
        }
        second = await stack.post("/v1/batch", batch, headers={"X-Forwarded-For": v6})
        assert first.status_code == 200 and first.json()["accepted"] == 1, first.text
        assert (second.json()["accepted"], second.json()["bots"], second.json()["rejected"]) == (1, 1, 1)

        assert await stack.wait_count(2) == 2
        await stack.until(lambda: stack.scalar("SELECT count() FROM bot_events") >= 1)
        stored = stack.rows("SELECT event_id, country, region FROM events FINAL ORDER BY event_id")
        if trust:
            assert stored == [("p-1", v4_country, ""), ("t-1", v6_country, "")]
        else:  # the peer's: 127.0.0.1, which is in no country
            assert stored == [("p-1", "", ""), ("t-1", "", "")]

        tables = everything_in_clickhouse(stack)
        messages = {
            topic: await stack.read_topic(topic, expected)
            for topic, expected in (
                (stack.topics.events, 2),
                (stack.topics.bots, 1),
                (stack.topics.dead_letter, 1),
            )
        }
        bot = orjson.loads(messages[stack.topics.bots][0].value)
        assert (bot["event_id"], bot["country"]) == ("b-1", v6_country if trust else "")
        assert orjson.loads(messages[stack.topics.dead_letter][0].value)["reason"] == "missing_field"

    written = logs.getvalue()
    assert '"event": "ingest_started"' in written and '"logger": "services.aggregator' in written
    for address in (v4, v6, CLAIMED):
        for form in forms(address):
            for table, rows in tables.items():
                assert form not in rows, (form, table)
            for topic, found in messages.items():
                for message in found:
                    assert form not in (message.key or b"") + (message.value or b""), (form, topic)
            assert form.decode() not in written, form
