"""The aggregator's per-day counts (events_daily) continue from their stored rows: a day first
met in a batch (a restart, a late event for a forgotten day) adds its row after the batch is
applied, and a batch re-read after a crash counts only the offsets past the row."""

from __future__ import annotations

from datetime import timedelta

import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator.processor import Dirty, SessionsProcessor
from services.aggregator.sessions import Changes
from tests.unit.aggregator.test_sessions import T0, ev
from werkstroom.clickhouse.migrate import migrate
from werkstroom.clickhouse.params import insert_rows

pytestmark = pytest.mark.integration


def test_days_first_met_add_their_stored_rows_and_a_replay_counts_past_them(database: Client) -> None:
    migrate(database)
    today, yesterday = T0.date(), T0.date() - timedelta(days=1)
    columns = ["project_id", "day", "kafka_partition", "page_views", "events", "version"]
    stored = [["p", today, 0, 5, 7, 10], ["p", yesterday, 1, 2, 2, 3], ["q", today, 0, 9, 9, 99]]
    insert_rows(database, "events_daily", stored, columns)

    processor = SessionsProcessor()
    late = ev(-24 * 60, n=20, anonymous_id="b")
    batch = [
        (ev(0, n=1), 0, 9),  # at or below the stored version 10: counted already
        (ev(1, "track", n=2), 0, 10),
        (ev(2, n=3), 0, 11),
        (ev(3, "heartbeat", n=4, event="$heartbeat"), 0, 12),
        (late, 1, 4),  # past yesterday's version 3
        (ev(4, n=5, anonymous_id="c"), 2, 0),  # nothing stored for partition 2
    ]
    changes, dirty = Changes(), Dirty()
    processor.apply_events(batch, changes, dirty, 1)
    assert changes.unresolved == {("p", today, 0), ("p", yesterday, 1), ("p", today, 2)}
    processor.resolve_days(database, changes, batch)
    rows, _ = processor.rows(changes, dirty)
    assert sorted(rows["events_daily"][1]) == [
        ["p", yesterday, 1, 3, 3, 4],
        ["p", today, 0, 6, 8, 12],  # the page view at offset 11 (the heartbeat is no event)
        ["p", today, 2, 1, 1, 0],
    ]
    assert not changes.unresolved

    # In memory now: the next batch counts on from there, without reading the table.
    changes, dirty = Changes(), Dirty()
    processor.apply_events([(ev(5, n=6), 0, 13)], changes, dirty, 2)
    assert not changes.unresolved
    rows, _ = processor.rows(changes, dirty)
    assert rows["events_daily"][1] == [["p", today, 0, 7, 9, 13]]
