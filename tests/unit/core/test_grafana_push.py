"""The plan of `werkstroom grafana push` without a network: what grafana/ asks for (the
provisioning files, their ${...} and $__file{...} expanded as Grafana expands them, options
over the file), what a push does to each object given what Grafana holds, that a second plan
over the first one's result changes nothing, and that no secret reaches the report."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from werkstroom import grafana_push as gp
from werkstroom.grafana_push import ClickHouseOptions, GrafanaPushError

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "grafana"
DATASOURCE_FILE = Path("provisioning") / "datasources" / "clickhouse.yaml"
SECRET = "ch-Pa55-secret"
ENV = {"CLICKHOUSE_PASSWORD": SECRET}
BOARDS = {json.loads(p.read_text())["uid"]: p for p in (GRAFANA / "dashboards").glob("*.json")}


def copy_of_grafana(to: Path, password: str = "${CLICKHOUSE_PASSWORD}", **json_data: Any) -> Path:
    """grafana/ with the datasource's password (and jsonData fields) as given."""
    shutil.copytree(GRAFANA, to)
    source_file = to / DATASOURCE_FILE
    provisioning = yaml.safe_load(source_file.read_text())
    (source,) = provisioning["datasources"]
    source["secureJsonData"] = {"password": password}
    source["jsonData"].update(json_data)
    source_file.write_text(yaml.safe_dump(provisioning))
    return to


@pytest.fixture
def grafana_dir(tmp_path: Path) -> Path:
    return copy_of_grafana(tmp_path / "grafana")


def desired(
    grafana_dir: Path, options: ClickHouseOptions | None = None, env: dict[str, str] | None = None
) -> gp.Desired:
    return gp.load_desired(grafana_dir, options or ClickHouseOptions(), ENV if env is None else env)


class FakeGrafana:
    """Grafana's state in memory, read the way the plan reads it and written the way Grafana
    stores a push (ids and versions added, secrets write-only)."""

    def __init__(self) -> None:
        self.folder_list: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, dict[str, Any]] = {}
        self.boards: dict[str, dict[str, Any]] = {}

    def folder(self, uid: str) -> dict[str, Any] | None:
        return self.folder_list.get(uid)

    def folders(self) -> list[dict[str, Any]]:
        return list(self.folder_list.values())

    def datasource(self, uid: str) -> dict[str, Any] | None:
        found = self.sources.get(uid)
        if found is None:
            return None
        shown = {k: v for k, v in found.items() if k != "secureJsonData"}
        return {**shown, "secureJsonFields": {k: True for k in found.get("secureJsonData", {})}}

    def datasource_named(self, name: str) -> dict[str, Any] | None:
        return next((self.datasource(uid) for uid, d in self.sources.items() if d["name"] == name), None)

    def dashboard(self, uid: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.boards.get(uid))

    def store(self, changes: list[gp.Change]) -> None:
        for c in changes:
            body = copy.deepcopy(c.body)
            if c.action == "unchanged":
                continue
            if c.kind == "folder":
                self.folder_list[c.uid] = {"uid": c.uid, "title": body["title"], "id": 1, "version": 1}
            elif c.kind == "datasource":
                old = self.sources.get(c.uid, {})
                secure = {**old.get("secureJsonData", {}), **body.get("secureJsonData", {})}
                self.sources[c.uid] = {"id": 7, "isDefault": False, **body, "secureJsonData": secure}
            else:
                board = {**body["dashboard"], "id": 12, "version": 3}
                self.boards[c.uid] = {"dashboard": board, "meta": {"folderUid": body["folderUid"]}}


def by_uid(changes: list[gp.Change]) -> dict[str, gp.Change]:
    return {c.uid: c for c in changes}


# -- what grafana/ asks for ------------------------------------------------------------------------


def test_the_objects_come_from_the_provisioning_files() -> None:
    want = desired(GRAFANA, env={})
    (source,) = yaml.safe_load((GRAFANA / DATASOURCE_FILE).read_text())["datasources"]
    assert (want.folder_uid, want.folder_title) == ("werkstroom", "Werkstroom")
    assert want.datasource == {
        "name": source["name"],
        "uid": "werkstroom-clickhouse",  # what every panel names
        "type": "grafana-clickhouse-datasource",
        "access": "proxy",
        "jsonData": source["jsonData"],
    }
    assert want.password_required
    assert want.password_source == " and ".join(gp.references(source["secureJsonData"]["password"]))
    assert sorted(d["uid"] for d in want.dashboards) == sorted(BOARDS)
    for board in want.dashboards:  # the file's own, less what Grafana assigns
        on_disk = json.loads(BOARDS[board["uid"]].read_text())
        assert board == {k: v for k, v in on_disk.items() if k not in ("id", "version")}
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == want.datasource["uid"]


def test_options_win_over_the_file(grafana_dir: Path) -> None:
    from_file = desired(grafana_dir)
    assert (from_file.password, from_file.password_source) == (SECRET, "CLICKHOUSE_PASSWORD")
    options = ClickHouseOptions(
        host="ch.internal", port=9440, protocol="native", secure=True, username="reader", password="from-file"
    )
    given = desired(grafana_dir, options)
    assert given.datasource["jsonData"] == {
        **from_file.datasource["jsonData"],
        "host": "ch.internal",
        "port": 9440,
        "protocol": "native",
        "secure": True,
        "username": "reader",
    }
    assert (given.password, given.password_source) == ("from-file", "--clickhouse-password-file")


def test_expansion_is_grafanas(tmp_path: Path) -> None:
    env = {"A": "1", "B_2": "two"}
    secret = tmp_path / "secret"
    secret.write_text("  s3cret\n")
    assert gp.interpolate("$A-${B_2}-$__env{A}-$$A-$$", env) == "1-two-1-$A-$"
    assert gp.interpolate(f"$__file{{{secret}}}", env) == "s3cret"  # trimmed, as Grafana does
    assert gp.references(f"${{A}} $B $$C $__file{{{secret}}}") == ["A", "B", f"the file {secret}"]
    with pytest.raises(GrafanaPushError, match=r"\$\{MISSING\} is not set"):
        gp.interpolate("x${MISSING}", env)
    with pytest.raises(GrafanaPushError, match=r"\$__file\{/nonexistent/secret\}: No such file"):
        gp.interpolate("$__file{/nonexistent/secret}", env)
    with pytest.raises(GrafanaPushError, match="not expanded here"):
        gp.interpolate("$__vault{kv:x}", env)


def test_a_password_from_a_file_as_compose_gives_it(tmp_path: Path) -> None:
    secret = tmp_path / "clickhouse_grafana_password"
    secret.write_text(SECRET + "\n")
    want = desired(copy_of_grafana(tmp_path / "g", f"$__file{{{secret}}}"), env={})
    assert (want.password, want.password_source) == (SECRET, f"the file {secret}")
    missing = desired(copy_of_grafana(tmp_path / "h", "$__file{/run/secrets/nowhere}"), env={})
    assert missing.password is None and "No such file" in missing.password_problem


def test_a_variable_in_a_used_field_must_be_set_one_that_an_option_replaces_need_not(tmp_path: Path) -> None:
    grafana = copy_of_grafana(tmp_path / "grafana", host="${CH_HOST}")
    with pytest.raises(GrafanaPushError, match=r"jsonData.host: \$\{CH_HOST\} is not set"):
        desired(grafana)
    assert desired(grafana, env={**ENV, "CH_HOST": "ch"}).datasource["jsonData"]["host"] == "ch"
    assert desired(grafana, ClickHouseOptions(host="h")).datasource["jsonData"]["host"] == "h"


# -- the decisions ---------------------------------------------------------------------------------


def test_an_empty_grafana_gets_everything_created_and_a_second_plan_changes_nothing(
    grafana_dir: Path,
) -> None:
    grafana, want = FakeGrafana(), desired(grafana_dir)
    first = gp.plan(grafana, want)
    assert [(c.kind, c.action) for c in first] == [("folder", "create"), ("datasource", "create")] + [
        ("dashboard", "create")
    ] * len(BOARDS)
    created = by_uid(first)
    assert created["werkstroom-clickhouse"].body["secureJsonData"] == {"password": SECRET}
    assert "isDefault" not in created["werkstroom-clickhouse"].body  # the owner's choice stays theirs
    for uid in BOARDS:
        body = created[uid].body
        assert (
            body["folderUid"] == "werkstroom"
            and body["overwrite"] is True
            and body["dashboard"]["id"] is None
        )

    grafana.store(first)
    second = gp.plan(grafana, want)
    assert {c.action for c in second} == {"unchanged"}
    assert all(c.body == {} for c in second)


def test_what_differs_is_updated_and_named(grafana_dir: Path) -> None:
    grafana, want = FakeGrafana(), desired(grafana_dir)
    grafana.store(gp.plan(grafana, want))
    edited = sorted(BOARDS)[0]
    grafana.boards[edited]["dashboard"]["title"] = "Renamed in the UI"
    grafana.boards[edited]["dashboard"]["weekStart"] = "monday"  # a key the file lacks: not ours
    grafana.sources["werkstroom-clickhouse"]["jsonData"]["port"] = 9440
    grafana.sources["werkstroom-clickhouse"]["isDefault"] = True
    grafana.folder_list["werkstroom"]["title"] = "Old name"

    changes = by_uid(gp.plan(grafana, want))
    assert (changes["werkstroom"].action, changes["werkstroom"].differs) == ("update", ("title",))
    source = changes["werkstroom-clickhouse"]
    assert (source.action, source.differs) == ("update", ("jsonData.port",))
    assert source.body["jsonData"]["port"] == 9000 and source.body["isDefault"] is True  # kept as it was
    assert (changes[edited].action, changes[edited].differs) == ("update", ("title",))
    assert [c.action for uid, c in changes.items() if uid in BOARDS and uid != edited] == ["unchanged"] * (
        len(BOARDS) - 1
    )


def test_a_dashboard_in_another_folder_is_moved_back(grafana_dir: Path) -> None:
    grafana, want = FakeGrafana(), desired(grafana_dir)
    grafana.store(gp.plan(grafana, want))
    uid = next(iter(BOARDS))
    grafana.boards[uid]["meta"]["folderUid"] = "elsewhere"
    change = by_uid(gp.plan(grafana, want))[uid]
    assert (change.action, change.differs, change.body["folderUid"]) == ("update", ("folder",), "werkstroom")


def test_a_folder_of_the_same_title_is_used_rather_than_a_second_one(grafana_dir: Path) -> None:
    grafana = FakeGrafana()
    grafana.folder_list["abc123"] = {"uid": "abc123", "title": "Werkstroom"}
    changes = gp.plan(grafana, desired(grafana_dir))
    assert (changes[0].uid, changes[0].action) == ("abc123", "unchanged")
    assert {c.body["folderUid"] for c in changes if c.kind == "dashboard"} == {"abc123"}


def test_the_password_is_written_when_missing_or_asked_and_otherwise_kept(grafana_dir: Path) -> None:
    grafana, want = FakeGrafana(), desired(grafana_dir)
    grafana.store(gp.plan(grafana, want))
    assert grafana.sources["werkstroom-clickhouse"]["secureJsonData"] == {"password": SECRET}

    # Grafana never shows it: a push cannot compare, so it keeps it ...
    rotated = desired(grafana_dir, env={"CLICKHOUSE_PASSWORD": "rotated"})
    kept = by_uid(gp.plan(grafana, rotated))["werkstroom-clickhouse"]
    assert kept.action == "unchanged" and "password kept" in kept.note
    # ... unless asked,
    asked = by_uid(gp.plan(grafana, rotated, write_password=True))["werkstroom-clickhouse"]
    assert (asked.action, asked.differs, asked.body["secureJsonData"]) == (
        "update",
        ("password",),
        {"password": "rotated"},
    )
    # ... or Grafana holds none.
    del grafana.sources["werkstroom-clickhouse"]["secureJsonData"]
    missing = by_uid(gp.plan(grafana, want))["werkstroom-clickhouse"]
    assert (missing.action, missing.differs) == ("update", ("password",))


def test_no_password_is_an_error_only_where_grafana_holds_none(grafana_dir: Path) -> None:
    without = desired(grafana_dir, env={})
    assert without.password is None
    with pytest.raises(
        GrafanaPushError, match=r"needs the ClickHouse password \(\$\{CLICKHOUSE_PASSWORD\} is not set\)"
    ):
        gp.plan(FakeGrafana(), without)
    grafana = FakeGrafana()
    grafana.store(gp.plan(grafana, desired(grafana_dir)))
    assert by_uid(gp.plan(grafana, without))["werkstroom-clickhouse"].action == "unchanged"


def test_what_a_push_must_not_overwrite_stops_it(grafana_dir: Path) -> None:
    grafana, want = FakeGrafana(), desired(grafana_dir)
    grafana.sources["other"] = {"uid": "other", "name": "Werkstroom ClickHouse", "type": "x"}
    with pytest.raises(GrafanaPushError, match="named 'Werkstroom ClickHouse' with uid 'other'"):
        gp.plan(grafana, want)

    grafana = FakeGrafana()
    grafana.store(gp.plan(grafana, want))
    uid = next(iter(BOARDS))
    grafana.boards[uid]["meta"]["provisioned"] = True
    assert by_uid(gp.plan(grafana, want))[uid].action == "unchanged"  # the same: nothing to say
    grafana.boards[uid]["dashboard"]["title"] = "x"
    with pytest.raises(GrafanaPushError, match="provisioned from files in this Grafana"):
        gp.plan(grafana, want)

    grafana = FakeGrafana()
    grafana.store(gp.plan(grafana, want))
    grafana.sources["werkstroom-clickhouse"].update(readOnly=True)
    grafana.sources["werkstroom-clickhouse"]["jsonData"]["host"] = "elsewhere"
    with pytest.raises(
        GrafanaPushError, match=r"datasource 'werkstroom-clickhouse' is provisioned .*jsonData.host"
    ):
        gp.plan(grafana, want)


# -- secrets and the report ------------------------------------------------------------------------


def test_no_secret_in_the_report_the_json_or_a_repr(grafana_dir: Path) -> None:
    grafana = FakeGrafana()
    want = desired(grafana_dir, ClickHouseOptions(password=SECRET + "x"))
    assert want.password == SECRET + "x"
    for dry_run in (True, False):
        changes = gp.plan(grafana, want, write_password=True)
        shown = "\n".join(gp.report(changes, want, dry_run))
        shown += json.dumps([c.as_dict() for c in changes]) + repr(changes) + repr(want)
        assert SECRET not in shown
        assert "password from --clickhouse-password-file" in shown
        grafana.store(changes)


def test_the_report_says_what_it_would_do_did_and_that_nothing_changed(grafana_dir: Path) -> None:
    grafana, want = FakeGrafana(), desired(grafana_dir)
    changes = gp.plan(grafana, want)
    dry = gp.report(changes, want, dry_run=True)
    assert dry[0].split()[:4] == ["would", "create", "folder", "werkstroom"]
    data = want.datasource["jsonData"]
    assert f"{data['host']}:{data['port']} {data['protocol']}, user {data['username']}" in dry[1]
    n = 2 + len(BOARDS)
    assert dry[-1] == f"dry run, nothing written: would create {n}, update 0; 0 unchanged"
    assert gp.report(changes, want, dry_run=False)[-1] == f"created {n}, updated 0, unchanged 0"
    grafana.store(changes)
    assert gp.report(gp.plan(grafana, want), want, dry_run=False)[-1] == f"nothing to change: {n} unchanged"


# -- credentials and the client ------------------------------------------------------------------


def test_credentials_precedence(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    url = "http://grafana:3000"
    env = {"GRAFANA_TOKEN": "from-env", "GRAFANA_PASSWORD": "pw"}
    assert gp.credential(url, env, token="given") == "given"
    assert gp.credential(url, env, token_file=str(token_file)) == "from-file"
    assert gp.credential(url, env) == "from-env"
    assert gp.credential(url, env, user="admin") == ("admin", "pw")
    assert gp.credential("http://admin:s%40cret@grafana:3000", {}) == ("admin", "s@cret")
    with pytest.raises(GrafanaPushError, match="not both"):
        gp.credential(url, env, token="a", user="admin")
    with pytest.raises(GrafanaPushError, match="GRAFANA_PASSWORD or --password-file"):
        gp.credential(url, {}, user="admin")
    with pytest.raises(GrafanaPushError, match="no Grafana credentials"):
        gp.credential(url, {})
    with pytest.raises(GrafanaPushError, match="cannot read the token file"):
        gp.credential(url, {}, token_file=str(tmp_path / "absent"))


def test_the_client_gets_a_url_it_joins_right_and_no_credentials_in_it() -> None:
    under_a_path = gp.Grafana("http://admin:pw@example.test:3000/grafana", ("admin", "pw"))
    assert under_a_path.api.client.url == "http://example.test:3000/grafana/api"
    assert under_a_path.url == "http://example.test:3000/grafana"
    assert gp.Grafana("https://example.test/", "t").api.client.url == "https://example.test/api"
    with pytest.raises(GrafanaPushError, match="expected http"):
        gp.Grafana("example.test:3000", "t")


def test_a_connection_error_is_told_in_a_few_words() -> None:
    refused = (
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api/frontend/settings "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: Failed to "
        "establish a new connection: [Errno 111] Connection refused'))"
    )
    assert gp._reason(Exception(refused)) == "Connection refused"
    unknown = (
        "... (Caused by NameResolutionError(\"<...>: Failed to resolve 'grafana.invalid' (Name or service"
    )
    assert gp._reason(Exception(unknown)) == "cannot resolve host grafana.invalid"
