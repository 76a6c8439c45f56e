"""Bytes on disk per million events: what a site's ClickHouse must hold (issue 24's sizing table).

    .venv/bin/python bench/disk_bench.py --events 1000000 --persons 100000

Generates a project's data with bench/api_data.py (events and every table the aggregator derives
from them, as the API bench does), lets ClickHouse merge the parts, and prints each table's
bytes on disk (compressed, as stored) per million events, against the same data uncompressed in
the same run (the baseline: what the columns hold before their codecs). Sessions, persons and
the other derived tables grow with visitors rather than events; the generator's mix (about 4
events a session, 1 to 3 sessions a person) is what the figure is per.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_data import generate, open_database, settle_merges  # noqa: E402
from werkstroom.settings import Settings  # noqa: E402

MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--persons", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="werkstroom-disk-"))
    try:
        _, client = open_database(work)
        g = generate(client, Settings(), events=args.events, persons=args.persons)
        started = time.perf_counter()
        for (table,) in client.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
        ).result_rows:
            client.command(f"OPTIMIZE TABLE `{table}` FINAL")
        settle_merges(client)
        rows = client.query(
            "SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes), "
            "sum(bytes_on_disk) FROM system.parts WHERE database = currentDatabase() AND active "
            "GROUP BY table ORDER BY sum(bytes_on_disk) DESC"
        ).result_rows
        per_million = 1_000_000 / g.events
        print(
            f"{g.events:,} events, {g.persons:,} persons (generated in {g.seconds:.0f} s, merged in "
            f"{time.perf_counter() - started:.0f} s); per million events:"
        )
        print(f"  {'table':<28}{'rows':>12}{'on disk MB':>12}{'uncompressed MB':>17}{'ratio':>8}")
        total_disk = total_raw = 0
        for table, count, _compressed, raw, disk in rows:
            total_disk += disk
            total_raw += raw
            print(
                f"  {table:<28}{count * per_million:>12,.0f}{disk * per_million / MB:>12.1f}"
                f"{raw * per_million / MB:>17.1f}{disk / raw if raw else 0:>8.2f}"
            )
        print(
            f"  {'all tables':<28}{'':>12}{total_disk * per_million / MB:>12.1f}"
            f"{total_raw * per_million / MB:>17.1f}{total_disk / total_raw:>8.2f}"
        )
        print(
            f"on disk per million events: {total_disk * per_million / MB:.0f} MB "
            f"({total_disk / total_raw:.2f} of the uncompressed {total_raw * per_million / MB:.0f} MB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
