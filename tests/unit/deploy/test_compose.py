"""docker-compose.yml and the files it mounts, checked offline (no Docker engine needed): limits
and log rotation everywhere, secrets only from files, only the proxy on host ports, Grafana's
plugin baked in at a version its Grafana can run, Caddy routing to the ports the services
listen on, ClickHouse's read-only Grafana user."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from werkstroom.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DEPLOY = ROOT / "deploy"
CADDYFILE = (DEPLOY / "caddy" / "Caddyfile").read_text()
GRAFANA_DOCKERFILE = (DEPLOY / "grafana" / "Dockerfile").read_text()
DATASOURCE = yaml.safe_load((ROOT / "grafana/provisioning/datasources/clickhouse.yaml").read_text())[
    "datasources"
][0]
PLUGIN = "grafana-clickhouse-datasource"

#: A variable that holds a secret, by its name.
SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|PRIVATE|(^|_)KEY($|_)", re.IGNORECASE)

#: grafana-clickhouse-datasource's `dependencies.grafanaDependency` (src/plugin.json), per range of
#: releases, read at the tags of github.com/grafana/clickhouse-datasource: ">=9.5.0" from v4.0.0 to
#: v4.14.1, ">=11.6.0" from v4.15.0 (">=11.6.0-0" from v4.18.0) to v4.20.0, the newest there.
#: A version outside these ranges needs its plugin.json read and a row here.
GRAFANA_DEPENDENCY: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = [
    ((4, 0, 0), (4, 14, 1), (9, 5, 0)),
    ((4, 15, 0), (4, 20, 0), (11, 6, 0)),
]
#: The plugin's query types (its QueryType enum, src/types/queryBuilder.ts, the same from v4.0 to
#: v4.20): another value still renders, but editing the panel resets its query.
QUERY_TYPES_V4 = {"table", "logs", "timeseries", "traces"}


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def default_of(value: str) -> str | None:
    """What compose makes of `value` with no variable set: `${X:-d}` is d, `${X:?...}` fails (None)."""
    if re.search(r"\$\{\w+:?\?", value):
        return None
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so tests can read it"
    return {str(k): str(v) for k, v in env.items()}


def service_secrets(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def bytes_of(size: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)b?", size.lower())
    assert m, size
    return int(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " ")


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path -> container path of a service's bind mounts (short syntax)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[source] = target
    return out


# -- limits and logs ---------------------------------------------------------------------------


def test_every_service_has_cpu_and_memory_limits() -> None:
    for name, service in SERVICES.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert float(limits.get("cpus", 0)) > 0, f"{name}: no CPU limit"
        assert bytes_of(str(limits.get("memory", "0"))) >= 128 * 1024**2, f"{name}: no memory limit"


def test_every_service_logs_through_the_rotating_anchor() -> None:
    logging = COMPOSE["x-logging"]
    assert logging["driver"] == "json-file"
    assert bytes_of(logging["options"]["max-size"]) > 0 and int(logging["options"]["max-file"]) >= 2
    for name, service in SERVICES.items():
        assert service.get("logging") == logging, f"{name}: logging is not x-logging"
    # One definition, referenced: no service spells out a logging block of its own.
    assert COMPOSE_TEXT.count("logging:") == COMPOSE_TEXT.count("logging: *logging") + 1


def test_clickhouse_keeps_under_its_memory_limit() -> None:
    config = ET.parse(DEPLOY / "clickhouse/config.d/werkstroom.xml").getroot()
    ratio = float(config.findtext("max_server_memory_usage_to_ram_ratio", "1"))
    assert 0.5 <= ratio < 1  # of the cgroup limit, which ClickHouse reads as its RAM
    limit = bytes_of(SERVICES["clickhouse"]["deploy"]["resources"]["limits"]["memory"])
    assert int(config.findtext("mark_cache_size", "5368709120")) < limit * ratio / 4
    # the API's reads keep decompressed blocks (services.api.deps.READ_SETTINGS): a cache, within the limit
    assert 0 < int(config.findtext("uncompressed_cache_size", "0")) < limit * ratio / 4
    assert bind_mounts(SERVICES["clickhouse"])["./deploy/clickhouse/config.d/werkstroom.xml"].startswith(
        "/etc/clickhouse-server/config.d/"
    )


def test_kafka_retention_and_group_start() -> None:
    env = {k: str(default_of(v)) for k, v in environment(SERVICES["kafka"]).items()}
    segment = int(env["KAFKA_LOG_SEGMENT_BYTES"])
    assert 0 < segment <= int(env["KAFKA_LOG_RETENTION_BYTES"]) // 2  # retention deletes whole segments
    assert int(env["KAFKA_LOG_RETENTION_HOURS"]) >= 24
    # At 0 every aggregator replica joining a new group causes a rebalance of its own.
    assert 1000 <= int(env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) <= 10_000
    heap = re.search(r"-Xmx(\d+[mg])", env["KAFKA_HEAP_OPTS"])
    limit = SERVICES["kafka"]["deploy"]["resources"]["limits"]["memory"]
    assert heap and bytes_of(heap.group(1)) < bytes_of(limit)


# -- secrets -----------------------------------------------------------------------------------


def test_no_secret_in_environment_and_none_with_a_default() -> None:
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if SECRETISH.search(key):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (
                    f"{name}: {key} holds a secret itself; give it as a file under /run/secrets"
                )
            for var in re.findall(r"\$\{(\w+)", value):
                assert not SECRETISH.search(var), f"{name}: {key} takes the secret ${{{var}}} from the host"
    for var in re.findall(r"\$\{(\w+):?-", COMPOSE_TEXT):
        assert not SECRETISH.search(var), f"${{{var}}} has a default"
    url = environment(SERVICES["api"])["WERKSTROOM_CLICKHOUSE_URL"]
    assert urlsplit(url).password is None and urlsplit(url).username == "werkstroom"


def test_every_secret_is_declared_read_from_a_file_and_given_where_it_is_read() -> None:
    declared = COMPOSE["secrets"]
    used: set[str] = set()
    for name, service in SERVICES.items():
        granted = service_secrets(service)
        assert granted <= declared.keys(), f"{name}: undeclared secrets {granted - declared.keys()}"
        used |= granted
        read = set(re.findall(r"/run/secrets/(\w+)", " ".join(environment(service).values())))
        assert read <= granted, f"{name} reads {read - granted} without being given it"
    assert used == declared.keys(), f"declared but unused: {declared.keys() - used}"
    for name, secret in declared.items():
        assert secret == {"file": f"./secrets/{name}"}, name

    # Files that read secrets, and the service that runs them.
    readers = {
        "grafana": (ROOT / "grafana/provisioning/datasources/clickhouse.yaml").read_text(),
        "clickhouse": (DEPLOY / "clickhouse/entrypoint.sh").read_text(),
    }
    for name, text in readers.items():
        read = set(re.findall(r"/run/secrets/(\w+)", text))
        assert read and read <= service_secrets(SERVICES[name]), (name, read)

    # Werkstroom reads its secrets by name: werkstroom_<field> (env prefix, lower case).
    for name in declared:
        if name.startswith("werkstroom_"):
            assert name.removeprefix("werkstroom_") in Settings.model_fields, name
    werkstroom = [n for n, s in SERVICES.items() if s.get("image", "").startswith("werkstroom:")]
    assert set(werkstroom) == {"migrate", "ingest", "aggregator", "api"}
    for name in werkstroom:
        assert "werkstroom_clickhouse_password" in service_secrets(SERVICES[name]), name
    holders = {n for n, s in SERVICES.items() if "werkstroom_admin_token" in service_secrets(s)}
    assert holders == {"api"}  # only the service that checks it


def test_clickhouse_reads_both_passwords_from_files() -> None:
    clickhouse = SERVICES["clickhouse"]
    env = environment(clickhouse)
    assert env["CLICKHOUSE_PASSWORD_FILE"] == "/run/secrets/werkstroom_clickhouse_password"
    assert env["CLICKHOUSE_USER"] == "werkstroom"
    mounts = bind_mounts(clickhouse)
    script = mounts["./deploy/clickhouse/entrypoint.sh"]
    assert clickhouse["entrypoint"] == ["/bin/bash", script]
    text = (DEPLOY / "clickhouse/entrypoint.sh").read_text()
    assert "export CLICKHOUSE_GRAFANA_PASSWORD" in text and text.rstrip().endswith('exec /entrypoint.sh "$@"')


# -- the first boot ------------------------------------------------------------------------------


def test_clickhouse_first_boot_runs_no_temporary_server_the_healthcheck_could_see() -> None:
    """The image's entrypoint starts a temporary server on 127.0.0.1 at first boot when
    CLICKHOUSE_DB is set or /docker-entrypoint-initdb.d holds a file (the 24.8 image's
    entrypoint.sh, init_clickhouse_db): a healthcheck passing against it let `migrate` start
    against a server about to stop. `migrate` creates the database itself."""
    clickhouse = SERVICES["clickhouse"]
    assert "CLICKHOUSE_DB" not in environment(clickhouse)
    assert not any("docker-entrypoint-initdb.d" in str(v) for v in clickhouse.get("volumes", []))
    probe = " ".join(clickhouse["healthcheck"]["test"])
    assert "127.0.0.1" not in probe and "localhost" not in probe and "$$(hostname)" in probe
    assert SERVICES["migrate"]["depends_on"]["clickhouse"] == {"condition": "service_healthy"}


# -- ports and the proxy ---------------------------------------------------------------------------


def test_only_the_proxy_publishes_ports() -> None:
    published = {name: service["ports"] for name, service in SERVICES.items() if service.get("ports")}
    assert set(published) == {"caddy"}
    targets = {str(p).split(":")[-1].split("/")[0] for p in published["caddy"]}
    assert targets == {"80", "443"}
    assert not any(s.get("network_mode") == "host" for s in SERVICES.values())


def caddy_sites() -> dict[str, str]:
    """Site address -> its block, for the Caddyfile's top-level sites."""
    sites, depth, name, body = {}, 0, "", []
    for line in CADDYFILE.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if depth == 0 and stripped.endswith("{") and not stripped.startswith("("):
            name, body = stripped[:-1].strip(), []
        elif depth > 0:
            body.append(stripped)
        depth += stripped.count("{") - stripped.count("}")
        if depth == 0 and name:
            sites[name], name = "\n".join(body), ""
    return sites


def test_caddy_routes_each_name_to_the_port_its_service_listens_on() -> None:
    defaults = Settings.model_fields
    listens = {
        "ingest": defaults["ingest_port"].default,
        "api": defaults["api_port"].default,
        "grafana": int(environment(SERVICES["grafana"]).get("GF_SERVER_HTTP_PORT", 3000)),
    }
    for name in ("ingest", "api"):
        env = environment(SERVICES[name])
        assert f"WERKSTROOM_{name.upper()}_PORT" not in env  # the default port, then
    sites = caddy_sites()
    routed = {}
    for address, body in sites.items():
        m = re.fullmatch(r"(https?://)?(\w+)\.\{\$WERKSTROOM_DOMAIN\}", address)
        assert m, address
        upstreams = re.findall(r"reverse_proxy (\w+):(\d+)|dynamic a (\w+) (\d+)", body)
        if m.group(1) == "http://":
            assert not upstreams, f"{address} proxies plain HTTP"
            continue
        assert len(upstreams) == 1, address
        host, port = [part for part in upstreams[0] if part]
        assert host == m.group(2), address  # <service>.<domain> -> the service
        routed[host] = int(port)
    assert routed == listens
    for name, port in routed.items():
        assert str(port) in [str(p) for p in SERVICES[name].get("expose", [])], name

    # The API, where tokens travel, is not redirected from plain HTTP but refused.
    assert re.search(r"respond \"[^\"]*\" 403", sites["http://api.{$WERKSTROOM_DOMAIN}"])
    # The public ingest URL is the proxy's HTTPS name.
    assert environment(SERVICES["ingest"])["WERKSTROOM_PUBLIC_INGEST_URL"].startswith("https://ingest.")
    assert environment(SERVICES["ingest"])["WERKSTROOM_TRUST_FORWARDED_FOR"] == "true"


def test_caddy_gets_its_configuration_and_a_required_domain() -> None:
    caddy = SERVICES["caddy"]
    assert bind_mounts(caddy)["./deploy/caddy/Caddyfile"] == "/etc/caddy/Caddyfile"
    assert any(str(v).startswith("caddy-data:/data") for v in caddy["volumes"])  # certificates
    assert default_of(environment(caddy)["WERKSTROOM_DOMAIN"]) is None
    # `import tls_{$WERKSTROOM_TLS}` picks one of these snippets.
    tls = default_of(environment(caddy)["WERKSTROOM_TLS"])
    assert f"({'tls_' + str(tls)})" in CADDYFILE and "(tls_internal)" in CADDYFILE


def test_images_are_pinned_and_mounted_files_exist() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.search(r":\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a release"
        for source in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
    for source in bind_mounts(SERVICES["grafana"]):
        assert (ROOT / source).exists(), source


# -- Grafana -------------------------------------------------------------------------------------


def test_grafana_is_the_derived_image_and_installs_nothing_at_start() -> None:
    grafana = SERVICES["grafana"]
    context = grafana["build"]["context"] if isinstance(grafana["build"], dict) else grafana["build"]
    assert Path(context) == Path("deploy/grafana") and (ROOT / context / "Dockerfile").is_file()
    env = environment(grafana)
    assert "GF_INSTALL_PLUGINS" not in env
    assert not re.search(r"^(ENV|ARG)\b.*GF_INSTALL_PLUGINS", GRAFANA_DOCKERFILE, re.MULTILINE)
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert re.search(r"^FROM grafana/grafana:\$\{GRAFANA_VERSION\}$", GRAFANA_DOCKERFILE, re.MULTILINE)
    assert re.search(
        rf"plugins install {PLUGIN} \"\$CLICKHOUSE_PLUGIN_VERSION\"", GRAFANA_DOCKERFILE.replace("\\\n", " ")
    )
    # Not under /var/lib/grafana, which the grafana-data volume covers.
    plugins_dir = re.search(r"^ENV GF_PATHS_PLUGINS=(\S+)$", GRAFANA_DOCKERFILE, re.MULTILINE)
    assert plugins_dir and not plugins_dir.group(1).startswith("/var/lib/grafana/")


def dockerfile_arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\d+\.\d+\.\d+)$", GRAFANA_DOCKERFILE, re.MULTILINE)
    assert m, f"deploy/grafana/Dockerfile pins no {name}"
    return m.group(1)


def test_the_pinned_plugin_declares_the_pinned_grafana_compatible() -> None:
    grafana = version(dockerfile_arg("GRAFANA_VERSION"))
    plugin = version(dockerfile_arg("CLICKHOUSE_PLUGIN_VERSION"))
    needs = [minimum for low, high, minimum in GRAFANA_DEPENDENCY if low <= plugin <= high]
    assert needs, f"plugin {plugin}: read its plugin.json's grafanaDependency and add it to the table"
    assert grafana >= needs[0], f"plugin {plugin} needs Grafana >= {needs[0]}, the image is {grafana}"
    # The case: 4.15 and later need 11.6, so the 11.3 of before could not run them.
    assert [m for lo, hi, m in GRAFANA_DEPENDENCY if lo <= (4, 15, 0) <= hi] == [(11, 6, 0)]


def test_dashboards_use_query_types_of_the_pinned_plugin() -> None:
    assert version(dockerfile_arg("CLICKHOUSE_PLUGIN_VERSION"))[0] == 4
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        panels = [p for top in board.get("panels", []) for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                assert target.get("queryType", "table") in QUERY_TYPES_V4, (path.name, panel.get("title"))


def dashboard_queries(board: Any) -> list[str]:
    """Every SQL text of a dashboard: its variables' queries and its panels' targets."""
    if isinstance(board, dict):
        own = [v for k, v in board.items() if k in ("rawSql", "query") and isinstance(v, str)]
        return own + [q for v in board.values() for q in dashboard_queries(v)]
    if isinstance(board, list):
        return [q for v in board for q in dashboard_queries(v)]
    return []


def test_dashboard_rows_have_one_order() -> None:
    """A sort by a count alone leaves its ties in whatever order ClickHouse reads them, so a
    table (and where its LIMIT cuts) can change between two refreshes of the same data: an
    ORDER BY that sorts by a measure descending ends in a key that breaks the ties."""
    checked = 0
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        for sql in dashboard_queries(json.loads(path.read_text())):
            for order in re.findall(r"ORDER BY ([^\n]*)", sql):
                if " DESC" in order:
                    checked += 1
                    assert not order.rstrip().endswith("DESC"), (path.name, order)
    assert checked >= 10


# -- ClickHouse's user for Grafana -----------------------------------------------------------------


def test_grafana_logs_in_as_a_read_only_clickhouse_user() -> None:
    root = ET.parse(DEPLOY / "clickhouse/users.d/grafana.xml").getroot()
    user = root.find("users/grafana")
    assert user is not None
    profile = root.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "1"
    # readonly=1 and still the one setting the plugin's client sets on every query.
    constraints = profile.findall("constraints/*")
    changeable = [c.tag for c in constraints if c.find("changeable_in_readonly") is not None]
    assert changeable == ["max_execution_time"]
    config = ET.parse(DEPLOY / "clickhouse/config.d/werkstroom.xml").getroot()
    assert config.findtext("access_control_improvements/settings_constraints_replace_previous") == "true"

    assert user.findtext("access_management") == "0"
    database = environment(SERVICES["api"])["WERKSTROOM_CLICKHOUSE_DATABASE"]
    assert [q.text for q in user.findall("grants/query")] == [f"GRANT SELECT ON {database}.*"]
    password = user.find("password")
    assert password is not None and password.get("from_env") == "CLICKHOUSE_GRAFANA_PASSWORD"
    assert not (password.text or "").strip()
    assert bind_mounts(SERVICES["clickhouse"])["./deploy/clickhouse/users.d/grafana.xml"].startswith(
        "/etc/clickhouse-server/users.d/"
    )

    assert DATASOURCE["type"] == PLUGIN and DATASOURCE["jsonData"]["username"] == "grafana"
    assert DATASOURCE["jsonData"]["defaultDatabase"] == database
    assert DATASOURCE["secureJsonData"]["password"] == "$__file{/run/secrets/clickhouse_grafana_password}"


@pytest.mark.parametrize("name", ["ingest", "api", "grafana"])
def test_the_proxy_fronts_the_service_and_the_service_publishes_nothing(name: str) -> None:
    assert name in SERVICES["caddy"]["depends_on"]
    assert not SERVICES[name].get("ports")
