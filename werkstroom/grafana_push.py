"""`werkstroom grafana push`: the ClickHouse datasource and every dashboard of `grafana/` into a
Grafana that is already running, over its HTTP API (grafana-client), for a Grafana that the
compose file's provisioning does not reach.

The sources are the provisioning files themselves: the datasource of
`provisioning/datasources/clickhouse.yaml` (its uid kept, so that panels find it), the folder
named in `provisioning/dashboards/werkstroom.yaml` and `dashboards/*.json`. Each object is read
from Grafana and compared before anything is written: only what differs is written, so a second
push writes nothing and says so; a dry run reads and writes nothing.

The ClickHouse password is never printed or logged. Grafana never gives a stored password back,
so a push cannot tell whether it changed: it is written whenever the datasource is (created,
holding none, or differing otherwise), and else only with `write_password`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import yaml

from werkstroom.logging import get_logger
from werkstroom.settings import mask_url

log = get_logger(__name__)

PLUGIN = "grafana-clickhouse-datasource"
PLUGIN_MAJOR = 4  # the dashboards' query types ("table", "timeseries") are the plugin's v4 ones
FOLDER_UID = "werkstroom"  # when the provisioning file names no folderUid
MESSAGE = "werkstroom grafana push"  # the dashboard version's message in Grafana's history
INSTALL_PLUGIN = (
    f"install it (`grafana cli plugins install {PLUGIN}`, or GF_INSTALL_PLUGINS={PLUGIN} "
    "in Grafana's environment) and restart Grafana"
)

Action = Literal["create", "update", "unchanged"]
T = TypeVar("T")


class GrafanaPushError(Exception):
    """A push that cannot go on; its message is one line for the user, without secrets."""


# -- what grafana/ asks for ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClickHouseOptions:
    """The datasource's connection as given on the command line (None: not given)."""

    host: str | None = None
    port: int | None = None
    protocol: Literal["native", "http"] | None = None
    secure: bool | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Desired:
    folder_uid: str
    folder_title: str
    datasource: dict[str, Any]  # the API body, without secureJsonData
    password: str | None = field(repr=False)
    password_source: str  # where the password came from, shown instead of it
    password_required: bool  # the provisioning file sets one
    password_problem: str  # why there is none, when there is none
    dashboards: list[dict[str, Any]]

    @property
    def connection(self) -> str:
        """The datasource's connection for the report: never the password."""
        data = self.datasource["jsonData"]
        tls = ", TLS" if data.get("secure") else ""
        return (
            f"{data.get('host')}:{data.get('port')} {data.get('protocol', 'native')}{tls}, "
            f"user {data.get('username')}, database {data.get('defaultDatabase')}"
        )


# Grafana's provisioning expansion (pkg/services/provisioning/values): the value is split at `$$`
# (a literal `$`), then `$__env{NAME}`, `${NAME}` and `$__file{path}` are replaced, then `$NAME`.
_EXPANDER = re.compile(r"\$(__\w+)?\{([^}]+)\}")
_NAME = re.compile(r"\$(\w+)")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """A provisioning value as Grafana expands it, with `env` for the environment. A variable
    that is not set, or a file that cannot be read, is an error here: Grafana would put an
    empty string, or refuse the file."""

    def variable(name: str) -> str:
        if name not in env:
            raise GrafanaPushError(f"${{{name}}} is not set")
        return env[name]

    def expander(m: re.Match[str]) -> str:
        kind, argument = m.group(1) or "__env", m.group(2)
        if kind == "__env":
            return variable(argument)
        if kind == "__file":
            try:
                return Path(argument.strip()).read_text().strip()
            except OSError as exc:
                raise GrafanaPushError(f"$__file{{{argument}}}: {exc.strerror}") from None
        raise GrafanaPushError(f"${kind}{{...}} is not expanded here")

    parts = [
        _NAME.sub(lambda m: variable(m.group(1)), _EXPANDER.sub(expander, part)) for part in text.split("$$")
    ]
    return "$".join(parts)


def references(text: str) -> list[str]:
    """What a provisioning value reads, for the report: variable names and files."""
    found = []
    for part in text.split("$$"):
        for m in _EXPANDER.finditer(part):
            found.append(f"the file {m.group(2)}" if m.group(1) == "__file" else m.group(2))
        found += _NAME.findall(_EXPANDER.sub("", part))
    return found


def default_grafana_dir() -> Path:
    """`grafana/` of the source tree this package runs from (a checkout, an editable install),
    else of the working directory (the Docker image: /app)."""
    for candidate in (Path(__file__).resolve().parents[1] / "grafana", Path.cwd() / "grafana"):
        if (candidate / "dashboards").is_dir():
            return candidate
    raise GrafanaPushError("no grafana/ directory with dashboards/ found: pass --grafana-dir")


def load_desired(grafana_dir: Path, clickhouse: ClickHouseOptions, env: Mapping[str, str]) -> Desired:
    """What Grafana should hold, from the provisioning files. Each connection field comes from its
    option, else from the datasource file, its ${...} and $__file{...} expanded as Grafana expands
    them. (Not from WERKSTROOM_CLICKHOUSE_URL: that is Werkstroom's own user, and Grafana logs
    in as its own, read-only one.)"""
    source = _one_datasource(grafana_dir / "provisioning" / "datasources" / "clickhouse.yaml")
    folder_uid, folder_title = _folder(grafana_dir / "provisioning" / "dashboards" / "werkstroom.yaml")
    where = "provisioning/datasources/clickhouse.yaml"
    options = {
        "host": clickhouse.host,
        "port": clickhouse.port,
        "protocol": clickhouse.protocol,
        "secure": clickhouse.secure,
        "username": clickhouse.username,
    }
    json_data = {
        key: options[key]
        if options.get(key) is not None
        else _interpolated(value, env, f"{where}: jsonData.{key}")
        for key, value in (source.get("jsonData") or {}).items()
    }
    json_data.update({k: v for k, v in options.items() if v is not None})
    datasource = {
        "name": source["name"],
        "uid": source["uid"],
        "type": source["type"],
        "access": source.get("access", "proxy"),
        "jsonData": json_data,
    }

    file_password = (source.get("secureJsonData") or {}).get("password")
    password: str | None = None
    problem = ""
    if clickhouse.password is not None:
        password, password_source = clickhouse.password, "--clickhouse-password-file"
    elif isinstance(file_password, str):
        password_source = " and ".join(references(file_password)) or where
        try:
            password = interpolate(file_password, env)
        except GrafanaPushError as exc:  # needed or not is the plan's to say: Grafana may hold one
            problem = str(exc)
    else:
        password_source = "none given"

    dashboards = []
    for path in sorted((grafana_dir / "dashboards").glob("*.json")):
        try:
            board = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise GrafanaPushError(f"cannot read {path}: {_one_line(str(exc))}") from None
        if not board.get("uid"):
            raise GrafanaPushError(f"{path.name}: a dashboard needs a uid to be updated in place")
        dashboards.append({k: v for k, v in board.items() if k not in ("id", "version")})
    if not dashboards:
        raise GrafanaPushError(f"no dashboards in {grafana_dir / 'dashboards'}")
    return Desired(
        folder_uid=folder_uid,
        folder_title=folder_title,
        datasource=datasource,
        password=password or None,
        password_source=password_source,
        password_required=file_password is not None,
        password_problem=problem or (f"{password_source} is empty" if not password else ""),
        dashboards=dashboards,
    )


def _yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise GrafanaPushError(f"cannot read {path}: {_one_line(str(exc))}") from None


def _one_datasource(path: Path) -> dict[str, Any]:
    sources = _yaml(path).get("datasources") or []
    if len(sources) != 1 or sources[0].get("type") != PLUGIN or not sources[0].get("uid"):
        raise GrafanaPushError(f"{path}: expected one {PLUGIN} datasource with a uid")
    return dict(sources[0])


def _folder(path: Path) -> tuple[str, str]:
    providers = _yaml(path).get("providers") or []
    files = [p for p in providers if p.get("type", "file") == "file" and p.get("folder")]
    if not files:
        raise GrafanaPushError(f"{path}: no file provider with a folder")
    return str(files[0].get("folderUid") or FOLDER_UID), str(files[0]["folder"])


def _interpolated(value: Any, env: Mapping[str, str], where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return interpolate(value, env)
    except GrafanaPushError as exc:
        raise GrafanaPushError(f"{where}: {exc}") from None


# -- the plan: what differs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    kind: Literal["folder", "datasource", "dashboard"]
    uid: str
    title: str
    action: Action
    differs: tuple[str, ...] = ()  # the fields that differ, for an update
    note: str = ""
    body: dict[str, Any] = field(default_factory=dict, repr=False)  # what is written (secrets too)

    def as_dict(self) -> dict[str, Any]:
        """For the report and `--json`: everything but the body."""
        return {
            "kind": self.kind,
            "uid": self.uid,
            "title": self.title,
            "action": self.action,
            "differs": list(self.differs),
            "note": self.note,
        }


class GrafanaReader(Protocol):
    """What the plan reads: None for an object Grafana does not have."""

    def folder(self, uid: str) -> dict[str, Any] | None: ...
    def folders(self) -> list[dict[str, Any]]: ...
    def datasource(self, uid: str) -> dict[str, Any] | None: ...
    def datasource_named(self, name: str) -> dict[str, Any] | None: ...
    def dashboard(self, uid: str) -> dict[str, Any] | None: ...


def plan(grafana: GrafanaReader, desired: Desired, write_password: bool = False) -> list[Change]:
    """Every object with what a push does to it; writes nothing. Raises GrafanaPushError for
    what a push must not or cannot do (objects provisioned from files, a name taken)."""
    folder = decide_folder(desired, grafana.folder(desired.folder_uid), grafana.folders)
    source = grafana.datasource(desired.datasource["uid"])
    if source is None:
        named = grafana.datasource_named(desired.datasource["name"])
        if named is not None:
            raise GrafanaPushError(
                f"Grafana has a datasource named {desired.datasource['name']!r} with uid "
                f"{named.get('uid')!r}; the dashboards need uid {desired.datasource['uid']!r}: "
                "delete or rename that one"
            )
    changes = [folder, decide_datasource(desired, source, write_password)]
    changes += [
        decide_dashboard(board, grafana.dashboard(board["uid"]), folder.uid) for board in desired.dashboards
    ]
    return changes


def decide_folder(
    desired: Desired, current: dict[str, Any] | None, folders: Callable[[], list[dict[str, Any]]]
) -> Change:
    uid, title = desired.folder_uid, desired.folder_title
    if current is None:
        # A folder of that title made another way (the UI, file provisioning) is taken as it is,
        # rather than a second "Werkstroom" beside it.
        same = [f for f in folders() if f.get("title") == title and not f.get("parentUid")]
        if same:
            return Change("folder", str(same[0]["uid"]), title, "unchanged", note="found by its title")
        return Change("folder", uid, title, "create", body={"uid": uid, "title": title})
    if current.get("title") != title:
        return Change("folder", uid, title, "update", ("title",), body={"title": title, "overwrite": True})
    return Change("folder", uid, title, "unchanged")


def decide_datasource(desired: Desired, current: dict[str, Any] | None, write_password: bool) -> Change:
    wanted = desired.datasource
    uid, title = wanted["uid"], wanted["name"]
    password = desired.password
    stored = bool(((current or {}).get("secureJsonFields") or {}).get("password"))
    if desired.password_required and password is None and not stored:
        raise GrafanaPushError(
            f"the datasource needs the ClickHouse password ({desired.password_problem}): "
            "pass --clickhouse-password-file"
        )
    # Sent whenever the datasource is written; Grafana keeps the stored one when it is not.
    secure = {"secureJsonData": {"password": password}} if password is not None else {}
    sent = f"password from {desired.password_source}" if password is not None else "no password"
    if current is None:
        # Not made the default datasource: which one is, is the Grafana owner's choice.
        return Change("datasource", uid, title, "create", note=sent, body={**wanted, **secure})

    differs = [k for k in ("name", "type", "access") if current.get(k) != wanted[k]]
    stored_data = current.get("jsonData") or {}
    differs += [
        f"jsonData.{k}"
        for k in sorted(stored_data.keys() | wanted["jsonData"].keys())
        if stored_data.get(k) != wanted["jsonData"].get(k)
    ]
    if password is not None and (write_password or not stored):
        differs.append("password")
    if not differs:
        kept = "password kept: --write-clickhouse-password replaces it" if password is not None else ""
        return Change("datasource", uid, title, "unchanged", note=kept)
    if current.get("readOnly"):
        raise GrafanaPushError(
            f"datasource {uid!r} is provisioned from files in this Grafana and differs "
            f"({', '.join(differs)}): change it there, or remove that provisioning file to push"
        )
    body = {**wanted, "isDefault": bool(current.get("isDefault")), **secure}
    note = sent if password is not None else "password kept"
    return Change("datasource", uid, title, "update", tuple(differs), note=note, body=body)


def decide_dashboard(board: dict[str, Any], current: dict[str, Any] | None, folder_uid: str) -> Change:
    """`current` is Grafana's answer to GET /api/dashboards/uid/<uid>: {"dashboard", "meta"}.
    Only the keys of the file are compared (Grafana adds id and version, and may add others);
    a dashboard in another folder is moved."""
    uid, title = board["uid"], board.get("title", board["uid"])
    body = {
        "dashboard": {**board, "id": None},
        "folderUid": folder_uid,
        "overwrite": True,
        "message": MESSAGE,
    }
    if current is None:
        return Change("dashboard", uid, title, "create", body=body)
    stored = current.get("dashboard") or {}
    meta = current.get("meta") or {}
    differs = [k for k, v in board.items() if stored.get(k) != v]
    if meta.get("folderUid", "") != folder_uid:
        differs.append("folder")
    if not differs:
        return Change("dashboard", uid, title, "unchanged")
    if meta.get("provisioned"):
        raise GrafanaPushError(
            f"dashboard {uid!r} is provisioned from files in this Grafana and differs "
            f"({', '.join(differs)}): update those files, or remove that provisioning to push"
        )
    return Change("dashboard", uid, title, "update", tuple(differs), body=body)


# -- the report ----------------------------------------------------------------------------------


def report(changes: list[Change], desired: Desired, dry_run: bool) -> list[str]:
    """The lines the CLI prints: one per object, then a count. Never a secret."""
    verbs = {"create": "created", "update": "updated", "unchanged": "unchanged"}
    if dry_run:
        verbs = {"create": "would create", "update": "would update", "unchanged": "unchanged"}
    width = max(len(c.uid) for c in changes)
    lines = []
    for c in changes:
        extra = [f"differs: {', '.join(c.differs)}"] if c.differs else []
        if c.kind == "datasource":
            extra.insert(0, desired.connection)
        if c.note:
            extra.append(c.note)
        tail = f"  ({'; '.join(extra)})" if extra else ""
        lines.append(f"{verbs[c.action]:<12} {c.kind:<10}  {c.uid:<{width}}  {c.title}{tail}")
    new, updated, same = (sum(1 for c in changes if c.action == a) for a in ("create", "update", "unchanged"))
    if new + updated == 0:
        lines.append(f"nothing to change: {same} unchanged")
    elif dry_run:
        lines.append(f"dry run, nothing written: would create {new}, update {updated}; {same} unchanged")
    else:
        lines.append(f"created {new}, updated {updated}, unchanged {same}")
    return lines


# -- Grafana over HTTP ---------------------------------------------------------------------------


class Grafana:
    """grafana-client's GrafanaApi, with its exceptions turned into one-line GrafanaPushErrors
    and a 404 on a read into None."""

    def __init__(self, url: str, credential: str | tuple[str, str], timeout: float = 10.0) -> None:
        from grafana_client import GrafanaApi

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GrafanaPushError(f"--url {mask_url(url)!r}: expected http(s)://host[:port][/path]")
        # The client joins its path prefix and "api" without a slash: give it one. Credentials
        # in the URL are taken out (they come in as `credential`).
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        netloc = parts.netloc.rpartition("@")[2]
        self.url = f"{parts.scheme}://{netloc}{path.rstrip('/')}"
        self.timeout = timeout
        self.api = GrafanaApi.from_url(f"{parts.scheme}://{netloc}{path}", credential, timeout=timeout)

    def _call(self, what: str, call: Callable[[], T], missing_ok: bool = False) -> T | None:
        from grafana_client.client import GrafanaClientError, GrafanaException
        from requests.exceptions import JSONDecodeError, RequestException, Timeout

        try:
            return call()
        except Timeout:
            raise GrafanaPushError(
                f"Grafana at {self.url} did not answer {what} within {self.timeout:g} s"
            ) from None
        except GrafanaClientError as exc:
            if exc.status_code == 404 and missing_ok:
                return None
            raise GrafanaPushError(self._refused(what, exc.status_code, _message(exc.response))) from None
        except GrafanaException as exc:
            status = f" ({exc.status_code})" if exc.status_code else ""
            raise GrafanaPushError(
                f"Grafana at {self.url} failed {what}{status}: {_one_line(exc.message)}"
            ) from None
        except JSONDecodeError:  # a 200 that is not JSON: not Grafana's API at this URL
            raise GrafanaPushError(f"{self.url} does not answer like Grafana's HTTP API ({what})") from None
        except RequestException as exc:
            raise GrafanaPushError(f"cannot reach Grafana at {self.url}: {_reason(exc)}") from None

    def _refused(self, what: str, status: int, message: str) -> str:
        if status == 401:
            return (
                f"Grafana at {self.url} refused the credentials (401 Unauthorized): check the token "
                "(--token, --token-file, GRAFANA_TOKEN) or --user and its password"
            )
        if status == 403:
            return (
                f"Grafana at {self.url} does not let these credentials {what} (403 Forbidden): "
                "use a service account token with the Admin role"
            )
        return f"Grafana at {self.url} refused to {what} ({status}): {message}"

    # -- reads --
    def version(self) -> str:
        info = self._call("report its version", self.api.health.check)  # GET /api/health
        if not isinstance(info, dict) or "version" not in info:
            raise GrafanaPushError(f"{self.url} does not answer like Grafana's HTTP API (no version)")
        return str(info["version"])

    def plugin_version(self) -> str:
        settings = self._call(
            f"read the {PLUGIN} plugin",
            lambda: self.api.client.GET(f"/plugins/{PLUGIN}/settings"),
            missing_ok=True,
        )
        if settings is None:
            raise GrafanaPushError(f"Grafana at {self.url} has no {PLUGIN} plugin: {INSTALL_PLUGIN}")
        version = str((settings.get("info") or {}).get("version", ""))
        major = version.split(".")[0]
        if major.isdigit() and int(major) < PLUGIN_MAJOR:
            raise GrafanaPushError(
                f"Grafana at {self.url} has {PLUGIN} {version}; the dashboards need {PLUGIN_MAJOR} "
                f"or later: update it (`grafana cli plugins update {PLUGIN}`) and restart Grafana"
            )
        return version

    def folder(self, uid: str) -> dict[str, Any] | None:
        return self._call("read folders", lambda: self.api.folder.get_folder(uid), missing_ok=True)

    def folders(self) -> list[dict[str, Any]]:
        return self._call("read folders", self.api.folder.get_all_folders) or []

    def datasource(self, uid: str) -> dict[str, Any] | None:
        return self._call(
            "read datasources", lambda: self.api.datasource.get_datasource_by_uid(uid), missing_ok=True
        )

    def datasource_named(self, name: str) -> dict[str, Any] | None:
        return self._call(
            "read datasources", lambda: self.api.datasource.get_datasource_by_name(name), missing_ok=True
        )

    def dashboard(self, uid: str) -> dict[str, Any] | None:
        return self._call("read dashboards", lambda: self.api.dashboard.get_dashboard(uid), missing_ok=True)

    # -- writes --
    def write(self, change: Change) -> None:
        body = change.body
        writes: dict[tuple[str, str], Callable[[], Any]] = {
            ("folder", "create"): lambda: self.api.folder.create_folder(body["title"], uid=body["uid"]),
            ("folder", "update"): lambda: self.api.folder.update_folder(change.uid, **body),
            ("datasource", "create"): lambda: self.api.datasource.create_datasource(body),
            ("datasource", "update"): lambda: self.api.datasource.update_datasource_by_uid(change.uid, body),
            ("dashboard", "create"): lambda: self.api.dashboard.update_dashboard(body),
            ("dashboard", "update"): lambda: self.api.dashboard.update_dashboard(body),
        }
        self._call(f"{change.action} {change.kind} {change.uid!r}", writes[(change.kind, change.action)])


def apply(grafana: Grafana, changes: list[Change]) -> None:
    """Write what the plan found different, folder and datasource before the dashboards."""
    for change in changes:
        if change.action == "unchanged":
            continue
        grafana.write(change)
        log.info(
            "grafana object written",
            kind=change.kind,
            uid=change.uid,
            action=change.action,
            differs=list(change.differs),
        )


def _message(response: Any) -> str:
    if isinstance(response, dict) and "message" in response:
        return _one_line(str(response["message"]))
    return _one_line(str(response))


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: Exception) -> str:
    """The root cause of a connection error, without the connection pool's wrapping."""
    text = str(exc)
    if m := re.search(r"Failed to resolve '([^']+)'", text):
        return f"cannot resolve host {m.group(1)}"
    if m := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
        return m.group(1).strip().rstrip(".")
    if "timed out" in text.lower():
        return "timed out"
    return _one_line(text)


# -- the whole command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    url: str
    version: str
    plugin_version: str
    dry_run: bool
    changes: list[Change]
    lines: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "grafana": {"url": self.url, "version": self.version, PLUGIN: self.plugin_version},
            "dry_run": self.dry_run,
            "changes": [c.as_dict() for c in self.changes],
        }


def push(
    grafana: Grafana, desired: Desired, *, dry_run: bool = False, write_password: bool = False
) -> PushResult:
    version = grafana.version()
    plugin_version = grafana.plugin_version()
    changes = plan(grafana, desired, write_password)
    log.info(
        "grafana push plan",
        url=grafana.url,
        grafana_version=version,
        plugin_version=plugin_version,
        dry_run=dry_run,
        plan={c.uid: c.action for c in changes},
    )
    if not dry_run:
        apply(grafana, changes)
    header = f"Grafana {version} at {grafana.url}, {PLUGIN} {plugin_version}"
    return PushResult(
        grafana.url,
        version,
        plugin_version,
        dry_run,
        changes,
        [header, *report(changes, desired, dry_run)],
    )


def read_secret(path: str, what: str) -> str:
    """A secret from a file, trimmed as Grafana trims a $__file{...} (the same secret file may
    serve both)."""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise GrafanaPushError(f"cannot read the {what} file {path}: {exc.strerror}") from None


def credential(
    url: str,
    env: Mapping[str, str],
    token: str | None = None,
    token_file: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
) -> str | tuple[str, str]:
    """A token (--token > --token-file > GRAFANA_TOKEN), or a user and password (--user with
    --password-file > GRAFANA_PASSWORD, or user:password in the URL)."""
    if token is not None and token_file is not None:
        raise GrafanaPushError("give --token or --token-file, not both")
    if user is not None and (token is not None or token_file is not None):
        raise GrafanaPushError("give a token or --user, not both")
    if token is not None:
        return token
    if token_file is not None:
        return read_secret(token_file, "token")
    if user is not None:
        if password_file is not None:
            return (user, read_secret(password_file, "password"))
        if env.get("GRAFANA_PASSWORD"):
            return (user, env["GRAFANA_PASSWORD"])
        raise GrafanaPushError(f"--user {user}: give its password in GRAFANA_PASSWORD or --password-file")
    if env.get("GRAFANA_TOKEN"):
        return env["GRAFANA_TOKEN"]
    parts = urlsplit(url)
    if parts.username and parts.password:
        return (unquote(parts.username), unquote(parts.password))
    raise GrafanaPushError(
        "no Grafana credentials: give --token, --token-file or GRAFANA_TOKEN (a service account "
        "token with the Admin role), or --user with GRAFANA_PASSWORD or --password-file"
    )
