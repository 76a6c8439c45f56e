"""The API inside `werkstroom serve --target all`: the demo project's read key opens the
dashboard endpoints, and an open live stream (SSE) ends cleanly and at once when the server
is stopped, instead of being cut after uvicorn's graceful-drain timeout."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.runs import serve_env, start_serve

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT = 5.0  # uvicorn's timeout_graceful_shutdown in werkstroom/serve.py


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    env = serve_env(tmp_path / "data")
    proc, banner = start_serve(env, tmp_path)
    try:
        read_key = re.search(r"read key \(secret, for the API\)\s+(\S+)", banner)
        assert read_key is not None, banner
        yield proc, f"http://127.0.0.1:{env['WERKSTROOM_API_PORT']}", read_key.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_live_stream_ends_cleanly_when_the_server_stops(
    served: tuple[subprocess.Popen[str], str, str],
) -> None:
    proc, api, read_key = served
    headers = {"Authorization": f"Bearer {read_key}"}
    me = httpx.get(f"{api}/api/me", headers=headers, timeout=10).json()
    project = me["project_id"]
    for path in ("online", "metrics", "activity", "users", "funnels", "snippet"):
        response = httpx.get(f"{api}/api/projects/{project}/{path}", headers=headers, timeout=10)
        assert response.status_code == 200, (path, response.text)

    with httpx.stream("GET", f"{api}/api/projects/{project}/live", headers=headers, timeout=20) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                assert orjson.loads(line[5:])["online"] == 0
                break
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = list(lines)  # a reset or a cut stream would raise here
    ended = time.monotonic() - stopped
    assert ended < DRAIN_TIMEOUT - 2, f"the stream lasted {ended:.1f} s after SIGTERM"
    assert all(line == "" or line.startswith(":") for line in rest), rest
    assert proc.wait(30) == 0
