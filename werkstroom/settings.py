"""Settings, one class per concern, all read from `WERKSTROOM_*` environment variables.

Precedence: explicit argument > environment variable > secret file > default. Settings are
built by `get_settings()` when a command starts, never at import time, and logged (secrets
masked) at start-up. Every field's description names its environment variable.

Secret files: `get_settings()` also reads a directory of files named like the variables in
lower case, one value each (`werkstroom_admin_token`, `werkstroom_clickhouse_password`), as
Docker and Compose mount secrets under /run/secrets. An environment variable of the same name
wins over its file (pydantic-settings reads the environment before the secrets directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Target = Literal["all", "ingest", "aggregator", "api"]

#: Where Docker and Compose mount secrets; read when WERKSTROOM_SECRETS_DIR is unset and it exists.
DEFAULT_SECRETS_DIR = Path("/run/secrets")
#: The country database as `make` installs it in this checkout (geo/package.json): `make run` and
#: the tests read it from here; the image sets WERKSTROOM_GEO_DATABASE to its own copy.
GEO_PACKAGE = "@ip-location-db/geo-whois-asn-country-mmdb"
DEFAULT_GEO_DATABASE = (
    Path(__file__).resolve().parents[1] / "geo" / "node_modules" / GEO_PACKAGE / "geo-whois-asn-country.mmdb"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WERKSTROOM_", extra="ignore", frozen=True)

    # -- where things live -------------------------------------------------------------
    data_dir: Path = Field(
        Path(".werkstroom"),
        description="WERKSTROOM_DATA_DIR: local state (embedded ClickHouse, admin token, logs).",
    )
    secrets_dir: Path | None = Field(
        None,
        description="WERKSTROOM_SECRETS_DIR: a directory of secret files, each named like a variable in "
        "lower case (werkstroom_admin_token, werkstroom_clickhouse_password) and holding its value; the "
        "variable itself wins over the file. Unset: /run/secrets when it exists; empty: none. Read by "
        "get_settings().",
    )

    # -- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None,
        description="WERKSTROOM_KAFKA_BOOTSTRAP: host:port[,host:port]. Unset: start the embedded "
        "tansu broker on a free loopback port.",
    )
    topic_events: str = Field("werkstroom.events.v1", description="WERKSTROOM_TOPIC_EVENTS")
    topic_dlq: str = Field("werkstroom.events.dlq.v1", description="WERKSTROOM_TOPIC_DLQ")
    topic_bots: str = Field(
        "werkstroom.bots.v1",
        description="WERKSTROOM_TOPIC_BOTS: events ingest filtered as bots (same schema as the events "
        "topic), counted per day by the aggregator's bots consumer.",
    )
    topic_partitions: int = Field(
        4, ge=1, description="WERKSTROOM_TOPIC_PARTITIONS: partitions when Werkstroom creates topics."
    )
    topic_replication: int = Field(1, ge=1, description="WERKSTROOM_TOPIC_REPLICATION")
    kafka_session_timeout_ms: int = Field(
        10_000,
        ge=1000,
        description="WERKSTROOM_KAFKA_SESSION_TIMEOUT_MS: a consumer silent this long leaves its group. "
        "The embedded broker holds a group join for about half of it, so it also sets start-up delay.",
    )
    sink_group: str = Field(
        "werkstroom-events-sink", description="WERKSTROOM_SINK_GROUP: consumer group of the events sink."
    )
    bots_group: str = Field(
        "werkstroom-bots-sink",
        description="WERKSTROOM_BOTS_GROUP: consumer group of the aggregator's bots consumer.",
    )

    # -- ClickHouse --------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        None,
        description="WERKSTROOM_CLICKHOUSE_URL: chdb:///path (embedded engine, one process only) or "
        "http(s)://user[:password]@host:8123. Unset: chdb://<data_dir>/clickhouse.",
    )
    clickhouse_password: SecretStr | None = Field(
        None,
        description="WERKSTROOM_CLICKHOUSE_PASSWORD (or the secret file werkstroom_clickhouse_password): "
        "the password for an http(s) WERKSTROOM_CLICKHOUSE_URL that has none (its user, or `default`); "
        "a password in the URL wins. Any characters: it is URL-encoded into the URL.",
    )
    clickhouse_database: str = Field("werkstroom", description="WERKSTROOM_CLICKHOUSE_DATABASE")
    clickhouse_uncompressed_cache_mb: int = Field(
        512,
        ge=0,
        description="WERKSTROOM_CLICKHOUSE_UNCOMPRESSED_CACHE_MB: the embedded engine's cache of "
        "decompressed blocks (ClickHouse's uncompressed_cache_size), which the API's reads use: a "
        "dashboard reads the same rows (today's, the roll-ups', one value's persons) again and again, "
        "and decompressing them was a third of their CPU. At most this much memory; 0 turns it off. "
        "A ClickHouse server has its own (deploy/clickhouse/config.d/werkstroom.xml).",
    )

    # -- HTTP --------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="WERKSTROOM_HOST: interface the HTTP services bind.")
    ingest_port: int = Field(8000, description="WERKSTROOM_INGEST_PORT")
    api_port: int = Field(8001, description="WERKSTROOM_API_PORT")
    aggregator_port: int = Field(
        8002,
        description="WERKSTROOM_AGGREGATOR_PORT: /health, /ready and /metrics of `--target aggregator` "
        "(`--target all` opens no such port: its ingest and API ports serve them).",
    )
    workers: int = Field(
        1,
        ge=1,
        description="WERKSTROOM_WORKERS: processes `serve --target ingest` or `--target api` runs on its "
        "port (each binds it with SO_REUSEPORT; the kernel spreads connections over them). `all` and "
        "`aggregator` run one: the embedded ClickHouse opens in one process, and aggregators scale as "
        "separate processes in the consumer group. More than 1 needs a ClickHouse server "
        "(WERKSTROOM_CLICKHOUSE_URL). The `--workers` flag wins over it.",
    )
    public_ingest_url: str | None = Field(
        None, description="WERKSTROOM_PUBLIC_INGEST_URL: the ingest URL browsers reach (for snippets)."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="WERKSTROOM_ADMIN_TOKEN: creates projects over HTTP. Unset: generated into "
        "<data_dir>/admin_token at first start.",
    )

    # -- API: failed authentication ---------------------------------------------------------
    api_auth_failures_per_minute: int = Field(
        30,
        ge=0,
        description="WERKSTROOM_API_AUTH_FAILURES_PER_MINUTE: failed read-key checks a client address "
        "may make per minute (as many at once), each costing ClickHouse lookups; past it the API "
        "answers 429 with Retry-After without looking the key up. 0 = unlimited. The address is the "
        "connection's, or the right-most X-Forwarded-For entry with WERKSTROOM_TRUST_FORWARDED_FOR; "
        "IPv6 addresses count per /64.",
    )

    # -- ingest ------------------------------------------------------------------------
    max_event_bytes: int = Field(32 * 1024, description="WERKSTROOM_MAX_EVENT_BYTES")
    max_batch_bytes: int = Field(500 * 1024, description="WERKSTROOM_MAX_BATCH_BYTES")
    max_batch_events: int = Field(2500, description="WERKSTROOM_MAX_BATCH_EVENTS")
    rate_limit_eps: float = Field(
        5000.0,
        ge=0,
        description="WERKSTROOM_RATE_LIMIT_EPS: sustained events/s per project (0 = unlimited).",
    )
    rate_limit_burst: float = Field(
        20000.0, ge=0, description="WERKSTROOM_RATE_LIMIT_BURST: events a project may send at once."
    )
    rate_limit_client_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="WERKSTROOM_RATE_LIMIT_CLIENT_SHARE: the most of a project's rate and burst that one "
        "client address (an IPv6 /64) may use, so that one holder of the public write key cannot spend "
        "a site's whole budget (1 = off; off too when WERKSTROOM_RATE_LIMIT_EPS is 0). Raise it when "
        "one host sends most events (a server-side SDK, or a proxy without TRUST_FORWARDED_FOR).",
    )
    produce_timeout_ms: int = Field(
        800,
        ge=50,
        description="WERKSTROOM_PRODUCE_TIMEOUT_MS: longest wait for Kafka's ack before answering 503.",
    )
    producer_linger_ms: int = Field(2, ge=0, description="WERKSTROOM_PRODUCER_LINGER_MS")
    key_refresh_seconds: float = Field(
        2.0, gt=0, description="WERKSTROOM_KEY_REFRESH_SECONDS: how often write keys are reloaded."
    )
    trust_forwarded_for: bool = Field(
        False,
        description="WERKSTROOM_TRUST_FORWARDED_FOR: behind a reverse proxy, take the client address "
        "(for the per-client rate limit and its country) from the right-most X-Forwarded-For entry, the one "
        "the proxy appended; otherwise the connection's address. Only true behind a proxy that appends it.",
    )
    geo_database: Path = Field(
        DEFAULT_GEO_DATABASE,
        description="WERKSTROOM_GEO_DATABASE: the IP-to-location database (MaxMind DB format) ingest "
        "reads each request's country (and region, where it has them) from, before it forgets the "
        "address. Default: the one `make` installs into geo/node_modules. Missing: country is empty "
        "(one warning at start).",
    )

    # -- events sink -------------------------------------------------------------------
    sink_batch_rows: int = Field(50000, ge=1, description="WERKSTROOM_SINK_BATCH_ROWS")
    sink_flush_ms: int = Field(250, ge=10, description="WERKSTROOM_SINK_FLUSH_MS")
    online_history_seconds: float = Field(
        60.0,
        gt=0,
        description="WERKSTROOM_ONLINE_HISTORY_SECONDS: how often the aggregator records each "
        "project's online count (online_history, read for 'online a week ago').",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="WERKSTROOM_GC_YOUNG_THRESHOLD: allocations between two collections of Python's "
        "youngest generation (Python's default is 700; 0 keeps Python's thresholds). With the default, "
        "a collection every few hundred objects, and a full one over every visitor in memory, "
        "paused the aggregator for up to 200 ms.",
    )
    derived_refresh_ms: int = Field(
        1000,
        ge=0,
        description="WERKSTROOM_DERIVED_REFRESH_MS: how often persons and daily stats are recomputed for "
        "the keys new events touched (offsets are committed after it).",
    )
    breakdown_rollup_seconds: float = Field(
        60.0,
        ge=0,
        description="WERKSTROOM_BREAKDOWN_ROLLUP_SECONDS: the least time between two roll-ups of one "
        "settled day's breakdowns (breakdown_daily) by a worker. A day changed again sooner is read "
        "from the breakdown tables until its next roll-up, so a back-fill of history does not roll "
        "up its days at every refresh.",
    )
    sink_max_consecutive_bad: int = Field(
        1000,
        ge=1,
        description="WERKSTROOM_SINK_MAX_CONSECUTIVE_BAD: stop the sink after this many bad messages "
        "in a row (a broken producer must not be silently dead-lettered).",
    )

    # -- operations --------------------------------------------------------------------
    drain_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description="WERKSTROOM_DRAIN_TIMEOUT_SECONDS: at SIGTERM/Ctrl-C, longest wait after ingest "
        "stops accepting (503 shutting_down) for every acknowledged event to be written and committed "
        "(`--target all`) or for the producer to flush (`--target ingest`) before the process stops; "
        "0 stops at once. A second signal also stops at once.",
    )
    embedded_broker_max_events: int = Field(
        200_000,
        ge=0,
        description="WERKSTROOM_EMBEDDED_BROKER_MAX_EVENTS: the embedded broker keeps its topics in "
        "memory (what an event takes there: bench/README.md); once the events topic holds this many, "
        "`--target all` swaps it for an empty one after the aggregator wrote and committed all of it "
        "(werkstroom.rotation). "
        "0: never (memory grows without bound). Not used with WERKSTROOM_KAFKA_BOOTSTRAP.",
    )
    embedded_broker_max_age_seconds: float = Field(
        3600.0,
        ge=0,
        description="WERKSTROOM_EMBEDDED_BROKER_MAX_AGE_SECONDS: ... or once its first event is this "
        "old. 0: no age limit.",
    )
    log_level: str = Field("INFO", description="WERKSTROOM_LOG_LEVEL")
    log_format: Literal["json", "console"] = Field("json", description="WERKSTROOM_LOG_FORMAT")
    migrate_on_start: bool = Field(
        True,
        description="WERKSTROOM_MIGRATE_ON_START: a role applies pending ClickHouse migrations itself "
        "when it starts (under the migration lock on a server). false: it waits for a `werkstroom "
        "migrate` job instead, as the scaled deployment's roles do (docker-compose.yml).",
    )
    migrations_wait_seconds: float = Field(
        600.0,
        gt=0,
        description="WERKSTROOM_MIGRATIONS_WAIT_SECONDS: how long a role started with "
        "MIGRATE_ON_START=false, or a second migrator, waits for the migrations (or their lock) "
        "before it stops with an error.",
    )
    demo: bool = Field(
        True, description="WERKSTROOM_DEMO: create a demo project at first start when none exists."
    )

    @field_validator("admin_token", "clickhouse_password")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty (an empty secret file?): give a value or leave it unset")
        return value

    @field_validator("clickhouse_database")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or value[0].isdigit():
            raise ValueError("must be letters, digits and underscores, not starting with a digit")
        return value

    @property
    def effective_clickhouse_url(self) -> str:
        if self.clickhouse_url:
            return with_password(self.clickhouse_url, self.clickhouse_password)
        url = f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
        cache = self.clickhouse_uncompressed_cache_mb * 1024 * 1024
        # the engine's options, as connect() passes them to it (werkstroom.clickhouse)
        return f"{url}?uncompressed_cache_size={cache}" if cache else url

    @property
    def ingest_url(self) -> str:
        return self.public_ingest_url or f"http://{_client_host(self.host)}:{self.ingest_port}"

    @property
    def api_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.api_port}"

    @property
    def aggregator_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.aggregator_port}"

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets (passwords, tokens) masked, for the start-up log."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***" if value.get_secret_value() else None
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["clickhouse_url"] = mask_url(self.effective_clickhouse_url)
        return out


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def mask_url(url: str) -> str:
    """Hide the password in scheme://user:password@host URLs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, hostpart = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def with_password(url: str, password: SecretStr | None) -> str:
    """`url` with `password` put in, when it is an http(s) URL without one (the user, if none, is
    ClickHouse's `default`, as clickhouse-connect assumes)."""
    scheme, sep, rest = url.partition("://")
    if password is None or not sep or scheme.lower() not in ("http", "https"):
        return url
    netloc, slash, path = rest.partition("/")
    creds, at, hostpart = netloc.rpartition("@")
    if at and ":" in creds:
        return url  # the URL's own password wins
    user = creds if at else "default"
    secret = quote(password.get_secret_value(), safe="")
    return f"{scheme}://{user}:{secret}@{hostpart}{slash}{path}"


def resolve_secrets_dir(explicit: str | Path | None = None) -> Path | None:
    """The secrets directory: `explicit` > WERKSTROOM_SECRETS_DIR > /run/secrets if it exists.
    An empty value means none; a named directory that does not exist is an error (pydantic-settings
    would only warn, and then start without the secrets)."""
    chosen = explicit if explicit is not None else os.environ.get("WERKSTROOM_SECRETS_DIR")
    if chosen is None:
        return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None
    if str(chosen) == "":
        return None
    path = Path(chosen)
    if not path.is_dir():
        raise ValueError(f"secrets directory {path} (WERKSTROOM_SECRETS_DIR) is not a directory")
    return path


def get_settings(**overrides: Any) -> Settings:
    """Build the settings: explicit overrides win over the environment, which wins over the secret
    files (see `resolve_secrets_dir`), which win over defaults."""
    secrets_dir = resolve_secrets_dir(overrides.pop("secrets_dir", None))
    return Settings(_secrets_dir=secrets_dir, secrets_dir=secrets_dir, **overrides)
