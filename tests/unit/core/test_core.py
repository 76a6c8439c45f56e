from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

import orjson
import pytest

from werkstroom.clickhouse import _chdb_options, _chdb_path
from werkstroom.clickhouse.migrate import load_migrations
from werkstroom.contract import ContractError, decode_event, message_key
from werkstroom.kafka import partition_for
from werkstroom.settings import Settings, get_settings, mask_url

ROOT = Path(__file__).resolve().parents[3]


def test_settings_env_prefix_precedence_and_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKSTROOM_INGEST_PORT", "9100")
    monkeypatch.setenv("WERKSTROOM_DEMO", "false")
    monkeypatch.setenv("WERKSTROOM_CLICKHOUSE_URL", "http://user:s3cret@ch:8123")
    monkeypatch.setenv("WERKSTROOM_ADMIN_TOKEN", "tok")
    settings = get_settings(api_port=9200)
    assert (settings.ingest_port, settings.api_port, settings.demo) == (9100, 9200, False)
    masked = settings.masked()
    assert masked["clickhouse_url"] == "http://user:***@ch:8123" and masked["admin_token"] == "***"
    assert "s3cret" not in str(masked) and "tok" not in str(masked.values())
    assert mask_url("chdb:///x/y") == "chdb:///x/y"


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKSTROOM_CLICKHOUSE_DATABASE", "x; DROP")
    with pytest.raises(ValueError, match="clickhouse_database"):
        get_settings()


def test_embedded_clickhouse_defaults_under_the_data_dir(tmp_path: Path) -> None:
    """With its cache of decompressed blocks (512 MB by default) as an option of the engine in
    the URL, which connect() passes to it; none when the cache is off."""
    settings = Settings(data_dir=tmp_path)
    plain = f"chdb://{tmp_path.resolve()}/clickhouse"
    assert settings.effective_clickhouse_url == f"{plain}?uncompressed_cache_size={512 * 1024 * 1024}"
    assert _chdb_options(settings.effective_clickhouse_url) == {
        "uncompressed_cache_size": str(512 * 1024 * 1024)
    }
    assert _chdb_path(settings.effective_clickhouse_url) == f"{tmp_path.resolve()}/clickhouse"
    off = Settings(data_dir=tmp_path, clickhouse_uncompressed_cache_mb=0)
    assert off.effective_clickhouse_url == plain and _chdb_options(plain) == {}


def test_message_key_keeps_a_visitor_in_one_partition() -> None:
    assert message_key("p", "anon", "user") == b"p:anon"
    assert message_key("p", "", "user") == b"p:u:user"
    # The Java client's murmur2: known values from Kafka's own partitioner tests.
    assert partition_for(b"a", 1000) == partition_for(b"a", 1000)
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"p:1", b"p:2", b"x" * 40):
        assert partition_for(key, 12) == DefaultPartitioner()(key, list(range(12)), list(range(12)))


def test_decode_event_rejects_what_breaks_the_contract() -> None:
    good = {
        "schema_version": 1,
        "event_id": "e",
        "project_id": "p",
        "type": "track",
        "event": "E",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "received_at": "2026-01-01T00:00:00.000Z",
    }
    decoded = decode_event(orjson.dumps(good))
    assert (
        decoded.sent_at is None
        and decoded.timestamp.tzinfo is not None
        and bytes(decoded.properties) == b"{}"
    )
    spaced = orjson.dumps(good)[:-1] + b', "properties" :  \n {"a": 1} , "traits":\t{}}'
    assert bytes(decode_event(spaced).properties) == b'{"a": 1}'
    cases = [
        (None, "empty_value"),
        (b"{", "invalid_json"),
        (b"[]", "not_an_object"),
        (orjson.dumps({**good, "event_id": ""}), "missing_field"),
        (orjson.dumps({**good, "schema_version": 2}), "unsupported_version"),
        (orjson.dumps({**good, "type": ""}), "missing_field"),
        (orjson.dumps({**good, "type": 5}), "invalid_field"),
        (orjson.dumps({**good, "type": "x" * 51}), "invalid_field"),
        (orjson.dumps({**good, "url": 5}), "invalid_field"),
        (orjson.dumps({**good, "properties": []}), "invalid_field"),
        (orjson.dumps({**good, "traits": "plan"}), "invalid_field"),
        (orjson.dumps({**good, "traits": None}), "invalid_field"),
        (orjson.dumps({**good, "timestamp": "soon"}), "invalid_time"),
    ]
    for value, reason in cases:
        with pytest.raises(ContractError) as info:
            decode_event(value)
        assert info.value.reason == reason


def test_the_known_types_are_the_schemas_and_a_newer_type_still_decodes() -> None:
    """One list of `type` values (KNOWN_TYPES) for ingest and the published schema; a consumer
    reads a type it does not know (the compatibility rule), so an older aggregator keeps up."""
    from werkstroom.contract import KNOWN_TYPES, json_schema

    assert json_schema()["properties"]["type"]["enum"] == list(KNOWN_TYPES)
    good = {
        "schema_version": 1,
        "event_id": "e",
        "project_id": "p",
        "type": "screen",
        "event": "$screen",
        "timestamp": "2026-01-01T00:00:00Z",
        "received_at": "2026-01-01T00:00:00Z",
    }
    for kind in (*KNOWN_TYPES, "some_future_type"):
        assert decode_event(orjson.dumps({**good, "type": kind})).type == kind


def test_migrations_are_numbered_guarded_and_comment_every_order_by() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    folder = resources.files("werkstroom.clickhouse") / "migrations"
    assert (folder / "max_migration.txt").read_text().strip() == migrations[-1].name
    for migration in migrations:
        lines = migration.sql.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*ORDER BY", line):
                assert lines[i - 1].strip().startswith("--"), f"{migration.name}: ORDER BY without a comment"
        assert migration.statements(), migration.name


def test_statement_split_ignores_comment_only_parts() -> None:
    from werkstroom.clickhouse.migrate import Migration

    sql = "-- hello;\nCREATE TABLE a (\n  -- a note;\n  x UInt8) ENGINE = Memory;\n-- bye\nSELECT 1;\n"
    assert Migration(1, "0001_x.sql", sql).statements() == [
        "CREATE TABLE a (\n  x UInt8) ENGINE = Memory",
        "SELECT 1",
    ]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_services_never_import_each_other_and_the_core_never_imports_services() -> None:
    services = ["ingest", "aggregator", "api"]
    for service in services:
        for path in (ROOT / "services" / service).rglob("*.py"):
            for name in _imports(path):
                for other in services:
                    if other != service:
                        assert not name.startswith(f"services.{other}"), f"{path} imports {name}"
    for path in (ROOT / "werkstroom").rglob("*.py"):
        if path.name == "serve.py":  # the composition root: the one place that starts services
            continue
        assert not any(n.startswith("services") for n in _imports(path)), path


def test_no_print_calls_in_the_code() -> None:
    for folder in ("werkstroom", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            calls = [
                n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"
            ]
            assert not calls, path


def test_decode_event_dead_letters_times_clickhouse_cannot_store() -> None:
    good = {
        "schema_version": 1,
        "event_id": "e",
        "project_id": "p",
        "type": "track",
        "event": "E",
        "timestamp": "2026-01-01T00:00:00Z",
        "received_at": "2026-01-01T00:00:00Z",
    }
    accepted = [
        {"timestamp": "2000-01-01T00:00:00Z"},
        {"timestamp": "2099-12-31T23:59:59.999Z"},
        {"timestamp": "2000-01-01T01:00:00+01:00"},  # the same instant as 2000-01-01T00:00Z
        {"sent_at": "1970-01-01T00:00:00Z"},  # a device clock reset to the epoch: corrected, kept
        {"sent_at": "1900-01-01T00:00:00Z"},
        {"sent_at": "2299-12-31T23:59:59Z"},
        {"sent_at": None},
    ]
    for fields in accepted:
        decode_event(orjson.dumps({**good, **fields}))
    refused = [
        {"timestamp": "1999-12-31T23:59:59.999Z"},
        {"timestamp": "2000-01-01T00:30:00+01:00"},
        {"timestamp": "2100-01-01T00:00:00Z"},
        {"timestamp": "2150-01-01T00:00:00Z"},  # past ClickHouse's Date: it stopped the sink
        {"timestamp": "9999-12-31T23:59:59Z"},
        {"timestamp": "0001-01-01T00:00:00Z"},
        {"timestamp": "9999-12-31T23:59:59-23:59"},  # past datetime.max in UTC: compared, not converted
        {"received_at": "2100-06-01T00:00:00Z"},
        {"received_at": "1999-06-01T00:00:00Z"},
        {"sent_at": "2300-01-01T00:00:00Z"},
        {"sent_at": "1899-12-31T23:59:59Z"},
        {"timestamp": "2026-01-01T00:00:00"},  # no zone: RFC 3339 requires one; some read it as local
        {"sent_at": "2026-01-01T00:00:00"},
    ]
    for fields in refused:
        with pytest.raises(ContractError) as info:
            decode_event(orjson.dumps({**good, **fields}))
        assert info.value.reason == "invalid_time", fields
        name = next(iter(fields))
        assert name in str(info.value), (fields, str(info.value))
