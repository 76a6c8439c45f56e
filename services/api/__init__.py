"""The API service: reads ClickHouse for dashboards and administers projects."""
