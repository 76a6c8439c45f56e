"""Point lookups by id with ClickHouse's default compressed blocks against the 4-8 KB blocks of
migration 0016, measured in the same run on the same rows.

    make bench     (or: .venv/bin/python bench/lookup_bench.py --rows 1000000)

A fresh embedded ClickHouse with two copies of each lookup table, built from the migrations'
own definitions (`persons`, `person_distinct_ids`): one with the compressed block sizes before
0016 (ClickHouse's defaults), one with 0016's. Each copy gets the same generated rows for one
project, in two parts (a large one and a tenth more, unmerged: what a live table looks like
between merges). Then, alternating between the copies, --runs times each (median):

- the users page's check of its candidates: FINAL over 67 persons by person_id (PREWHERE);
- the live list's and the aggregator's id resolution: 100 distinct ids, argMax per id.

Ratio = 0016 / default; below 1 is faster.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickhouse_connect.driver.client import Client  # noqa: E402

from werkstroom.clickhouse import connect  # noqa: E402
from werkstroom.clickhouse.migrate import migrate  # noqa: E402
from werkstroom.logging import configure_logging  # noqa: E402

PROJECT = "p_b817792d00a9124e"
DEFAULT_BLOCKS = "min_compress_block_size = 65536, max_compress_block_size = 1048576"
PERSONS = (
    "SELECT {p:String}, concat('user-', hex(cityHash64(number))), now64(3) - number, now64(3), "
    "1 + number % 7, 1 + number % 20, [], '{{}}', if(number % 10 = 0, 'premium', ''), 0, 1 "
    "FROM numbers({lo:UInt64}, {n:UInt64})"
)
PERSON_COLUMNS = (
    "project_id, person_id, first_seen, last_seen, sessions, page_views, anonymous_ids, traits, "
    "plan, is_deleted, version"
)
IDS = (
    "SELECT {p:String}, concat('anon-', hex(cityHash64(number))), "
    "concat('user-', hex(cityHash64(number % ({n:UInt64} DIV 3)))), 1 FROM numbers({lo:UInt64}, {n:UInt64})"
)


def timed(client: Client, sql: str, parameters: dict[str, object], runs: int) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        client.query(sql, parameters=parameters)
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def main(rows: int, runs: int) -> None:
    configure_logging("WARNING")
    work = tempfile.mkdtemp(prefix="werkstroom-lookupbench-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    client = connect(f"chdb://{work}/clickhouse", "bench", create_database=True)  # its lock beside it
    migrate(client)
    for table, fill, columns in (
        ("persons", PERSONS, PERSON_COLUMNS),
        ("person_distinct_ids", IDS, "project_id, distinct_id, person_id, version"),
    ):
        client.command(f"CREATE TABLE {table}_default AS {table}")
        client.command(f"ALTER TABLE {table}_default MODIFY SETTING {DEFAULT_BLOCKS}")
        for copy in (table, f"{table}_default"):
            client.command(f"SYSTEM STOP MERGES {copy}")
            big, small = rows * 9 // 10, rows - rows * 9 // 10
            for lo, n in ((0, big), (big, small)):
                client.command(
                    f"INSERT INTO {copy} ({columns}) {fill}", parameters={"p": PROJECT, "lo": lo, "n": n}
                )
    candidates = [
        r[0]
        for r in client.query(
            "SELECT person_id FROM persons ORDER BY cityHash64(person_id, 'candidates') LIMIT 67"
        ).result_rows
    ]
    ids = [
        r[0]
        for r in client.query(
            "SELECT distinct_id FROM person_distinct_ids ORDER BY cityHash64(distinct_id, 'live') LIMIT 100"
        ).result_rows
    ]
    checks = (
        (
            "users page: FINAL over 67 candidates",
            "SELECT person_id, version, last_seen FROM {t} FINAL PREWHERE person_id IN {{ids:Array(String)}} "
            "WHERE project_id = {{p:String}} AND is_deleted = 0",
            "persons",
            candidates,
        ),
        (
            "live list: 100 distinct ids resolved",
            "SELECT distinct_id, argMax(person_id, version) FROM {t} WHERE project_id = {{p:String}} "
            "AND distinct_id IN {{ids:Array(String)}} GROUP BY distinct_id",
            "person_distinct_ids",
            ids,
        ),
    )
    print(f"point lookups, {rows:,} rows per table in 2 parts, median of {runs} alternating runs")
    for name, sql, table, wanted in checks:
        parameters = {"p": PROJECT, "ids": sorted(wanted)}
        before, after = [], []
        for _ in range(3):  # alternating: this host's speed changes from one minute to the next
            before.append(timed(client, sql.format(t=f"{table}_default"), parameters, runs))
            after.append(timed(client, sql.format(t=table), parameters, runs))
        b, a = statistics.median(before), statistics.median(after)
        print(f"  {name:40s} default blocks {b:6.1f} ms, 0016 {a:6.1f} ms -> ratio {a / b:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15, help="timed queries per copy and round")
    args = parser.parse_args()
    main(args.rows, args.runs)
