"""The dashboard API's routers, one module per resource, all under /api/projects/{project_id}/
except the project administration and /api/me (routes/projects.py)."""

PREFIX = "/api/projects/{project_id}"
