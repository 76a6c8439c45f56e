"""`werkstroom serve --target all|ingest|aggregator|api`: the composition root.

`all` (monolithic, the embedded default) runs every component in this one process, which is
what the embedded ClickHouse needs (one process per data directory). The other targets run
one component each, for a scaled deployment against Kafka and a ClickHouse server.
This module is the only place that imports the services; they never import each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from clickhouse_connect.driver.client import Client

from werkstroom import projects
from werkstroom.clickhouse import ClientFactory, connect, is_embedded
from werkstroom.clickhouse.migrate import migrate, migration_lock, wait_until_current
from werkstroom.contract import Topics
from werkstroom.embedded import EmbeddedKafka
from werkstroom.kafka import (
    ensure_topics,
    log_ends,
    log_ends_at,
    make_consumer,
    make_meter,
    partitions_of,
    uncommitted,
    wait_for_kafka,
    without_idempotence,
)
from werkstroom.logging import get_logger
from werkstroom.rotation import Rotation, publisher_of
from werkstroom.settings import Settings, Target

log = get_logger(__name__)

#: The worker threads that run the blocking calls (ClickHouse), and how long the process waits
#: at exit for one still running before it leaves without it (`_leave_hung_calls`).
WORKER_THREADS = "werkstroom-worker"
EXIT_GRACE = 2.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (several run in one loop)."""

    #: Sockets bound here (one of `--workers N` binds with SO_REUSEPORT); None: uvicorn binds.
    listen: list[socket.socket] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Runtime:
    """What `serve` started, for the banner and for tests."""

    settings: Settings
    bootstrap: str
    target: Target
    admin_token: str
    demo: dict[str, str] | None = None
    embedded_kafka: EmbeddedKafka | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def clickhouse_factory(settings: Settings) -> ClientFactory:
    url, database = settings.effective_clickhouse_url, settings.clickhouse_database

    def factory(*, session: bool = False) -> Client:
        return connect(url, database, session=session)

    return factory


def prepare_clickhouse(settings: Settings) -> Client:
    """Open ClickHouse, create the database and apply pending migrations, or, with
    MIGRATE_ON_START=false, wait until a `werkstroom migrate` job has applied them."""
    client = connect(settings.effective_clickhouse_url, settings.clickhouse_database, create_database=True)
    if not settings.migrate_on_start:
        wait_until_current(client, timeout=settings.migrations_wait_seconds)
        return client
    with locked_for_migrations(client, settings):
        applied = migrate(client)
    if applied:
        log.info("migrations_applied", migrations=applied)
    return client


def locked_for_migrations(client: Client, settings: Settings) -> contextlib.AbstractContextManager[None]:
    """The migration lock on a server; none on the embedded engine, which one process opens."""
    if is_embedded(settings.effective_clickhouse_url):
        return contextlib.nullcontext()
    return migration_lock(client, wait=settings.migrations_wait_seconds)


def backfill_funnel(client: Client, funnel: Any) -> int:
    """The aggregator's back-fill of a new funnel, run by `werkstroom funnels create` when no
    server holds the embedded ClickHouse (services.aggregator.funnels)."""
    from services.aggregator.funnels import backfill_and_mark

    return backfill_and_mark(client, funnel)


def admin_token(settings: Settings) -> str:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token


def ensure_demo_project(settings: Settings, client: Client) -> dict[str, str] | None:
    """At first start (no project yet) create "Demo site" and keep its keys in <data_dir>/demo.json."""
    path = settings.data_dir / "demo.json"
    if path.exists():
        demo: dict[str, str] = json.loads(path.read_text())
        return demo
    if not settings.demo or projects.list_projects(client):
        return None
    created = projects.create_project(client, "Demo site")
    demo = {"project_id": created.project_id, "write_key": created.write_key, "read_key": created.read_key}
    _write_private(path, json.dumps(demo, indent=2) + "\n")
    return demo


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


async def start_kafka(settings: Settings, target: Target) -> tuple[str, EmbeddedKafka | None]:
    if settings.kafka_bootstrap:
        bootstrap = settings.kafka_bootstrap
        embedded = None
    elif target == "all":
        embedded = EmbeddedKafka(log_path=settings.data_dir / "logs" / "kafka.log").start()
        bootstrap = embedded.bootstrap
        # Known and expected: asking would cost every producer a refusal (and aiokafka an ERROR).
        without_idempotence(bootstrap, reason="the embedded broker (tansu) has no idempotent producer")
    else:
        raise SystemExit(
            f"--target {target} needs WERKSTROOM_KAFKA_BOOTSTRAP: the embedded broker lives inside "
            "`werkstroom serve --target all` only"
        )
    await wait_for_kafka(bootstrap, timeout=30)
    await ensure_topics(
        bootstrap, Topics.from_settings(settings).all(), settings.topic_partitions, settings.topic_replication
    )
    return bootstrap, embedded


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that other processes may bind too (SO_REUSEPORT): the
    kernel spreads new connections over every socket bound so, one per worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _http_server(app: Any, settings: Settings, port: int, *, reuse_port: bool = False) -> _Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # uvicorn would take X-Forwarded-For from any local connection; whose address a request
        # is (the per-client limits) is WERKSTROOM_TRUST_FORWARDED_FOR's to say, not the peer's.
        proxy_headers=False,
    )
    server = _Server(config)
    if reuse_port:
        server.listen = [reuse_port_socket(settings.host, port)]
    return server


async def serve(
    settings: Settings,
    target: Target,
    *,
    on_ready: Callable[[Runtime], None] | None = None,
    worker: int | None = None,
) -> None:
    """Run `target` until SIGINT/SIGTERM (a signal during start-up stops it once started).
    `worker`: this process is that one of `--workers N` (`supervise`): it binds its port with
    SO_REUSEPORT, and stops (gracefully) if its supervisor goes away."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: skip (or cut short) the drain

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second_signal_stopping_at_once")
            hurry.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    orphan_watch = asyncio.create_task(_until_orphaned(stop)) if worker is not None else None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if target != "all" and is_embedded(settings.effective_clickhouse_url):
        log.warning(
            "embedded_clickhouse_single_process",
            hint="with the embedded ClickHouse only one process may run; use --target all or a server URL",
        )
    client = await asyncio.to_thread(prepare_clickhouse, settings)
    bootstrap, embedded = ("", None)
    if target in ("all", "ingest", "aggregator"):
        bootstrap, embedded = await start_kafka(settings, target)
    runtime = Runtime(
        settings=settings,
        bootstrap=bootstrap,
        admin_token=admin_token(settings),
        embedded_kafka=embedded,
        target=target,
    )
    runtime.demo = await asyncio.to_thread(ensure_demo_project, settings, client)
    factory = clickhouse_factory(settings)

    servers: list[_Server] = []
    sinks: list[Any] = []
    if target in ("all", "ingest"):
        from services.ingest.app import create_app as create_ingest

        servers.append(
            _http_server(
                create_ingest(settings, bootstrap=bootstrap, clickhouse=factory),
                settings,
                settings.ingest_port,
                reuse_port=worker is not None,
            )
        )
    if target in ("all", "api"):
        from services.api.app import create_app as create_api

        servers.append(
            _http_server(
                create_api(settings, clickhouse=factory, admin_token=runtime.admin_token),
                settings,
                settings.api_port,
                reuse_port=worker is not None,
            )
        )
    bots: Any = None  # the bots consumer (services.aggregator.bots), beside the events sink
    aggregator: Any = None  # the Faust app that hosts both (services.aggregator.faust_app)
    if target in ("all", "aggregator"):
        from services.aggregator.faust_app import create_aggregator

        # Faust's own web server stays off here: ours serves the same /health, /ready, /metrics.
        aggregator = create_aggregator(settings, bootstrap, factory)
        sinks.append(aggregator.sink)
        bots = aggregator.bots
    if target == "aggregator":
        # Its own port for /health, /ready and /metrics; in `all` the ingest and API ports serve
        # the same registry, and one more port would be one more to clash at `make run`.
        from services.aggregator.app import create_app as create_aggregator

        servers.append(
            _http_server(
                create_aggregator(events=sinks[0], bots=bots, clickhouse=factory),
                settings,
                settings.aggregator_port,
            )
        )

    failed: list[asyncio.Task[Any]] = []
    rotation: Rotation | None = None
    results: list[Any] = []
    tune_gc(settings)  # start-up is over: what exists now lives as long as the process
    runtime.tasks = [
        asyncio.create_task(s.serve(sockets=s.listen), name=f"http:{s.config.port}") for s in servers
    ]
    if aggregator is not None:
        # The app runs until the events sink ends (sink.stop() below, or its failure).
        runtime.tasks.append(asyncio.create_task(aggregator.run(), name="sink"))
        runtime.tasks.append(asyncio.create_task(aggregator.bots_hosted.wait(), name="bots-sink"))
    if not worker:  # one runtime file: the first worker's
        _write_runtime_file(settings, target, runtime)
    try:
        while not all(s.started for s in servers):
            if any(t.done() for t in runtime.tasks):
                break
            await asyncio.sleep(0.05)
        rotation = _rotation(settings, runtime, servers, sinks, bots)
        if rotation is not None:
            runtime.tasks.append(asyncio.create_task(rotation.run(), name="embedded-rotation"))
        if on_ready is not None and all(s.started for s in servers):
            on_ready(runtime)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *runtime.tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        stopper.cancel()
    finally:
        log.info("shutting_down", target=target)
        if rotation is not None:  # a swap under way ends first; none starts after this
            rotation.close()
            await asyncio.wait([t for t in runtime.tasks if t.get_name() == "embedded-rotation"], timeout=10)
        if stop.is_set() and not failed:
            await drain(settings, runtime, servers, sinks, hurry)
        for server in servers:
            server.should_exit = True
        # End the API's long-lived responses (SSE streams) now, not at the graceful-drain timeout.
        for server in servers:
            live = getattr(getattr(server.config.app, "state", None), "live", None)
            if live is not None:
                await live.close()
        for sink in sinks:
            sink.stop()
        if bots is not None:
            bots.stop()
        results = await asyncio.gather(*runtime.tasks, return_exceptions=True)
        if embedded is not None:
            embedded.stop()
        if orphan_watch is not None:
            orphan_watch.cancel()
        if not worker:
            with contextlib.suppress(FileNotFoundError):
                (settings.data_dir / "runtime.json").unlink()
    for task in failed:
        raise task.exception()  # type: ignore[misc]
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    if any(not s.started for s in servers):
        raise SystemExit("an HTTP server did not start (is the port in use?); see the log above")


async def _until_orphaned(stop: asyncio.Event) -> None:
    """One of `--workers N`: stop gracefully once the supervisor is gone (killed with -9, it
    could not pass a signal on), instead of serving on as an orphan nobody stops."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event says a parent is gone
        await asyncio.sleep(1.0)
    log.warning("supervisor_gone_stopping", supervisor=parent)
    stop.set()


def _rotation(
    settings: Settings, runtime: Runtime, servers: list[_Server], sinks: list[Any], bots: Any = None
) -> Rotation | None:
    """The embedded broker's memory bound (werkstroom.rotation): `all` on the embedded broker,
    with ingest started (its publisher is what a swap holds) and the aggregator in-process."""
    limits = settings.embedded_broker_max_events, settings.embedded_broker_max_age_seconds
    if runtime.embedded_kafka is None or len(sinks) != 1 or not any(x > 0 for x in limits):
        return None
    publishers = [p for p in (publisher_of(_ingestor(s)) for s in servers) if p is not None]
    if len(publishers) != 1:
        return None
    return Rotation(settings, runtime.bootstrap, publishers[0], sinks[0], bots)


@dataclass
class DrainReport:
    """What a graceful stop's drain did, for its log line."""

    events: int = 0  # messages in the events topic not yet committed when ingest stopped accepting
    unanswered: int = 0  # tracking requests still in hand when the wait for them ended
    end_offsets: dict[int, int] = field(default_factory=dict)
    reached: bool = False


async def drain(
    settings: Settings, runtime: Runtime, servers: list[_Server], sinks: list[Any], hurry: asyncio.Event
) -> None:
    """A graceful stop loses nothing acknowledged: ingest answers 503 shutting_down from now on,
    the requests in hand are answered and the producer flushed; with the aggregator in this
    process (`all`), it then consumes, writes and commits up to the events topic's end offsets
    as of that moment (it may not even have joined its group yet: the embedded broker is memory
    only, so what is left uncommitted now is gone at the next start). At most
    `drain_timeout_seconds`; a second signal ends it at once."""
    ingestors = [i for i in (_ingestor(s) for s in servers) if i is not None]
    if not ingestors and not sinks:
        return
    started = time.monotonic()
    report = DrainReport()
    work = asyncio.create_task(_drain_steps(settings, runtime, ingestors, sinks, report), name="drain")
    hurried = asyncio.create_task(hurry.wait())
    done, _ = await asyncio.wait(
        [work, hurried], timeout=settings.drain_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
    )
    for task in (work, hurried):
        task.cancel()
    results = await asyncio.gather(work, hurried, return_exceptions=True)
    error = results[0] if isinstance(results[0], Exception) else None
    log.log(
        logging.INFO if report.reached and error is None else logging.WARNING,
        "drain_finished",
        seconds=round(time.monotonic() - started, 3),
        events=report.events,
        complete=report.reached,
        timed_out=not done,
        interrupted=hurried in done,
        unanswered_requests=report.unanswered,
        end_offsets=report.end_offsets,
        error=repr(error) if error is not None else None,
    )


def _ingestor(server: _Server) -> Any:
    """The ingest app's Ingestor, if this server is ingest's and its start-up got that far."""
    return getattr(getattr(getattr(server.config.app, "app", None), "state", None), "ingest", None)


async def _drain_steps(
    settings: Settings, runtime: Runtime, ingestors: list[Any], sinks: list[Any], report: DrainReport
) -> None:
    answers = await asyncio.gather(*(i.stop_accepting(settings.drain_timeout_seconds) for i in ingestors))
    report.unanswered = sum(answers)
    log.info("ingest_stopped_accepting", unanswered_requests=report.unanswered)
    if not (ingestors and sinks):
        # ingest alone: flushed above (the aggregators elsewhere read it); the aggregator alone:
        # its own stop writes and commits what it holds, and the rest stays in Kafka.
        report.reached = True
        return
    topic = Topics.from_settings(settings).events
    # Its own client in the sink's group (it never joins it, nor is it assigned): reads the
    # group's committed offsets. The topic's ends are read by a client in no group (log_ends).
    consumer = make_consumer(runtime.bootstrap, [], settings.sink_group, client_id="werkstroom-drain")
    meter = make_meter(runtime.bootstrap, client_id="werkstroom-drain-meter")
    try:  # stopped even if its start failed: an unclosed client is a warning at exit
        await consumer.start()
        await meter.start()
        await meter.topics()  # loads the metadata: partitions_for_topic is None before
        partitions = partitions_of(meter, topic)
        ends = await log_ends(meter, partitions)
        report.end_offsets = {tp.partition: end for tp, end in ends.items()}
        report.events = await uncommitted(consumer, ends)
        log.info("drain_started", events=report.events, end_offsets=report.end_offsets)
        while True:
            if await uncommitted(consumer, ends) == 0:
                # Done once a second look, with nothing produced since, agrees.
                again = await log_ends(meter, partitions)
                if again == ends:
                    report.reached = True
                    await _drain_bots(settings, runtime)
                    return
                report.events += sum(again[tp] - ends[tp] for tp in partitions)
                ends = again
                report.end_offsets = {tp.partition: end for tp, end in ends.items()}
                continue
            if any(t.done() for t in runtime.tasks if t.get_name() == "sink"):
                log.warning("drain_sink_ended", hint="what is not committed is read again at the next start")
                return
            await asyncio.sleep(0.1)
    finally:
        await meter.stop()
        await consumer.stop()


async def _drain_bots(settings: Settings, runtime: Runtime) -> None:
    """After the events: wait until the bots consumer committed its topic's end (ingest sends no
    more), so that the embedded broker's last bot events are counted too. Informational: it
    never delays the events' drain, and stops waiting if the bots consumer ended."""
    running = [t for t in runtime.tasks if t.get_name() == "bots-sink"]
    if not running:
        return
    consumer = make_consumer(runtime.bootstrap, [], settings.bots_group, client_id="werkstroom-drain-bots")
    topic = Topics.from_settings(settings).bots
    try:
        await consumer.start()
        await consumer.topics()
        ends = await log_ends_at(runtime.bootstrap, partitions_of(consumer, topic))
        while await uncommitted(consumer, ends):
            if any(t.done() for t in running):
                return
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


def _write_runtime_file(settings: Settings, target: str, runtime: Runtime) -> None:
    info = {
        "pid": os.getpid(),
        "target": target,
        "api_url": settings.api_url,
        "ingest_url": settings.ingest_url,
        "kafka_bootstrap": runtime.bootstrap,
    }
    _write_private(settings.data_dir / "runtime.json", json.dumps(info) + "\n")


def banner(runtime: Runtime) -> str:
    s = runtime.settings
    embedded = " (embedded tansu)" if runtime.embedded_kafka else ""
    serves = {runtime.target} if runtime.target != "all" else {"ingest", "aggregator", "api"}
    lines = ["", f"Werkstroom is running: {', '.join(sorted(serves))} (Ctrl-C to stop)"]
    if "ingest" in serves:
        lines.append(f"  ingest (tracking API)   {s.ingest_url}/   docs: {s.ingest_url}/docs")
    if "api" in serves:
        lines.append(f"  dashboard               {s.api_url}/   (log in with a project's read key)")
        lines.append(f"  API                     {s.api_url}/api   docs: {s.api_url}/docs")
    if runtime.target == "aggregator":
        url = s.aggregator_url
        lines.append(f"  aggregator (operations) {url}/ready   metrics: {url}/metrics")
    lines += [
        f"  Kafka                   {runtime.bootstrap or 'not used'}{embedded}",
        f"  ClickHouse              {s.masked()['clickhouse_url']} database {s.clickhouse_database}",
        f"  admin token             in {s.data_dir / 'admin_token'}"
        if s.admin_token is None
        else "  admin token             from WERKSTROOM_ADMIN_TOKEN",
    ]
    if runtime.demo and "ingest" in serves:
        d = runtime.demo
        lines += [
            "",
            f"Demo project {d['project_id']}",
            f"  write key (public, for the snippet)   {d['write_key']}",
            f"  read key (secret, for the API)        {d['read_key']}",
            "",
            "Fill it with simulated visitors (two weeks, a funnel, then live visitors):  make demo",
            "",
            "Send a page view:",
            f"  curl -s {s.ingest_url}/v1/page -H 'Content-Type: application/json' \\",
            f'    -d \'{{"writeKey":"{d["write_key"]}","anonymousId":"visitor-1",'
            f'"properties":{{"url":"https://example.com/"}},'
            f'"context":{{"userAgent":"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}}}}\'',
        ]
    return "\n".join(lines) + "\n"


def run(settings: Settings, target: Target, *, worker: int | None = None) -> int:
    if settings.workers > 1 and worker is None:
        return supervise(settings, target)

    def announce(runtime: Runtime) -> None:
        if worker:  # of several workers, the first one says it
            return
        sys.stdout.write(banner(runtime))
        sys.stdout.flush()

    workers = ThreadPoolExecutor(thread_name_prefix=WORKER_THREADS)  # asyncio's default, named
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.get_loop().set_default_executor(workers)
        try:
            runner.run(serve(settings, target, on_ready=announce, worker=worker))
        except BaseException as exc:
            _leave_hung_calls(workers, exc)
            raise
        _leave_hung_calls(workers, None)
    return 0


def supervise(settings: Settings, target: Target) -> int:
    """`serve --target ingest|api --workers N`: N processes of that target on one port, each
    binding it with SO_REUSEPORT. What must happen once (the admin token, migrations, the demo
    project) happens here first, so they do not race. A signal is passed on to each (they run
    in their own process group, so a terminal's Ctrl-C reaches them once, through here); a
    worker that ends by itself stops the others. Returns the highest exit code."""
    count = settings.workers
    if target not in ("ingest", "api"):
        raise SystemExit(
            f"--workers {count} applies to --target ingest and api only: `all` runs in one process "
            "(the embedded ClickHouse opens in one), and more aggregators are more processes in "
            "their consumer group (--target aggregator, each started on its own)"
        )
    if is_embedded(settings.effective_clickhouse_url):
        raise SystemExit(
            f"--workers {count} needs a ClickHouse server (WERKSTROOM_CLICKHOUSE_URL): the embedded "
            "one opens in one process only"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    admin_token(settings)
    ensure_demo_project(settings, prepare_clickhouse(settings))
    command = [sys.executable, "-m", "werkstroom", "serve", "--target", target, "--workers", str(count)]
    procs = [subprocess.Popen([*command, "--worker", str(index)], process_group=0) for index in range(count)]
    log.info("workers_started", target=target, workers=count, pids=[p.pid for p in procs])
    stopping = False

    def stop_all(signum: int, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    while any(p.poll() is None for p in procs):
        ended = [p for p in procs if p.returncode is not None]
        if ended and not stopping:
            log.error("worker_ended", pid=ended[0].pid, code=ended[0].returncode, stopping="the others")
            stop_all(signal.SIGTERM)
        time.sleep(0.2)
    codes = [p.returncode for p in procs]
    log.info("workers_stopped", codes=codes)
    return max((abs(c) for c in codes), default=0)


def _leave_hung_calls(workers: ThreadPoolExecutor, error: BaseException | None) -> None:
    """A call to ClickHouse runs in a worker thread and cannot be interrupted. One that hangs (a
    server that stopped answering, until its 60 s timeout; a long statement in the embedded
    engine) held the process at exit, which waits for every worker thread. The components gave
    up on those calls when they stopped (nothing that depends on them is committed), so after
    EXIT_GRACE seconds the process leaves without them."""
    workers.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + EXIT_GRACE
    threads = [t for t in threading.enumerate() if t.name.startswith(WORKER_THREADS)]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    if not hung:
        return
    log.warning("exit_leaving_hung_calls", threads=hung, waited_s=EXIT_GRACE)
    if error is not None:
        log.error("serve_failed", exc_info=error)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if error is not None else 0)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it is, via uvicorn[standard]): the same loop uvicorn would pick."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tune_gc(settings: Settings) -> None:
    """Collect what start-up left, move it out of the collector's sight (gc.freeze: the
    imported modules, hundreds of thousands of objects that every full collection walked), and
    collect the young generation every `gc_young_threshold` allocations instead of every 700.
    The aggregator allocates a few objects per event; with Python's defaults the collections
    (a full one walks every visitor held) paused it for a large share of the live view's 1 s
    budget. Cycles are still collected, just in larger, rarer steps."""
    if settings.gc_young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(settings.gc_young_threshold, 20, 100)
