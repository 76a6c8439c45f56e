"""Fast paths around clickhouse-connect's Python formatting, for the aggregator's large calls.

- clickhouse-connect escapes a string parameter one character at a time in Python. The
  aggregator binds arrays of tens of thousands of ids (persons, sessions and funnel
  recomputations); `StringArray` produces the same text with one `str.translate`.
- `tab_separated` writes rows of strings as TabSeparated text, for `raw_insert`: ClickHouse
  parses it in C++ (the refresh stages its ids in a temporary table this way).
- A row-oriented insert is transposed into columns by clickhouse-connect in Python, value by
  value; `insert_rows` transposes with `zip` (in C) and inserts column-oriented.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from clickhouse_connect.driver.binding import must_escape
from clickhouse_connect.driver.client import Client

#: The characters clickhouse-connect backslash-escapes in a parameter (binding.escape_str).
_ESCAPES = str.maketrans({c: "\\" + c for c in must_escape})
_SEP = "\x00"  # joins the ids before escaping them all at once; never escaped itself


class StringArray:
    """An `Array(String)` parameter, formatted once and exactly as clickhouse-connect would
    format a list of str (it binds any object it does not know by `str()`)."""

    __slots__ = ("_text", "size")

    def __init__(self, values: Iterable[str]) -> None:
        items = list(values)
        self.size = len(items)
        joined = _SEP.join(items)
        if joined.count(_SEP) == max(0, len(items) - 1):  # no id holds the separator
            body = joined.translate(_ESCAPES).replace(_SEP, "', '")
            self._text = f"['{body}']" if items else "[]"
        else:
            self._text = "[" + ", ".join(f"'{v.translate(_ESCAPES)}'" for v in items) + "]"

    def __str__(self) -> str:
        return self._text

    def __len__(self) -> int:
        return self.size


def insert_rows(client: Client, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
    """Insert rows (each in `columns` order), column-oriented."""
    if rows:
        data = [list(column) for column in zip(*rows, strict=True)]
        client.insert(table, data, column_names=list(columns), column_oriented=True)


#: What TabSeparated backslash-escapes in a value (ClickHouse reads these escapes back).
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tab_separated(rows: Sequence[Sequence[str]]) -> bytes:
    """Rows of strings as TabSeparated lines. The rows are joined first and checked for the
    characters that need escaping; only when one occurs is each value escaped."""
    if not rows:
        return b""
    text = "\n".join(["\t".join(row) for row in rows])
    tabs, lines = len(rows) * (len(rows[0]) - 1), len(rows) - 1
    if text.count("\t") != tabs or text.count("\n") != lines or "\\" in text or "\r" in text:
        text = "\n".join(["\t".join([v.translate(_TSV_ESCAPES) for v in row]) for row in rows])
    return (text + "\n").encode()
