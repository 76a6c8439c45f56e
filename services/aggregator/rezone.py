"""A project's time zone changed: its day-keyed rows recomputed in the new zone.

Every day-keyed table holds the project's local days (docs/timezones.md). When the project's
zone (projects.timezone) differs from the zone its rows were computed in (project_zones, 0025;
none: UTC), the worker recomputes them, then records the zone:

- `events_daily`, per partition it holds (each partition's rows are its holder's): counted
  again from `events` under the new local days, a zero row for each old day no event falls on
  any more, all at the partition's newest version for the project (the position of the last
  event it counted: a replay at or below it is still skipped, an event past it still counts);
- the derived tables, by the worker holding partition 0 (as the funnel back-fills): every
  visitor's person, sessions_daily, the breakdowns, each person's days per filter value
  (person_activity_by) and the funnels recomputed over every day the project has (its
  sessions' UTC days and one more on each side: all the local days of both zones), in chunks
  of visitors; then daily_stats, churn_daily and the roll-ups of those days.

The sink runs it between two batches, with everything applied written and committed first
(EventsSink.flush), so `events` holds every event counted. A recomputation gives the same rows
whatever came before: a crash before the record recomputes again at the next start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta

from clickhouse_connect.driver.client import Client

from services.aggregator import breakdowns, derived
from services.aggregator.funnels import recompute as recompute_funnels
from werkstroom import churn, projects, timezones
from werkstroom.clickhouse.params import insert_rows
from werkstroom.clickhouse.tables import EVENTS_DAILY_COLUMNS, PROJECT_ZONES_COLUMNS
from werkstroom.clickhouse.versions import next_version
from werkstroom.contract import HEARTBEAT
from werkstroom.funnels import list_funnels
from werkstroom.logging import get_logger

log = get_logger(__name__)

#: project_zones' partition for the derived tables.
DERIVED = -1
#: Visitors recomputed together (one staging of their persons and sessions).
CHUNK = 2000

Due = dict[tuple[str, int], str]  # (project, partition or DERIVED) -> the zone to recompute in

# events_daily of one project and partition in the zone {tz}: the events' counts under their new
# local days, and a zero row for every day the partition had a row on and no event falls on now.
EVENTS_DAILY = f"""
INSERT INTO events_daily ({", ".join(EVENTS_DAILY_COLUMNS)})
SELECT {{p:String}}, day, {{k:UInt32}}, sum(views), sum(n), {{v:UInt64}}
FROM (
    SELECT toDate(timestamp, {{tz:String}}) AS day, countIf(type = 'page') AS views,
           countIf(event != {{heartbeat:String}}) AS n
    FROM events FINAL WHERE project_id = {{p:String}} AND kafka_partition = {{k:UInt32}}
    GROUP BY day
    UNION ALL
    SELECT day, 0, 0 FROM events_daily FINAL
    WHERE project_id = {{p:String}} AND kafka_partition = {{k:UInt32}}
)
GROUP BY day
"""


def pending(client: Client, partitions: Iterable[int], derived_too: bool) -> Due:
    """What this worker must recompute: for the partitions it holds (and the derived tables when
    it holds partition 0), each project whose zone is not the one recorded (none: UTC)."""
    current = projects.time_zones(client)
    recorded = {
        (p, int(k)): z
        for p, k, z in client.query(
            "SELECT project_id, kafka_partition, timezone FROM project_zones FINAL"
        ).result_rows
    }
    scopes = [*sorted(partitions), *([DERIVED] if derived_too else [])]
    return {
        (p, k): zone
        for p, zone in current.items()
        for k in scopes
        if projects.recomputing(zone, recorded.get((p, k))) is not None
    }


def run(client: Client, due: Due, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Recompute what `due` names, then record each zone (partitions first, derived last). A
    derived recomputation stops between two chunks once `should_stop()`, recording nothing."""
    for (project_id, k), zone in sorted(due.items(), key=lambda item: (item[0][0], item[0][1] == DERIVED)):
        started = datetime.now(UTC)
        if k == DERIVED:
            today = timezones.today(datetime.now(UTC), zone)
            if not rezone_derived(client, project_id, zone, today, should_stop):
                log.info("project_rezone_interrupted", project_id=project_id, timezone=zone)
                return
        else:
            rezone_events_daily(client, project_id, k, zone)
        insert_rows(client, "project_zones", [[project_id, k, zone, next_version()]], PROJECT_ZONES_COLUMNS)
        log.info(
            "project_rezoned",
            project_id=project_id,
            partition=k if k != DERIVED else "derived",
            timezone=zone,
            seconds=round((datetime.now(UTC) - started).total_seconds(), 3),
        )


def rezone_events_daily(client: Client, project_id: str, partition: int, zone: str) -> None:
    """The project's events_daily rows of this partition in `zone`, at the partition's newest
    version for the project (module doc)."""
    bound = {"p": project_id, "k": partition}
    version = client.query(
        "SELECT max(version) FROM events_daily FINAL WHERE project_id = {p:String} "
        "AND kafka_partition = {k:UInt32}",
        parameters=bound,
    ).first_row[0]
    bound.update(v=int(version or 0), tz=zone, heartbeat=HEARTBEAT)
    client.command(EVENTS_DAILY, parameters=bound)


def rezone_derived(
    client: Client, project_id: str, zone: str, today: date, should_stop: Callable[[], bool] = lambda: False
) -> bool:
    """Every derived row of the project in `zone` (module doc); `today`: the project's. False:
    stopped between two chunks (`should_stop`), not done."""
    days = project_days(client, project_id)
    if not days:
        return True
    funnels = list_funnels(client, project_id)
    visitors = [
        v
        for (v,) in client.query(
            "SELECT DISTINCT anonymous_id FROM sessions WHERE project_id = {p:String}",
            parameters={"p": project_id},
        ).result_rows
    ]
    for chunk in _chunks(visitors, CHUNK):
        if should_stop():
            return False
        version = next_version()  # per chunk, before its reads: newer data recomputed since wins
        changed = derived.refresh_persons(client, project_id, set(chunk), version, days, zone, rezone=True)
        derived.refresh_session_days(client, project_id, days, zone)
        breakdowns.recompute(client, project_id, days, derived.MEMBER_IDS, derived.SESSIONS, zone)
        derived.refresh_activity_by(client, project_id, days, changed.gone, version, zone)
        if funnels:
            members = derived.funnel_members(client, changed.members)
            recompute_funnels(client, project_id, members, changed.gone, version, funnels, zone)
            derived.refresh_levels_by(client, project_id, funnels, changed.gone, version)
        derived.close_refresh(client, project_id, version)
    version = next_version()
    derived.refresh_daily(client, project_id, days, version)
    settled = {d for d in days if d <= today}
    derived.refresh_churn(client, project_id, churn.days_affected(settled, today), version)
    breakdowns.roll_up(client, project_id, days, version, today, zone)
    return True


def project_days(client: Client, project_id: str) -> set[date]:
    """Every local day, in any zone, the project's sessions touch: their UTC days and one more
    on each side (no zone is more than 14 hours from UTC)."""
    first, last = client.query(
        "SELECT min(start_at), max(last_event_at) FROM sessions WHERE project_id = {p:String}",
        parameters={"p": project_id},
    ).first_row
    if first is None or last is None or first.year <= 1970:
        return set()
    lo, hi = first.date() - timedelta(days=1), last.date() + timedelta(days=1)
    return {lo + timedelta(days=i) for i in range((hi - lo).days + 1)}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def zones_of(due: Due) -> Mapping[str, str]:
    """project -> its new zone, of what is due."""
    return {p: zone for (p, _k), zone in due.items()}
