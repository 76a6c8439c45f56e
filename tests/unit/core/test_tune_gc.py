"""tune_gc: the collector thresholds `werkstroom serve` runs with."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from werkstroom.serve import tune_gc
from werkstroom.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()  # an in-process `serve` of an earlier test may have frozen its start-up
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_freezes_start_up_and_raises_the_young_threshold(tmp_path: Path) -> None:
    tune_gc(Settings(data_dir=tmp_path, gc_young_threshold=12_345))
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restore_gc")
def test_zero_keeps_pythons_thresholds(tmp_path: Path) -> None:
    before = gc.get_threshold()
    tune_gc(Settings(data_dir=tmp_path, gc_young_threshold=0))
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
