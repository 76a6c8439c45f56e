"""Werkstroom's services. Each imports the core (`werkstroom`), never another service."""
