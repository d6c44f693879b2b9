"""Persistence: the schema (`db.schema`), engines, sessions and migrations (`db.session`) and the
read-only queries the UI shows (`db.queries`). Used by `jobs` and the UI, never by `backend`.

To change the schema: edit `db/schema.py`, then add a migration in `db/migrations/versions/`
(`alembic revision --autogenerate -m "..."` from the repo root writes a draft to review).
"""
