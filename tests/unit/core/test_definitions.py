"""One source per definition (issue 20): a column list, the churn query, the reader of
identities, the version clock and the contract's event names each live in one module, and
these tests fail when one is written out a second time in werkstroom/ or services/."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Iterator
from pathlib import Path

from services.aggregator import derived, generations, processor, sessions, status
from services.api import queries
from services.ingest import segment
from werkstroom import churn, contract, funnels
from werkstroom.clickhouse import tables, versions

ROOT = Path(__file__).resolve().parents[3]
SOURCES = sorted([*(ROOT / "werkstroom").rglob("*.py"), *(ROOT / "services").rglob("*.py")])
#: Built from the contract's FIELDS, whose home is the contract.
NOT_LISTED_HERE = {"EVENTS_COLUMNS"}


def _home_lists() -> dict[str, list[str]]:
    """The column lists of tables.py, four columns or more (shorter runs are not distinctive)."""
    return {
        name: value
        for name, value in vars(tables).items()
        if name.isupper() and isinstance(value, list) and len(value) >= 4 and name not in NOT_LISTED_HERE
    }


def _strings(node: ast.AST) -> list[str] | None:
    """The strings of a list or tuple literal made of string constants (starred tuples too)."""
    if not isinstance(node, ast.List | ast.Tuple):
        return None
    out: list[str] = []
    for element in node.elts:
        if isinstance(element, ast.Constant) and isinstance(element.value, str):
            out.append(element.value)
        elif isinstance(element, ast.Starred) and (inner := _strings(element.value)) is not None:
            out.extend(inner)
        else:
            return None
    return out


def _texts(tree: ast.AST) -> Iterator[str]:
    """Every string constant (SQL, adjacent literals joined) with its whitespace collapsed."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield " ".join(node.value.split())


def _is_slice(part: list[str], whole: list[str]) -> bool:
    n = len(part)
    return any(whole[i : i + n] == part for i in range(len(whole) - n + 1))


def _elsewhere(home: Path) -> Iterator[tuple[Path, ast.AST]]:
    for path in SOURCES:
        if path != home:
            yield path, ast.parse(path.read_text())


def test_a_tables_column_list_is_written_only_in_tables_py() -> None:
    lists = _home_lists()
    assert {"DAILY_STATS_COLUMNS", "ONLINE_VISITORS_COLUMNS", "ONLINE_VISITOR_READ"} <= set(lists)
    found = []
    for path, tree in _elsewhere(Path(tables.__file__)):
        for node in ast.walk(tree):
            literal = _strings(node)
            if literal is not None and len(literal) >= 4:
                found += [(path, name) for name, whole in lists.items() if _is_slice(literal, whole)]
        for text in _texts(tree):  # a SELECT or INSERT spelling a list out
            found += [(path, name) for name, whole in lists.items() if ", ".join(whole) in text]
    assert not found, f"a column list of werkstroom/clickhouse/tables.py written again: {found}"


def test_the_readers_lists_are_cut_from_the_tables_lists() -> None:
    assert set(tables.ONLINE_VISITOR_READ) <= set(tables.ONLINE_VISITORS_COLUMNS)
    assert tables.DAILY_STATS_COLUMNS[2:-1] == tables.DAILY_STATS_FIGURES
    assert queries.DAY_COLUMNS == ["day", *tables.DAILY_STATS_FIGURES]
    for sql in (queries.ONLINE_SQL, queries.ONLINE_EXPORT_SQL):
        assert sql.startswith(f"SELECT {', '.join(tables.ONLINE_VISITOR_READ)}")
    # the aggregator's rows are in its tables' order
    assert processor.ONLINE_VISITORS_COLUMNS is tables.ONLINE_VISITORS_COLUMNS
    assert derived.DAILY_STATS_COLUMNS is tables.DAILY_STATS_COLUMNS


# The churn windows as SQL spells them: the base D-13..D-7, the recent week D-6..D.
CHURN_TEXT = re.compile(r"-\s*13\s+AND\s+\S+\s*-\s*7\b|-\s*6\s+AND\s+\S+")


def test_churn_is_defined_only_in_werkstroom_churn() -> None:
    assert CHURN_TEXT.search(churn.COUNTS_SQL)  # the guard still recognises the definition
    found = [
        path
        for path, tree in _elsewhere(Path(churn.__file__))
        for text in _texts(tree)
        if CHURN_TEXT.search(text) and "person_activity" in text
    ]
    assert not found, f"churn computed outside werkstroom/churn.py: {found}"


def test_churns_affected_days_are_its_windows() -> None:
    from datetime import date

    changed = date(2026, 11, 1)
    days = churn.days_affected({changed}, date(2026, 11, 10))
    assert days == {date(2026, 11, d) for d in range(1, 11)}  # up to today
    assert len(churn.days_affected({changed}, date(2026, 12, 31))) == churn.WINDOW_DAYS


def test_person_distinct_ids_is_read_only_in_identity_py() -> None:
    reads = re.compile(r"\bFROM\s+person_distinct_ids\b")
    home = ROOT / "werkstroom" / "identity.py"
    found = [path for path, tree in _elsewhere(home) for text in _texts(tree) if reads.search(text)]
    assert not found, f"person_distinct_ids read outside werkstroom/identity.py: {found}"


def test_one_version_clock() -> None:
    first = versions.next_version()
    following = [versions.next_version() for _ in range(1000)]
    assert following == sorted(set(following)) and following[0] > first  # strictly increasing
    assert abs(following[-1] - time.time_ns() // 1_000_000) < 5_000  # ms now, give or take the burst
    for module in (derived, funnels, generations, status):
        assert module.next_version is versions.next_version, module.__name__  # type: ignore[attr-defined]
    # processor's clock ceiling is a wall clock for eviction, not a version
    allowed = {ROOT / "werkstroom" / "clickhouse" / "versions.py", Path(processor.__file__)}
    found = [p for p in SOURCES if p not in allowed and "time_ns()" in p.read_text()]
    assert not found, f"a version clock outside werkstroom/clickhouse/versions.py: {found}"


def test_the_contracts_event_names_are_spelled_only_in_the_contract() -> None:
    assert contract.HEARTBEAT == "$heartbeat" and contract.PAGE == "$page"
    assert sessions.HEARTBEAT is contract.HEARTBEAT and funnels.HEARTBEAT is contract.HEARTBEAT
    assert segment.RESERVED_TRACK == {contract.HEARTBEAT}
    assert set(contract.TYPE_EVENTS) == set(contract.KNOWN_TYPES) - {"track"}
    home = Path(contract.__file__)
    names = {contract.HEARTBEAT, *contract.TYPE_EVENTS.values()}
    examples = ROOT / "services" / "api" / "models.py"  # OpenAPI examples: what an answer looks like
    found = [
        (path, node.value)
        for path, tree in _elsewhere(home)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and path != examples
    ]
    assert not found, f"an event name of the contract spelled outside werkstroom/contract: {found}"


def test_churns_day_bits_are_day_numbers_modulo_64() -> None:
    """person_first_by's recent days (ClickHouse: toUInt16(day) % 64): a week is 7 distinct bits,
    and days 64 apart share one, which RECENT_DAYS keeps the windows clear of."""
    from datetime import date, timedelta

    assert churn.bit(date(1970, 1, 1)) == 1 and churn.bit(date(1970, 1, 2)) == 2
    assert churn.bit(date(1970, 3, 6)) == 1  # day 64
    week = churn.bits(date(2026, 11, 25), date(2026, 12, 1))
    assert bin(week).count("1") == 7
    assert week == sum(churn.bit(date(2026, 11, 25) + timedelta(days=i)) for i in range(7))
    # the oldest kept day (a row written a day after its last day, in a zone a day off UTC) is
    # more than 64 days before no window day
    assert churn.RECENT_DAYS + 21 < 64
