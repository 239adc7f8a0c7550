"""Alembic revisions, oldest first. Each one is written (or reviewed) by hand."""
