"""The embedded broker's memory bound (werkstroom.rotation, issue 18): `serve --target all` swaps
its events topic for an empty one whenever it holds WERKSTROOM_EMBEDDED_BROKER_MAX_EVENTS. Under
steady traffic from returning visitors, across several swaps, every acknowledged event is stored
once and counted once: in events, sessions, events_daily and daily_stats."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.test_graceful_drain import COUNTED, Serve, post

pytestmark = pytest.mark.integration

QUERIES = {
    **COUNTED,
    "sessions": "SELECT sum(events) FROM sessions FINAL WHERE project_id = {p:String}",
    "generations": "SELECT max(generation) FROM sink_partitions FINAL",
    "bots": "SELECT uniqExact(event_id) FROM bot_events WHERE project_id = {p:String}",
}

LIMIT = 3_000  # events in the topic before a swap


def test_steady_traffic_across_topic_swaps_is_counted_once(tmp_path: Path) -> None:
    serve = Serve(tmp_path, WERKSTROOM_EMBEDDED_BROKER_MAX_EVENTS=str(LIMIT), WERKSTROOM_LOG_LEVEL="INFO")
    try:
        sent = {"acknowledged": 0, "refused": 0, "next": 0, "bots": 0, "letters": 0}
        script = {"userAgent": "python-requests/2.31.0"}
        stop = threading.Event()

        def traffic() -> None:  # ~1,000 events/s from 500 returning visitors, until told
            while not stop.is_set():
                # A 503 (or 429) is allowed: the client sends the same events again after
                # Retry-After, as the SDKs and the tracker do (Serve.deliver). A loss is not.
                accepted = serve.deliver(sent["next"], 100)
                sent["next"] += 100
                sent["acknowledged"] += accepted
                sent["refused"] += 100 - accepted
                # and 50 from a script: filtered as bots, their topic swapped on its own
                bots = [
                    {
                        "type": "page",
                        "anonymousId": "script",
                        "messageId": f"b{sent['next']}-{i}",
                        "context": script,
                    }
                    for i in range(50)
                ]
                status, body, _ = post(
                    f"{serve.ingest}/v1/batch", {"writeKey": serve.demo["write_key"], "batch": bots}
                )
                if status == 200:
                    sent["bots"] += int(body["bots"])
                # and 40 that break the contract (no event name): dead letters, dropped past LIMIT
                bad = [
                    {"type": "track", "anonymousId": "x", "messageId": f"d{sent['next']}-{i}"}
                    for i in range(40)
                ]
                status, body, _ = post(
                    f"{serve.ingest}/v1/batch", {"writeKey": serve.demo["write_key"], "batch": bad}
                )
                if status == 200:
                    sent["letters"] += int(body["rejected"])
                time.sleep(0.1)

        sender = threading.Thread(target=traffic)
        sender.start()
        deadline = time.monotonic() + 120
        while len(serve.logged("embedded_topic_rotated")) < 3 and time.monotonic() < deadline:
            assert serve.proc.poll() is None, serve.log_path.read_text()[-3000:]
            time.sleep(0.5)
        stop.set()
        sender.join(30)
        rotations = serve.logged("embedded_topic_rotated")
        assert len(rotations) >= 3, serve.log_path.read_text()[-3000:]
        assert all(r["events"] >= LIMIT for r in rotations)
        assert not serve.logged("embedded_rotation_failed")
        # A graceful stop drains what the last topic holds (tested in test_graceful_drain).
        code, _ = serve.stop()
        assert code == 0, serve.log_path.read_text()[-3000:]
    finally:
        serve.kill()

    counts = serve.counts(QUERIES)
    total = sent["acknowledged"]
    assert total >= 3 * LIMIT and sent["refused"] == 0, sent
    assert counts.pop("generations") >= 3  # each swap began a new generation of positions
    assert not serve.logged("bot_events_unsent")
    # The dead-letter topic is emptied past the same size (it has no reader here).
    assert sent["letters"] >= LIMIT and serve.logged("embedded_dead_letters_dropped"), sent
    assert serve.logged("embedded_bots_topic_rotated") and serve.logged("bots_topic_started_over")
    assert counts.pop("bots") == sent["bots"] > 0, (counts, sent)  # none skipped at a swap, none twice
    assert counts == dict.fromkeys(counts, total), (counts, sent)
    sys.stderr.write(f"rotation test: {sent} {counts}\n")
