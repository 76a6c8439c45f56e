"""The real Segment Python SDK, pointed at our ingest, sends unchanged and the events land."""

from __future__ import annotations

import asyncio

import pytest
from segment.analytics import Client

from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("gzip", [False, True])
async def test_segment_python_sdk_events_land_in_clickhouse(stack: Stack, gzip: bool) -> None:
    errors: list[Exception] = []
    client = Client(
        write_key=stack.project.write_key,
        host=stack.ingest_url,
        gzip=gzip,
        sync_mode=False,
        max_retries=1,
        on_error=lambda error, _items: errors.append(error),
    )

    def send() -> None:
        client.identify("user-7", {"plan": "premium", "email": "u7@example.com"}, anonymous_id="anon-7")
        client.track("user-7", "Order Completed", {"revenue": 42.5}, anonymous_id="anon-7")
        client.page(
            "user-7", "Docs", "Getting started", {"url": "https://ex.com/docs/start", "path": "/docs/start"}
        )
        client.alias("anon-7", "user-7")
        client.flush()
        client.join()

    await asyncio.to_thread(send)
    assert errors == []
    assert await stack.wait_count(4) == 4
    rows = stack.rows(
        "SELECT type, event, user_id, anonymous_id, previous_id, path, library, traits "
        "FROM events FINAL ORDER BY type"
    )
    assert rows == [
        ("alias", "$alias", "user-7", "", "anon-7", "", "analytics-python", "{}"),
        (
            "identify",
            "$identify",
            "user-7",
            "anon-7",
            "",
            "",
            "analytics-python",
            '{"plan":"premium","email":"u7@example.com"}',
        ),
        ("page", "$page", "user-7", "", "", "/docs/start", "analytics-python", "{}"),
        ("track", "Order Completed", "user-7", "anon-7", "", "", "analytics-python", "{}"),
    ]
    props = stack.scalar("SELECT properties FROM events FINAL WHERE type = 'page'")
    assert '"name":"Getting started"' in props and '"category":"Docs"' in props
