"""Aggregator throughput, freshness and memory, against a bare consumer measured in the same run.

    make bench     (or: .venv/bin/python bench/aggregator_bench.py --events 200000)

1. Throughput: N generated contract events preloaded into a 4-partition topic on the embedded
   broker. Bare: an aiokafka consumer group that only decodes them (orjson). Ours: the
   aggregator (events + sessions + live view + identities into the embedded ClickHouse,
   offsets committed after each write), timed from partition assignment until every offset
   is committed: the Faust-hosted one `werkstroom serve` runs (services.aggregator.faust_app,
   "faust"). Targets: >= 30,000 events/s and >= 20 % of bare. `--hosts faust,sink` adds the
   bare EventsSink as `serve` ran it before issue 20 ("sink"), in alternating order within each
   round, with the target faust >= 95 % of sink (issue 20's side by side).
2. Freshness: a steady 5,000 events/s of current traffic, produced by a second process; every
   50 ms a probe visitor's page view; time from Kafka's ack to the visitor's row in
   online_visitors, through each aggregator twice (alternating). Target p99 < 1 s.
3. Memory: resident memory of an aggregator process of its own (Faust-hosted, as `--host sink`
   the bare EventsSink) while 100,000 visitors' events
   (a backlog, written in full batches) are taken in and once they are online at once. The
   process also hosts its ClickHouse; see `memory` for how that is kept out of the figure.
   Target < 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from clickhouse_connect.driver.client import Client  # noqa: E402

from services.aggregator.bots import BotsSink  # noqa: E402
from services.aggregator.faust_app import create_aggregator  # noqa: E402
from services.aggregator.sink import EventsSink  # noqa: E402
from services.ingest.segment import normalize  # noqa: E402
from werkstroom.contract import encode_event, message_key  # noqa: E402
from werkstroom.demo import simulate  # noqa: E402
from werkstroom.embedded import EmbeddedKafka  # noqa: E402
from werkstroom.kafka import Publisher, ensure_topics, start_producer  # noqa: E402
from werkstroom.logging import configure_logging  # noqa: E402
from werkstroom.serve import clickhouse_factory, loop_factory, prepare_clickhouse, tune_gc  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402

PROJECT = "p_bench"
WARM_UP = 2_000  # events written before the memory phase measures its starting point


def rss_mb(field: str = "VmRSS:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """VmHWM counts from here (Linux: 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def generated(count: int) -> list[tuple[bytes, bytes]]:
    sim = simulate({PROJECT: "wk"}, visitors=count // 15 + 1, seed=42, bots=0)
    now = datetime.now(UTC)
    out = []
    for call in sim.calls["wk"][:count]:
        event, _ = normalize(call, call_type=None, project_id=PROJECT, received_at=now)
        out.append((message_key(PROJECT, event["anonymous_id"], event["user_id"]), encode_event(event)))
    return out


def live_event(anonymous_id: str, n: int) -> tuple[bytes, bytes]:
    event, _ = normalize(
        {
            "type": "page",
            "anonymousId": anonymous_id,
            "messageId": f"live-{n}",
            "properties": {"path": "/live"},
            "context": {
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
            },
        },
        call_type=None,
        project_id=PROJECT,
        received_at=datetime.now(UTC),
    )
    return message_key(PROJECT, anonymous_id, ""), encode_event(event)


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = await start_producer(bootstrap)
    publisher = Publisher(producer)
    publisher.start()
    for i in range(0, len(messages), 5000):
        await publisher.publish(topic, messages[i : i + 5000])
    await publisher.stop()
    await producer.stop()


async def bare(bootstrap: str, topic: str, total: int, group: str) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=20000,
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    started, seen = time.perf_counter(), 0
    while seen < total:
        for messages in (await consumer.getmany(timeout_ms=200, max_records=20000)).values():
            for message in messages:
                orjson.loads(message.value)
            seen += len(messages)
        await consumer.commit()
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return total / elapsed


def start_aggregator(host: str, settings: Settings, bootstrap: str) -> tuple[EventsSink, asyncio.Task[None]]:
    """The aggregator as `werkstroom serve` ran it before issue 20 ("sink": the events sink and
    the bots consumer side by side on the loop) or as it runs it now ("faust": both hosted by
    the Faust app), running; sink.stop() ends either."""
    if host == "sink":
        sink = EventsSink(settings, bootstrap, clickhouse_factory(settings))
        bots = BotsSink(settings, bootstrap, clickhouse_factory(settings))

        async def run() -> None:
            running = asyncio.create_task(bots.run())
            try:
                await sink.run()
            finally:
                bots.stop()
                await running

        return sink, asyncio.create_task(run())
    aggregator = create_aggregator(settings, bootstrap, clickhouse_factory(settings))
    return aggregator.sink, asyncio.create_task(aggregator.run())


async def committed_total(sink: EventsSink, topic: str) -> int:
    assert sink.consumer is not None
    total = 0
    for partition in range(4):
        total += await sink.consumer.committed(TopicPartition(topic, partition)) or 0
    return total


async def main(
    events: int, online: int, rounds_wanted: int, memory_host: str, hosts: tuple[str, ...]
) -> None:
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="werkstroom-aggbench-"))
    with EmbeddedKafka(log_path=work / "kafka.log") as kafka:
        settings = Settings(
            kafka_bootstrap=kafka.bootstrap,
            data_dir=work,
            topic_events="bench.events",
            topic_dlq="bench.dlq",
            topic_bots="bench.bots",
            sink_group="bench-agg",
            kafka_session_timeout_ms=3000,
        )
        await ensure_topics(kafka.bootstrap, ["bench.events", "bench.dlq", "bench.bots"], 4)
        messages = generated(events)
        await produce(kafka.bootstrap, "bench.events", messages)
        print(
            f"preloaded {len(messages):,} events ({sum(len(v) for _, v in messages) / len(messages):.0f} B each)"
        )

        # Rounds: the bare consumer, then each aggregator from empty tables (a database and
        # consumer group of their own each), in alternating order. This shared
        # 2-vCPU host changes speed by a third from one minute to the next; the median of the
        # rounds, each against the bare consumer measured just before it, is what a single run
        # could not show.
        rounds: list[dict[str, float]] = []
        running: tuple[EventsSink, asyncio.Task[None], Client] | None = None
        client: Client | None = None
        for round_no in range(1, rounds_wanted + 1):
            figures = {
                "bare": await bare(kafka.bootstrap, "bench.events", len(messages), f"bench-bare-{round_no}")
            }
            # Alternating from round to round.
            order = hosts if (rounds_wanted - round_no) % 2 == 0 else hosts[::-1]
            for host in order:
                if running is not None:  # the previous aggregator and tables: gone, no merges left
                    running[0].stop()
                    await running[1]
                    running[2].command(f"DROP DATABASE {settings.clickhouse_database} SYNC")
                settings = settings.model_copy(
                    update={
                        "clickhouse_database": f"bench{round_no}{host}",
                        "sink_group": f"bench-agg-{round_no}-{host}",
                        "bots_group": f"bench-bots-{round_no}-{host}",
                    }
                )
                client = prepare_clickhouse(settings)
                if running is None:  # as `werkstroom serve` does once started (later, it would
                    tune_gc(settings)  # freeze the previous rounds' aggregators for good)
                sink, task = start_aggregator(host, settings, kafka.bootstrap)
                running = (sink, task, client)
                while not (sink.consumer and sink.consumer.assignment()):
                    await asyncio.sleep(0.01)
                started, cpu, everything = time.perf_counter(), time.thread_time(), time.process_time()
                while await committed_total(sink, "bench.events") < len(messages):
                    await asyncio.sleep(0.05)
                figures[host] = len(messages) / (time.perf_counter() - started)
                # The event loop's thread (the inserts run in others): what sets the pace here,
                # and steadier than the wall time on this shared host.
                figures[f"{host}_cpu"] = time.thread_time() - cpu
                # The whole process's CPU per event: the aggregator's threads and the in-process
                # ClickHouse's (its inserts, materialized views and merges), what a variant that
                # moves work into ClickHouse shows here and not in the main thread's figure.
                figures[f"{host}_us"] = (time.process_time() - everything) / len(messages) * 1e6
            rounds.append(figures)
            line = (
                f"  round {round_no}: bare aiokafka consumer (decode only) {figures['bare']:10,.0f} events/s"
            )
            for host in hosts:
                line += (
                    f"; {host} {figures[host]:10,.0f} events/s ({figures[host] / figures['bare']:.2f} of bare, "
                    f"main thread CPU {figures[f'{host}_cpu']:.2f} s, process CPU {figures[f'{host}_us']:.1f} us/event)"
                )
            if "sink" in hosts:
                line += f"; faust/sink {figures['faust'] / figures['sink']:.2f}"
            print(line)
        ours = statistics.median(r["faust"] for r in rounds)
        ratio = statistics.median(r["faust"] / r["bare"] for r in rounds)
        per_event = statistics.median(r["faust_us"] for r in rounds)
        summary = (
            f"throughput (median of {len(rounds)} rounds, Faust-hosted): {ours:,.0f} events/s (target >= 30,000) "
            f"at {per_event:.1f} us of process CPU an event "
            f"{'OK' if ours >= 30_000 else 'BELOW TARGET'}; {ratio:.0%} of bare (target >= 20 %) "
            f"{'OK' if ratio >= 0.2 else 'BELOW TARGET'}"
        )
        if "sink" in hosts:
            hosted = statistics.median(r["faust"] / r["sink"] for r in rounds)
            cpu = statistics.median(r["faust_cpu"] / r["sink_cpu"] for r in rounds)
            summary += (
                f"; {hosted:.0%} of the bare sink (target >= 95 %) "
                f"{'OK' if hosted >= 0.95 else 'BELOW TARGET'}; main thread CPU faust/sink {cpu:.2f}"
            )
        print(summary)
        assert running is not None
        running[0].stop()
        await running[1]
        running[2].command(f"DROP DATABASE {settings.clickhouse_database} SYNC")

        # Freshness at a steady 5,000 events/s, produced by another process (producing them
        # here took the event loop from the aggregator), through each aggregator in turn, twice,
        # alternating: each pass a topic, database and group of its own.
        passes: dict[str, list[float]] = {host: [] for host in hosts}
        for pass_no, host in enumerate((*hosts, *hosts)):
            topic = f"bench.fresh{pass_no}"
            await ensure_topics(kafka.bootstrap, [topic], 4)
            settings = settings.model_copy(
                update={
                    "topic_events": topic,
                    "clickhouse_database": f"benchfresh{pass_no}",
                    "sink_group": f"bench-fresh-{pass_no}",
                    "bots_group": f"bench-fresh-bots-{pass_no}",
                }
            )
            client = prepare_clickhouse(settings)
            sink, task = start_aggregator(host, settings, kafka.bootstrap)
            while not (sink.consumer and sink.consumer.assignment()):
                await asyncio.sleep(0.01)
            rate, delays = await freshness(kafka.bootstrap, topic, client)
            sink.stop()
            await task
            client.command(f"DROP DATABASE {settings.clickhouse_database} SYNC")
            p50, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1]
            passes[host].append(p99)
            print(
                f"freshness ({host}) at {rate:,.0f} events/s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
                f"over {len(delays)} probes (target p99 < 1000 ms) "
                f"{'OK' if p99 < 1 and len(delays) == 200 else 'BELOW TARGET'}"
            )
        print(
            "freshness p99, worst of its passes: "
            + ", ".join(f"{host} {max(p99s) * 1000:.0f} ms" for host, p99s in passes.items())
        )

        # Memory with `online` visitors online at once, in a process of its own (below).
        await ensure_topics(kafka.bootstrap, ["bench.online"], 4)
        producer = await start_producer(kafka.bootstrap, linger_ms=1)
        publisher = Publisher(producer)
        publisher.start()
        await publisher.publish("bench.online", [live_event(f"warm-{j}", j) for j in range(WARM_UP)])
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--memory",
            kafka.bootstrap,
            str(online),
            memory_host,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        async for line in child.stdout:
            if line.strip() == b"ready":
                for i in range(0, online, 5000):
                    await publisher.publish(
                        "bench.online", [live_event(f"online-{j}", WARM_UP + j) for j in range(i, i + 5000)]
                    )
            else:
                sys.stdout.write(line.decode())
        await child.wait()
        await publisher.stop()
        await producer.stop()
    shutil.rmtree(work, ignore_errors=True)


async def freshness(bootstrap: str, topic: str, client: Client) -> tuple[float, list[float]]:
    """The steady load (`steady`, another process) into `topic`; each probe's delay from Kafka's
    ack to its visitor's row in online_visitors (read through `client`), sorted, and the rate."""
    delays: list[float] = []
    pending: dict[str, float] = {}

    async def poll() -> None:
        while True:
            if pending:  # in a thread, every 20 ms: the aggregator shares this event loop
                seen = await asyncio.to_thread(
                    lambda ids: (
                        client.query(
                            "SELECT anonymous_id FROM online_visitors WHERE project_id = {p:String} "
                            "AND anonymous_id IN {ids:Array(String)}",
                            parameters={"p": PROJECT, "ids": ids},
                        ).result_rows
                    ),
                    list(pending),
                )
                now = time.time()
                for (anonymous_id,) in seen:
                    if anonymous_id in pending:
                        delays.append(now - pending.pop(anonymous_id))
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    load = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--steady", bootstrap, topic, stdout=asyncio.subprocess.PIPE
    )
    assert load.stdout is not None
    rate = 0.0
    async for line in load.stdout:
        fields = line.split()
        if fields[0] == b"probe":  # probe <anonymous id> <acked at, epoch s>
            pending[fields[1].decode()] = float(fields[2])
        elif fields[0] == b"sent":  # sent <events> <events/s>
            rate = float(fields[2])
    await load.wait()
    await asyncio.sleep(2)
    poller.cancel()
    await asyncio.gather(poller, return_exceptions=True)
    return rate, sorted(delays)


async def steady(bootstrap: str, topic: str) -> None:
    """The freshness load, in its own process: 5,000 events/s for 10 s in 50 ms ticks of 249
    background events and one probe visitor's page view; prints each probe's ack time."""
    configure_logging("WARNING")
    producer = await start_producer(bootstrap, linger_ms=1)
    publisher = Publisher(producer)
    publisher.start()
    started, n = time.perf_counter(), 0
    for tick in range(200):
        batch = [live_event(f"steady-{(n + i) % 20000}", n + i) for i in range(249)]
        n += 249
        await publisher.publish(topic, batch)
        await publisher.publish(topic, [live_event(f"probe-{tick}", n)])
        n += 1
        sys.stdout.write(f"probe probe-{tick} {time.time():.6f}\n")
        sys.stdout.flush()
        await asyncio.sleep(max(0.0, started + (tick + 1) * 0.05 - time.perf_counter()))
    sys.stdout.write(f"sent {n} {n / (time.perf_counter() - started):.1f}\n")
    await publisher.stop()
    await producer.stop()


async def memory(bootstrap: str, online: int, host: str) -> None:
    """Resident memory of an aggregator process with `online` visitors online, in a process of
    its own: the bench's producer, its earlier rounds and their ClickHouse are not in it. It
    still hosts its ClickHouse (chdb), which a deployment runs as a server of its own. So:
    the RSS once the aggregator runs and has written a first batch, then its growth while the
    visitors' events are taken in (its peak) and once they are online. What the in-process
    ClickHouse itself tracks of that growth is printed beside it; the figure held against the
    target counts all of the growth as the aggregator's, on top of what the process held
    before ClickHouse was opened (Python with the aggregator's modules imported)."""
    configure_logging("WARNING")
    imported = rss_mb()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-aggbench-memory-"))
    settings = Settings(
        kafka_bootstrap=bootstrap,
        data_dir=work,
        topic_events="bench.online",
        topic_dlq="bench.dlq",
        topic_bots="bench.bots",
        sink_group="bench-memory",
        clickhouse_database="benchmemory",
        kafka_session_timeout_ms=3000,
    )
    client = prepare_clickhouse(settings)
    tune_gc(settings)  # as `werkstroom serve` does
    sink, task = start_aggregator(host, settings, bootstrap)

    def clickhouse_mb() -> float:
        row = client.query("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'").first_row
        return float(row[0]) / 2**20

    while not (sink.consumer and await committed_total(sink, "bench.online") >= WARM_UP):
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)  # the first batch's refresh and live insert
    ready, clickhouse_ready = rss_mb(), clickhouse_mb()
    reset_peak_rss()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while await committed_total(sink, "bench.online") < WARM_UP + online:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    after, peak, clickhouse_after = rss_mb(), rss_mb("VmHWM:"), clickhouse_mb()
    held = len(sink.processor.visitors)
    count = client.query(
        "SELECT count() FROM online_visitors FINAL WHERE anonymous_id LIKE 'online-%'"
    ).first_row[0]
    sink.stop()
    await task
    bound = imported + peak - ready
    sys.stdout.write(
        f"memory ({host}) with {count:,} visitors online ({held:,} held by the aggregator): RSS of the "
        f"aggregator's process {ready:,.0f} MB before they came, {after:,.0f} MB once online "
        f"(+{after - ready:,.0f} MB), {peak:,.0f} MB at its peak (+{peak - ready:,.0f} MB); the "
        f"in-process ClickHouse tracked {clickhouse_after - clickhouse_ready:+,.0f} MB of that\n"
        f"  without ClickHouse in the process, as deployed: at most {imported:,.0f} MB (Python, the "
        f"aggregator's modules) + {peak - ready:,.0f} MB = {bound:,.0f} MB (target < 1,024 MB) "
        f"{'OK' if bound < 1024 and count == online else 'BELOW TARGET'}\n"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--steady":
        asyncio.run(steady(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--memory":
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(memory(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--online", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds; the median counts")
    parser.add_argument("--memory-host", choices=("faust", "sink"), default="faust")
    parser.add_argument(
        "--hosts",
        choices=("faust", "faust,sink"),
        default="faust",
        help="faust,sink: the bare EventsSink beside the Faust-hosted aggregator (issue 20's side by side)",
    )
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # the loop `werkstroom serve` runs on
        runner.run(
            main(args.events, args.online, args.rounds, args.memory_host, tuple(args.hosts.split(",")))
        )
