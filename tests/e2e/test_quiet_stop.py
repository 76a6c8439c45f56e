"""Issue 21: `make run` and Ctrl-C print nothing alarming. A real `werkstroom serve --target all`
(embedded broker and ClickHouse) with Python's warnings shown, started in a session of its own
and stopped the way a terminal's Ctrl-C does it: the signal goes to the whole process group,
the embedded broker included. Every stderr line must be a JSON log line below warning level;
the embedded broker's missing idempotent producer is said once, at info."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.runs import post, serve_env, start_serve
from tests.e2e.test_serve_all import alive, children, metric, wait

pytestmark = pytest.mark.integration

BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def parse(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON log records, and every line that is not one (warnings, tracebacks)."""
    records, other = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            other.append(line)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            other.append(line)
    return records, other


# SIGINT, as a terminal's Ctrl-C sends it to the whole group; SIGTERM takes the same path in
# serve (one handler), and the drain tests stop with it.
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["SIGINT"])
def test_an_orderly_stop_logs_no_warning_and_no_error(tmp_path: Path, sig: signal.Signals) -> None:
    env = serve_env(
        tmp_path / "data",
        WERKSTROOM_LOG_FORMAT="json",
        WERKSTROOM_LOG_LEVEL="INFO",
        PYTHONWARNINGS="default",
    )
    ingest = f"http://127.0.0.1:{env['WERKSTROOM_INGEST_PORT']}"
    log_path = tmp_path / "serve.log"
    # its own process group, as a terminal's foreground job
    proc, _ = start_serve(env, tmp_path, start_new_session=True)
    try:
        write_key = json.loads((tmp_path / "data" / "demo.json").read_text())["write_key"]
        batch = [{"type": "track", "event": "Quiet", "anonymousId": f"v{i}"} for i in range(5)]
        status, body, _ = post(f"{ingest}/v1/batch", {"writeKey": write_key, "batch": batch})
        assert (status, body["accepted"]) == (200, 5)
        # A bot's event too: ingest sends it to the bots topic, for the bots consumer.
        bot = {"writeKey": write_key, "anonymousId": "crawler", "event": "Quiet"}
        assert post(f"{ingest}/v1/track", bot, user_agent=BOT_UA)[0] == 200
        wait(lambda: metric(ingest, "werkstroom_sink_rows_written_total") >= 5, timeout=20)
        wait(lambda: metric(ingest, "werkstroom_bots_rows_written_total") >= 1, timeout=10)
        kids = children(proc.pid)
        assert kids, "the embedded broker runs as a child process"

        os.killpg(proc.pid, sig)  # the whole group, as Ctrl-C in a terminal does
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    records, other = parse(log_path.read_text().splitlines())
    assert other == [], "stderr holds lines that are not log records (warnings?):\n" + "\n".join(other)
    loud = [r for r in records if r.get("level") not in ("debug", "info")]
    assert loud == [], loud
    events = [r.get("event") for r in records]
    assert events.count("kafka_idempotence_off") == 1
    drained = [r for r in records if r.get("event") == "drain_finished"]
    assert len(drained) == 1 and drained[0]["complete"] is True
    # The broker stops last: after every Kafka client in the process has closed.
    stopped = events.index("embedded_kafka_stopped")
    for client in ("sink_stopped", "bots_sink_stopped", "drain_finished"):
        assert events.index(client) < stopped, client
    wait(lambda: not any(alive(k) for k in kids), timeout=10)
