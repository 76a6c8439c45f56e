"""The compose stack end to end (issue 22): docker-compose.yml brought up as deploy/README.md
says, a project created with the admin token and page views sent through Caddy's TLS, read back
through the API; then the upgrade of deploy/README.md (build, stop the aggregator, `run --rm
migrate`, up), the same figures read again, and new events counted.

The stack is a compose project of its own (`werkstroom-smoke-<random>`: its own containers,
network and volumes) on the repository's compose file, with an override file and an env file in
the test's tmp dir: the secrets the compose file declares are made there (./secrets is never
touched), Caddy publishes on free loopback ports instead of 80 and 443, and the images get tags
of their own (a developer's `werkstroom:local` stays as it was). It always ends with `down
--volumes` and the images removed; on a failure the services' last log lines are in the report.

Needs a local Docker engine (the compose file bind-mounts repository files, and the test reaches
Caddy on 127.0.0.1) and Docker Compose 2.24.4 or later (`!override`, for Caddy's ports), and
skips saying which is missing. The first run builds both images and pulls Kafka, ClickHouse and
Caddy: allow it 15 minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import _docker_problem
from tests.e2e.runs import UA

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: `!override` (the override file's Caddy ports) came with this release.
MIN_COMPOSE = (2, 24, 4)
DOMAIN = "smoke.localhost"
#: The root certificate of Caddy's own CA (WERKSTROOM_TLS=internal), in its volume caddy-data.
CADDY_ROOT_CA = "/data/caddy/pki/authorities/local/root.crt"
#: The first `up` builds both images and pulls the others; later steps build from the cache.
FIRST_UP_TIMEOUT = 15 * 60
STEP_TIMEOUT = 10 * 60
#: How long sent events may take to show in the API's figures.
COUNTED_TIMEOUT = 120.0
#: Answers that mean "not yet" while a stack starts: Caddy's upstream not up (502), ingest before
#: Kafka answers or the API before ClickHouse does (503).
NOT_YET = (502, 503)

T = TypeVar("T")


def docker_problems() -> list[str]:
    """What this machine lacks for the stack, each in a few words; empty when nothing."""
    problems = []
    engine = _docker_problem()
    if engine is not None:
        problems.append(f"a Docker engine (none reachable: {engine})")
    try:
        answer = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        problems.append("Docker Compose (no `docker` command on PATH)")
        return problems
    except subprocess.TimeoutExpired:
        problems.append("Docker Compose (`docker compose version` did not answer in 30 s)")
        return problems
    said = (answer.stdout + answer.stderr).strip()
    version = re.search(r"(\d+)\.(\d+)\.(\d+)", answer.stdout)
    if answer.returncode != 0:
        first = said.splitlines()[0] if said else f"exit {answer.returncode}"
        problems.append(f"Docker Compose (`docker compose version` failed: {first})")
    elif version is None or tuple(map(int, version.groups())) < MIN_COMPOSE:
        wanted = ".".join(map(str, MIN_COMPOSE))
        problems.append(f"Docker Compose {wanted} or later (`docker compose version`: {said})")
    return problems


class Compose:
    """`docker compose` on the repository's compose file as the project werkstroom-smoke-<run>:
    the override file and env file in `tmp`, each command's output appended to <tmp>/compose.log."""

    def __init__(self, tmp: Path, run: str) -> None:
        self.tmp, self.run = tmp, run
        self.project = f"werkstroom-smoke-{run}"
        self.override = tmp / "compose.smoke.yml"
        self.env_file = tmp / "smoke.env"
        self.log = tmp / "compose.log"
        self.secrets = tmp / "secrets"
        self.tags: list[str] = []
        compose = yaml.safe_load(COMPOSE_FILE.read_text())
        # The compose file's own interpolations: a value set in the caller's environment would
        # win over the env file's, so those are left out of the commands' environment.
        self._interpolated = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
        self._images = sorted(
            {str(s["image"]).split(":")[0] for s in compose["services"].values() if "build" in s}
        )
        self._make_secrets(list(compose["secrets"]))
        self.set_tag(1)

    def _make_secrets(self, names: list[str]) -> None:
        """Every secret the compose file declares, as deploy/README.md makes them (hex, mode
        644), in <tmp>/secrets; the override file points the compose file's names there."""
        self.secrets.mkdir(mode=0o700)
        lines = [
            "# The smoke test's: Caddy on free loopback ports, the secrets in the test's tmp dir.",
            "services:",
            "  caddy:",
            "    ports: !override",
            '      - "127.0.0.1::80"',
            '      - "127.0.0.1::443"',
            "secrets:",
        ]
        for name in names:
            path = self.secrets / name
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o644)  # the containers' users (uid 10001, Grafana's 472) read it
            lines += [f"  {name}:", f"    file: {json.dumps(str(path))}"]
        self.override.write_text("\n".join(lines) + "\n")

    def secret(self, name: str) -> str:
        return (self.secrets / name).read_text().strip()

    def set_tag(self, generation: int) -> None:
        """WERKSTROOM_IMAGE_TAG smoke-<run>-<generation> for the commands from now on. The env
        file holds the values too: with it the repository's .env is not read, and a command in
        the log can be run again by hand."""
        tag = f"smoke-{self.run}-{generation}"
        self.tags.append(tag)
        self.values = {"WERKSTROOM_DOMAIN": DOMAIN, "WERKSTROOM_TLS": "internal", "WERKSTROOM_IMAGE_TAG": tag}
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.values.items()))

    def argv(self, *args: str) -> list[str]:
        return [
            *("docker", "compose", "--ansi", "never", "--project-name", self.project),
            *("--project-directory", str(ROOT), "--file", str(COMPOSE_FILE), "--file", str(self.override)),
            *("--env-file", str(self.env_file), *args),
        ]

    def __call__(self, *args: str, timeout: float = STEP_TIMEOUT, check: bool = True) -> str:
        """Run `docker compose <args>`; its stdout and stderr. A non-zero exit is an
        AssertionError with the end of its output when `check`."""
        env = {k: v for k, v in os.environ.items() if k not in self._interpolated} | self.values
        started = time.monotonic()
        done = subprocess.run(
            self.argv(*args),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        with self.log.open("a") as log:
            took = time.monotonic() - started
            log.write(f"$ {' '.join(self.argv(*args))}\n{output}[exit {done.returncode}, {took:.0f} s]\n\n")
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: exit {done.returncode}\n{output[-4000:]}")
        return output

    def published(self, service: str, port: int) -> int:
        """The host port `service`'s `port` is published on (127.0.0.1, chosen by Docker)."""
        return int(self("port", service, str(port)).strip().splitlines()[-1].rsplit(":", 1)[1])

    def images(self) -> dict[str, str]:
        """Service -> image of the running containers."""
        out = self("ps", "--format", "json").strip()
        # A JSON array before Compose 2.21, one object a line since.
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines()]
        return {row["Service"]: row["Image"] for row in rows}

    def remove_images(self) -> None:
        refs = [f"{image}:{tag}" for image in self._images for tag in self.tags]
        subprocess.run(["docker", "image", "rm", *refs], capture_output=True, timeout=120, check=False)


@contextlib.contextmanager
def logs_on_failure(compose: Compose, request: pytest.FixtureRequest) -> Iterator[None]:
    """On any failure inside, `ps --all` and `logs --tail 200` go into the test's report."""
    try:
        yield
    except Exception:
        try:
            logs = compose("ps", "--all", check=False, timeout=60)
            logs += compose("logs", "--no-color", "--timestamps", "--tail", "200", check=False, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            logs = f"could not read them: {exc!r}"
        request.node.add_report_section("call", "docker compose ps and logs", logs)
        raise


def until(what: str, read: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """`read()` once a second until `done` says yes to what it read, for `timeout` seconds at
    most. A connection or TLS error and a 502/503 (raised by raise_for_status) count as not
    yet: Caddy before its certificate or its upstream, a role still starting."""
    deadline = time.monotonic() + timeout
    while True:
        last: object
        try:
            value = read()
        except httpx.TransportError as exc:
            last = repr(exc)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in NOT_YET:
                raise
            last = f"{exc.response.status_code}: {exc.response.text[:300]}"
        else:
            if done(value):
                return value
            last = value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s; last: {last}"
        time.sleep(1.0)


class Site:
    """One of Caddy's names (`api.<domain>`, ...) on the published HTTPS port: that name as the
    TLS server name and the Host header, its certificate checked against Caddy's own CA."""

    def __init__(self, name: str, port: int, ca: ssl.SSLContext) -> None:
        self.name = name
        # A client per name: a pooled connection keeps the server name it was opened with.
        self.client = httpx.Client(
            base_url=f"https://127.0.0.1:{port}",
            verify=ca,
            headers={"Host": name, "User-Agent": UA},
            trust_env=False,  # no proxy from the environment between us and 127.0.0.1
            timeout=15,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, extensions={"sni_hostname": self.name}, **kwargs)


def caddy_sites(compose: Compose) -> tuple[Site, Site]:
    """The API and ingest through Caddy, once its CA has a root certificate."""
    root = compose.tmp / "caddy-root.crt"

    def copy_root() -> bool:
        compose("cp", f"caddy:{CADDY_ROOT_CA}", str(root), check=False, timeout=60)
        return root.exists()

    until("Caddy's local CA", copy_root, bool, 60)
    ca = ssl.create_default_context(cafile=str(root))
    port = compose.published("caddy", 443)
    return Site(f"api.{DOMAIN}", port, ca), Site(f"ingest.{DOMAIN}", port, ca)


@dataclass(frozen=True)
class Figures:
    """What the API says of the project: the days with any activity, by date, and totals."""

    days: dict[str, dict[str, Any]]
    page_views: int
    events: int
    sessions: int
    total_users: int
    online: int


def read_figures(api: Site, project_id: str, read_key: str) -> Figures:
    def get(route: str, **params: object) -> dict[str, Any]:
        answer = api.request(
            "GET",
            f"/api/projects/{project_id}/{route}",
            params=params,
            headers={"Authorization": f"Bearer {read_key}"},
        )
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    # Two days: events sent just before midnight (UTC) and read after it are still counted.
    days = {d["day"]: d for d in get("activity", days=2)["days"] if d["events"] or d["active_users"]}
    return Figures(
        days=days,
        page_views=sum(d["page_views"] for d in days.values()),
        events=sum(d["events"] for d in days.values()),
        sessions=sum(d["sessions"] for d in days.values()),
        total_users=get("metrics")["metrics"]["total_users"]["value"],
        online=get("online")["online"],
    )


def page_views(visitor: str, paths: list[str]) -> list[dict[str, Any]]:
    """A visitor's page views as batch items; each has its own messageId (the event id), so a
    batch sent again after a lost answer is not counted twice."""
    return [
        {
            "type": "page",
            "messageId": f"{visitor}-{uuid.uuid4().hex}",
            "anonymousId": visitor,
            "properties": {"path": path, "url": f"https://shop.example{path}", "title": path},
        }
        for path in paths
    ]


def send(ingest: Site, write_key: str, batch: list[dict[str, Any]]) -> None:
    body = {"writeKey": write_key, "batch": batch}
    # Ingest learns a new project's write key from ClickHouse within seconds: 401 until then.
    answer = until(
        "ingest takes the batch",
        lambda: ingest.request("POST", "/v1/batch", json=body),
        lambda r: r.status_code not in (401, *NOT_YET),
        30,
    )
    assert answer.status_code == 200, answer.text
    counts = answer.json()
    assert (counts["accepted"], counts["rejected"], counts["bots"]) == (len(batch), 0, 0), counts


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Compose]:
    """A compose project of its own, not started; always taken down (volumes and images too)."""
    problems = docker_problems()
    if problems:
        pytest.skip(f"the compose smoke test needs {' and '.join(problems)}")
    compose = Compose(tmp_path, secrets.token_hex(4))
    try:
        yield compose
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False, timeout=300)
        compose.remove_images()


def test_up_send_read_upgrade_read_again(stack: Compose, request: pytest.FixtureRequest) -> None:
    with logs_on_failure(stack, request):
        stack("up", "--detach", "--build", "--wait", timeout=FIRST_UP_TIMEOUT)
        api, ingest = caddy_sites(stack)

        # Plain HTTP to the API is refused, not redirected (deploy/README.md, TLS).
        plain = httpx.get(
            f"http://127.0.0.1:{stack.published('caddy', 80)}/api/me",
            headers={"Host": f"api.{DOMAIN}"},
            trust_env=False,
        )
        assert plain.status_code == 403, plain.text

        admin = {"Authorization": f"Bearer {stack.secret('werkstroom_admin_token')}"}
        created = until(
            "the API creates a project",
            lambda: api.request("POST", "/api/projects", json={"name": "Compose smoke"}, headers=admin),
            lambda r: r.status_code not in NOT_YET,
            120,
        )
        assert created.status_code == 201, created.text
        project = created.json()
        project_id, read_key = project["project_id"], project["read_key"]

        def figures() -> Figures:
            return read_figures(api, project_id, read_key)

        # Three visitors, one session each: 3 + 2 + 1 page views, all of them online.
        send(
            ingest,
            project["write_key"],
            page_views("v1", ["/", "/pricing", "/signup"])
            + page_views("v2", ["/", "/docs"])
            + page_views("v3", ["/"]),
        )
        before = until(
            "the first page views counted",
            figures,
            lambda f: (f.page_views, f.events, f.sessions, f.total_users, f.online) == (6, 6, 3, 3, 3),
            COUNTED_TIMEOUT,
        )

        # The upgrade (deploy/README.md, Upgrading), to images under a new tag: the same code,
        # but every role's container is replaced, as a real upgrade replaces them, over the same
        # volumes. Nothing is left to migrate.
        stack.set_tag(2)
        stack("build")
        assert "would apply 0 migration(s)" in stack("run", "--rm", "migrate", "migrate", "--dry-run")
        stack("stop", "aggregator")
        assert "applied 0 migration(s)" in stack("run", "--rm", "migrate")
        stack("up", "--detach", "--wait")
        running = stack.images()
        for role in ("ingest", "aggregator", "api"):
            assert running[role].endswith(f":{stack.tags[-1]}"), running

        api, ingest = caddy_sites(stack)  # Caddy's port, should it have been recreated
        me = api.request("GET", "/api/me", headers={"Authorization": f"Bearer {read_key}"})
        assert (me.status_code, me.json().get("project_id")) == (200, project_id), me.text
        until(
            f"the figures of before the upgrade ({before.days}, total users {before.total_users})",
            figures,
            lambda f: (f.days, f.total_users) == (before.days, before.total_users),
            60,
        )

        # A returning visitor (not a new user) and a new one, counted by the new aggregator.
        send(
            ingest, project["write_key"], page_views("v1", ["/thanks"]) + page_views("v4", ["/", "/pricing"])
        )
        until(
            "the page views after the upgrade counted",
            figures,
            lambda f: (f.page_views, f.events, f.total_users) == (9, 9, 4),
            COUNTED_TIMEOUT,
        )
