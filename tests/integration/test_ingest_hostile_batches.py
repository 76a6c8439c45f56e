"""Generated hostile batches through the real HTTP ingest -> Kafka -> sink -> ClickHouse.

A seeded generator (the same items every run; change SEED to explore) builds a few thousand
items with random types at every field, deep nesting up to what orjson parses, extreme dates
and zones, big numbers and long strings, sent in batches and as single calls. Then: no answer
is 5xx, the answers' counts add up, every accepted event is a row of `events` (count and
ids), its time lies within the time policy, and every rejected one is on the dead-letter topic.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.integration.stack import Stack
from werkstroom.contract import EARLIEST_TIME, FUTURE_TOLERANCE, MAX_DEPTH

pytestmark = pytest.mark.integration

SEED = 17
BATCHES = 50
PER_BATCH = 60
SINGLES = 150
BROWSERS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
]


class Text:
    """JSON written as it is (orjson parses 1,024 levels and numbers it would not write)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=lambda v: orjson.Fragment(v.raw))


class Generator:
    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.n = 0

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                2**63 - 1,
                -(2**63),
                2**64 - 1,
                1.7e308,
                -0.0,
                5e-324,
                "",
                "x",
                "\x00\x1f",
                "é€😀\u2028",
                "{[",
                "y" * r.choice([10, 199, 201, 2000]),
                Text(b"1" + b"0" * 30),  # parsed as a float
                Text(b"-1e-400"),  # underflows to -0.0
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 2 or r < 0.5:
            return self.scalar()
        if r < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        return {f"k{i}": self.value(depth + 1) for i in range(self.rng.randint(0, 3))}

    def deep(self) -> Any:
        levels = self.rng.choice(
            [MAX_DEPTH - 3, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 200, 254, 255, 600, 1015]
        )
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return Text(opener * levels + b"1" + closer * levels)

    def time(self) -> Any:
        r = self.rng
        kind = r.random()
        if kind < 0.6:  # near now, around the 60 s tolerance
            offset = timedelta(seconds=r.choice([-86400, -30, 0, 59, 61, 3600, 86400 * 365 * 80]))
            return (self.now + offset).isoformat().replace("+00:00", "Z")
        if kind < 0.9:
            year = r.choice([1, 1899, 1900, 1970, 1999, 2000, 2099, 2100, 2149, 2150, 2299, 2300, 9999])
            zone = r.choice(["Z", "+00:00", "-23:59", "+23:59", "+05:30", ""])
            return f"{year:04d}-{r.randint(1, 12):02d}-28T{r.randint(0, 23):02d}:30:00.123{zone}"
        return r.choice(
            [None, "", "yesterday", "2026-13-01", "2026-01-01T00:00:00+99:00", 1732000000, [], {}]
        )

    def item(self) -> tuple[Any, str | None]:
        """One call, and the messageId it will be stored under (None: generated or rejected)."""
        r = self.rng
        self.n += 1
        if r.random() < 0.03:
            return r.choice([[1, 2], "text", 7, None, self.deep()]), None
        kind = r.choice(["track", "page", "identify", "alias"])
        message_id = f"h-{SEED}-{self.n}"
        call: dict[str, Any] = {
            "type": kind,
            "anonymousId": f"anon-{self.n % 40}",
            "userId": f"user-{self.n % 7}",
            "previousId": "prev",
            "event": f"Event {self.n % 300}",
            "messageId": message_id,
            "timestamp": self.time(),
            "context": {"userAgent": r.choice(BROWSERS), "page": {"url": "https://shop.example/p?q=1"}},
            "properties": {"price": 19.99, "tags": ["a", "b"]},
        }
        if r.random() < 0.3:
            call["sentAt"] = self.time()
        fields = [
            "type", "anonymousId", "userId", "previousId", "event", "messageId", "timestamp",
            "originalTimestamp", "sentAt", "properties", "traits", "context", "sessionId", "name",
        ]  # fmt: skip
        for field in r.sample(fields, r.randint(0, 3)):
            call[field] = self.deep() if r.random() < 0.1 else self.value()
        if r.random() < 0.1:
            call["context"] = {
                "page": {"url": r.choice(["http://[::1", "https://x\uff0fy.example/", "", self.value()])},
                "userAgent": r.choice([*BROWSERS, "", 5, ["x"]]),
                "library": r.choice([{"name": "analytics-python"}, "x", {"name": [1]}]),
                "traits": self.value(),
                "sessionId": self.value(),
            }
        if r.random() < 0.02:
            call["properties"] = {"blob": "z" * 40_000}  # too large for a batch item
        if isinstance(call.get("messageId"), str) and call["messageId"] != message_id:
            call["messageId"] += f"#{self.n}"  # ids are unique: rows collapse on event_id
        return call, message_id if call.get("messageId") == message_id else None


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_generated_hostile_batches_never_5xx_and_every_accepted_event_lands(stack: Stack) -> None:
    now = datetime.now(UTC)
    gen = Generator(SEED, now)
    key = stack.project.write_key
    accepted = rejected = 0
    stored_ids: set[str] = set()  # messageIds of accepted items
    statuses: dict[int, int] = {}

    for _ in range(BATCHES):
        pairs = [gen.item() for _ in range(PER_BATCH)]
        body: dict[str, Any] = {"writeKey": key, "batch": [item for item, _ in pairs]}
        if gen.rng.random() < 0.15:
            body["sentAt"] = gen.rng.choice([iso(now), gen.time()])
        response = await stack.post("/v1/batch", dumps(body))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        answer = response.json()
        if response.status_code != 200:  # the batch's own sentAt: the whole batch, as documented
            assert (response.status_code, answer["reason"], answer["field"]) == (
                400,
                "invalid_time",
                "sentAt",
            )
            continue
        assert answer["bots"] == 0
        assert answer["accepted"] + answer["rejected"] == len(pairs)
        bad = {e["index"] for e in answer["errors"]}
        assert len(bad) == answer["rejected"] and all(e["reason"] and e["message"] for e in answer["errors"])
        accepted += answer["accepted"]
        rejected += answer["rejected"]
        stored_ids |= {mid for i, (_item, mid) in enumerate(pairs) if mid and i not in bad}

    for _ in range(SINGLES):
        item, message_id = gen.item()
        text = dumps(item)
        if text.startswith(b"{"):
            text = b'{"writeKey":' + orjson.dumps(key) + (b"," if len(text) > 2 else b"") + text[1:]
        response = await stack.post("/v1/track", text)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        answer = response.json()
        if response.status_code == 200:
            accepted += answer["accepted"]
            if message_id:
                stored_ids.add(message_id)
        else:
            assert response.status_code in (400, 401, 413), answer
            assert answer["reason"] and answer["success"] is False
            rejected += response.status_code == 400 and answer["reason"] != "not_an_object"

    assert accepted > 500 and rejected > 200, (accepted, rejected, statuses)
    where = "FROM events FINAL WHERE project_id = {p:String}"
    dead: list[dict[str, Any]] = []
    try:
        await stack.wait_count(accepted, f"SELECT count() {where}", p=stack.project.project_id)
    finally:
        # One more than ingest wrote, to see any the sink added: an event ingest accepted that
        # broke the contract (its reason says why).
        dead = [
            orjson.loads(m.value) for m in await stack.read_topic(stack.topics.dead_letter, rejected + 1, 3)
        ]
        assert not [d for d in dead if d["source"] != "ingest"], dead[-3:]
    stored = stack.scalar(f"SELECT count() {where}", p=stack.project.project_id)
    assert stored == accepted, f"{stored} rows for {accepted} accepted events"
    assert len(dead) == rejected and all(d["reason"] and d["raw"] for d in dead)
    rows = stack.rows(f"SELECT event_id, timestamp, received_at, sent_at {where}", p=stack.project.project_id)
    assert stored_ids <= {row[0] for row in rows}
    for _event_id, timestamp, received_at, sent_at in rows:
        timestamp, received_at = timestamp.replace(tzinfo=UTC), received_at.replace(tzinfo=UTC)
        assert EARLIEST_TIME <= timestamp <= received_at + FUTURE_TOLERANCE
        assert sent_at is None or 1900 <= sent_at.year < 2300


async def test_one_address_cannot_spend_the_whole_project_budget(infra, names, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        sink=False,
        rate_limit_eps=10,
        rate_limit_burst=10,
        rate_limit_client_share=0.2,
    ) as stack:
        batch = {
            "writeKey": stack.project.write_key,
            "batch": [{"type": "track", "anonymousId": "r", "event": "E"}] * 2,
        }
        assert (await stack.post("/v1/batch", batch)).status_code == 200
        refused = await stack.post("/v1/batch", batch)
        assert (refused.status_code, refused.json()["reason"]) == (429, "client_rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        # Untrusted, X-Forwarded-For is whatever the sender wrote: it changes nothing.
        spoofed = await stack.post("/v1/batch", batch, headers={"X-Forwarded-For": "198.51.100.50"})
        assert (spoofed.status_code, spoofed.json()["reason"]) == (429, "client_rate_limited")


async def test_behind_a_trusted_proxy_each_forwarded_client_gets_a_share(infra, names, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with Stack(
        infra.bootstrap,
        infra.clickhouse_url,
        names,
        data_dir=tmp_path,
        sink=False,
        rate_limit_eps=10,
        rate_limit_burst=10,
        rate_limit_client_share=0.2,
        trust_forwarded_for=True,
    ) as stack:
        batch = {
            "writeKey": stack.project.write_key,
            "batch": [{"type": "track", "anonymousId": "r", "event": "E"}] * 2,
        }
        proxy = {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}  # the right-most entry counts
        assert (await stack.post("/v1/batch", batch, headers=proxy)).status_code == 200
        refused = await stack.post(
            "/v1/batch", batch, headers={"X-Forwarded-For": "203.0.113.8, 198.51.100.1"}
        )
        assert (refused.status_code, refused.json()["reason"]) == (429, "client_rate_limited")
        # Other visitors get a share each; the refused request cost the project nothing (8 left).
        for i in range(2, 6):
            forwarded = {"X-Forwarded-For": f"198.51.100.{i}"}
            assert (await stack.post("/v1/batch", batch, headers=forwarded)).status_code == 200, i
        spent = await stack.post("/v1/batch", batch, headers={"X-Forwarded-For": "198.51.100.99"})
        assert (spent.status_code, spent.json()["reason"]) == (429, "rate_limited")
