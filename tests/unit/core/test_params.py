"""StringArray formats array parameters exactly as clickhouse-connect does; tab_separated
escapes what TabSeparated needs."""

from __future__ import annotations

from clickhouse_connect.driver.binding import format_bind_value

from werkstroom.clickhouse.params import StringArray, tab_separated

TRICKY = ["", "plain", "it's", "back\\slash", "tab\there", "new\nline", "`tick`", "ünï ✓", "\\'", "a'b\\c"]


def test_same_text_as_clickhouse_connect() -> None:
    assert str(StringArray(TRICKY)) == format_bind_value(TRICKY)
    assert str(StringArray([])) == format_bind_value([])
    assert len(StringArray(TRICKY)) == len(TRICKY)


def test_formats_any_iterable_once() -> None:
    values = StringArray(v for v in ("b", "a"))
    assert str(values) == "['b', 'a']"
    assert str(values) == "['b', 'a']"


def test_ids_holding_the_join_separator_are_formatted_the_same() -> None:
    values = ["a\x00b", "c", "it's\x00"]
    assert str(StringArray(values)) == format_bind_value(values)
    assert str(StringArray(["\x00"])) == format_bind_value(["\x00"])
    assert str(StringArray([""])) == format_bind_value([""])


def test_tab_separated_escapes_only_what_tsv_needs() -> None:
    assert tab_separated([]) == b""
    assert tab_separated([("a", "b"), ("c", "d")]) == b"a\tb\nc\td\n"
    assert tab_separated([("t\tab", "n\new"), ("b\\s", "c\rr")]) == b"t\\tab\tn\\new\nb\\\\s\tc\\rr\n"
