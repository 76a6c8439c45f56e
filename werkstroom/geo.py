"""Where a client address is: its country (and region, where the database has one), read from
an IP-to-location database in MaxMind's format (`maxminddb`), opened once per process.

An address is looked up and forgotten: nothing here keeps, logs or returns it, and there is no
cache of addresses (a lookup costs a few microseconds, once per request: bench figures in the
commit that added this). The default database is ip-location-db's geo-whois-asn-country
(geo/package.json, installed by `make`); any database with ip-location-db's fields
(`country_code`, `state1`) or MaxMind's (`country.iso_code`, `subdivisions[0].iso_code`) works.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import maxminddb

from werkstroom.logging import get_logger

log = get_logger("werkstroom.geo")  # by name: `python -m werkstroom.geo` runs it as __main__

#: The longest region code kept (ISO 3166-2 subdivision codes are at most three characters;
#: some databases give names instead, which are kept, cut here).
MAX_REGION = 100


class Location(NamedTuple):
    #: ISO 3166-1 alpha-2, upper case, or "" when unknown.
    country: str
    #: The database's region (an ISO 3166-2 subdivision code or name), or "" when unknown.
    region: str


NOWHERE = Location("", "")


class Locator:
    """Looks addresses up in one opened database; without one, every address is NOWHERE."""

    def __init__(self, reader: maxminddb.Reader | None = None, path: Path | None = None) -> None:
        self.reader = reader
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Locator:
        """Open the database at `path` (memory-mapped, in C when the extension is there). A missing
        or unreadable file is logged once, here, and gives a Locator that knows no address."""
        try:
            reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            log.warning(
                "geo_database_unavailable",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}",
                effect="every event's country is empty: install it with `make`, or set "
                "WERKSTROOM_GEO_DATABASE",
            )
            return cls(None, path)
        return cls(reader, path)

    def locate(self, address: str | None) -> Location:
        """The country and region of `address` (an IPv4 or IPv6 address as text); NOWHERE for an
        address that is not public (private, loopback, link-local, reserved, documentation,
        shared, multicast), for anything that is not an address, and when the database has
        none. Never raises."""
        if self.reader is None or not address:
            return NOWHERE
        try:
            ip = ipaddress.ip_address(address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # ::ffff:a.b.c.d, an IPv4 client on a dual-stack socket
            # The database covers some ranges that are not on the Internet (192.168/16,
            # 2001:db8::/32, ...): an address there says nothing about where its sender is.
            if not ip.is_global:
                return NOWHERE
            record = self.reader.get(ip)
        except (ValueError, TypeError):
            return NOWHERE
        return location_of(record)

    def describe(self) -> dict[str, Any]:
        """What the database is: its path, package version and licence (from the npm package's
        package.json beside it, when there is one) and the date it was built."""
        info: dict[str, Any] = {
            "path": str(self.path) if self.path else None,
            "loaded": self.reader is not None,
        }
        if self.reader is not None:
            meta = self.reader.metadata()
            info["database_type"] = meta.database_type
            info["built"] = datetime.fromtimestamp(meta.build_epoch, UTC).isoformat()
        package = self.path.parent / "package.json" if self.path else None
        if package is not None and package.is_file():
            found = json.loads(package.read_text())
            info.update(package=found.get("name"), version=found.get("version"), license=found.get("license"))
        return info

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def location_of(record: object) -> Location:
    """The Location in one database record, read from ip-location-db's fields or MaxMind's;
    NOWHERE when it has no valid country code."""
    if not isinstance(record, dict):
        return NOWHERE
    country = record.get("country_code")
    region = record.get("state1", "")
    if country is None:
        inner = record.get("country")
        country = inner.get("iso_code") if isinstance(inner, dict) else None
        subdivisions = record.get("subdivisions")
        if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
            region = subdivisions[0].get("iso_code", "")
    if not (isinstance(country, str) and len(country) == 2 and country.isascii() and country.isalpha()):
        return NOWHERE
    return Location(country.upper(), region[:MAX_REGION] if isinstance(region, str) else "")


def main() -> int:
    """`python -m werkstroom.geo` (`make geo-update` runs it): the configured database, as JSON."""
    from werkstroom.logging import configure_logging
    from werkstroom.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # on stderr: stdout is the answer
    locator = Locator.open(settings.geo_database)
    sys.stdout.write(json.dumps(locator.describe(), indent=2) + "\n")
    return 0 if locator.reader is not None else 1


if __name__ == "__main__":
    sys.exit(main())
