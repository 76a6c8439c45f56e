"""`serve --workers N`: which targets may have several processes, and the socket they share."""

from __future__ import annotations

import pytest

from werkstroom.cli import _parser
from werkstroom.serve import supervise
from werkstroom.settings import Settings, get_settings


@pytest.mark.parametrize("target", ["all", "aggregator"])
def test_only_ingest_and_api_take_workers(target: str) -> None:
    with pytest.raises(SystemExit, match="ingest and api only"):
        supervise(Settings(workers=2, clickhouse_url="http://h:8123"), target)  # type: ignore[arg-type]


def test_workers_need_a_clickhouse_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit, match="needs a ClickHouse server"):
        supervise(Settings(workers=2, data_dir=tmp_path), "ingest")


def test_workers_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKSTROOM_WORKERS", "3")
    assert get_settings().workers == 3
    args = _parser().parse_args(["serve", "--target", "ingest", "--workers", "2"])
    assert (args.workers, args.worker) == (2, None)
    assert get_settings(workers=args.workers).workers == 2  # the flag wins
