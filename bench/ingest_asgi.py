"""The ingest app as an ASGI factory, for hosting it under an HTTP server's own command line
(`uvicorn --factory` or `granian --factory`) in bench/ingest_bench.py --servers: the same app
`werkstroom serve --target ingest` runs, with the settings from the environment. It does not
create topics or apply migrations: the bench has done both."""

from __future__ import annotations

from services.ingest.app import BeaconFastPath, create_app
from werkstroom.logging import configure_logging
from werkstroom.serve import clickhouse_factory
from werkstroom.settings import get_settings


def app() -> BeaconFastPath:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    assert settings.kafka_bootstrap, "WERKSTROOM_KAFKA_BOOTSTRAP is needed"
    return create_app(settings, bootstrap=settings.kafka_bootstrap, clickhouse=clickhouse_factory(settings))
