"""start_producer: a broker declared without an idempotent producer (the embedded tansu) is not
asked for one, and that is said once, at info; any other broker is asked, and a refusal there
stays a warning."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from aiokafka.errors import KafkaError

from werkstroom import kafka


class FakeProducer:
    """Records how it was made; refuses to start idempotent when the class says so."""

    made: ClassVar[list[dict[str, Any]]] = []
    refuse_idempotence = False

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.started = False
        FakeProducer.made.append(options)

    async def start(self) -> None:
        if self.options.get("enable_idempotence") and FakeProducer.refuse_idempotence:
            raise KafkaError("UnknownError")
        self.started = True

    async def stop(self) -> None:
        self.started = False


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, event: str, **_: Any) -> None:
        self.lines.append(("info", event))

    def warning(self, event: str, **_: Any) -> None:
        self.lines.append(("warning", event))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    FakeProducer.made = []
    FakeProducer.refuse_idempotence = False
    monkeypatch.setattr(kafka, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(kafka, "_NO_IDEMPOTENCE", set())
    recorder = Recorder()
    monkeypatch.setattr(kafka, "log", recorder)
    return recorder


async def test_a_broker_declared_without_idempotence_is_not_asked_and_it_is_said_once(
    recorder: Recorder,
) -> None:
    kafka.without_idempotence("127.0.0.1:9", reason="embedded")
    kafka.without_idempotence("127.0.0.1:9", reason="embedded")
    for client_id in ("werkstroom", "werkstroom-sink"):
        producer = await kafka.start_producer("127.0.0.1:9", client_id=client_id)
        assert producer.started  # type: ignore[attr-defined]
    assert [options.get("enable_idempotence") for options in FakeProducer.made] == [None, None]
    assert all(options["acks"] == "all" for options in FakeProducer.made)
    assert recorder.lines == [("info", "kafka_idempotence_off")]


async def test_any_other_broker_is_asked_and_a_refusal_is_a_warning(recorder: Recorder) -> None:
    kafka.without_idempotence("127.0.0.1:9", reason="embedded")
    recorder.lines.clear()
    producer = await kafka.start_producer("kafka:9092")
    assert producer.started  # type: ignore[attr-defined]
    assert FakeProducer.made[0]["enable_idempotence"] is True
    assert recorder.lines == []

    FakeProducer.made = []
    FakeProducer.refuse_idempotence = True
    producer = await kafka.start_producer("kafka:9092")
    assert producer.started  # type: ignore[attr-defined]
    assert [options.get("enable_idempotence") for options in FakeProducer.made] == [True, None]
    assert recorder.lines == [("warning", "kafka_idempotence_unavailable")]
