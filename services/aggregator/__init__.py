"""The aggregator: consumes the events topic and keeps ClickHouse up to date.

A Faust app (faust_app.py) hosts the events sink, a chain of stages that sink.py assembles
(consumer -> decode -> batching -> apply -> writer -> commit, beside them status, retry and the
funnels' back-fill), and the bots consumer (bots.py); `werkstroom serve` and `faust -A ...
worker` both run it. The session logic is pure (sessions.py); the visitors' state it runs on
is processor.py's; derived.py recomputes the derived tables, funnels.py the funnels' ones.
"""
