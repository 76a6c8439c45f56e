"""The embedded engine takes the options its URL names (werkstroom.clickhouse.connect), in a
process of its own: chdb runs one engine per process, started by the first client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from werkstroom.settings import Settings

pytestmark = pytest.mark.integration

READ = """
import sys
from werkstroom.clickhouse import connect
client = connect(sys.argv[1])
print(client.query("SELECT value FROM system.server_settings WHERE name = 'uncompressed_cache_size'").first_row[0])
"""


def engine_cache(url: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", READ, url], capture_output=True, text=True, timeout=120, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_the_engine_keeps_the_cache_of_decompressed_blocks_the_settings_give_it(tmp_path: Path) -> None:
    assert engine_cache(
        Settings(data_dir=tmp_path / "a", clickhouse_uncompressed_cache_mb=64).effective_clickhouse_url
    ) == (64 * 1024 * 1024)
    assert (
        engine_cache(
            Settings(data_dir=tmp_path / "b", clickhouse_uncompressed_cache_mb=0).effective_clickhouse_url
        )
        == 0
    )
