"""The aggregator: consumes the events topic and keeps ClickHouse up to date.

Today it runs the events sink (every event into the `events` table); the aggregations
(sessions, online windows, users, funnels, daily stats) join it as further consumers.
"""
