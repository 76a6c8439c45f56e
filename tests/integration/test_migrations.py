"""Migrations that rebuild a table keep every row: run on a database with data in it, at the
version before them, the reads after them give what they gave before."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from werkstroom import churn
from werkstroom.breakdowns import ROLLED_FILTERS, md5_key
from werkstroom.clickhouse.migrate import migrate

pytestmark = pytest.mark.integration

DAY = timedelta(days=1)

SESSION = (
    "INSERT INTO sessions (project_id, anonymous_id, session_id, start_at, last_event_at, page_views, "
    "version, is_deleted) VALUES "
)


def partitions(database: Client, table: str) -> list[str]:
    """The partitions of a table's active parts."""
    sql = (
        "SELECT DISTINCT partition FROM system.parts WHERE database = currentDatabase() "
        "AND table = {t:String} AND active"
    )
    return [p for (p,) in database.query(sql, parameters={"t": table}).result_rows]


def test_sessions_rebuilt_without_partitions_keeps_every_version(database: Client) -> None:
    migrate(database, through=10)
    for row in (
        "('p', 'a', 's1', '2026-02-01 00:10:00', '2026-02-01 00:20:00', 2, 10, 0)",
        # a late event moved s1's start into January: its newer row sits in another month
        "('p', 'a', 's1', '2026-01-31 23:55:00', '2026-02-01 00:20:00', 3, 11, 0)",
        "('p', 'a', 's2', '2026-03-05 10:00:00', '2026-03-05 10:01:00', 1, 12, 0)",
        "('p', 'a', 's3', '2026-03-05 11:00:00', '2026-03-05 11:00:00', 1, 13, 0)",
        "('p', 'a', 's3', '2026-03-05 11:00:00', '2026-03-05 11:00:00', 1, 14, 1)",  # absorbed
        "('q', 'a', 's1', '2026-02-01 00:10:00', '2026-02-01 00:20:00', 5, 3, 0)",
    ):  # one insert each: a single insert would collapse the versions as it writes them
        database.command(SESSION + row)
    final = "SELECT * EXCEPT updated_at FROM sessions FINAL ORDER BY project_id, session_id"
    # The newest version of each row, tombstones included (FINAL hides those).
    newest = (
        "SELECT project_id, session_id, max(version), argMax(is_deleted, version) FROM sessions "
        "GROUP BY project_id, session_id ORDER BY project_id, session_id"
    )
    before_final, before_newest = database.query(final).result_rows, database.query(newest).result_rows
    assert len(before_final) == 3 and len(before_newest) == 4

    assert migrate(database, through=11) == ["0011_sessions_by_visitor.sql"]

    assert database.query(final).result_rows == before_final
    assert database.query(newest).result_rows == before_newest
    assert partitions(database, "sessions") == ["tuple()"]
    # A merge now collapses the moved session's two rows (they were in two partitions).
    database.command("OPTIMIZE TABLE sessions FINAL")
    assert (
        database.query("SELECT count() FROM sessions WHERE session_id = 's1' AND project_id = 'p'").first_row[
            0
        ]
        == 1
    )


def test_events_daily_is_back_filled_with_each_partitions_counts_and_newest_offset(database: Client) -> None:
    migrate(database, through=11)
    event = (
        "INSERT INTO events (project_id, event_id, type, event, timestamp, received_at, kafka_partition, "
        "kafka_offset) VALUES "
    )
    for row in (
        "('p', 'e1', 'page', '$page', '2026-03-01 10:00:00', now(), 0, 4)",
        "('p', 'e2', 'track', '$heartbeat', '2026-03-01 10:01:00', now(), 0, 5)",
        "('p', 'e3', 'track', 'signup', '2026-03-01 23:59:59', now(), 1, 2)",
        "('p', 'e4', 'page', '$page', '2026-03-02 00:00:00', now(), 0, 6)",
        "('q', 'e5', 'page', '$page', '2026-03-01 12:00:00', now(), 0, 7)",
    ):
        database.command(event + row)
    database.command(
        event + "('p', 'e1', 'page', '$page', '2026-03-01 10:00:00', now(), 0, 4)"
    )  # re-delivered

    assert migrate(database, through=12) == ["0012_events_daily.sql"]

    rows = database.query(
        "SELECT project_id, toString(day), kafka_partition, page_views, events, version "
        "FROM events_daily FINAL ORDER BY 1, 2, 3"
    ).result_rows
    assert rows == [
        ("p", "2026-03-01", 0, 1, 1, 5),
        ("p", "2026-03-01", 1, 0, 1, 2),
        ("p", "2026-03-02", 0, 1, 1, 6),
        ("q", "2026-03-01", 0, 1, 1, 7),
    ]


def test_persons_first_day_is_back_filled_with_each_live_persons_first_day(database: Client) -> None:
    migrate(database, through=12)
    person = "INSERT INTO persons (project_id, person_id, first_seen, last_seen, is_deleted, version) VALUES "
    for row in (
        "('p', 'a', '2026-03-01 10:00:00', '2026-03-04 10:00:00', 0, 5)",
        "('p', 'a', '2026-02-28 23:00:00', '2026-03-04 10:00:00', 0, 6)",  # a late event, newer
        "('p', 'b', '2026-03-01 11:00:00', '2026-03-01 11:00:00', 0, 5)",
        "('p', 'b', '1970-01-01 00:00:00', '1970-01-01 00:00:00', 1, 7)",  # merged away
        "('q', 'a', '2026-03-02 00:00:00', '2026-03-02 00:00:00', 0, 1)",
    ):
        database.command(person + row)

    assert migrate(database, through=13) == ["0013_persons_first_day.sql"]

    rows = database.query(
        "SELECT project_id, toString(day), person_id, version FROM persons_first_day FINAL "
        "WHERE is_deleted = 0 ORDER BY 1, 2, 3"
    ).result_rows
    assert rows == [("p", "2026-02-28", "a", 6), ("q", "2026-03-02", "a", 1)]


def test_visitor_events_rebuilt_without_partitions_keeps_its_rows_and_its_view(database: Client) -> None:
    event = (
        "INSERT INTO events (project_id, event_id, type, event, anonymous_id, timestamp, received_at) VALUES "
    )
    migrate(database, through=13)
    for row in (
        "('p', 'e1', 'page', '$page', 'a', '2026-01-31 23:59:00', now())",
        "('p', 'e2', 'track', 'signup', 'a', '2026-02-01 00:01:00', now())",
        "('p', 'e3', 'track', '$heartbeat', 'a', '2026-02-01 00:02:00', now())",
    ):
        database.command(event + row)
    every = "SELECT * FROM visitor_events FINAL ORDER BY project_id, distinct_id, timestamp, event_id"
    before = database.query(every).result_rows
    assert [r[3] for r in before] == ["e1", "e2"]

    assert migrate(database, through=14) == ["0014_visitor_events_by_visitor.sql"]

    assert database.query(every).result_rows == before
    assert partitions(database, "visitor_events") == ["tuple()"]
    database.command(event + "('p', 'e4', 'page', '$page', 'a', '2026-03-01 10:00:00', now())")
    assert [r[3] for r in database.query(every).result_rows] == ["e1", "e2", "e4"]  # the view fills it


def test_person_distinct_ids_by_person_is_back_filled_with_every_mapping(database: Client) -> None:
    migrate(database, through=14)
    mapping = "INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, version) VALUES "
    for row in (
        "('p', 'anon-x', 'user-a', 1)",
        "('p', 'anon-x', 'user-b', 2)",
        "('q', 'anon-y', 'user-a', 1)",
    ):
        database.command(mapping + row)

    assert migrate(database, through=15) == ["0015_person_distinct_ids_by_person.sql"]

    rows = database.query("SELECT * FROM person_distinct_ids_by_person FINAL ORDER BY 1, 2, 3").result_rows
    # every mapping, the superseded one too: readers check the latest in person_distinct_ids
    assert rows == [
        ("p", "user-a", "anon-x", 1),
        ("p", "user-b", "anon-x", 2),
        ("q", "user-a", "anon-y", 1),
    ]


def test_the_lookup_tables_get_small_compressed_blocks_and_keep_their_rows(database: Client) -> None:
    migrate(database, through=15)
    database.command(
        "INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, version) "
        "VALUES ('p', 'anon-x', 'user-a', 1)"
    )
    database.command("INSERT INTO persons (project_id, person_id, version) VALUES ('p', 'user-a', 1)")

    assert migrate(database, through=16) == ["0016_lookup_compress_blocks.sql"]

    for table in ("persons", "person_distinct_ids"):
        ddl = database.query(
            "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": table},
        ).first_row[0]
        assert "min_compress_block_size = 4096, max_compress_block_size = 8192" in ddl
    assert database.query("SELECT person_id FROM persons FINAL").result_rows == [("user-a",)]
    database.command(
        "INSERT INTO person_distinct_ids (project_id, distinct_id, person_id, version) "
        "VALUES ('p', 'anon-x', 'user-b', 2)"
    )
    latest = "SELECT argMax(person_id, version) FROM person_distinct_ids WHERE distinct_id = 'anon-x'"
    assert database.query(latest).first_row[0] == "user-b"


def _two_visitors_sessions(database: Client) -> None:
    """At migration 0022: visitor a's session s1 (two page views and a heartbeat, 3 minutes)
    and visitor b's s2 (one page view), with s3 absorbed into it."""
    migrate(database, through=22)
    event = (
        "INSERT INTO events (project_id, event_id, type, event, anonymous_id, timestamp, received_at, url, "
        "path, referrer, country, kafka_partition, kafka_offset) VALUES "
    )
    for row in (
        "('p', 'e1', 'page', '$page', 'a', '2026-03-01 10:00:00', now(), 'https://s.example/?utm_source=nl',"
        " '/', 'https://www.news.example/x', 'NL', 0, 1)",
        "('p', 'e2', 'page', '$page', 'a', '2026-03-01 10:01:00', now(), 'https://s.example/p', '/p',"
        " 'https://s.example/', 'NL', 0, 2)",
        "('p', 'e3', 'track', '$heartbeat', 'a', '2026-03-01 10:03:00', now(), '', '', '', 'NL', 0, 3)",
        "('p', 'e4', 'page', '$page', 'b', '2026-03-01 23:59:00', now(), 'https://s.example/p', '/p', '', '', 0, 4)",
    ):
        database.command(event + row)
    session = (
        "INSERT INTO sessions (project_id, anonymous_id, session_id, start_at, last_event_at, page_views, "
        "version, is_deleted) VALUES "
    )
    for row in (
        "('p', 'a', 's1', '2026-03-01 10:00:00', '2026-03-01 10:03:00', 2, 3, 0)",
        "('p', 'b', 's2', '2026-03-01 23:59:00', '2026-03-01 23:59:00', 1, 4, 0)",
        "('p', 'b', 's3', '2026-03-01 23:59:00', '2026-03-01 23:59:00', 1, 4, 1)",  # absorbed
    ):
        database.command(session + row)


def test_the_breakdown_tables_are_back_filled_as_the_refresh_computes_them(database: Client) -> None:
    from services.aggregator.derived import refresh
    from services.aggregator.processor import Dirty

    _two_visitors_sessions(database)
    assert migrate(database, through=23) == ["0023_breakdowns.sql"]

    pages = database.query(
        "SELECT session_id, path, views, timed_views, time_ms, is_entry, is_exit, bounced "
        "FROM breakdown_pages FINAL WHERE is_deleted = 0 ORDER BY 1, 2"
    ).result_rows
    assert pages == [
        ("s1", "/", 1, 1, 60_000, 1, 0, 0),
        ("s1", "/p", 1, 1, 120_000, 0, 1, 0),
        ("s2", "/p", 1, 0, 0, 1, 1, 1),
    ]
    assert database.query(
        "SELECT session_id, source, utm_source, country FROM breakdown_sessions FINAL ORDER BY 1"
    ).result_rows == [("s1", "news.example", "nl", "NL"), ("s2", "", "", "")]
    # The page views in visitor_events now carry the attributes a session takes from its entry.
    assert database.query(
        "SELECT distinct_id, path, source, utm_source, country FROM visitor_events FINAL "
        "WHERE event = '$page' ORDER BY timestamp"
    ).result_rows == [
        ("a", "/", "news.example", "nl", "NL"),
        ("a", "/p", "", "", "NL"),
        ("b", "/p", "", "", ""),
    ]
    # The refresh recomputes the same rows from them: it writes nothing (it writes only changes),
    # with the later migrations' columns (0027's duration) back-filled as it computes them.
    migrate(database)
    count = "SELECT count() FROM breakdown_pages) + (SELECT count() FROM breakdown_sessions"
    before = database.query(f"SELECT ({count})").first_row[0]
    refresh(database, Dirty({("p", date(2026, 3, 1))}, {("p", "a"), ("p", "b")}))
    assert database.query(f"SELECT ({count})").first_row[0] == before
    assert database.query(
        "SELECT session_id, entry_path, exit_path, page_views FROM breakdown_sessions FINAL ORDER BY 1"
    ).result_rows == [("s1", "/", "/p", 2), ("s2", "/p", "/p", 1)]


def test_breakdown_sessions_get_their_sessions_durations_as_the_refresh_computes_them(
    database: Client,
) -> None:
    from services.aggregator.derived import refresh
    from services.aggregator.processor import Dirty

    _two_visitors_sessions(database)
    migrate(database, through=26)
    every_row = "SELECT * EXCEPT duration_ms FROM breakdown_sessions ORDER BY session_id, version"
    before = database.query(every_row.replace(" EXCEPT duration_ms", "")).result_rows
    assert migrate(database, through=27) == ["0027_breakdown_sessions_duration.sql"]
    # every row version kept as it was, once: the table was rebuilt, not written again
    assert database.query(every_row).result_rows == before

    read = "SELECT session_id, duration_ms, version FROM breakdown_sessions FINAL WHERE is_deleted = 0 ORDER BY 1"
    assert database.query(read).result_rows == [("s1", 180_000, 3), ("s2", 0, 4)]
    # The refresh (of the code now, so on the schema now) computes the same durations: it writes
    # nothing (it writes only changes), and a session rewritten from scratch gets its duration
    # again.
    migrate(database)
    count = "SELECT count() FROM breakdown_sessions"
    before = database.query(count).first_row[0]
    refresh(database, Dirty({("p", date(2026, 3, 1))}, {("p", "a"), ("p", "b")}))
    assert database.query(count).first_row[0] == before
    database.command("TRUNCATE TABLE breakdown_sessions")
    refresh(database, Dirty({("p", date(2026, 3, 1))}, {("p", "a"), ("p", "b")}))
    assert database.query(read).result_rows == [("s1", 180_000, 3), ("s2", 0, 4)]


def test_breakdown_daily_is_rebuilt_with_small_granules_and_keeps_its_rows(database: Client) -> None:
    migrate(database, through=27)
    rows = (
        "INSERT INTO breakdown_daily (project_id, dimension, day, value, visitors, sessions, version, is_deleted) "
        "SELECT 'p', 'pages', toDate('2026-03-01') + number % 40, toString(number % 7), "
        "uniqCombined64State(12)(toString(number)), 1, number, 0 FROM numbers(500) GROUP BY number"
    )
    database.command(rows)
    read = (
        "SELECT day, value, uniqCombined64Merge(12)(visitors), sum(sessions) FROM breakdown_daily FINAL "
        "WHERE is_deleted = 0 GROUP BY day, value ORDER BY day, value"
    )
    before = database.query(read).result_rows
    assert len(before) == 280

    assert migrate(database, through=28) == ["0028_breakdown_daily_granularity.sql"]

    ddl = database.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = 'breakdown_daily'"
    ).first_row[0]
    assert "index_granularity = 256" in ddl and "PARTITION BY toYYYYMM(day)" in ddl
    assert database.query(read).result_rows == before
    assert sorted(partitions(database, "breakdown_daily")) == ["202603", "202604"]
    assert "breakdown_daily_rebuild" not in [
        t
        for (t,) in database.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
        ).result_rows
    ]


def test_visitor_persons_is_back_filled_with_each_live_persons_visitors(database: Client) -> None:
    migrate(database, through=29)
    person = (
        "INSERT INTO persons (project_id, person_id, first_seen, last_seen, anonymous_ids, plan, is_deleted, "
        "version) VALUES "
    )
    for row in (
        "('p', 'u1', '2026-03-01 10:00:00', '2026-03-04 10:00:00', ['a1'], 'free', 0, 5)",
        "('p', 'u1', '2026-03-01 10:00:00', '2026-03-05 10:00:00', ['a1', 'a2'], 'premium', 0, 6)",  # newer
        "('p', 'a2', '2026-03-02 11:00:00', '2026-03-02 11:00:00', ['a2'], '', 0, 5)",
        "('p', 'a2', '1970-01-01 00:00:00', '1970-01-01 00:00:00', [], '', 1, 6)",  # merged into u1
        "('q', 'a1', '2026-03-02 00:00:00', '2026-03-02 00:00:00', ['a1'], 'trial', 0, 1)",  # another project
    ):
        database.command(person + row)

    assert migrate(database, through=30) == ["0030_visitor_persons.sql"]

    rows = database.query(
        "SELECT project_id, visitor, person_id, toString(first_seen), toString(last_seen), plan, version "
        "FROM visitor_persons FINAL WHERE is_deleted = 0 ORDER BY 1, 2"
    ).result_rows
    assert rows == [
        ("p", "a1", "u1", "2026-03-01 10:00:00.000", "2026-03-05 10:00:00.000", "premium", 6),
        ("p", "a2", "u1", "2026-03-01 10:00:00.000", "2026-03-05 10:00:00.000", "premium", 6),
        ("q", "a1", "a1", "2026-03-02 00:00:00.000", "2026-03-02 00:00:00.000", "trial", 1),
    ]


def test_person_activity_by_is_back_filled_with_each_persons_days_per_filter_value(database: Client) -> None:
    migrate(database, through=30)
    database.command(
        "INSERT INTO visitor_persons (project_id, visitor, person_id, first_seen, last_seen, plan, "
        "is_deleted, version) VALUES "
        "('p', 'a1', 'u1', '2026-03-01 10:00:00', '2026-03-05 10:00:00', '', 0, 5), "
        "('p', 'a2', 'u2', '2026-03-01 10:00:00', '2026-03-05 10:00:00', '', 0, 5), "
        "('p', 'a2', 'u1', '2026-03-01 10:00:00', '2026-03-05 10:00:00', '', 0, 6)"  # a2 moved to u1
    )
    session = (
        "INSERT INTO breakdown_sessions (project_id, day, anonymous_id, session_id, country, device_type, "
        "is_deleted, version) VALUES "
    )
    for row in (
        "('p', '2026-03-01', 'a1', 's1', 'NL', 'mobile', 0, 1)",
        "('p', '2026-03-01', 'a2', 's2', 'NL', 'desktop', 0, 1)",  # u1's too: NL once that day
        "('p', '2026-03-02', 'a3', 's3', 'DE', 'mobile', 0, 1)",  # in no persons row: its own person
        "('p', '2026-03-03', 'a1', 's4', 'BE', 'mobile', 0, 1)",
        "('p', '2026-03-03', 'a1', 's4', 'BE', 'mobile', 1, 2)",  # gone
        "('q', '2026-03-01', 'a1', 's5', 'FR', 'tablet', 0, 1)",  # another project: a1 is its own
    ):
        database.command(session + row)

    assert migrate(database, through=31) == ["0031_person_activity_by.sql"]

    rows = database.query(
        "SELECT project_id, toString(day), filter, filter_value, person_id FROM person_activity_by FINAL "
        "WHERE is_deleted = 0 AND filter IN ('country', 'device_type', 'os') ORDER BY ALL"
    ).result_rows
    assert rows == [
        ("p", "2026-03-01", "country", "NL", "u1"),
        ("p", "2026-03-01", "device_type", "desktop", "u1"),
        ("p", "2026-03-01", "device_type", "mobile", "u1"),
        ("p", "2026-03-01", "os", "", "u1"),
        ("p", "2026-03-02", "country", "DE", "a3"),
        ("p", "2026-03-02", "device_type", "mobile", "a3"),
        ("p", "2026-03-02", "os", "", "a3"),
        ("q", "2026-03-01", "country", "FR", "a1"),
        ("q", "2026-03-01", "device_type", "tablet", "a1"),
        ("q", "2026-03-01", "os", "", "a1"),
    ]
    filters = database.query("SELECT DISTINCT filter FROM person_activity_by ORDER BY ALL").result_rows
    assert [f for (f,) in filters] == sorted(ROLLED_FILTERS)  # every filter the views roll up
    # the copy sorted by person holds the same rows, and follows every insert (its view)
    every = "SELECT * FROM {} FINAL ORDER BY ALL"
    assert (
        database.query(every.format("person_activity_by_person")).result_rows
        == database.query(every.format("person_activity_by")).result_rows
    )
    database.command(
        "INSERT INTO person_activity_by (project_id, day, filter, filter_value, person_id, is_deleted, version) "
        "VALUES ('p', '2026-03-01', 'country', 'NL', 'u1', 1, 7)"
    )
    assert (
        database.query(
            "SELECT person_id FROM person_activity_by_person FINAL WHERE is_deleted = 0 AND filter_value = 'NL'"
        ).result_rows
        == []
    )


def test_person_first_by_is_back_filled_with_each_persons_first_and_last_day_per_value(
    database: Client,
) -> None:
    migrate(database, through=32)
    today = database.query("SELECT today()").first_row[0]
    insert = (
        "INSERT INTO person_activity_by (project_id, day, filter, filter_value, person_id, is_deleted, version) "
        "VALUES "
    )
    for row in (
        "('p', '2026-03-03', 'country', 'NL', 'u1', 0, 1)",
        "('p', '2026-03-01', 'country', 'NL', 'u1', 0, 1)",
        "('p', '2026-03-09', 'country', 'NL', 'u1', 0, 1)",
        "('p', '2026-03-09', 'country', 'NL', 'u1', 1, 2)",  # its last day went: 03-03 is
        "('p', '2026-03-02', 'country', 'DE', 'u1', 0, 1)",
        "('p', '2026-03-02', 'country', 'BE', 'u2', 0, 1)",
        "('p', '2026-03-02', 'country', 'BE', 'u2', 1, 2)",  # every day gone: no row
        "('q', '2026-03-05', 'country', 'NL', 'u1', 0, 1)",  # another project's u1
        "('p', today() - 1, 'country', 'NL', 'u3', 0, 1)",
        "('p', today() - 30, 'country', 'NL', 'u3', 0, 1)",  # before the recent days kept
    ):
        database.command(insert + row)
    activity = "INSERT INTO person_activity (project_id, day, person_id, is_deleted, version) VALUES "
    for row in (
        "('p', today() - 3, 'u3', 0, 1)",
        "('p', today() - 1, 'u3', 0, 1)",
        "('p', today() - 40, 'u3', 0, 1)",
    ):
        database.command(activity + row)

    first_seen = "INSERT INTO persons_first_day (project_id, day, person_id, is_deleted, version) VALUES "
    for row in (
        "('p', '2026-02-27', 'u1', 0, 1)",
        "('p', '2026-02-27', 'u1', 1, 2)",  # a merge moved u1's first visit
        "('p', '2026-02-20', 'u1', 0, 2)",
        "('q', '2026-03-04', 'u1', 0, 1)",
    ):
        database.command(first_seen + row)

    person = "INSERT INTO persons (project_id, person_id, plan, is_deleted, version) VALUES "
    for row in ("('p', 'u1', 'trial', 0, 1)", "('p', 'u1', 'premium', 0, 2)", "('p', 'u3', '', 0, 1)"):
        database.command(person + row)

    assert migrate(database, through=33) == ["0033_person_first_by.sql"]

    rows = database.query(
        "SELECT project_id, filter, filter_value, person_id, toString(first_day), toString(last_day), "
        "toString(first_seen_day) FROM person_first_by FINAL WHERE is_deleted = 0 AND filter = 'country' "
        "ORDER BY ALL"
    ).result_rows
    assert rows == [
        ("p", "country", "DE", "u1", "2026-03-02", "2026-03-02", "2026-02-20"),
        ("p", "country", "NL", "u1", "2026-03-01", "2026-03-03", "2026-02-20"),
        ("p", "country", "NL", "u3", str(today - 30 * DAY), str(today - DAY), "1970-01-01"),
        ("q", "country", "NL", "u1", "2026-03-05", "2026-03-05", "2026-03-04"),
    ]
    # churn's recent days (werkstroom.churn.RECENT_DAYS), as bits: u3's NL days and active days
    # of the last 22, none of March's
    recent = database.query(
        "SELECT person_id, recent_days, recent_active FROM person_first_by FINAL WHERE project_id = 'p' "
        "AND filter_value = 'NL' ORDER BY person_id"
    ).result_rows
    active = churn.bit(today - DAY) | churn.bit(today - 3 * DAY)
    assert recent == [("u1", 0, 0), ("u3", churn.bit(today - DAY), active)]
    # each person with a persons row under its plan now, over all its sessions' days (q's u1 has
    # none: no plan row)
    plans = database.query(
        "SELECT project_id, filter_value, person_id, toString(first_day), toString(last_day), "
        "toString(first_seen_day), recent_days FROM person_first_by FINAL WHERE is_deleted = 0 "
        "AND filter = 'plan' ORDER BY ALL"
    ).result_rows
    assert plans == [
        ("p", "", "u3", str(today - 30 * DAY), str(today - DAY), "1970-01-01", churn.bit(today - DAY)),
        ("p", "premium", "u1", "2026-03-01", "2026-03-03", "2026-02-20", 0),
    ]


def test_breakdown_sessions_get_their_sessions_starts_as_the_refresh_computes_them(database: Client) -> None:
    from services.aggregator.derived import refresh
    from services.aggregator.processor import Dirty

    _two_visitors_sessions(database)
    migrate(database, through=31)
    every_row = "SELECT * EXCEPT start_at FROM breakdown_sessions ORDER BY session_id, version"
    before = database.query(every_row.replace(" EXCEPT start_at", "")).result_rows
    assert migrate(database, through=32) == ["0032_breakdown_sessions_start.sql"]
    # every row version kept as it was, once: the table was rebuilt, not written again
    assert database.query(every_row).result_rows == before

    read = (
        "SELECT session_id, toString(start_at), duration_ms FROM breakdown_sessions FINAL "
        "WHERE is_deleted = 0 ORDER BY 1"
    )
    starts = [("s1", "2026-03-01 10:00:00.000", 180_000), ("s2", "2026-03-01 23:59:00.000", 0)]
    assert database.query(read).result_rows == starts
    # The refresh computes the same starts: a session rewritten from scratch gets its start again.
    migrate(database)  # the refresh writes the tables of every migration
    database.command("TRUNCATE TABLE breakdown_sessions")
    refresh(database, Dirty({("p", date(2026, 3, 1))}, {("p", "a"), ("p", "b")}))
    assert database.query(read).result_rows == starts


def test_breakdown_pages_get_their_sessions_entry_attributes_as_the_refresh_computes_them(
    database: Client,
) -> None:
    """0041: each breakdown_pages and plan_pages row, kept as it was, gets the attributes of its
    session's entry page view from the session's live breakdown_sessions row ('' without one),
    as the refresh writes them: s1's second page row takes s1's entry view's source, not its own
    view's."""
    from services.aggregator.derived import refresh
    from services.aggregator.processor import Dirty

    _two_visitors_sessions(database)
    migrate(database, through=40)
    # the tombstone of s3's row (s3 was absorbed: it has no live session row), and s1's page
    # rows under a's person's plan
    database.command(
        "INSERT INTO breakdown_pages (project_id, day, anonymous_id, session_id, path, views, version, "
        "is_deleted) VALUES ('p', '2026-03-01', 'b', 's3', '/p', 1, 4, 1)"
    )
    database.command(
        "INSERT INTO plan_pages (project_id, plan, day, anonymous_id, session_id, path, views, version, "
        "is_deleted) VALUES ('p', 'premium', '2026-03-01', 'a', 's1', '/', 1, 3, 0), "
        "('p', 'premium', '2026-03-01', 'a', 's1', '/p', 1, 3, 0), ('p', 'trial', '2026-03-01', 'b', 's3', '/p', 1, 4, 1)"
    )
    planned_before = database.query("SELECT * FROM plan_pages ORDER BY ALL").result_rows
    attributes = "source, utm_source, utm_medium, utm_campaign, country, device_type, browser, os"
    before = database.query("SELECT * FROM breakdown_pages ORDER BY ALL").result_rows
    assert migrate(database, through=41) == ["0041_breakdown_pages_attributes.sql"]
    # every row version kept as it was, once: the table was rebuilt, not written again
    assert (
        database.query(f"SELECT * EXCEPT ({attributes}) FROM breakdown_pages ORDER BY ALL").result_rows
        == before
    )
    assert (
        database.query(f"SELECT * EXCEPT ({attributes}) FROM plan_pages ORDER BY ALL").result_rows
        == planned_before
    )
    assert database.query(
        "SELECT plan, session_id, path, is_deleted, source, utm_source, country FROM plan_pages ORDER BY ALL"
    ).result_rows == [
        ("premium", "s1", "/", 0, "news.example", "nl", "NL"),
        ("premium", "s1", "/p", 0, "news.example", "nl", "NL"),
        ("trial", "s3", "/p", 1, "", "", ""),
    ]
    assert database.query(
        "SELECT session_id, path, version, is_deleted, source, utm_source, country FROM breakdown_pages ORDER BY ALL"
    ).result_rows == [
        ("s1", "/", 3, 0, "news.example", "nl", "NL"),
        ("s1", "/p", 3, 0, "news.example", "nl", "NL"),
        ("s2", "/p", 4, 0, "", "", ""),
        ("s3", "/p", 4, 1, "", "", ""),
    ]
    # each page row's attributes are its session's, all of them
    read = (
        f"SELECT session_id, path, {attributes} FROM breakdown_pages FINAL WHERE is_deleted = 0 ORDER BY 1, 2"
    )
    migrated = database.query(read).result_rows
    sessions = dict(
        (r[0], r[1:])
        for r in database.query(
            f"SELECT session_id, {attributes} FROM breakdown_sessions FINAL WHERE is_deleted = 0"
        ).result_rows
    )
    assert [r[2:] for r in migrated] == [sessions[r[0]] for r in migrated] and len(migrated) == 3
    # The refresh computes the same: it writes nothing over them (it writes only changes), and
    # the rows rewritten from scratch get the same attributes again.
    count = "SELECT count() FROM breakdown_pages"
    rows = database.query(count).first_row[0]
    refresh(database, Dirty({("p", date(2026, 3, 1))}, {("p", "a"), ("p", "b")}))
    assert database.query(count).first_row[0] == rows
    database.command("TRUNCATE TABLE breakdown_pages")
    refresh(database, Dirty({("p", date(2026, 3, 1))}, {("p", "a"), ("p", "b")}))
    assert database.query(read).result_rows == migrated


def _visitor_a_premium(database: Client) -> None:
    """visitor_persons (0030) rows: a's person u1 on trial, then premium (the newer row); b in
    another project only."""
    person = (
        "INSERT INTO visitor_persons (project_id, visitor, person_id, first_seen, last_seen, plan, is_deleted, "
        "version) VALUES "
    )
    for row in (
        "('p', 'a', 'u1', '2026-02-20 08:00:00', '2026-03-01 10:03:00', 'trial', 0, 5)",
        "('p', 'a', 'u1', '2026-02-20 08:00:00', '2026-03-01 10:03:00', 'premium', 0, 6)",  # newer
        "('q', 'b', 'u2', '2026-03-01 23:59:00', '2026-03-01 23:59:00', 'trial', 0, 1)",  # another project's b
    ):
        database.command(person + row)


def test_plan_sessions_is_back_filled_with_each_session_under_its_persons_plan(database: Client) -> None:
    _two_visitors_sessions(database)
    migrate(database, through=33)
    _visitor_a_premium(database)
    sessions = database.query(
        "SELECT * FROM breakdown_sessions FINAL WHERE is_deleted = 0 ORDER BY ALL"
    ).result_rows
    assert [r[3] for r in sessions] == ["s1", "s2"]

    assert migrate(database, through=34) == ["0034_plan_sessions.sql"]

    rows = database.query(
        "SELECT project_id, plan, toString(day), anonymous_id, session_id, person_id, toString(first_seen), "
        "entry_path, exit_path, country, page_views, duration_ms, toString(start_at) "
        "FROM plan_sessions FINAL WHERE is_deleted = 0 ORDER BY ALL"
    ).result_rows
    # a's session under its person's plan now; b is in no persons row of project p: no row
    assert rows == [
        (
            "p",
            "premium",
            "2026-03-01",
            "a",
            "s1",
            "u1",
            "2026-02-20 08:00:00.000",
            "/",
            "/p",
            "NL",
            2,
            180_000,
            "2026-03-01 10:00:00.000",
        )
    ]


def test_plan_pages_is_back_filled_with_each_page_row_under_its_persons_plan(database: Client) -> None:
    _two_visitors_sessions(database)
    migrate(database, through=35)
    _visitor_a_premium(database)
    figures = "day, anonymous_id, session_id, path, views, timed_views, time_ms, is_entry, is_exit, bounced"
    pages = database.query(
        f"SELECT {figures} FROM breakdown_pages FINAL WHERE is_deleted = 0 ORDER BY ALL"
    ).result_rows
    assert [(r[1], r[3]) for r in pages] == [("a", "/"), ("a", "/p"), ("b", "/p")]

    assert migrate(database, through=36) == ["0036_plan_pages.sql"]

    rows = database.query(
        f"SELECT project_id, plan, {figures} FROM plan_pages FINAL WHERE is_deleted = 0 ORDER BY ALL"
    ).result_rows
    # a's two page rows under its person's plan now; b is in no persons row of project p: none
    assert rows == [("p", "premium", *r) for r in pages if r[1] == "a"]


def test_funnel_levels_by_is_back_filled_with_each_level_under_each_value_of_its_person(
    database: Client,
) -> None:
    migrate(database, through=36)

    def insert(table: str, columns: str, rows: tuple[str, ...]) -> None:
        database.command(f"INSERT INTO {table} ({columns}) VALUES {', '.join(rows)}")

    first_by = (
        "project_id, filter, filter_value, person_id, first_day, last_day, first_seen_day, recent_days, "
        "recent_active, is_deleted, version"
    )
    insert(
        "person_first_by",
        first_by,
        (
            "('p', 'country', 'NL', 'u1', '2026-02-20', '2026-02-25', '2026-02-20', 0, 0, 0, 1)",
            "('p', 'country', 'NL', 'u1', '2026-02-20', '2026-03-01', '2026-02-20', 0, 0, 0, 2)",  # newer
            "('p', 'country', 'DE', 'u1', '2026-02-21', '2026-02-21', '2026-02-20', 0, 0, 0, 2)",
            "('p', 'country', 'FR', 'u1', '2026-02-22', '2026-02-22', '2026-02-20', 0, 0, 1, 3)",  # went
            "('p', 'plan', 'premium', 'u1', '2026-02-20', '2026-03-01', '2026-02-20', 0, 0, 0, 2)",
            "('p', 'country', 'NL', 'u2', '2026-03-01', '2026-03-01', '2026-03-01', 0, 0, 0, 1)",  # no levels
            "('q', 'country', 'NL', 'u1', '2026-03-01', '2026-03-01', '2026-03-01', 0, 0, 0, 1)",  # project q's u1
        ),
    )
    insert(
        "funnel_levels",
        "project_id, funnel_id, level, last_day, person_id, is_deleted, version",
        (
            "('p', 'f1', 1, '2026-02-24', 'u1', 0, 1)",
            "('p', 'f1', 2, '2026-02-28', 'u1', 1, 2)",  # gone
            "('p', 'f1', 2, '2026-02-23', 'u1', 0, 3)",
            "('p', 'f2', 1, '2026-03-01', 'u3', 0, 1)",  # u3 has no values
        ),
    )

    assert migrate(database, through=37) == ["0037_funnel_levels_by.sql"]

    rows = database.query(
        "SELECT project_id, funnel_id, filter, filter_value, level, person_id, toString(last_day), plan "
        "FROM funnel_levels_by FINAL WHERE is_deleted = 0 ORDER BY ALL"
    ).result_rows
    # each live level of u1 under each live value, with the earlier of the two days, and its plan
    assert rows == [
        ("p", "f1", "country", "DE", 1, "u1", "2026-02-21", "premium"),
        ("p", "f1", "country", "DE", 2, "u1", "2026-02-21", "premium"),
        ("p", "f1", "country", "NL", 1, "u1", "2026-02-24", "premium"),
        ("p", "f1", "country", "NL", 2, "u1", "2026-02-23", "premium"),
        ("p", "f1", "plan", "premium", 1, "u1", "2026-02-24", "premium"),
        ("p", "f1", "plan", "premium", 2, "u1", "2026-02-23", "premium"),
    ]


@dataclass(frozen=True)
class Rekeyed:
    """A table a migration rebuilds under an MD5 key of the value (md5_key): its identity
    columns, the columns its value key is of, its other columns, and rows (one insert each: a
    single insert would collapse the versions as it writes them)."""

    migration: str
    table: str
    identity: tuple[str, ...]
    value_of: tuple[str, ...]
    others: tuple[str, ...]
    sorting_key: str
    value: tuple[str, ...]  # the value_of columns of the value read back (u1 and u2 have rows of it)
    rows: tuple[str, ...]


FIRST_BY = Rekeyed(
    "0038_person_first_by_keys.sql",
    "person_first_by",
    ("project_id", "filter", "filter_value", "person_id"),
    ("project_id", "filter", "filter_value"),
    ("first_day", "last_day", "first_seen_day", "recent_days", "recent_active"),
    "value_key, person_id",
    ("p", "country", "NL"),
    (
        "('p', 'country', 'NL', 'u1', '2026-02-20', '2026-02-25', '2026-02-20', 1, 2, 0, 1)",
        "('p', 'country', 'NL', 'u1', '2026-02-20', '2026-03-01', '2026-02-20', 3, 4, 0, 2)",  # newer
        "('p', 'country', 'NL\tx', 'u1', '2026-02-21', '2026-02-21', '2026-02-20', 0, 0, 0, 2)",  # a tab
        "('p', 'country', 'FR', 'u1', '2026-02-22', '2026-02-22', '2026-02-20', 0, 0, 0, 2)",
        "('p', 'country', 'FR', 'u1', '2026-02-22', '2026-02-22', '2026-02-20', 0, 0, 1, 3)",  # went
        "('p', 'plan', 'premium', 'u1', '2026-02-20', '2026-03-01', '2026-02-20', 0, 0, 0, 2)",
        "('p', 'country', 'NL', 'u2', '2026-03-01', '2026-03-01', '2026-03-01', 0, 0, 0, 1)",
        "('q', 'country', 'NL', 'u1', '2026-03-01', '2026-03-01', '2026-03-01', 0, 0, 0, 1)",  # project q's
    ),
)
LEVELS_BY = Rekeyed(
    "0039_funnel_levels_by_keys.sql",
    "funnel_levels_by",
    ("project_id", "funnel_id", "filter", "filter_value", "level", "person_id"),
    ("project_id", "funnel_id", "filter", "filter_value"),
    ("last_day", "plan"),
    "value_key, level, person_id",
    ("p", "f1", "country", "NL"),
    (
        "('p', 'f1', 'country', 'NL', 1, 'u1', '2026-02-25', 'trial', 0, 1)",
        "('p', 'f1', 'country', 'NL', 1, 'u1', '2026-03-01', 'premium', 0, 2)",  # newer
        "('p', 'f1', 'country', 'NL\tx', 1, 'u1', '2026-02-21', 'premium', 0, 2)",  # a tab
        "('p', 'f1', 'country', 'FR', 1, 'u1', '2026-02-22', 'premium', 0, 2)",
        "('p', 'f1', 'country', 'FR', 1, 'u1', '2026-02-22', 'premium', 1, 3)",  # went
        "('p', 'f2', 'country', 'NL', 1, 'u1', '2026-02-20', 'premium', 0, 2)",  # another funnel
        "('p', 'f1', 'country', 'NL', 1, 'u2', '2026-03-01', '', 0, 1)",
        "('q', 'f1', 'country', 'NL', 1, 'u1', '2026-03-01', '', 0, 1)",  # project q's
    ),
)


@pytest.mark.parametrize("rekeyed", [FIRST_BY, LEVELS_BY], ids=lambda r: r.table)
def test_a_table_rebuilt_under_md5_keys_keeps_each_rows_newest_version(
    database: Client, rekeyed: Rekeyed
) -> None:
    """0038 and 0039: the newest version of every row stays, tombstones too; the value's key is
    the MD5 of its parts with a tab between, as outside ClickHouse; a reader
    computing the key from the value (werkstroom.breakdowns.md5_key) gets that value's rows only,
    not those of a value that starts like it, of another funnel or of another project."""
    number = int(rekeyed.migration[:4])
    migrate(database, through=number - 1)
    t = rekeyed.table
    columns = ", ".join((*rekeyed.identity, *rekeyed.others, "is_deleted", "version"))
    for row in rekeyed.rows:
        database.command(f"INSERT INTO {t} ({columns}) VALUES {row}")
    # The newest version of each row, tombstones included (FINAL hides those; ClickHouse may merge
    # the older away at any time).
    identity = ", ".join(rekeyed.identity)
    newest = (
        f"SELECT {identity}, max(version), argMax(({', '.join(rekeyed.others)}, is_deleted), version) "
        f"FROM {t} GROUP BY ALL ORDER BY ALL"
    )
    final = f"SELECT {columns} FROM {t} FINAL WHERE is_deleted = 0 ORDER BY ALL"
    before_newest, before_final = database.query(newest).result_rows, database.query(final).result_rows
    assert len(before_newest) == 6 and len(before_final) == 5

    assert migrate(database, through=number) == [rekeyed.migration]

    assert database.query(newest).result_rows == before_newest
    assert database.query(final).result_rows == before_final
    assert database.query(
        "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": t},
    ).result_rows == [(rekeyed.sorting_key,)]
    assert database.query(f"SHOW TABLES LIKE '{t}_rebuild'").result_rows == []

    def md5(*parts: str) -> int:
        return int.from_bytes(hashlib.md5("\t".join(parts).encode()).digest(), "little")

    of = ", ".join(rekeyed.value_of)
    keys = database.query(f"SELECT DISTINCT {of}, value_key FROM {t}").result_rows
    assert len(keys) == 5
    for *value, value_key in keys:
        assert value_key == md5(*value)
    params = dict(zip(rekeyed.value_of, rekeyed.value, strict=True))
    read = (
        f"SELECT person_id, version FROM {t} FINAL PREWHERE value_key = "
        f"{md5_key(*(f'{{{c}:String}}' for c in rekeyed.value_of))} WHERE is_deleted = 0 ORDER BY ALL"
    )
    assert database.query(read, parameters=params).result_rows == [("u1", 2), ("u2", 1)]
    # A row written after the migration gets its keys from ClickHouse, and replaces the older.
    database.command(f"INSERT INTO {t} ({columns}) VALUES {rekeyed.rows[-2].replace(', 0, 1)', ', 0, 5)')}")
    assert database.query(read, parameters=params).result_rows == [("u1", 2), ("u2", 5)]
