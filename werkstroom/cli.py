"""The one command: `werkstroom serve|migrate|projects|funnels|demo|grafana|settings`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from werkstroom import projects
from werkstroom.clickhouse import ClickHouseError, ClickHouseLockedError, connect
from werkstroom.logging import configure_logging, get_logger
from werkstroom.settings import Settings, get_settings

log = get_logger("werkstroom.cli")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="werkstroom", description="Real-time web analytics on Kafka and ClickHouse"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the pipeline (all components, or one)")
    serve.add_argument("--target", choices=["all", "ingest", "aggregator", "api"], default="all")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for --target ingest or api, on one port (default: WERKSTROOM_WORKERS, 1)",
    )
    # Set by the supervisor of --workers N for each process it starts: which one it is.
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)

    migrate = sub.add_parser("migrate", help="apply ClickHouse migrations (and create Kafka topics)")
    migrate.add_argument("--dry-run", action="store_true", help="list pending migrations, apply nothing")
    migrate.add_argument(
        "--break-lock",
        action="store_true",
        help="drop the migration lock a migration that died left behind, then migrate",
    )

    proj = sub.add_parser("projects", help="create and list projects")
    proj_sub = proj.add_subparsers(dest="action", required=True)
    create = proj_sub.add_parser("create", help="create a project; prints its id and keys")
    create.add_argument("name")
    create.add_argument(
        "--timezone",
        default="UTC",
        help="the site's IANA time zone, e.g. Europe/Amsterdam (default UTC): its days, weeks and "
        '"today" are local days there, daylight saving included',
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")
    listing = proj_sub.add_parser("list", help="list projects")
    listing.add_argument("--json", action="store_true")
    rezone = proj_sub.add_parser(
        "set-timezone",
        help="change a project's time zone; the aggregator recomputes its days in the new zone",
    )
    rezone.add_argument("project_id")
    rezone.add_argument("timezone", help="an IANA time zone, e.g. Europe/Amsterdam")
    rezone.add_argument("--json", action="store_true")

    fun = sub.add_parser("funnels", help="create, list and delete a project's funnels")
    fun_sub = fun.add_subparsers(dest="action", required=True)
    fcreate = fun_sub.add_parser(
        "create", help="create a funnel and back-fill it from the events so far; prints its id"
    )
    fcreate.add_argument("project_id")
    fcreate.add_argument("name")
    fcreate.add_argument(
        "--step",
        action="append",
        required=True,
        metavar="EVENT[@PATH]",
        help="a step, in order (2 to 8): an event name ($page for page views), optionally @ a path "
        "pattern where * matches anything, e.g. --step '$page@/pricing' --step 'Signed Up'",
    )
    fcreate.add_argument("--window", type=int, default=86400, help="conversion window in seconds")
    fcreate.add_argument("--json", action="store_true")
    flist = fun_sub.add_parser("list", help="list a project's funnels")
    flist.add_argument("project_id")
    flist.add_argument("--json", action="store_true")
    fdelete = fun_sub.add_parser("delete", help="delete a funnel")
    fdelete.add_argument("project_id")
    fdelete.add_argument("funnel_id")
    for command in (fcreate, flist, fdelete):
        command.add_argument(
            "--read-key",
            default=os.environ.get("WERKSTROOM_READ_KEY", ""),
            help="the project's read key (env WERKSTROOM_READ_KEY); needed only while a running "
            "`werkstroom serve` holds the embedded ClickHouse, to go through its API",
        )

    demo = sub.add_parser(
        "demo",
        help="fill the running server's demo project: a history every dashboard view shows, a "
        "funnel, visitors online now; prints the dashboard's figures, read back from its API",
    )
    demo.add_argument("--visitors", type=_at_least(20), default=150, help="visitors in the simulated history")
    demo.add_argument("--days", type=_at_least(35), default=60, help="days of simulated history (UTC)")
    demo.add_argument(
        "--live", type=_at_least(2), default=12, help="of them browsing now (a quarter stuck, at least 2)"
    )
    demo.add_argument(
        "--seconds",
        type=float,
        default=0,
        help="then keep the live visitors browsing this long (0: stop at once, they stay online for "
        "5 minutes; inf: until Ctrl-C)",
    )
    demo.add_argument("--seed", type=int, default=7, help="the same seed gives the same visitors")

    graf = sub.add_parser("grafana", help="put the datasource and dashboards into a running Grafana")
    graf_sub = graf.add_subparsers(dest="action", required=True)
    gpush = graf_sub.add_parser(
        "push",
        help="create or update, by uid, the folder, the ClickHouse datasource and every dashboard of "
        "grafana/ over Grafana's HTTP API; writes only what differs",
    )
    gpush.add_argument(
        "--url", default=os.environ.get("GRAFANA_URL"), help="Grafana's base URL (env GRAFANA_URL)"
    )
    gpush.add_argument("--token", help="a service account token with the Admin role (env GRAFANA_TOKEN)")
    gpush.add_argument("--token-file", help="read the token from this file")
    gpush.add_argument("--user", help="basic auth instead of a token; password in GRAFANA_PASSWORD")
    gpush.add_argument("--password-file", help="read --user's password from this file")
    gpush.add_argument(
        "--clickhouse-host", help="ClickHouse as Grafana reaches it (default: the provisioning file's)"
    )
    gpush.add_argument("--clickhouse-port", type=int)
    gpush.add_argument("--clickhouse-protocol", choices=["native", "http"])
    gpush.add_argument("--clickhouse-secure", action=argparse.BooleanOptionalAction, default=None)
    gpush.add_argument("--clickhouse-user")
    gpush.add_argument(
        "--clickhouse-password-file",
        help="read the ClickHouse password from this file (default: as the provisioning file says, "
        "its ${VARIABLE} or $__file{path})",
    )
    gpush.add_argument(
        "--write-clickhouse-password",
        action="store_true",
        help="write the password even when Grafana holds one (Grafana never shows it, so a push "
        "cannot tell whether it changed)",
    )
    gpush.add_argument("--grafana-dir", help="the provisioning sources (default: the repository's grafana/)")
    gpush.add_argument("--timeout", type=float, default=10.0, help="seconds per Grafana request")
    gpush.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    gpush.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("settings", help="print the effective settings (secrets masked)")
    return parser


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {"workers": args.workers} if getattr(args, "workers", None) is not None else {}
    try:
        settings = get_settings(**overrides)
    except Exception as exc:  # pydantic's ValidationError names the variable and the reason
        sys.stderr.write(f"werkstroom: invalid settings: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "settings":
            _out(json.dumps(settings.masked(), indent=2))
            return 0
        if args.command == "serve":
            log.info("settings", target=args.target, **settings.masked())
            from werkstroom.serve import run

            return run(settings, args.target, worker=args.worker)
        if args.command == "migrate":
            return _migrate(settings, args.dry_run, args.break_lock)
        if args.command == "projects":
            return _projects(settings, args)
        if args.command == "funnels":
            return _funnels(settings, args)
        if args.command == "grafana":
            return _grafana_push(args)
        if args.command == "demo":
            from werkstroom.demo import drive

            return drive(
                settings,
                _out,
                _progress,
                visitors=args.visitors,
                days=args.days,
                live=args.live,
                seconds=args.seconds,
                seed=args.seed,
            )
    except ClickHouseError as exc:
        sys.stderr.write(f"werkstroom: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _migrate(settings: Settings, dry_run: bool, break_stale_lock: bool = False) -> int:
    from werkstroom.clickhouse.migrate import break_lock, migrate, pending
    from werkstroom.contract import Topics
    from werkstroom.kafka import ensure_topics, wait_for_kafka
    from werkstroom.serve import locked_for_migrations

    started = time.monotonic()
    client = connect(settings.effective_clickhouse_url, settings.clickhouse_database, create_database=True)
    if break_stale_lock:
        held = break_lock(client)
        _out(f"broke the migration lock of {held[0]} (since {held[1]})" if held else "no migration lock held")
    if dry_run:
        names = migrate(client, dry_run=True)
    else:
        names = []
        with locked_for_migrations(client, settings), _progress() as progress:
            todo = pending(client)  # read under the lock: another job may have applied some
            task = progress.add_task("migrations", total=len(todo))
            for migration in todo:  # one at a time, for the bar
                progress.update(task, description=f"migration {migration.name}")
                names += migrate(client, through=migration.version)
                progress.advance(task)
    verb = "would apply" if dry_run else "applied"
    took = "" if dry_run else f" in {time.monotonic() - started:.1f} s"
    _out(f"{verb} {len(names)} migration(s){took}" + (": " + ", ".join(names) if names else ""))
    if settings.kafka_bootstrap and not dry_run:
        bootstrap = settings.kafka_bootstrap

        async def topics() -> None:
            await wait_for_kafka(bootstrap, timeout=60)
            await ensure_topics(
                bootstrap,
                Topics.from_settings(settings).all(),
                settings.topic_partitions,
                settings.topic_replication,
            )

        started = time.monotonic()
        with _spinner(f"Kafka topics on {bootstrap}"):
            asyncio.run(topics())
        _out(f"topics ready on {settings.kafka_bootstrap} in {time.monotonic() - started:.1f} s")
    return 0


def _projects(settings: Settings, args: argparse.Namespace) -> int:
    try:
        from werkstroom.serve import prepare_clickhouse

        client = prepare_clickhouse(settings)
    except ClickHouseLockedError:
        return _projects_over_http(settings, args)
    if args.action == "create":
        try:
            created = projects.create_project(client, args.name, args.timezone)
        except projects.ProjectError as exc:
            sys.stderr.write(f"werkstroom: {exc}\n")
            return 2
        _print_created(created.__dict__, args.json)
        return 0
    if args.action == "set-timezone":
        try:
            changed = projects.set_timezone(client, args.project_id, args.timezone)
        except projects.ProjectError as exc:
            sys.stderr.write(f"werkstroom: {exc}\n")
            return 2
        if changed is None:
            sys.stderr.write(f"werkstroom: no such project: {args.project_id}\n")
            return 2
        _print_list([changed.__dict__], args.json)
        return 0
    rows = [p.__dict__ for p in projects.list_projects(client)]
    _print_list(rows, args.json)
    return 0


def _projects_over_http(settings: Settings, args: argparse.Namespace) -> int:
    """The embedded ClickHouse is held by a running `werkstroom serve`: ask its API instead."""
    runtime = settings.data_dir / "runtime.json"
    if not runtime.exists():
        raise ClickHouseLockedError(
            f"{settings.effective_clickhouse_url} is locked and no runtime.json found"
        )
    api_url = json.loads(runtime.read_text())["api_url"]
    from werkstroom.serve import admin_token

    headers = {"Authorization": f"Bearer {admin_token(settings)}", "Content-Type": "application/json"}
    if args.action == "create":
        request = urllib.request.Request(
            f"{api_url}/api/projects",
            data=json.dumps({"name": args.name, "timezone": args.timezone}).encode(),
            headers=headers,
            method="POST",
        )
    elif args.action == "set-timezone":
        request = urllib.request.Request(
            f"{api_url}/api/projects/{urllib.parse.quote(args.project_id, safe='')}",
            data=json.dumps({"timezone": args.timezone}).encode(),
            headers=headers,
            method="PATCH",
        )
    else:
        request = urllib.request.Request(f"{api_url}/api/projects", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body: Any = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"werkstroom: the running server answered {exc.code}: {exc.read().decode()}\n")
        return 2
    if args.action == "create":
        _print_created(body, args.json)
    else:
        _print_list(body if isinstance(body, list) else [body], args.json)
    return 0


def _grafana_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from werkstroom import grafana_push as gp

    try:
        if not args.url:
            raise gp.GrafanaPushError("give Grafana's URL: --url or GRAFANA_URL")
        env = dict(os.environ)
        password = None
        if args.clickhouse_password_file:
            password = gp.read_secret(args.clickhouse_password_file, "ClickHouse password")
        options = gp.ClickHouseOptions(
            host=args.clickhouse_host,
            port=args.clickhouse_port,
            protocol=args.clickhouse_protocol,
            secure=args.clickhouse_secure,
            username=args.clickhouse_user,
            password=password,
        )
        grafana_dir = Path(args.grafana_dir) if args.grafana_dir else gp.default_grafana_dir()
        desired = gp.load_desired(grafana_dir, options, env)
        credential = gp.credential(args.url, env, args.token, args.token_file, args.user, args.password_file)
        grafana = gp.Grafana(args.url, credential, timeout=args.timeout)
        result = gp.push(
            grafana, desired, dry_run=args.dry_run, write_password=args.write_clickhouse_password
        )
    except gp.GrafanaPushError as exc:
        sys.stderr.write(f"werkstroom: {exc}\n")
        return 2
    if args.json:
        _out(json.dumps(result.as_dict()))
    else:
        for line in result.lines:
            _out(line)
    return 0


def _steps(raw: list[str]) -> list[dict[str, str]]:
    steps = []
    for item in raw:
        event, _, path = item.partition("@")
        steps.append({"event": event, "path": path})
    return steps


def _funnels(settings: Settings, args: argparse.Namespace) -> int:
    from werkstroom import funnels

    try:
        from werkstroom.serve import prepare_clickhouse

        client = prepare_clickhouse(settings)
    except ClickHouseLockedError:
        return _funnels_over_http(settings, args)
    if not any(p.project_id == args.project_id for p in projects.list_projects(client)):
        sys.stderr.write(f"werkstroom: no project {args.project_id!r}\n")
        return 2
    if args.action == "create":
        started = time.monotonic()
        try:
            with _spinner(BACKFILL, enabled=not args.json):
                funnel = funnels.create_funnel(
                    client, args.project_id, args.name, _steps(args.step), args.window
                )
                # No server holds this ClickHouse (or its aggregator runs elsewhere): the
                # aggregator's own back-fill, here (a second one changes nothing).
                from werkstroom.serve import backfill_funnel

                backfill_funnel(client, funnel)
        except funnels.FunnelError as exc:
            sys.stderr.write(f"werkstroom: {exc}\n")
            return 2
        _print_funnels([{**funnel.as_dict(), "backfilled": True}], args.json, single=True)
        _print_backfilled(started, args.json)
    elif args.action == "list":
        found = funnels.list_funnels(client, args.project_id)
        done = funnels.backfilled(client, args.project_id, [f.funnel_id for f in found])
        _print_funnels([{**f.as_dict(), "backfilled": f.funnel_id in done} for f in found], args.json)
    else:
        if not funnels.delete_funnel(client, args.project_id, args.funnel_id):
            sys.stderr.write(f"werkstroom: no funnel {args.funnel_id!r} in {args.project_id}\n")
            return 2
        _out(f"deleted {args.funnel_id}")
    return 0


def _funnels_over_http(settings: Settings, args: argparse.Namespace) -> int:
    """A running `werkstroom serve` holds the embedded ClickHouse: go through its API, which
    opens a project only with that project's read key."""
    runtime = settings.data_dir / "runtime.json"
    if not runtime.exists():
        raise ClickHouseLockedError(
            f"{settings.effective_clickhouse_url} is locked and no runtime.json found"
        )
    if not args.read_key:
        sys.stderr.write(
            "werkstroom: a running server holds the embedded ClickHouse; pass the project's --read-key "
            "(or set WERKSTROOM_READ_KEY) to go through its API\n"
        )
        return 2
    base = f"{json.loads(runtime.read_text())['api_url']}/api/projects/{args.project_id}/funnels"
    headers = {"Authorization": f"Bearer {args.read_key}", "Content-Type": "application/json"}
    if args.action == "create":
        payload = {"name": args.name, "steps": _steps(args.step), "window_seconds": args.window}
        request = urllib.request.Request(base, json.dumps(payload).encode(), headers, method="POST")
    elif args.action == "list":
        request = urllib.request.Request(base, headers=headers)
    else:
        request = urllib.request.Request(f"{base}/{args.funnel_id}", headers=headers, method="DELETE")
    started = time.monotonic()
    try:
        with (
            _spinner(BACKFILL, enabled=args.action == "create" and not args.json),
            urllib.request.urlopen(request, timeout=60) as response,
        ):
            raw = response.read()
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"werkstroom: the running server answered {exc.code}: {exc.read().decode()}\n")
        return 2
    if args.action == "delete":
        _out(f"deleted {args.funnel_id}")
    elif args.action == "create":
        created = json.loads(raw)
        with _spinner(BACKFILL, enabled=not args.json):
            created = _wait_backfilled(f"{base}/{created['funnel_id']}", headers, created)
        _print_funnels([created], args.json, single=True)
        if created["backfilled"]:
            _print_backfilled(started, args.json)
        elif not args.json:
            _out("not back-filled yet: until the aggregator has, the report counts the people active since")
    else:
        _print_funnels(json.loads(raw)["funnels"], args.json)
    return 0


BACKFILL = "creating the funnel and back-filling it from the stored events"
BACKFILL_WAIT = 120.0  # seconds `funnels create` waits for the server's aggregator to back-fill


def _wait_backfilled(url: str, headers: dict[str, str], created: dict[str, Any]) -> dict[str, Any]:
    """The funnel as its report shows it once the server's aggregator has back-filled it (or
    as created, after BACKFILL_WAIT seconds)."""
    deadline = time.monotonic() + BACKFILL_WAIT
    while time.monotonic() < deadline:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            funnel = json.loads(response.read())["funnel"]
        if funnel["backfilled"]:
            return funnel
        time.sleep(0.25)
    return created


def _print_backfilled(started: float, as_json: bool) -> None:
    if not as_json:
        _out(f"back-filled from the stored events in {time.monotonic() - started:.1f} s")


def _spinner(text: str, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A spinner on stderr while `text` goes on (stdout stays the command's output); nothing
    when stderr is not a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return contextlib.nullcontext()
    return console.status(text)


def _progress() -> Any:
    """A progress bar on stderr, gone once done; nothing when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=(console := Console(stderr=True)),
        transient=True,
        disable=not console.is_terminal,
    )


def _print_funnels(rows: list[dict[str, Any]], as_json: bool, single: bool = False) -> None:
    if as_json:
        _out(json.dumps(rows[0] if single else rows, default=str))
        return
    for row in rows:
        steps = " -> ".join(s["event"] + (f"@{s['path']}" if s["path"] else "") for s in row["steps"])
        _out(f"{row['funnel_id']}  {row['name']}  window {row['window_seconds']}s  {steps}")


def _print_created(project: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _out(json.dumps(project, default=str))
        return
    _out(f"project_id  {project['project_id']}")
    _out(f"name        {project['name']}")
    _out(f"timezone    {project.get('timezone', 'UTC')}")
    _out(f"write_key   {project['write_key']}   (public: goes into the tracking snippet)")
    _out(f"read_key    {project['read_key']}   (secret: shown once, opens the API for this project)")


def _print_list(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _out(json.dumps(rows, default=str))
        return
    for row in rows:
        _out(
            f"{row['project_id']}  {row['write_key']}  {row['created_at']}  "
            f"{row.get('timezone', 'UTC')}  {row['name']}"
        )
