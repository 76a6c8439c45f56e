"""The aggregator: consumes the events topic and keeps ClickHouse up to date.

The events sink is a chain of stages that sink.py assembles (consumer -> decode -> batching ->
apply -> writer -> commit, beside them status and retry); the bots consumer is bots.py's.
`werkstroom serve` runs both; faust_app.py hosts both in a Faust app (`faust -A ... worker`).
The session logic is pure (sessions.py); the visitors' state it runs on is processor.py's;
derived.py recomputes the derived tables.
"""
