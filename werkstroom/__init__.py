"""Werkstroom: real-time web analytics on your own Kafka and ClickHouse.

This package is the shared core: settings, the event contract and topics, the Kafka and
ClickHouse clients, the SQL migrations and the `werkstroom` CLI. The services under
`services/` import it; they never import each other.
"""

__version__ = "0.1.0"
