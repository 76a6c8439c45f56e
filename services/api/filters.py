"""The filters a view is narrowed by (`?country=NL&page=/blog/*`), and their SQL.

One model for every view that reads the breakdown tables (migration 0023): each filter names a
session attribute (werkstroom.clickhouse.tables.SESSION_ATTRIBUTES) or, for `page`, a path the
session viewed. Values are bound as query parameters, never spliced into SQL. A path filter
(`page`, `entry_page`, `exit_page`) is an exact path, or a glob where `*` matches anything
(`/blog/*`); the others are exact values. An empty value is a value: `source=` is "Direct / None",
`country=` the unknown country.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Query parameter -> the column it narrows (a SESSION_ATTRIBUTES column, or `path`). `page` is
#: the special one: on breakdown_pages the row's own path, elsewhere the sessions that viewed a
#: matching path.
COLUMNS: dict[str, str] = {
    "page": "path",
    "entry_page": "entry_path",
    "exit_page": "exit_path",
    "source": "source",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "country": "country",
    "device": "device_type",
    "browser": "browser",
    "os": "os",
}
GLOBS = frozenset({"page", "entry_page", "exit_page"})
#: The longest filter value accepted (a path is stored up to 2048 characters).
MAX_VALUE = 2048


@dataclass(frozen=True)
class Filters:
    """The filters of one request, in COLUMNS's order; a name absent is no filter."""

    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, given: Mapping[str, str | None]) -> Filters:
        """From the request's values (None: not given). Unknown names are a programming error."""
        unknown = set(given) - set(COLUMNS)
        if unknown:
            raise KeyError(f"no such filter: {sorted(unknown)}")
        return cls({name: given[name] for name in COLUMNS if given.get(name) is not None})  # type: ignore[misc]

    def where(self, table: str, sessions_of: str) -> tuple[str, dict[str, Any]]:
        """The conditions (` AND ...`, or "") on a breakdown table's rows, and their parameters.
        `table` is "breakdown_pages" or "breakdown_sessions"; `sessions_of` is a SELECT of the
        session ids of `{table}` in the same range, to which ` AND <conditions>` is appended:
        `page` on breakdown_sessions reads breakdown_pages; on breakdown_pages, whose rows hold
        a path's figures only, the session's attributes are read from breakdown_sessions."""
        own: list[str] = []
        of_sessions: list[str] = []
        params: dict[str, Any] = {}
        for name, value in self.values.items():
            column = COLUMNS[name]
            param = f"f_{name}"
            condition = _condition(column, param, value, name in GLOBS)
            params[param] = _like(value) if name in GLOBS and "*" in value else value
            if name == "page" and table != "breakdown_pages":
                own.append(f"session_id IN ({sessions_of.format(table='breakdown_pages')} AND {condition})")
            elif name != "page" and table == "breakdown_pages":
                of_sessions.append(condition)
            else:
                own.append(condition)
        if of_sessions:
            found = f"{sessions_of.format(table='breakdown_sessions')} AND {' AND '.join(of_sessions)}"
            own.append(f"session_id IN ({found})")
        return "".join(f" AND {c}" for c in own), params


def _condition(column: str, param: str, value: str, glob: bool) -> str:
    if glob and "*" in value:
        return f"{column} LIKE {{{param}:String}}"
    return f"{column} = {{{param}:String}}"


def _like(glob: str) -> str:
    """A `*` glob as a LIKE pattern: LIKE's own wildcards and its escape are escaped first."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def matches(glob: str, value: str) -> bool:
    """What the SQL condition decides, in Python (the tests hold the two to each other)."""
    if "*" not in glob:
        return glob == value
    parts = glob.split("*")
    if not value.startswith(parts[0]) or not value.endswith(parts[-1]):
        return False
    at = len(parts[0])
    end = len(value) - len(parts[-1])
    for part in parts[1:-1]:
        found = value.find(part, at, end)
        if found < 0:
            return False
        at = found + len(part)
    return at <= end
