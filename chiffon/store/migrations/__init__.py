"""Alembic migrations for Chiffon's store.

The only place the schema is created or changed. ``Store.migrate()`` runs
them programmatically (no ``alembic.ini`` needed in the working directory);
``alembic -c chiffon/store/migrations/alembic.ini upgrade head`` runs the same
``env.py`` from the command line, with the URL from ``-x url=...`` or
``$CHIFFON_DATABASE_URL``.
"""
