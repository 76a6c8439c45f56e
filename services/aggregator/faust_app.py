"""The aggregator as a Faust app: Faust owns the process, its start and its stop.

    faust -A services.aggregator.faust_app worker -l info

- the batch sources are `app.task`s: the events sink's fetch loop (services.aggregator.sink)
  and the bots consumer (.bots);
- the apply stage is an agent over `app.channel()`: each batch the loop cuts is handed to it
  (`Aggregator.hand_over`) and comes back applied and queued for the writer, one at a time, so
  a rebalance never finds two batches in flight and the offsets are committed after the write;
- Faust's lifecycle starts them, and its stop drains them first (`AggregatorApp.on_stop`: what
  is held is written and committed within the sink's STOP_GRACE), then cancels the tasks;
- Faust's web server serves the aggregator's /health, /ready and /metrics (services.aggregator
  .app) on `aggregator_port`; embedded in another process (`Aggregator.run`) it is off.

Faust's own Kafka consumer and producer stay off (`WithoutFaustKafka`): its per-message path does about
4.5k events/s on this broker against ~120k for whole fetch batches (docs/faust-on-tansu.md),
and an app with no topic to subscribe crashes its Conductor. The batch sources read with
aiokafka, as the bare sink does.

`werkstroom serve` (the aggregator in `all` and `--target aggregator`) builds the app with
`create_aggregator(settings, ...)` and runs it on its own loop (`Aggregator.run`); `faust -A`
reads the module's `app`, built from the environment's settings on first access (not at import).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.app.base import BootStrategy

from services.aggregator.batching import Held
from services.aggregator.bots import BotsSink
from services.aggregator.sink import EventsSink
from werkstroom.clickhouse import ClientFactory
from werkstroom.logging import get_logger
from werkstroom.settings import Settings

log = get_logger(__name__)


class WithoutFaustKafka(BootStrategy):
    """No Faust Kafka consumer, producer or tables (module docstring): agents, tasks, sensors
    and the web server only."""

    enable_kafka = False


class AggregatorApp(faust.App):
    BootStrategy = WithoutFaustKafka
    prepare: Any = None  # awaited once before anything starts (the worker's start-up checks)
    drain: Any = None  # awaited first when the app stops, before its tasks are cancelled

    async def on_first_start(self) -> None:
        if self.prepare is not None:  # first: it creates the data directory Faust's is in
            await self.prepare()
        await super().on_first_start()

    async def on_stop(self) -> None:
        # Not the on_before_shutdown signal (sent at the same point of the stop): a receiver
        # connected to an app's signal is held by the class's, for good, and with it the sink
        # and every visitor it holds (a process that runs several apps, as the bench does).
        if self.drain is not None:
            await self.drain()
        await super().on_stop()


@dataclass
class Hosted:
    """A consumer run as an app.task: when it ended, and what it raised."""

    consumer: Any  # EventsSink or BotsSink: run() until stop()
    started: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    async def run(self) -> None:
        self.started = True
        try:
            await self.consumer.run()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ended.set()

    async def wait(self) -> None:
        """Until the consumer ended; raises what it raised."""
        await self.ended.wait()
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        self.consumer.stop()
        if self.started:
            await self.ended.wait()


class Aggregator:
    """The Faust app and what it hosts."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        clickhouse: ClientFactory,
        *,
        web_port: int | None = None,
        owns_process: bool = False,
    ) -> None:
        self.settings = settings
        self.owns_process = owns_process  # a failure crashes the app (the worker exits)
        self.sink = EventsSink(settings, bootstrap, clickhouse, hand_over=self.hand_over)
        self.bots = BotsSink(settings, bootstrap, clickhouse)
        self.events = Hosted(self.sink)
        self.bots_hosted = Hosted(self.bots)
        app = self.app = AggregatorApp(
            settings.sink_group,
            broker=f"kafka://{bootstrap}",
            autodiscover=False,
            datadir=str(settings.data_dir / "faust"),
            web_enabled=web_port is not None,
            web_bind=settings.host,
            web_port=web_port or settings.aggregator_port,
        )
        self.batches = app.channel()
        app.agent(self.batches, name="apply")(self._apply)
        app.task(self._events_source)
        app.task(self._bots_source)
        app.drain = self._drain

    async def hand_over(self, held: Held | None) -> asyncio.Future[None]:
        """The sink's hand-over: the batch goes to the apply agent; the future is done once it
        is applied and queued for the writer (cancelling it cancels that)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.batches.send(value=(held, done))
        return done

    async def _apply(self, stream: Any) -> None:
        """The apply agent: one batch at a time (the sink hands over the next once this one is done)."""
        async for held, done in stream:
            work = asyncio.ensure_future(self.sink.submit(held))
            done.add_done_callback(lambda d, w=work: w.cancel() if d.cancelled() else None)
            try:
                await asyncio.wait([work])
            finally:
                work.cancel()  # the agent stopped meanwhile: so does the batch's apply
            if done.done():
                continue
            if work.cancelled():
                done.cancel()
            elif (error := work.exception()) is not None:
                done.set_exception(error)  # the sink stops on it (its loop raises it)
            else:
                done.set_result(None)

    async def _events_source(self) -> None:
        # No Faust consumer resumes the flow control (it is paused until an assignment).
        self.app.flow_control.resume()
        await self._host(self.events)

    async def _bots_source(self) -> None:
        await self._host(self.bots_hosted)

    async def _host(self, hosted: Hosted) -> None:
        try:
            await hosted.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.error("aggregator_consumer_failed", consumer=type(hosted.consumer).__name__, error=repr(exc))
            if self.owns_process:
                await self.app.crash(exc)

    async def _drain(self) -> None:
        """Faust stops: the consumers write and commit what they hold first (within the sink's
        STOP_GRACE), then the app's tasks and agents are stopped."""
        await asyncio.gather(self.events.stop(), self.bots_hosted.stop())

    async def run(self) -> None:
        """Embedded: start the app on the running loop, until the events sink ends
        (its stop(), or a failure, which this raises); then the app stops, and the bots with it."""
        await self.app.start()
        try:
            await self.events.wait()
        finally:
            await self.app.stop()

    def stop(self) -> None:
        self.sink.stop()
        self.bots.stop()


def create_aggregator(
    settings: Settings, bootstrap: str, clickhouse: ClientFactory, *, web_port: int | None = None
) -> Aggregator:
    return Aggregator(settings, bootstrap, clickhouse, web_port=web_port)


def _from_environment() -> faust.App:
    """The app `faust -A services.aggregator.faust_app worker` runs: settings from the
    environment (WERKSTROOM_*), Faust's web server serving /health, /ready and /metrics on
    `aggregator_port`, and the start-up checks `serve --target aggregator` makes (migrations,
    the broker and its topics) before anything starts."""
    from faust.contrib.asgi import serve_asgi

    from services.aggregator.app import create_app as create_ops
    from werkstroom.logging import configure_logging
    from werkstroom.serve import clickhouse_factory, prepare_clickhouse, start_kafka, tune_gc
    from werkstroom.settings import get_settings

    settings = get_settings()
    if not settings.kafka_bootstrap:
        raise SystemExit("faust -A services.aggregator.faust_app worker needs WERKSTROOM_KAFKA_BOOTSTRAP")
    factory = clickhouse_factory(settings)
    aggregator = Aggregator(
        settings, settings.kafka_bootstrap, factory, web_port=settings.aggregator_port, owns_process=True
    )

    async def prepare() -> None:
        # Ours, not the logging Faust's worker set up: JSON lines on the real stderr (the worker
        # replaces sys.stdout and sys.stderr by proxies into its logging, which dropped them).
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        configure_logging(settings.log_level, settings.log_format)
        log.info("settings", target="aggregator", runner="faust worker", **settings.masked())
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        client = await asyncio.to_thread(prepare_clickhouse, settings)
        client.close()
        await start_kafka(settings, "aggregator")
        tune_gc(settings)

    aggregator.app.prepare = prepare
    ops = create_ops(events=aggregator.sink, bots=aggregator.bots, clickhouse=factory)
    serve_asgi(aggregator.app, ops, host=settings.host, port=settings.aggregator_port)
    return aggregator.app


_app: faust.App | None = None


def __getattr__(name: str) -> Any:
    """`app`, built on first access: `faust -A` reads it; importing the module does not."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = _from_environment()
    return _app
