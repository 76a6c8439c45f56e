"""Ingest sends bot events to the bots topic without letting them cost the visitor events
anything: the answer never waits for them, and their failure changes nothing in it."""

from __future__ import annotations

import asyncio

import orjson
from aiokafka.errors import KafkaConnectionError

from tests.unit.ingest.test_app import KEY, FakePublisher, make
from werkstroom import metrics
from werkstroom.contract import decode_event

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
HEADLESS = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0 Safari/537.36"


def batch() -> bytes:
    def call(message_id: str, agent: str) -> dict[str, object]:
        return {
            "type": "page",
            "anonymousId": message_id,
            "messageId": message_id,
            "context": {"userAgent": agent},
        }

    items = [call("human-1", BROWSER), call("bot-1", "python-requests/2.31.0"), call("bot-2", HEADLESS)]
    return orjson.dumps({"writeKey": KEY, "batch": items})


class BotsTopic(FakePublisher):
    """Publishes like FakePublisher, except to the bots topic: that send hangs or fails."""

    def __init__(self, bots_topic: str, *, fail: bool) -> None:
        super().__init__()
        self.bots_topic = bots_topic
        self.fail = fail
        self.release = asyncio.Event()

    async def publish(self, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        if topic == self.bots_topic:
            if self.fail:
                raise KafkaConnectionError("the bots topic is unreachable")
            await self.release.wait()
        await super().publish(topic, messages)


async def test_bot_events_go_to_the_bots_topic_and_visitors_to_the_events_topic() -> None:
    ingestor, publisher, settings = make()
    answer = await ingestor.handle(None, {}, batch())
    assert (answer.status, answer.body["accepted"], answer.body["bots"]) == (200, 1, 2)
    await asyncio.gather(*ingestor.s.bot_sends)
    assert [decode_event(v).event_id for _k, v in publisher.sent[settings.topic_events]] == ["human-1"]
    bots = [decode_event(v) for _k, v in publisher.sent[settings.topic_bots]]
    assert [(e.event_id, e.browser) for e in bots] == [
        ("bot-1", "Python Requests"),
        ("bot-2", "HeadlessChrome"),
    ]


async def test_the_answer_does_not_wait_for_the_bots_topic() -> None:
    ingestor, _publisher, settings = make(produce_timeout_ms=5000)
    hanging = BotsTopic(settings.topic_bots, fail=False)
    ingestor.s.publisher = hanging  # type: ignore[assignment]
    answer = await ingestor.handle(None, {}, batch())
    assert (answer.status, answer.body["accepted"], answer.body["bots"]) == (200, 1, 2)
    assert [k for k, _v in hanging.sent[settings.topic_events]] and settings.topic_bots not in hanging.sent
    assert len(ingestor.s.bot_sends) == 1  # still waiting for its acknowledgement
    hanging.release.set()
    await asyncio.gather(*ingestor.s.bot_sends)
    assert len(hanging.sent[settings.topic_bots]) == 2


async def test_a_failing_bots_topic_changes_nothing_in_the_answer() -> None:
    ingestor, _publisher, settings = make()
    failing = BotsTopic(settings.topic_bots, fail=True)
    ingestor.s.publisher = failing  # type: ignore[assignment]
    unsent = metrics.INGEST_BOT_EVENTS_UNSENT._value.get()
    answer = await ingestor.handle(None, {}, batch())
    assert (answer.status, answer.body["accepted"], answer.body["bots"]) == (200, 1, 2)
    await asyncio.gather(*ingestor.s.bot_sends)
    assert metrics.INGEST_BOT_EVENTS_UNSENT._value.get() == unsent + 2
    assert len(failing.sent[settings.topic_events]) == 1
