"""werkstroom.geo against the database `make` installs: addresses the database places in a
country resolve to it, addresses that are not public and anything that is not an address
resolve to "", and a missing or broken database costs one warning and nothing else."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from werkstroom.contract import FIELDS, decode_event, encode_event, json_schema
from werkstroom.geo import NOWHERE, Location, Locator, location_of
from werkstroom.settings import DEFAULT_GEO_DATABASE, Settings

#: The networks the tests take addresses from, found in the database itself (`networks`), so that
#: an update of the database moves them with it: (country, IP version).
WANTED = [("NL", 4), ("JP", 4), ("BR", 4), ("DE", 6), ("JP", 6)]
#: Addresses that are not on the Internet. The database itself places 192.168.1.1 and
#: 203.0.113.9 in AU and 2001:db8::1 in JP: Locator must not ask it.
NOT_PUBLIC = [
    "10.1.2.3",
    "127.0.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "169.254.1.1",
    "203.0.113.9",  # documentation
    "198.51.100.1",  # documentation
    "224.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "2001:db8::1",  # documentation
    "::ffff:192.168.1.1",
]
NOT_ADDRESSES = ["", "garbage", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4:80", "[::1]", "::g", "x" * 10_000]


@pytest.fixture(scope="module")
def locator() -> Iterator[Locator]:
    if not DEFAULT_GEO_DATABASE.is_file():
        pytest.skip(f"the country database is not installed ({DEFAULT_GEO_DATABASE}): run `make geo`")
    opened = Locator.open(DEFAULT_GEO_DATABASE)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def networks(locator: Locator) -> dict[tuple[str, int], ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The first network of each WANTED country, read from the database (in address order)."""
    assert locator.reader is not None
    found: dict[tuple[str, int], ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    for network, record in locator.reader:
        wanted = (record.get("country_code"), network.version) if isinstance(record, dict) else None
        if wanted in WANTED and wanted not in found and network.is_global:
            found[wanted] = network
            if len(found) == len(WANTED):
                break
    assert sorted(found) == sorted(WANTED)
    return found


def inside(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """An address in the middle of `network`, not its first one."""
    return str(network.network_address + network.num_addresses // 2)


@pytest.mark.parametrize("wanted", WANTED, ids=[f"{c}-ipv{v}" for c, v in WANTED])
def test_an_address_of_the_database_resolves_to_its_country(
    locator: Locator,
    networks: dict[tuple[str, int], ipaddress.IPv4Network | ipaddress.IPv6Network],
    wanted: tuple[str, int],
) -> None:
    country, _version = wanted
    network = networks[wanted]
    assert locator.locate(inside(network)) == Location(country, "")
    assert locator.locate(str(network.network_address)) == Location(country, "")


def test_an_ipv4_client_on_a_dual_stack_socket_is_its_ipv4_address(
    locator: Locator, networks: dict[tuple[str, int], ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> None:
    address = inside(networks[("NL", 4)])
    assert locator.locate(f"::ffff:{address}") == Location("NL", "")


def test_well_known_public_resolvers_are_where_they_are_registered(locator: Locator) -> None:
    assert locator.locate("8.8.8.8").country == "US"
    assert locator.locate("2001:4860:4860::8888").country == "US"


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_an_address_that_is_not_public_has_no_country(locator: Locator, address: str) -> None:
    assert locator.locate(address) == NOWHERE


@pytest.mark.parametrize("address", [*NOT_ADDRESSES, None], ids=lambda a: repr(a)[:20])
def test_anything_that_is_not_an_address_has_no_country_and_never_raises(
    locator: Locator, address: str | None
) -> None:
    assert locator.locate(address) == NOWHERE


def test_the_default_database_is_the_installed_packages_with_its_licence(locator: Locator) -> None:
    assert Settings().geo_database == DEFAULT_GEO_DATABASE
    about = locator.describe()
    assert about["loaded"] and about["package"] == "@ip-location-db/geo-whois-asn-country-mmdb"
    assert about["license"] == "CC0-1.0"
    assert about["version"] and about["built"] >= "2026"


def test_records_of_either_format_give_country_and_region() -> None:
    assert location_of({"country_code": "NL"}) == Location("NL", "")
    assert location_of({"country_code": "jp", "state1": "Tokyo"}) == Location(
        "JP", "Tokyo"
    )  # ip-location-db city
    maxmind = {"country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "BE"}, {"iso_code": "X"}]}
    assert location_of(maxmind) == Location("DE", "BE")
    assert location_of({"country": {"iso_code": "FR"}}) == Location("FR", "")
    for junk in (
        None,
        [],
        "NL",
        {},
        {"country_code": ""},
        {"country_code": "NLD"},
        {"country_code": "1A"},
        {"country_code": 12},
        {"country": "NL"},
        {"country": {"iso_code": None}},
        {"country_code": "ÄÖ"},
    ):
        assert location_of(junk) == NOWHERE, junk
    assert location_of({"country_code": "NL", "state1": 5}) == Location("NL", "")
    assert location_of({"country_code": "NL", "state1": "r" * 500}).region == "r" * 100


@pytest.mark.parametrize("content", [None, b"", b"not a database at all" * 100])
def test_a_missing_or_broken_database_warns_once_and_knows_no_address(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "countries.mmdb"
    if content is not None:
        path.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        opened = Locator.open(path)
        answers = {opened.locate(a) for a in ("8.8.8.8", "2001:4860:4860::8888", "garbage")}
    assert answers == {NOWHERE}
    assert [(e["event"], e["log_level"]) for e in logs] == [("geo_database_unavailable", "warning")]
    assert logs[0]["path"] == str(path)
    assert opened.describe()["loaded"] is False


def test_an_empty_locator_knows_no_address() -> None:
    assert Locator().locate("8.8.8.8") == NOWHERE


def test_country_and_region_are_contract_fields_an_older_message_decodes_without() -> None:
    assert FIELDS[FIELDS.index("library") + 1 : FIELDS.index("library") + 3] == ("country", "region")
    assert {"country", "region"} <= set(json_schema()["properties"])
    assert not {"country", "region"} & set(json_schema()["required"])
    older = {
        "schema_version": 1,
        "event_id": "e-1",
        "project_id": "p_1",
        "type": "page",
        "event": "$page",
        "timestamp": "2026-11-25T10:00:00Z",
        "received_at": "2026-11-25T10:00:00Z",
    }
    event = decode_event(encode_event(older))
    assert (event.country, event.region) == ("", "")
    newer = decode_event(encode_event({**older, "country": "NL", "region": "NH"}))
    assert (newer.country, newer.region) == ("NL", "NH")


def test_the_database_is_read_in_c(locator: Locator) -> None:
    """MODE_AUTO takes maxminddb's C extension when it is installed (its wheels have it): the
    pure-Python reader costs several times more per request."""
    assert type(locator.reader).__module__ == "maxminddb.extension"
