"""`werkstroom funnels create|list|delete` on the embedded ClickHouse, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "werkstroom"]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WERKSTROOM_DATA_DIR": str(tmp_path), "WERKSTROOM_LOG_LEVEL": "warning"}
    env.pop("WERKSTROOM_CLICKHOUSE_URL", None)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_funnels_cli_creates_lists_rejects_and_deletes(tmp_path: Path) -> None:
    project = json.loads(run(tmp_path, "projects", "create", "Shop", "--json").stdout)["project_id"]
    created = run(
        tmp_path,
        *("funnels", "create", project, "Checkout", "--step", "$page@/pricing", "--step", "Signed Up"),
        *("--window", "3600", "--json"),
    )
    assert created.returncode == 0, created.stderr
    funnel = json.loads(created.stdout)
    assert funnel["steps"] == [{"event": "$page", "path": "/pricing"}, {"event": "Signed Up", "path": ""}]
    assert funnel["window_seconds"] == 3600 and funnel["funnel_id"].startswith("f_")
    assert funnel["backfilled"] is True  # no server runs: the CLI ran the aggregator's back-fill

    listed = run(tmp_path, "funnels", "list", project)
    assert listed.returncode == 0 and funnel["funnel_id"] in listed.stdout
    assert "$page@/pricing -> Signed Up" in listed.stdout

    one_step = run(tmp_path, "funnels", "create", project, "Short", "--step", "$page")
    assert one_step.returncode == 2 and "steps: must be a list of 2 to 8 steps" in one_step.stderr
    nowhere = run(tmp_path, "funnels", "create", "p_nope", "X", "--step", "a", "--step", "b")
    assert nowhere.returncode == 2 and "no project 'p_nope'" in nowhere.stderr

    assert run(tmp_path, "funnels", "delete", project, funnel["funnel_id"]).returncode == 0
    assert json.loads(run(tmp_path, "funnels", "list", project, "--json").stdout) == []
    again = run(tmp_path, "funnels", "delete", project, funnel["funnel_id"])
    assert again.returncode == 2 and "no funnel" in again.stderr
