"""`werkstroom grafana push`, run as a user runs it (a subprocess), against two Grafanas:

- `StandInGrafana`: a small HTTP server in this process that answers the handful of Grafana
  HTTP API endpoints the push calls, the way Grafana 11 answers them (404s, 401, ids and
  versions added on save, secrets kept write-only), and records every request. It stands in for
  Grafana where no Docker engine runs one; it does not judge dashboards or run queries.
  Kafka and ClickHouse take no part.
- The real Grafana of docker-compose.yml (its pinned image, with the ClickHouse plugin) and a
  ClickHouse with the migrations, in containers: the push, a second push that changes nothing,
  then every panel's and variable's query through Grafana's own /api/ds/query. Skipped, with
  the reason, where no Docker engine is reachable.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import yaml

from tests.conftest import _docker_reachable
from tests.integration.test_grafana_dashboards import Grafana as Expand
from tests.integration.test_grafana_dashboards import panels

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "werkstroom"]
PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE_UID = "werkstroom-clickhouse"
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml"
DASHBOARD_UIDS = sorted(
    json.loads(p.read_text())["uid"] for p in (ROOT / "grafana" / "dashboards").glob("*.json")
)
TOKEN = "glsa_stand-in-token"
CH_PASSWORD = "ch-secret-Pa55"  # must never show in the command's output


# -- the stand-in ---------------------------------------------------------------------------------


class StandInGrafana:
    """Grafana 11's answers to the endpoints the push uses, on 127.0.0.1, with state in memory."""

    def __init__(self, token: str = TOKEN, plugin_version: str | None = "4.4.0") -> None:
        self.token = token
        self.plugin_version = plugin_version
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}  # by uid, as stored (secrets included)
        self.dashboards: dict[str, dict[str, Any]] = {}  # by uid: {"dashboard", "meta"}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"grafana": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandInGrafana:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def authorized(self, header: str | None) -> bool:
        return header == f"Bearer {self.token}"

    # Each handler returns (status, JSON body).
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with self.lock:
            match (method, parts):
                case ("GET", ["api", "health"]):
                    return 200, {"commit": "stand-in", "database": "ok", "version": "11.6.6"}
                case ("GET", ["api", "plugins", plugin, "settings"]):
                    if plugin != PLUGIN or self.plugin_version is None:
                        return 404, {"message": "Plugin not found, no installed plugin with that id"}
                    return 200, {"id": PLUGIN, "type": "datasource", "info": {"version": self.plugin_version}}
                case ("GET", ["api", "folders"]):
                    return 200, [
                        {"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders.values()
                    ]
                case ("GET", ["api", "folders", uid]):
                    return (
                        (200, self.folders[uid])
                        if uid in self.folders
                        else (404, {"message": "folder not found"})
                    )
                case ("POST", ["api", "folders"]):
                    folder = {"id": next(self.ids), "uid": body["uid"], "title": body["title"], "version": 1}
                    self.folders[body["uid"]] = folder
                    return 200, folder
                case ("PUT", ["api", "folders", uid]):
                    folder = self.folders[uid]
                    folder.update(title=body["title"], version=folder["version"] + 1)
                    return 200, folder
                case ("GET", ["api", "datasources", "uid", uid]):
                    found = self.datasources.get(uid)
                    return (200, _public(found)) if found else (404, {"message": "Data source not found"})
                case ("GET", ["api", "datasources", "name", name]):
                    named = [d for d in self.datasources.values() if d["name"] == name]
                    return (200, _public(named[0])) if named else (404, {"message": "Data source not found"})
                case ("POST", ["api", "datasources"]):
                    if any(d["name"] == body["name"] for d in self.datasources.values()):
                        return 409, {"message": "data source with the same name already exists"}
                    stored = {"id": next(self.ids), "orgId": 1, "isDefault": False, "readOnly": False, **body}
                    stored["version"] = 1
                    self.datasources[body["uid"]] = stored
                    return 200, {
                        "datasource": _public(stored),
                        "id": stored["id"],
                        "message": "Datasource added",
                    }
                case ("PUT", ["api", "datasources", "uid", uid]):
                    old = self.datasources[uid]
                    if old.get("readOnly"):
                        return 403, {"message": "Cannot update read-only data source"}
                    # Grafana keeps a stored secret that the update does not send.
                    secure = {**old.get("secureJsonData", {}), **body.get("secureJsonData", {})}
                    stored = {
                        **body,
                        "id": old["id"],
                        "orgId": 1,
                        "readOnly": False,
                        "secureJsonData": secure,
                    }
                    stored["version"] = old["version"] + 1
                    self.datasources[uid] = stored
                    return 200, {
                        "datasource": _public(stored),
                        "id": stored["id"],
                        "message": "Datasource updated",
                    }
                case ("GET", ["api", "dashboards", "uid", uid]):
                    found = self.dashboards.get(uid)
                    return (200, copy.deepcopy(found)) if found else (404, {"message": "Dashboard not found"})
                case ("POST", ["api", "dashboards", "db"]):
                    board = copy.deepcopy(body["dashboard"])
                    old = self.dashboards.get(board["uid"])
                    if old and old["meta"].get("provisioned"):
                        return 400, {"message": "Cannot save provisioned dashboard"}
                    board["id"] = old["dashboard"]["id"] if old else next(self.ids)
                    board["version"] = old["dashboard"]["version"] + 1 if old else 1
                    meta = {
                        "folderUid": body.get("folderUid", ""),
                        "provisioned": False,
                        "slug": board["uid"],
                    }
                    self.dashboards[board["uid"]] = {"dashboard": board, "meta": meta}
                    return 200, {
                        "id": board["id"],
                        "uid": board["uid"],
                        "status": "success",
                        "version": board["version"],
                    }
            return 404, {"message": "Not found"}


def _public(datasource: dict[str, Any]) -> dict[str, Any]:
    """A datasource as Grafana shows it: secrets only as which ones are set."""
    shown = {k: copy.deepcopy(v) for k, v in datasource.items() if k != "secureJsonData"}
    shown["secureJsonFields"] = {k: True for k in datasource.get("secureJsonData", {})}
    return shown


class _Handler(BaseHTTPRequestHandler):
    grafana: StandInGrafana

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        self.grafana.requests.append((self.command, path))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if not self.grafana.authorized(self.headers.get("Authorization")):
            status, answer = 401, {"message": "invalid API key", "messageId": "api-keys.invalid"}
        else:
            status, answer = self.grafana.handle(self.command, path, body)
        raw = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, *_: Any) -> None:
        pass


# -- the command ------------------------------------------------------------------------------------


def push(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WERKSTROOM_", "GRAFANA_"))}
    clean.update(WERKSTROOM_LOG_LEVEL="warning", **(env or {}))
    return subprocess.run(
        [*CLI, "grafana", "push", *args], env=clean, capture_output=True, text=True, timeout=120
    )


def actions(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {c["uid"]: c["action"] for c in json.loads(result.stdout)["changes"]}


@pytest.fixture
def grafana() -> Iterator[StandInGrafana]:
    with StandInGrafana() as running:
        yield running


@pytest.fixture
def password(tmp_path: Path) -> tuple[str, str]:
    """The option giving the ClickHouse password: a file, as compose's secret is one."""
    path = tmp_path / "clickhouse_grafana_password"
    path.write_text(CH_PASSWORD + "\n")
    return ("--clickhouse-password-file", str(path))


def test_a_push_creates_everything_then_a_second_changes_nothing(
    grafana: StandInGrafana, password: tuple[str, str], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    n = 2 + len(DASHBOARD_UIDS)

    first = push("--url", grafana.url, "--token-file", str(token), *password)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"Grafana 11.6.6 at {grafana.url}, {PLUGIN} 4.4.0"
    assert [line.split()[0] for line in lines[1:-1]] == ["created"] * n
    assert lines[-1] == f"created {n}, updated 0, unchanged 0"
    assert sorted(grafana.writes()) == sorted(
        [("POST", "/api/folders"), ("POST", "/api/datasources")]
        + [("POST", "/api/dashboards/db")] * len(DASHBOARD_UIDS)
    )
    assert CH_PASSWORD not in first.stdout + first.stderr and TOKEN not in first.stdout + first.stderr

    # What Grafana now holds: the provisioning file's datasource with the password, every
    # dashboard in the folder under its own uid.
    (source_file,) = yaml.safe_load(DATASOURCE_FILE.read_text())["datasources"]
    source = grafana.datasources[DATASOURCE_UID]
    assert (source["type"], source["name"]) == (PLUGIN, source_file["name"])
    assert source["jsonData"] == source_file["jsonData"]
    assert source["secureJsonData"] == {"password": CH_PASSWORD}
    assert grafana.folders["werkstroom"]["title"] == "Werkstroom"
    assert sorted(grafana.dashboards) == DASHBOARD_UIDS
    assert {d["meta"]["folderUid"] for d in grafana.dashboards.values()} == {"werkstroom"}

    grafana.requests.clear()
    second = push("--url", grafana.url, "--json", *password, env={"GRAFANA_TOKEN": TOKEN})
    assert second.returncode == 0, second.stderr
    assert set(actions(second).values()) == {"unchanged"}
    assert grafana.writes() == []
    # Without the password now: Grafana holds one, so none is needed.
    again = push("--url", grafana.url, "--token", TOKEN)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == f"nothing to change: {n} unchanged"
    assert grafana.writes() == []


def test_a_dashboard_changed_in_grafana_is_put_back_alone(
    grafana: StandInGrafana, password: tuple[str, str]
) -> None:
    assert push("--url", grafana.url, "--token", TOKEN, *password).returncode == 0
    edited = grafana.dashboards[DASHBOARD_UIDS[0]]["dashboard"]
    edited["title"] = "Edited in the UI"
    grafana.requests.clear()

    again = push("--url", grafana.url, "--token", TOKEN, *password)
    assert again.returncode == 0, again.stderr
    (line,) = [line for line in again.stdout.splitlines() if line.startswith("updated ")]
    assert DASHBOARD_UIDS[0] in line and "differs: title" in line
    assert grafana.writes() == [("POST", "/api/dashboards/db")]
    assert grafana.dashboards[DASHBOARD_UIDS[0]]["dashboard"]["title"] != "Edited in the UI"
    assert grafana.dashboards[DASHBOARD_UIDS[0]]["dashboard"]["version"] == 2


def test_the_dry_run_writes_nothing(grafana: StandInGrafana, password: tuple[str, str]) -> None:
    dry = push("--url", grafana.url, "--token", TOKEN, "--dry-run", *password)
    assert dry.returncode == 0, dry.stderr
    assert grafana.writes() == [] and not grafana.dashboards and not grafana.datasources
    lines = dry.stdout.splitlines()
    assert all(line.startswith("would create") for line in lines[1:-1])
    n = 2 + len(DASHBOARD_UIDS)
    assert lines[-1] == f"dry run, nothing written: would create {n}, update 0; 0 unchanged"
    assert "password from --clickhouse-password-file" in dry.stdout
    assert CH_PASSWORD not in dry.stdout + dry.stderr


def test_the_password_is_kept_unless_asked_and_never_shown(
    grafana: StandInGrafana, password: tuple[str, str], tmp_path: Path
) -> None:
    assert push("--url", grafana.url, "--token", TOKEN, *password).returncode == 0
    rotated = tmp_path / "rotated"
    rotated.write_text("rotated-Pa55\n")

    kept = push("--url", grafana.url, "--token", TOKEN, "--clickhouse-password-file", str(rotated))
    assert kept.returncode == 0 and "password kept: --write-clickhouse-password replaces it" in kept.stdout
    assert grafana.datasources[DATASOURCE_UID]["secureJsonData"]["password"] == CH_PASSWORD

    written = push(
        *("--url", grafana.url, "--token", TOKEN, "--json"),
        *("--clickhouse-password-file", str(rotated), "--write-clickhouse-password"),
    )
    assert written.returncode == 0, written.stderr
    assert actions(written)[DATASOURCE_UID] == "update"
    assert grafana.datasources[DATASOURCE_UID]["secureJsonData"]["password"] == "rotated-Pa55"
    assert "rotated-Pa55" not in written.stdout + written.stderr


def test_clear_one_line_errors(grafana: StandInGrafana, password: tuple[str, str]) -> None:
    def error(result: subprocess.CompletedProcess[str]) -> str:
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("werkstroom: ")
        return line

    refused = error(push("--url", grafana.url, "--token", "wrong-token", *password))
    assert "refused the credentials (401 Unauthorized)" in refused and "wrong-token" not in refused
    assert grafana.writes() == []

    with StandInGrafana(plugin_version=None) as bare:
        missing = error(push("--url", bare.url, "--token", TOKEN, *password))
        assert f"has no {PLUGIN} plugin" in missing and f"GF_INSTALL_PLUGINS={PLUGIN}" in missing
        assert bare.writes() == []

    with StandInGrafana(plugin_version="3.3.0") as old:
        assert "the dashboards need 4 or later" in error(push("--url", old.url, "--token", TOKEN, *password))

    # A new datasource without the password: said before anything is written.
    assert "needs the ClickHouse password" in error(push("--url", grafana.url, "--token", TOKEN))
    assert grafana.writes() == []

    assert "no Grafana credentials" in error(push("--url", grafana.url, *password))

    grafana.server.shutdown()
    grafana.server.server_close()
    gone = error(push("--url", grafana.url, "--token", TOKEN, "--timeout", "3", *password))
    assert gone == f"werkstroom: cannot reach Grafana at {grafana.url}: Connection refused"


# -- the real Grafana -------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
# Compose's Grafana: built from its context (the image with the plugin pinned in it) or, for an
# image without the plugin, that image with a plugin version made for it (4.4.0 declares
# grafanaDependency >=9.5.0).
PLUGIN_PIN = "4.4.0"
GRAFANA_USERS = ROOT / "deploy" / "clickhouse" / "users.d" / "grafana.xml"  # the read-only user


def _grafana_image() -> str:
    service = COMPOSE["grafana"]
    if "build" in service:
        return f"the image built from {service['build']['context']}/"
    return str(service["image"])


@pytest.fixture(scope="module")
def real_grafana(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if not _docker_reachable():
        pytest.skip(
            f"no Docker engine reachable: the real Grafana ({_grafana_image()}) and ClickHouse "
            f"({COMPOSE['clickhouse']['image']}) run in containers; the stand-in tests above ran"
        )
    from testcontainers.community.clickhouse import ClickHouseContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.image import DockerImage
    from testcontainers.core.network import Network
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    from werkstroom.clickhouse import connect
    from werkstroom.clickhouse.migrate import migrate

    password_file = tmp_path_factory.mktemp("secrets") / "clickhouse_grafana_password"
    password_file.write_text(CH_PASSWORD + "\n")
    admin_password = "admin-Pa55"
    service = COMPOSE["grafana"]
    with contextlib.ExitStack() as stack:
        if "build" in service:
            built = stack.enter_context(
                DockerImage(path=ROOT / service["build"]["context"], tag="werkstroom-grafana:test")
            )
            grafana = DockerContainer(str(built))
        else:
            grafana = DockerContainer(service["image"]).with_env(
                "GF_INSTALL_PLUGINS", f"{PLUGIN} {PLUGIN_PIN}"
            )
        network = stack.enter_context(Network())
        clickhouse = ClickHouseContainer(
            COMPOSE["clickhouse"]["image"], username="werkstroom", password=CH_PASSWORD, dbname="werkstroom"
        )
        clickhouse.with_network(network).with_network_aliases("clickhouse")
        if GRAFANA_USERS.exists():
            clickhouse.with_volume_mapping(GRAFANA_USERS, "/etc/clickhouse-server/users.d/grafana.xml", "ro")
            clickhouse.with_env("CLICKHOUSE_GRAFANA_PASSWORD", CH_PASSWORD)
        grafana.with_env("GF_SECURITY_ADMIN_PASSWORD", admin_password).with_exposed_ports(3000)
        grafana.with_network(network).waiting_for(
            HttpWaitStrategy(3000, "/api/health").for_status_code(200).with_startup_timeout(300)
        )
        stack.enter_context(clickhouse)
        stack.enter_context(grafana)

        host = clickhouse.get_container_host_ip()
        url = f"http://werkstroom:{CH_PASSWORD}@{host}:{clickhouse.get_exposed_port(8123)}"
        migrate(connect(url, "werkstroom", create_database=True))

        base = f"http://{grafana.get_container_host_ip()}:{grafana.get_exposed_port(3000)}"
        basic = "Basic " + base64.b64encode(f"admin:{admin_password}".encode()).decode()
        with httpx.Client(base_url=base, headers={"Authorization": basic}, timeout=30) as admin:
            account = admin.post("/api/serviceaccounts", json={"name": "werkstroom-push", "role": "Admin"})
            assert account.status_code == 201, account.text
            key = admin.post(f"/api/serviceaccounts/{account.json()['id']}/tokens", json={"name": "push"})
            assert key.status_code == 200, key.text
        yield {"url": base, "token": key.json()["key"], "password_file": str(password_file)}


def test_push_into_the_real_grafana_then_every_panel_query_runs_there(real_grafana: dict[str, str]) -> None:
    url, token = real_grafana["url"], real_grafana["token"]
    # ClickHouse as Grafana reaches it on the containers' network, with the file's user.
    connection = (
        *("--clickhouse-host=clickhouse", "--clickhouse-port=9000", "--clickhouse-protocol=native"),
        *("--clickhouse-password-file", real_grafana["password_file"]),
    )

    first = push("--url", url, "--token", token, *connection, "--json")
    assert first.returncode == 0, first.stderr
    assert set(actions(first).values()) == {"create"}
    # Grafana gives back what was saved (plus ids and versions): the second push compares equal.
    second = push("--url", url, "--token", token, *connection, "--json")
    assert second.returncode == 0, second.stderr
    assert set(actions(second).values()) == {"unchanged"}, second.stdout

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
        check_every_query(api)


def check_every_query(api: httpx.Client) -> None:
    """Every panel query and every variable query of every dashboard, through Grafana's own
    /api/ds/query: no error."""
    health = api.get(f"/api/datasources/uid/{DATASOURCE_UID}/health")
    assert health.status_code == 200 and health.json()["status"] == "OK", health.text

    end = datetime.now(UTC)
    start = end - timedelta(days=7)
    window = {"from": str(int(start.timestamp() * 1000)), "to": str(int(end.timestamp() * 1000))}

    def query(target: dict[str, Any], sql: str, where: str) -> list[Any]:
        body = {
            "queries": [
                {
                    **target,
                    "refId": "A",
                    "rawSql": sql,
                    "datasource": {"type": PLUGIN, "uid": DATASOURCE_UID},
                    "intervalMs": 60_000,
                    "maxDataPoints": 500,
                }
            ],
            **window,
        }
        answer = api.post("/api/ds/query", json=body)
        assert answer.status_code == 200, (where, answer.text)
        result = answer.json()["results"]["A"]
        assert "error" not in result and result.get("status", 200) == 200, (where, result)
        frames = result.get("frames") or []
        values = frames[0]["data"]["values"] if frames and frames[0].get("data") else []
        return list(values[0]) if values else []

    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        # Dashboard variables are the browser's to replace; Grafana's backend and the plugin
        # replace only the macros. So: each variable from its own query (through Grafana),
        # replaced here, then the query as the browser sends it.
        expand = Expand(start, end, {})
        for variable in board["templating"]["list"]:
            name = variable["name"]
            if variable["type"] == "constant":
                value: str = variable["query"]
            else:
                assert variable["type"] == "query", (
                    path.name,
                    name,
                    "a variable type this test does not fill",
                )
                sql = expand.variables_in(variable["query"])
                options = query({"format": 1, "queryType": "table"}, sql, f"{path.name} ${name}")
                value = str(options[0]) if options else "none"  # the migrated tables are empty
            expand.variables[name] = [value] if variable.get("multi") else value
        for panel in panels(board):
            for target in panel.get("targets", []):
                query(target, expand.variables_in(target["rawSql"]), f"{path.name}: {panel['title']}")
