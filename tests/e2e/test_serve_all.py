"""`werkstroom serve --target all` as `make run` starts it: a real process with the embedded
broker and ClickHouse, driven over HTTP and the CLI, stopped by signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.runs import CLI, post, serve_env, start_serve

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def wait(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Path]]:
    env = serve_env(tmp_path / "data", WERKSTROOM_KEY_REFRESH_SECONDS="0.5")
    proc, banner = start_serve(env, tmp_path)
    try:
        yield proc, {**env, "BANNER": banner}, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_make_run_path_serves_the_whole_pipeline_and_stops_cleanly(server) -> None:  # type: ignore[no-untyped-def]
    proc, env, tmp_path = server
    banner = env["BANNER"]
    ingest = f"http://127.0.0.1:{env['WERKSTROOM_INGEST_PORT']}"
    write_key = re.search(r"write key \(public, for the snippet\)\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
    assert re.search(r"read key \(secret, for the API\)\s+rk_\S+", banner)
    assert f"{ingest}/docs" in banner

    status, answer, _ = post(
        f"{ingest}/v1/page",
        {"writeKey": write_key, "anonymousId": "v1", "properties": {"url": "https://example.com/"}},
    )
    assert (status, answer["accepted"]) == (200, 1)
    wait(lambda: metric(ingest, "werkstroom_sink_rows_written_total") >= 1)

    # A second process cannot open the embedded ClickHouse: it says so and why, no traceback.
    locked = subprocess.run(
        [*CLI, "migrate"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert locked.returncode == 2
    assert "already open by pid" in locked.stderr and "Traceback" not in locked.stderr

    # ... but `projects create` goes through the running server's API, and ingest accepts
    # the new key within seconds, without a restart.
    created = subprocess.run(
        [*CLI, "projects", "create", "Second site", "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    second = json.loads(created.stdout)
    assert second["read_key"].startswith("rk_") and second["name"] == "Second site"
    wait(
        lambda: (
            post(
                f"{ingest}/v1/track", {"writeKey": second["write_key"], "anonymousId": "x", "event": "Hello"}
            )[0]
            == 200
        ),
        timeout=10,
    )
    wait(lambda: metric(ingest, "werkstroom_sink_rows_written_total") >= 2)

    # `make demo`: history, a funnel and live visitors through the running server; the funnel
    # CLI reaches it through the API with the read key.
    demo = subprocess.run(
        [*CLI, "demo", "--visitors", "20", "--days", "35", "--live", "2", "--seconds", "0"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert "created the funnel 'Pricing to order'" in demo.stdout
    keys = json.loads((tmp_path / "data" / "demo.json").read_text())
    listed = subprocess.run(
        [*CLI, "funnels", "list", keys["project_id"], "--read-key", keys["read_key"], "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert [f["name"] for f in json.loads(listed.stdout)] == ["Pricing to order"]
    api = f"http://127.0.0.1:{env['WERKSTROOM_API_PORT']}/api/projects/{keys['project_id']}"

    def users() -> int:
        request = urllib.request.Request(
            f"{api}/users?limit=500", headers={"Authorization": f"Bearer {keys['read_key']}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return len(json.loads(response.read())["users"])

    wait(lambda: users() >= 10, timeout=30)

    kids = children(proc.pid)
    assert kids, "the embedded broker runs as a child process"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    wait(lambda: not any(alive(k) for k in kids), timeout=10)
    assert not (tmp_path / "data" / "runtime.json").exists()


def test_killed_server_leaves_no_orphan_broker(server) -> None:  # type: ignore[no-untyped-def]
    proc, _env, _tmp = server
    kids = children(proc.pid)
    assert kids
    proc.kill()  # no chance to clean up: the broker must die with its parent anyway
    proc.wait(10)
    wait(lambda: not any(alive(k) for k in kids), timeout=10)


def test_a_separate_target_without_kafka_explains_what_to_set(tmp_path: Path) -> None:
    env = {**os.environ, "WERKSTROOM_DATA_DIR": str(tmp_path)}
    env.pop("WERKSTROOM_KAFKA_BOOTSTRAP", None)
    result = subprocess.run(
        [*CLI, "serve", "--target", "ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "WERKSTROOM_KAFKA_BOOTSTRAP" in result.stderr
