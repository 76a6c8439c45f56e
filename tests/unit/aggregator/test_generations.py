"""The generation decision (services.aggregator.generations.decide), branch by branch."""

from __future__ import annotations

from services.aggregator.generations import OFFSET_MASK, Decision, Record, Topic, anchor_of, base, decide

R = Record(generation=2, next_offset=100, anchor=7, partitions=4)
T = Topic(generation=3, partitions=4)


def test_positions_order_like_offsets_within_a_generation_and_above_every_older_one() -> None:
    assert base(0) + 5 < base(0) + 6 < base(1) + 0
    assert (base(3) + 12345) & OFFSET_MASK == 12345
    assert anchor_of(b"k", b"v") == anchor_of(b"k", b"v") != anchor_of(b"kv", b"")


def test_nothing_recorded_is_generation_0_read_from_the_committed_offset() -> None:
    assert decide(None, Topic(), 4, 10, 50, None, counted_before=True) == Decision(
        0, None, "first_record", True
    )
    assert decide(None, Topic(), 4, None, 50, None, counted_before=False).generation == 0


def test_nothing_recorded_no_committed_offset_but_days_counted_is_a_log_started_over() -> None:
    assert decide(None, Topic(), 4, None, 5, None, counted_before=True) == Decision(
        1, 0, "log_started_over_since_upgrade", True
    )


def test_committed_offset_present_is_the_same_log() -> None:
    assert decide(R, T, 4, 90, 120, None, False) == Decision(2, 100, "same_log", False)
    assert decide(R, T, 4, 110, 120, None, False) == Decision(2, 110, "same_log", False)


def test_committed_offset_past_the_end_is_a_new_log() -> None:
    assert decide(R, T, 4, 110, 30, None, False) == Decision(4, 0, "new_log", True)


def test_log_shorter_than_what_was_read_is_a_new_log() -> None:
    assert decide(R, T, 4, None, 99, None, False) == Decision(4, 0, "new_log", True)


def test_anchor_equal_is_the_same_log_read_on_after_the_record() -> None:
    assert decide(R, T, 4, None, 150, 7, False) == Decision(2, 100, "same_log", False)


def test_anchor_different_is_a_new_log() -> None:
    assert decide(R, T, 4, None, 150, 8, False) == Decision(4, 0, "new_log", True)


def test_anchor_gone_to_retention_is_the_same_log() -> None:
    assert decide(R, T, 4, None, 150, None, False).reason == "same_log"


def test_nothing_read_yet_is_the_same_log() -> None:
    fresh = Record(generation=3, next_offset=0, anchor=0, partitions=4)
    assert decide(fresh, T, 4, None, 0, None, False) == Decision(3, 0, "same_log", False)


def test_a_new_partition_count_moves_every_partition_above_every_recorded_position() -> None:
    # the first to see it: newest + 1, and the log read on where it was (nothing twice)
    assert decide(R, T, 8, 100, 150, None, False) == Decision(4, 100, "partitions_changed", True)
    assert decide(None, T, 8, None, 0, None, False) == Decision(4, None, "new_partition", True)
    # a new log as well: from its beginning
    assert decide(R, T, 8, None, 20, None, False) == Decision(4, 0, "new_log", True)


def test_a_partition_count_already_recorded_by_another_worker_joins_its_generation() -> None:
    bumped = Topic(generation=4, partitions=8)
    assert decide(R, bumped, 8, 100, 150, None, False) == Decision(4, 100, "partitions_changed", True)
    assert decide(None, bumped, 8, None, 0, None, False) == Decision(4, None, "new_partition", True)
    mine = Record(generation=4, next_offset=40, anchor=1, partitions=8)
    assert decide(mine, bumped, 8, 40, 60, None, False) == Decision(4, 40, "same_log", False)
