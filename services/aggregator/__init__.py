"""The aggregator: consumes the events topic and keeps ClickHouse up to date.

A Faust app (faust_app.py) hosts the events sink, a chain of stages that sink.py assembles
(consumer -> decode -> batching -> apply -> writer -> commit, beside them status and retry),
and the bots consumer (bots.py). The session logic is pure (sessions.py); the visitors' state
it runs on is processor.py's; derived.py recomputes the derived tables.
"""
