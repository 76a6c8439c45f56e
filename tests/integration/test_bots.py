"""Bots made visible (issue 19): ingest sends the events it filters as bots to the bots topic,
the aggregator's bots consumer writes them to `bot_events`, and the API counts them per day
and today; the visitor figures stay exactly what they were. Real ingest over HTTP, the real
sinks, the session's Kafka and ClickHouse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Infra
from tests.integration.stack import Stack
from werkstroom.contract import decode_event
from werkstroom.kafka import log_ends_at

pytestmark = pytest.mark.integration

REQUESTS_UA = "python-requests/2.31.0"
HEADLESS_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 "
    "Safari/537.36"
)
BOTS_PER_DAY = "SELECT day, uniqExact(event_id) FROM bot_events GROUP BY day ORDER BY day"


@pytest.fixture
async def stack(infra: Infra, names: dict[str, str], tmp_path: object) -> AsyncIterator[Stack]:
    """Ingest, the events sink and the bots consumer, on this test's own topics and database."""
    async with Stack(infra.bootstrap, infra.clickhouse_url, names, data_dir=tmp_path, bots=True) as running:
        yield running


def page(anon: str, message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "page",
        "anonymousId": anon,
        "messageId": message_id,
        "properties": {"url": "https://shop.example/"},
        **extra,
    }


async def get(api: httpx.AsyncClient, stack: Stack, path: str) -> dict[str, Any]:
    response = await api.get(
        f"/api/projects/{stack.project.project_id}/{path}",
        headers={"Authorization": f"Bearer {stack.project.read_key}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_bot_events_are_counted_per_day_apart_from_the_visitor_figures(stack: Stack) -> None:
    now = datetime.now(UTC)
    yesterday = (now - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    # One batch: two visitors (the header's browser User-Agent) and two bots by context.userAgent,
    # one of them dated yesterday; then a single call whose own User-Agent header is a bot's.
    batch = {
        "writeKey": stack.project.write_key,
        "batch": [
            page("visitor-1", "good-1"),
            page("bot-1", "bot-requests", context={"userAgent": REQUESTS_UA}),
            page("visitor-2", "good-2"),
            page(
                "bot-2",
                "bot-yesterday",
                context={"userAgent": HEADLESS_UA},
                timestamp=yesterday.isoformat(),
                sentAt=now.isoformat(),
            ),
        ],
    }
    answer = (await stack.post("/v1/batch", batch)).json()
    assert (answer["accepted"], answer["rejected"], answer["bots"]) == (2, 0, 2)
    single = {"writeKey": stack.project.write_key, **page("bot-3", "bot-headless")}
    answer = (await stack.post("/v1/page", single, headers={"User-Agent": HEADLESS_UA})).json()
    assert (answer["accepted"], answer["bots"]) == (0, 1)

    # The visitor events are stored exactly as before; a reader of the events topic sees no bot.
    assert await stack.wait_count(2) == 2
    assert sorted(stack.rows("SELECT event_id FROM events FINAL")) == [("good-1",), ("good-2",)]
    on_events = await stack.read_topic(stack.topics.events, 3, timeout=2)
    assert sorted(decode_event(m.value).event_id for m in on_events) == ["good-1", "good-2"]
    on_bots = [decode_event(m.value) for m in await stack.read_topic(stack.topics.bots, 3)]
    assert {(e.event_id, e.browser, e.project_id) for e in on_bots} == {
        ("bot-requests", "Python Requests", stack.project.project_id),
        ("bot-yesterday", "HeadlessChrome", stack.project.project_id),
        ("bot-headless", "HeadlessChrome", stack.project.project_id),
    }

    await stack.until(lambda: stack.scalar("SELECT uniqExact(event_id) FROM bot_events") == 3)
    assert stack.rows(BOTS_PER_DAY) == [(yesterday.date(), 1), (now.date(), 2)]
    api_url = await stack.start_api()
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as api:

        async def today_counted() -> dict[str, Any] | None:
            body = await get(api, stack, "activity?days=3")
            return body if body["days"][-1]["page_views"] == 2 else None

        activity = await stack.until(today_counted)
        days = {d["day"]: d for d in activity["days"]}
        today, before = days[now.date().isoformat()], days[yesterday.date().isoformat()]
        assert (today["bots"], before["bots"]) == (2, 1)
        # The visitor figures count the two visitors only.
        assert (today["active_users"], today["new_users"], today["page_views"], today["events"]) == (
            2,
            2,
            2,
            2,
        )
        assert (before["active_users"], before["page_views"]) == (0, 0)
        assert activity["pipeline"]["bots_today"] == 2
        online = await get(api, stack, "online")
        assert online["pipeline"]["bots_today"] == 2 and online["online"] == 2

        # A restarted bots consumer whose offsets point past the log's end (the log started
        # over with its offsets kept) reads the log from its start: every bot event is written
        # again, and counted once.
        await push_offsets_past_end(stack)
        bots = stack.start_bots()
        await stack.until(lambda: bots.written == 3)
        assert stack.scalar("SELECT count() FROM bot_events") >= 3
        assert stack.rows(BOTS_PER_DAY) == [(yesterday.date(), 1), (now.date(), 2)]
        activity = await get(api, stack, "activity?days=3")
        assert [d["bots"] for d in activity["days"][-2:]] == [1, 2]
        assert activity["pipeline"]["bots_today"] == 2


async def push_offsets_past_end(stack: Stack) -> None:
    """Commit offsets past the end of every partition for the bots consumer's group, through its
    running consumer (a member of the group: no other client may commit for it), then stop it."""
    assert stack.bots is not None and stack.bots.consumer is not None
    consumer = stack.bots.consumer
    partitions = sorted(consumer.assignment())
    assert len(partitions) == stack.settings.topic_partitions
    ends = await log_ends_at(stack.bootstrap, partitions)
    await consumer.commit({tp: end + 100 for tp, end in ends.items()})
    assert [await consumer.committed(tp) for tp in partitions] == [ends[tp] + 100 for tp in partitions]
    await stack.stop_bots()


async def test_a_project_with_only_bot_events_says_so(stack: Stack) -> None:
    """The case that looked like a broken setup: a script sends events, all filtered."""
    for i in range(3):
        body = {"writeKey": stack.project.write_key, **page("script", f"scripted-{i}")}
        answer = (await stack.post("/v1/page", body, headers={"User-Agent": REQUESTS_UA})).json()
        assert (answer["accepted"], answer["bots"]) == (0, 1)
    await stack.until(lambda: stack.scalar("SELECT uniqExact(event_id) FROM bot_events") == 3)
    api_url = await stack.start_api()
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as api:
        activity = await get(api, stack, "activity?days=1")
    assert activity["days"][0]["events"] == 0 and activity["days"][0]["bots"] == 3
    assert activity["pipeline"]["bots_today"] == 3
    assert stack.scalar("SELECT count() FROM events") == 0
