"""`make demo` against `make run`: a real `werkstroom serve --target all`, then `werkstroom demo`
as a subprocess, as a new user runs them. Every view of the dashboard then has something to
show, checked through the API (not through the demo's own reads), and the figures the demo
printed are the API's."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.runs import CLI
from tests.e2e.test_graceful_drain import Serve

pytestmark = pytest.mark.integration

SEGMENTS = ("active", "inactive", "churned", "premium", "trial")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    # The ingest rate limit as `make run` has it (Serve turns it off by default).
    server = Serve(tmp_path, WERKSTROOM_RATE_LIMIT_EPS="5000")
    try:
        yield server
    finally:
        server.kill()


def get(server: Serve, path: str) -> Any:
    request = urllib.request.Request(
        f"{server.api}/api/projects/{server.demo['project_id']}{path}",
        headers={"Authorization": f"Bearer {server.demo['read_key']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def users(server: Serve, segment: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = get(server, f"/users?segment={segment}&limit=500" + (f"&cursor={cursor}" if cursor else ""))
        found += page["users"]
        if not page["next_cursor"]:
            return found
        cursor = page["next_cursor"]


def printed(stdout: str) -> dict[str, Any]:
    """The figures from the demo's "what the dashboard shows" block."""

    def number(pattern: str) -> int:
        match = re.search(pattern, stdout)
        assert match, f"{pattern!r} not in:\n{stdout}"
        return int(match.group(1))

    funnel = re.search(r"last 30 days: step 1: (\d+), step 2: (\d+) .*, step 3: (\d+)", stdout)
    assert funnel, stdout
    return {
        "persons": number(r"persons\s+(\d+) "),
        "total_users": number(r"total users card (\d+)"),
        "new_this_week": number(r"new this week (\d+)"),
        **{s: number(rf"\b{s} (\d+)") for s in SEGMENTS},
        "returning": number(r"returning\s+(\d+) persons"),
        "most_sessions": number(r"\(most: (\d+)\)"),
        "funnel": [int(n) for n in funnel.groups()],
        "online": number(r"online now\s+(\d+)"),
        "stuck": number(r"stuck (\d+) \(on one page"),
        "bots": number(r"bots\s+(\d+) bot events"),
    }


def test_make_demo_fills_every_view_and_prints_the_apis_figures(serve: Serve) -> None:
    started = time.monotonic()
    demo = subprocess.run(
        [*CLI, "demo"], env=serve.env, cwd=serve.tmp, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
    assert "equal to those expected from the generated history" in demo.stdout, demo.stdout
    assert took < 30, f"the demo took {took:.1f} s"
    summary = demo.stdout.strip().splitlines()
    assert any(line.startswith("demo ready in ") for line in summary[-2:]), demo.stdout
    shown = printed(demo.stdout)

    # Every segment has persons; one of them came back more than 20 times.
    lists = {s: users(serve, s) for s in ("all", *SEGMENTS)}
    assert all(lists[s] for s in SEGMENTS), {s: len(lists[s]) for s in SEGMENTS}
    assert max(u["sessions"] for u in lists["all"]) > 20
    assert {u["plan"] for u in lists["premium"]} == {"premium"}
    assert {u["segment"] for u in lists["churned"]} == {"churned"}

    # The demo's funnel, with a step that loses more than half.
    funnels = get(serve, "/funnels")["funnels"]
    assert [f["name"] for f in funnels] == ["Pricing to order"]
    report = get(serve, f"/funnels/{funnels[0]['funnel_id']}?days=30")
    assert any(s["high_drop_off"] and s["drop_off_pct"] > 50 for s in report["steps"]), report["steps"]

    # Visitors online now, at least two of them stuck on one page (and still online).
    online = get(serve, "/online?limit=1000")
    stuck = [u for u in online["users"] if u["stuck"]]
    assert len(stuck) >= 2 and all(u["time_on_page_seconds"] > 300 for u in stuck)

    metrics = get(serve, "/metrics")
    api = {
        "persons": len(lists["all"]),
        "total_users": metrics["metrics"]["total_users"]["value"],
        "new_this_week": metrics["metrics"]["new_this_week"]["value"],
        **{s: len(lists[s]) for s in SEGMENTS},
        "returning": sum(1 for u in lists["all"] if u["sessions"] > 20),
        "most_sessions": max(u["sessions"] for u in lists["all"]),
        "funnel": [s["count"] for s in report["steps"]],
        "online": online["online"],
        "stuck": len(stuck),
        "bots": metrics["pipeline"]["bots_today"],
    }
    assert shown == api
