"""When the sink recomputes the derived tables (RefreshCadence): a pure clock."""

from __future__ import annotations

from services.aggregator.sink import RefreshCadence


def test_the_first_recomputation_is_due_at_once() -> None:
    cadence = RefreshCadence(interval=1.0)
    assert cadence.due(now=0.0, caught_up=False)


def test_once_caught_up_the_interval_counts_from_the_start_of_the_previous_one() -> None:
    cadence = RefreshCadence(interval=1.0)
    cadence.ran(started=10.0, took=2.0)  # a long one, at the end of a backlog
    # It ended at 12.0: the last batches' recomputation starts then, not a second later.
    assert cadence.due(now=12.0, caught_up=True)
    assert not cadence.due(now=12.0, caught_up=False)


def test_a_short_one_still_waits_out_the_interval() -> None:
    cadence = RefreshCadence(interval=1.0)
    cadence.ran(started=10.0, took=0.1)
    assert not cadence.due(now=10.9, caught_up=True)
    assert cadence.due(now=11.0, caught_up=True)
    assert cadence.due(now=11.0, caught_up=False)


def test_during_a_backlog_at_most_a_fifth_of_the_time_goes_to_it() -> None:
    cadence = RefreshCadence(interval=1.0)
    cadence.ran(started=10.0, took=2.0)
    assert not cadence.due(now=19.9, caught_up=False)
    assert cadence.due(now=20.0, caught_up=False)
